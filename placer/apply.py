"""Renumber the experts of a safetensors checkpoint so that its contiguous layout is a placement.

Stacks that only place experts contiguously (vLLM's default ``linear`` layout, Megatron, DeepSpeed) put experts
``g*E/G .. (g+1)*E/G - 1`` on GPU g. To serve a placement there, the checkpoint itself is renumbered: new expert p
of MoE layer l is old expert ``phy2log[l, p]``. Everything that is indexed by expert moves together: the expert
weights (per-expert tensors ``experts.{e}.*`` or fused 3-D tensors ``experts.*`` [E, ...], whichever the
checkpoint holds on disk), the router's rows (``gate.weight`` [E, hidden]) and per-expert router biases (DeepSeek-V3
``e_score_correction_bias``, GPT-OSS ``router.bias``). The model then computes the same function: its router picks
new expert p exactly where the old one picked old expert ``phy2log[l, p]``.

Only placements without redundant copies qualify (a checkpoint holds each expert once). Group-limited routing
(DeepSeek ``n_group`` / ``topk_group``) selects experts in contiguous blocks, so a permutation may only move whole
groups and experts within their group; others are refused. The input checkpoint is only read; the output folder is
written beside its final name and renamed into place when complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from safetensors import safe_open

from placer.core.errors import InputError
from placer.core.fileio import output_folder, read_model_config, write_json_atomic
from placer.core.placement import Placement
from placer.export.layers import layer_ranges
from placer.progress import progress_bar

PROVENANCE = "moeplace-apply.json"
# Other copies of the weights (a .bin export, a consolidated file) would keep the old numbering: left out.
STALE_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")


# -- family adapters -----------------------------------------------------------------------------------------------
def _deepseek_v3_groups(cfg: dict[str, Any]) -> tuple[int, int] | None:
    return int(cfg.get("n_group") or 1), int(cfg.get("topk_group") or 1)


def _deepseek_v2_groups(cfg: dict[str, Any]) -> tuple[int, int] | None:
    if cfg.get("topk_method", "greedy") != "group_limited_greedy":
        return None
    return int(cfg.get("n_group") or 1), int(cfg.get("topk_group") or 1)


@dataclass(frozen=True)
class CheckpointFamily:
    """Where a family's MoE tensors live in a checkpoint.

    model_types: ``config.json`` ``model_type`` values. blocks: names of the MoE block inside a decoder layer
    (``model.layers.{i}.<block>.``). routers: router tensors relative to the block whose first dimension is the
    expert (the first one marks a MoE layer). experts_keys: config keys that may hold the number of routed
    experts (transformers 5 writes ``num_local_experts`` where hub configs say ``num_experts``).
    groups(config) -> (n_group, topk_group) where routing is group-limited, else None.
    """

    name: str
    model_types: tuple[str, ...]
    blocks: tuple[str, ...]
    routers: tuple[str, ...]
    experts_keys: tuple[str, ...]
    groups: Callable[[dict[str, Any]], tuple[int, int] | None] = lambda cfg: None


_NUM = ("num_experts", "num_local_experts")
_LOCAL = ("num_local_experts", "num_experts")
_ROUTED = ("n_routed_experts", "num_local_experts")

FAMILIES: tuple[CheckpointFamily, ...] = (
    CheckpointFamily("mixtral", ("mixtral",), ("block_sparse_moe", "mlp"), ("gate.weight",), _LOCAL),
    CheckpointFamily("qwen2_moe", ("qwen2_moe",), ("mlp",), ("gate.weight",), _NUM),
    CheckpointFamily("qwen3_moe", ("qwen3_moe",), ("mlp",), ("gate.weight",), _NUM),
    CheckpointFamily("olmoe", ("olmoe",), ("mlp",), ("gate.weight",), _NUM),
    CheckpointFamily("deepseek_v2", ("deepseek_v2",), ("mlp",), ("gate.weight", "gate.e_score_correction_bias"),
                     _ROUTED, _deepseek_v2_groups),
    CheckpointFamily("deepseek_v3", ("deepseek_v3",), ("mlp",),
                     ("gate.weight", "gate.e_score_correction_bias"), _ROUTED, _deepseek_v3_groups),
    CheckpointFamily("gpt_oss", ("gpt_oss",), ("mlp",), ("router.weight", "router.bias"), _LOCAL),
)


def family_of(model_type: str) -> CheckpointFamily | None:
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def supported_families() -> str:
    return ", ".join(t for f in FAMILIES for t in f.model_types)


# -- reading the checkpoint's layout -------------------------------------------------------------------------------
@dataclass
class MoeLayer:
    """The tensors of one MoE layer that are indexed by expert."""

    model_index: int
    prefix: str                                                     # "model.layers.3.mlp."
    routers: list[str] = field(default_factory=list)                # full names, first dimension = expert
    per_expert: dict[str, dict[int, str]] = field(default_factory=dict)  # suffix -> {expert: full name}
    fused: list[str] = field(default_factory=list)                  # full names of [E, ...] expert tensors


@dataclass
class Checkpoint:
    """A safetensors checkpoint folder: its config, shards, tensor names and MoE layers."""

    path: Path
    config: dict[str, Any]
    family: CheckpointFamily
    num_experts: int
    shards: list[str]                   # file names, in order
    shard_of: dict[str, str]            # tensor name -> shard file name
    moe_layers: list[MoeLayer]
    skipped_layers: list[int]           # MoE-like layers beyond num_hidden_layers (e.g. MTP), left as they are


def _read_config(model: Path) -> dict[str, Any]:
    return read_model_config(model)[1]


def _shards(model: Path) -> list[str]:
    index = model / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{index}: field 'weight_map' unreadable ({exc})") from None
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (model / s).is_file()]
        if missing:
            raise InputError(f"{index}: names shard {missing[0]}, which is not in {model}")
        return shards
    shards = sorted(p.name for p in model.glob("*.safetensors"))
    if not shards:
        raise InputError(f"{model}: no .safetensors files (apply rewrites safetensors checkpoints only)")
    return shards


def read_checkpoint(model: str | os.PathLike) -> Checkpoint:
    """Find the family, the shards and every MoE layer's expert-indexed tensors (names and shapes only)."""
    model = Path(model)
    cfg = _read_config(model)
    model_type = str(cfg.get("model_type", ""))
    fam = family_of(model_type)
    if fam is None:
        raise InputError(f"{model / 'config.json'}: model_type {model_type!r} has no checkpoint adapter; "
                         f"supported: {supported_families()}")
    key = next((k for k in fam.experts_keys if cfg.get(k) is not None), fam.experts_keys[0])
    E = cfg.get(key)
    if not isinstance(E, int) or E < 1:
        raise InputError(f"{model / 'config.json'}: field '{key}' is {E!r}; expected the number of experts")

    shards = _shards(model)
    shard_of: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for s in shards:
        try:
            with safe_open(model / s, framework="pt") as f:
                names = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types for a damaged header
            raise InputError(f"{model / s}: not a readable safetensors file ({str(exc)[:160]})") from None
        for k, shape in names.items():
            if k in shard_of:
                raise InputError(f"{model}: tensor '{k}' is in both {shard_of[k]} and {s}; without a "
                                 f"model.safetensors.index.json it is unclear which files form the checkpoint")
            shard_of[k], shapes[k] = s, shape

    blocks = "|".join(re.escape(b) for b in fam.blocks)
    pat = re.compile(rf"^(?P<prefix>(?:.*\.)?layers\.(?P<layer>\d+)\.(?:{blocks})\.)(?P<rest>.+)$")
    layers: dict[int, MoeLayer] = {}
    for name in shard_of:
        m = pat.match(name)
        if not m:
            continue
        i, rest = int(m.group("layer")), m.group("rest")
        layer = layers.setdefault(i, MoeLayer(i, m.group("prefix")))
        em = re.match(r"experts\.(\d+)\.(.+)$", rest)
        if rest in fam.routers:
            layer.routers.append(name)
        elif em:
            layer.per_expert.setdefault(em.group(2), {})[int(em.group(1))] = name
        elif rest.startswith("experts."):
            layer.fused.append(name)
    router0 = fam.routers[0]
    moe = {i: l for i, l in layers.items() if any(n.endswith("." + router0) for n in l.routers)}
    for i, l in layers.items():
        if i not in moe and (l.per_expert or l.fused):
            raise InputError(f"{model}: layer {i} has expert tensors but no router '{l.prefix}{router0}'")
    if not moe:
        raise InputError(f"{model}: no MoE layer found (no tensor named like "
                         f"'model.layers.N.{fam.blocks[0]}.{router0}'); is this a {fam.name} checkpoint?")

    # Every expert-indexed tensor must be indexed by exactly E experts, or renumbering could not be exact.
    for l in moe.values():
        for name in l.routers + l.fused:
            if not shapes[name] or shapes[name][0] != E:
                raise InputError(f"{model}: tensor '{name}' has shape {list(shapes[name])}; expected {E} experts "
                                 f"in its first dimension")
        for suffix, by_e in l.per_expert.items():
            if sorted(by_e) != list(range(E)):
                absent = sorted(set(range(E)) - set(by_e))
                what = f"expert {absent[0]} is missing" if absent else f"expert ids {sorted(by_e)[-1]} exceed {E - 1}"
                raise InputError(f"{model}: layer {l.model_index}: '{l.prefix}experts.N.{suffix}': {what}")
    n_hidden = cfg.get("num_hidden_layers")
    keep = sorted(i for i in moe if not isinstance(n_hidden, int) or i < n_hidden)
    skipped = sorted(set(moe) - set(keep))
    return Checkpoint(model, cfg, fam, E, shards, shard_of, [moe[i] for i in keep], skipped)


# -- checks --------------------------------------------------------------------------------------------------------
def check_applicable(p: Placement, ck: Checkpoint, where: str = "placement") -> None:
    """Refuse placements the checkpoint cannot be renumbered into, with one line saying why."""
    if p.num_redundant:
        raise InputError(f"{where}: has {p.num_redundant} redundant slots per layer ({p.num_slots} slots for "
                         f"{p.num_experts} experts); apply renumbers a checkpoint's experts and cannot copy them: "
                         f"only placements without redundant copies can be applied")
    if p.num_experts != ck.num_experts:
        raise InputError(f"{where}: places {p.num_experts} experts, {ck.path} has {ck.num_experts}")
    idx = [l.model_index for l in ck.moe_layers]
    if p.num_layers != len(idx):
        raise InputError(f"{where}: has {p.num_layers} MoE layers, {ck.path} has {len(idx)} (decoder layers "
                         f"{_short(idx)})")
    if p.model_layer_indices is not None and list(p.model_layer_indices) != idx:
        raise InputError(f"{where}: its MoE layers are decoder layers {_short(p.model_layer_indices)}, "
                         f"{ck.path}'s are {_short(idx)}")
    groups = ck.family.groups(ck.config)
    if groups is None:
        return
    n_group, topk_group = groups
    if n_group <= 1 or topk_group >= n_group:
        return
    E = ck.num_experts
    if E % n_group:
        raise InputError(f"{ck.path}: {E} experts do not split into n_group {n_group} groups")
    size = E // n_group
    for l in range(p.num_layers):
        old_group = (p.phy2log_LP[l] // size).reshape(n_group, size)
        for g in range(n_group):
            if (old_group[g] != old_group[g, 0]).any():
                j = int(np.nonzero(old_group[g] != old_group[g, 0])[0][0])
                a, b = int(p.phy2log_LP[l, g * size]), int(p.phy2log_LP[l, g * size + j])
                raise InputError(
                    f"{where}: layer {l} (decoder layer {idx[l]}) puts old experts {a} and {b} (groups {a // size} "
                    f"and {b // size}) in new group {g}; {ck.family.name} routing is group-limited (n_group "
                    f"{n_group}, topk_group {topk_group}, groups of {size} consecutive experts), so that would "
                    f"change which experts a token can choose. Only placements that keep each group's experts "
                    f"together (groups and experts within a group in any order) can be applied")


def _short(idx) -> str:
    return layer_ranges(list(idx))


def _check_output(model: Path, out: Path, force: bool) -> None:
    m, o = model.resolve(), out.resolve()
    if o == m or m in o.parents or o in m.parents:
        raise InputError(f"{out}: the output folder must be outside the input checkpoint {model} (and not contain it)")
    if out.exists() or out.is_symlink():
        if not force:
            raise InputError(f"{out}: already exists; pass --force to replace it")
        if not out.is_dir():
            raise InputError(f"{out}: exists and is not a folder; refusing to replace it")


# -- rewriting -----------------------------------------------------------------------------------------------------
def _take_rows(t, perm: np.ndarray):
    """``t[perm]`` along the first dimension, byte-exact for every dtype (fp8 and other exotic ones included)."""
    # lazy: torch takes seconds to import
    import torch

    E = t.shape[0]
    flat = t.contiguous().reshape(E, -1)
    raw = flat.view(torch.uint8) if flat.dtype != torch.uint8 else flat
    out = raw[torch.from_numpy(np.array(perm, dtype=np.int64))].contiguous()
    return (out.view(t.dtype) if t.dtype != torch.uint8 else out).reshape(t.shape)


@dataclass
class ApplyReport:
    out: Path
    family: str
    moe_layers: list[int]
    experts_moved: int          # (layer, expert) pairs whose number changed
    tensors_renamed: int        # per-expert tensors taken from another expert's name
    tensors_permuted: int       # router / fused tensors whose rows were reordered
    files_copied: int
    skipped_layers: list[int]
    omitted: list[str] = field(default_factory=list)   # other weight files, which would keep the old numbering


def _plan(ck: Checkpoint, p: Placement) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """(source name of each renamed per-expert tensor, row permutation of each router / fused tensor)."""
    rename: dict[str, str] = {}
    permute: dict[str, np.ndarray] = {}
    for l, layer in enumerate(ck.moe_layers):
        new2old = p.phy2log_LP[l]
        for name in layer.routers + layer.fused:
            permute[name] = new2old
        for by_e in layer.per_expert.values():
            for new_e, name in by_e.items():
                rename[name] = by_e[int(new2old[new_e])]
    return rename, permute


def apply_placement(p: Placement, model: str | os.PathLike, out: str | os.PathLike, *, force: bool = False,
                    placement_source: str | None = None, progress: bool = True) -> ApplyReport:
    """Write a copy of checkpoint ``model`` at ``out`` whose expert e of MoE layer l is old expert phy2log[l, e]."""
    # lazy: safetensors.torch imports torch
    from safetensors.torch import save_file

    model, out = Path(model), Path(out)
    ck = read_checkpoint(model)
    check_applicable(p, ck, placement_source or "placement")
    _check_output(model, out, force)
    rename, permute = _plan(ck, p)

    # Step 1: build the new folder beside its final name, so that the rename at the end is atomic.
    output_folder(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        # Step 2: copy everything but the weights unchanged (config, tokenizer, index, ...).
        copied, omitted = 0, []
        for item in sorted(model.iterdir()):
            if item.name in ck.shards or item.name == PROVENANCE:
                continue
            if item.is_file() and (item.suffix in STALE_WEIGHTS or item.name == "pytorch_model.bin.index.json"):
                omitted.append(item.name)
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
            copied += 1

        # Step 3: rewrite each shard; every tensor keeps its name and shard, its content comes from its source.
        handles = {s: safe_open(model / s, framework="pt") for s in ck.shards}
        total = len(ck.shard_of)
        with progress_bar(total, "renumbering experts", "tensors", quiet=None if progress else True) as advance:
            for s in ck.shards:
                names = [k for k, v in ck.shard_of.items() if v == s]
                tensors = {}
                for k in names:
                    src = rename.get(k, k)
                    t = handles[ck.shard_of[src]].get_tensor(src)
                    tensors[k] = _take_rows(t, permute[k]) if k in permute else t
                    advance(1)
                save_file(tensors, tmp / s, metadata=handles[s].metadata() or {"format": "pt"})
                del tensors

        # Step 4: record what was done, so that routing traced from the new checkpoint can be mapped back.
        idx = [l.model_index for l in ck.moe_layers]
        write_json_atomic(tmp / PROVENANCE, {
            "format": "moeplace-apply", "version": 1, "source_model": str(model), "placement": placement_source,
            "num_gpus": p.num_gpus, "moe_layer_indices": idx,
            "rule": "new expert e of MoE layer l is old expert new_to_old[l][e]",
            "new_to_old": p.phy2log_LP.tolist(),
        })

        # Step 5: move into place (an existing folder only after the new one is complete, and only with --force).
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "previous")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    moved = int((p.phy2log_LP != np.arange(p.num_experts)).sum())
    return ApplyReport(out, ck.family.name, idx, moved, sum(1 for k, v in rename.items() if k != v), len(permute),
                       copied, ck.skipped_layers, omitted)

