"""The three tensors vLLM's EPLB state and DeepSeek's ``rebalance_experts`` both use, under different names:
physical-to-logical [layers, slots], logical-to-physical [layers, experts, R] padded with -1, replica count
[layers, experts]. Shared by ``vllm.py`` and ``eplb.py``."""

from __future__ import annotations

from pathlib import Path

from placer.core.errors import InputError
from placer.export.encoding import (
    check_inverse, check_keys, check_nonnegative, int_array, read_json, read_npz, read_torch, write_json, write_npz,
    write_torch,
)
from placer.export.layers import StackMaps


def write_triple(maps: StackMaps, path: Path, names: tuple[str, str, str]) -> None:
    l2p, cnt = maps.inverse_maps()
    arrays = dict(zip(names, (maps.phy2log_XP, l2p, cnt)))
    suffix = path.suffix.lower()
    if suffix == ".pt":
        write_torch(path, arrays)
    elif suffix == ".npz":
        write_npz(path, arrays)
    else:
        write_json(path, {k: v.tolist() for k, v in arrays.items()})


def read_triple(path: Path, names: tuple[str, str, str], fmt: str) -> StackMaps:
    suffix = path.suffix.lower()
    what = f"{fmt} expert map"
    d = read_torch(path, what) if suffix == ".pt" else read_npz(path, what) if suffix == ".npz" else read_json(path, what)
    if not isinstance(d, dict):
        raise InputError(f"{path}: holds a {type(d).__name__}, expected an object with {', '.join(names)}")
    check_keys(d, path, fmt, names)
    n_p2l, n_l2p, n_cnt = names
    p2l = int_array(d[n_p2l], path, n_p2l, 2, "[layers, physical slots]")
    l2p = int_array(d[n_l2p], path, n_l2p, 3, "[layers, experts, replicas]")
    cnt = int_array(d[n_cnt], path, n_cnt, 2, "[layers, experts]")
    check_nonnegative(p2l, path, n_p2l)
    check_inverse(p2l, l2p, cnt, path, names)
    return StackMaps(p2l, tuple(range(p2l.shape[0])), num_experts=int(cnt.shape[1]))


def triple_io(names: tuple[str, str, str], fmt: str):
    """(write, read) functions of a format made of these three tensors."""

    def write(maps: StackMaps, path: Path) -> None:
        write_triple(maps, path, names)

    def read(path: Path) -> StackMaps:
        return read_triple(path, names, fmt)

    return write, read
