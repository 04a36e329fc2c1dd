"""Layer numbering between a placement (MoE layers only) and the files serving stacks read.

A ``Placement`` counts MoE layers only: row l is the l-th MoE layer, and ``model_layer_indices[l]`` is that
layer's index among all decoder layers (DeepSeek-V3's first MoE layer is decoder layer 3). Some stacks count every
decoder layer (SGLang's ``num_layers = config.num_hidden_layers``; TensorRT-LLM keys its assignments by decoder
layer index), others MoE layers only (vLLM's ``num_moe_layers``). ``StackMaps`` is a file's content in its own
numbering; ``to_stack`` and ``from_stack`` convert, giving dense layers the trivial placement (slot p holds expert
p mod E, SGLang's ``init_trivial``) where a format needs one row per layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from placer.core.errors import InputError
from placer.core.limits import MAX_LAYERS
from placer.core.placement import Placement, SolveReport


@dataclass(frozen=True, eq=False)
class StackMaps:
    """The placement a serving-stack file holds, in the file's own layer numbering.

    phy2log_XP: [X, P] logical expert of each physical slot, for each layer the file holds.
    layer_ids_X: the index each row has in the file (its layer_id or dict key; 0..X-1 for plain arrays).
    num_gpus / num_experts: what the file records (None where the format does not say).
    placement: the full placement (the moeplace format only; it keeps solver, bounds and topology).
    """

    phy2log_XP: np.ndarray
    layer_ids_X: tuple[int, ...]
    num_gpus: int | None = None
    num_experts: int | None = None
    placement: Placement | None = None

    @property
    def num_slots(self) -> int:
        return int(self.phy2log_XP.shape[1])

    def inverse_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """([X, E, R] slots of each expert in increasing order padded with -1, [X, E] replica counts), computed by
        ``Placement`` (every row of a file, dense layers' trivial rows included, is a valid placement)."""
        p = Placement(phy2log_LP=self.phy2log_XP, num_gpus=int(self.num_gpus or 1), num_experts=int(self.num_experts))
        return p.log2phy_LER(), p.logcnt_LE


def trivial_row(num_slots: int, num_experts: int) -> np.ndarray:
    """The placement of a layer nobody placed: slot p holds expert p mod E (SGLang's and vLLM's default)."""
    return np.arange(num_slots, dtype=np.int64) % num_experts


def parse_layer_list(spec: str, option: str = "--moe-layers") -> list[int]:
    """``"3-60"``, ``"1,3,5-7"`` -> sorted unique layer indices."""
    out: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise InputError(f"{option}: {spec!r} is not a layer list like 3-60 or 1,3,5-7")
        for number in m.groups():  # checked as text first: int() of a 5000-digit number raises
            if number is not None and (len(number.lstrip("0")) > len(str(MAX_LAYERS)) or int(number) >= MAX_LAYERS):
                raise InputError(f"{option}: layer {_short(number)} is beyond the {MAX_LAYERS:,} decoder layers a model "
                                 f"may have (indices 0-{MAX_LAYERS - 1})")
        if m.group(2) is not None and int(m.group(2)) < int(m.group(1)):
            raise InputError(f"{option}: {spec!r} is not a layer list like 3-60 or 1,3,5-7")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        out.update(range(lo, hi + 1))
    return sorted(out)


def _short(number: str) -> str:
    return number if len(number) <= 24 else f"{number[:12]}...({len(number)} digits)"


def check_model_layers(n: int, option: str = "--num-model-layers") -> int:
    """``n`` decoder layers, refused beyond ``MAX_LAYERS`` (a row-per-layer file holds one row each)."""
    if not 1 <= n <= MAX_LAYERS:
        raise InputError(f"{option} ({n}) must be between 1 and {MAX_LAYERS:,} (decoder layers of a model)")
    return int(n)


def layer_rows(rows_LW: np.ndarray, recorded: Sequence[int] | None, numbering: str, *, keyed: bool,
               fill_W: np.ndarray, num_model_layers: int | None = None, given: Sequence[int] | None = None,
               what: str = "the placement") -> tuple[np.ndarray, tuple[int, ...]]:
    """The rows a file holds for per-MoE-layer rows ``rows_LW`` (a placement's slots, or expert loads) in
    ``numbering`` ("moe" or "model"), and the index of each row in the file.

    With "model", a keyed file (a dict by layer index) holds the MoE layers under their decoder-layer indices
    (``given``, else ``recorded``); a row-per-layer file holds every decoder layer 0..num_model_layers-1, dense
    ones filled with ``fill_W`` (the trivial placement, or zero load).
    """
    L = rows_LW.shape[0]
    if numbering == "moe":
        return rows_LW.copy(), tuple(range(L))
    idx = tuple(int(i) for i in (given if given is not None else recorded or ()))
    if not idx:
        raise InputError(f"{what} records no model layer indices (its trace did not say which decoder layers "
                         f"are MoE layers); pass them with --moe-layers (for example 3-60) or use --layer-numbering moe")
    if len(idx) != L:
        raise InputError(f"--moe-layers lists {len(idx)} layers, {what} has {L} MoE layers")
    if len(set(idx)) != L:
        raise InputError(f"model layer indices {list(idx)} repeat a layer")
    if max(idx) >= MAX_LAYERS:
        raise InputError(f"model layer index {max(idx)} is beyond the {MAX_LAYERS:,} decoder layers a model may have")
    if keyed:
        return rows_LW.copy(), idx
    total = check_model_layers(num_model_layers) if num_model_layers is not None else max(idx) + 1
    if total <= max(idx):
        raise InputError(f"--num-model-layers {total} leaves out MoE layer {max(idx)}")
    rows = np.tile(fill_W, (total, 1))
    rows[list(idx)] = rows_LW
    return rows, tuple(range(total))


def to_stack(p: Placement, numbering: str, *, keyed: bool, num_model_layers: int | None = None,
             model_layer_indices: Sequence[int] | None = None) -> StackMaps:
    """The rows a file holds for placement ``p`` in ``numbering`` ("moe" or "model"); dense layers of a
    row-per-layer file hold the trivial placement (``layer_rows``)."""
    rows, ids = layer_rows(p.phy2log_LP, p.model_layer_indices, numbering, keyed=keyed,
                           fill_W=trivial_row(p.num_slots, p.num_experts), num_model_layers=num_model_layers,
                           given=model_layer_indices)
    return StackMaps(rows, ids, p.num_gpus, p.num_experts, placement=p)


@dataclass(frozen=True, eq=False)
class StackLoads:
    """Expert loads as a serving stack's statistics file holds them, in the file's own layer numbering.

    load_XW: [X, E] load of each expert, for each layer the file holds (zero for dense layers); int64 token
        counts, or float64 real-valued loads (rates, averages).
    layer_ids_X: the index each row has in the file.
    """

    load_XE: np.ndarray
    layer_ids_X: tuple[int, ...]

    @property
    def real_valued(self) -> bool:
        return bool(np.issubdtype(self.load_XE.dtype, np.floating))


def loads_to_stack(load_LE: np.ndarray, recorded: Sequence[int] | None, numbering: str, *, keyed: bool,
                   num_model_layers: int | None = None, model_layer_indices: Sequence[int] | None = None) -> StackLoads:
    """The rows a statistics file holds for the loads of MoE layers ``load_LE``; dense layers of a row-per-layer
    file hold zero load (as SGLang's recorder writes them)."""
    rows, ids = layer_rows(np.asarray(load_LE), recorded, numbering, keyed=keyed,
                           fill_W=np.zeros(load_LE.shape[1], dtype=np.asarray(load_LE).dtype),
                           num_model_layers=num_model_layers, given=model_layer_indices, what="the statistics")
    return StackLoads(rows, ids)


def from_stack(maps: StackMaps, where: str, fmt: str, numbering: str, *, moe_layers: Sequence[int] | str | None = None,
               gpus: int | None = None, nodes: int | None = None, experts: int | None = None, keyed: bool = False) -> Placement:
    """Build the placement a file describes (see ``to_stack`` for the numbering).

    moe_layers: the MoE layers' decoder-layer indices (a list), or "nontrivial" to take the rows that differ from
        the trivial placement as the MoE layers (only when told: a MoE layer may be placed trivially).
    gpus / nodes / experts: what the file does not record (or a check of what it does).
    """
    rows, ids = maps.phy2log_XP, maps.layer_ids_X
    # Step 1: the numbers the file records win; the options fill the gaps and must agree with the file.
    for name, given, known in (("gpus", gpus, maps.num_gpus), ("experts", experts, maps.num_experts)):
        if given is not None and known is not None and int(given) != int(known):
            raise InputError(f"{where}: the file records {known} {name}, --{name} says {given}")
    G = maps.num_gpus if maps.num_gpus is not None else gpus
    if G is None:
        raise InputError(f"{where}: {fmt} files do not record the number of GPUs (EP size); pass --gpus")
    E = maps.num_experts if maps.num_experts is not None else (experts if experts is not None else int(rows.max()) + 1)

    # Step 2: pick the MoE layers' rows.
    if numbering == "moe":
        if isinstance(moe_layers, str):
            raise InputError(f"--moe-layers {moe_layers} applies only with --layer-numbering model")
        if moe_layers is not None and len(moe_layers) != len(ids):
            raise InputError(f"{where}: --moe-layers lists {len(moe_layers)} layers, the file holds {len(ids)} MoE layers")
        sel, model_idx = list(range(len(ids))), (tuple(moe_layers) if moe_layers is not None else None)
    else:
        pos = {int(i): x for x, i in enumerate(ids)}
        if moe_layers == "nontrivial":
            triv = trivial_row(rows.shape[1], E)
            chosen = [i for i, x in pos.items() if not np.array_equal(rows[x], triv)]
            if not chosen:
                raise InputError(f"{where}: every layer holds the trivial placement; --moe-layers nontrivial finds no MoE layer")
        elif moe_layers is not None:
            chosen = list(moe_layers)
            absent = [i for i in chosen if i not in pos]
            if absent:
                raise InputError(f"{where}: MoE layer {absent[0]} from --moe-layers is not in the file "
                                 f"(it holds layers {layer_ranges(ids)})")
        elif keyed:
            chosen = list(pos)
        else:
            raise InputError(f"{where}: with --layer-numbering model the file holds every decoder layer; say which are "
                             f"MoE layers with --moe-layers (for example 3-60), or --moe-layers nontrivial to take "
                             f"the layers whose placement is not the trivial one")
        chosen = sorted(chosen)
        sel, model_idx = [pos[i] for i in chosen], tuple(chosen)

    # Step 3: the placement validates every slot and expert; its message gets the file name.
    try:
        return Placement(phy2log_LP=rows[sel], num_gpus=int(G), num_experts=int(E), num_nodes=int(nodes or 1),
                         model_layer_indices=model_idx, report=SolveReport(solver=f"import:{fmt}", source=where))
    except ValueError as exc:
        msg = str(exc)
        if model_idx is not None and msg.startswith("layer "):
            l = int(msg.split()[1].rstrip(":,"))
            msg = msg.replace(f"layer {l}", f"layer {model_idx[l]}", 1)
        raise InputError(f"{where}: {msg}") from None


def layer_ranges(ids: Sequence[int]) -> str:
    ids = sorted(int(i) for i in ids)
    if not ids:
        return "none"
    out, start, prev = [], ids[0], ids[0]
    for i in ids[1:] + [None]:  # type: ignore[list-item]
        if i is not None and i == prev + 1:
            prev = i
            continue
        out.append(f"{start}-{prev}" if prev != start else f"{start}")
        if i is not None:
            start = prev = i
    return ",".join(out)
