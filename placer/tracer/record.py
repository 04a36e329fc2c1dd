"""Record routing with forward hooks on the routers, over prefill batches and greedy decoding.

Each forward pass runs a batch of left-padded sequences; every router hook keeps its chosen expert ids and
gate weights (on the model's device, one transfer per pass), and ``RouterRecorder.take`` stacks them to
``[T, L, K]`` and drops padding rows with the attention mask. Token rows come out sequence by sequence,
position by position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from placer.core.errors import MoeplaceError
from placer.core.trace.schema import PHASE_DECODE, PHASE_PREFILL, RoutingBatch

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class TraceOptions:
    """How to run the model: sequences per forward pass, tokens per sequence, decode steps, device, dtype."""

    batch_size: int = 8
    seq_len: int = 256
    max_tokens: int | None = None
    generate: int = 0
    device: str = "cpu"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.seq_len < 1:
            raise ValueError(f"--seq-len must be >= 1, got {self.seq_len}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"--max-tokens must be >= 1, got {self.max_tokens}")
        if self.generate < 0:
            raise ValueError(f"--generate must be >= 0, got {self.generate}")
        if self.device not in DEVICES:
            raise ValueError(f"--device must be one of {', '.join(DEVICES)}, got '{self.device}'")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got '{self.dtype}'")


class RouterRecorder:
    """Forward hooks on the routers of the MoE layers (in layer order); use as a context manager.

    ``routers``: the router modules, one per MoE layer; each returns a tuple whose ``weights_index`` and
    ``indices_index`` entries are the ``[N, K]`` gate weights and expert ids of the ``N = B*S`` rows.
    """

    def __init__(self, routers: Sequence, weights_index: int, indices_index: int) -> None:
        self.routers = list(routers)
        self.weights_index = weights_index
        self.indices_index = indices_index
        self._ids: list = [None] * len(self.routers)
        self._weights: list = [None] * len(self.routers)
        self._handles: list = []

    def _hook(self, layer: int):
        def fn(module, inputs, output):
            if self._ids[layer] is not None:
                raise MoeplaceError(f"MoE layer {layer}: router ran twice in one forward pass; cannot trace this model")
            self._ids[layer] = output[self.indices_index].detach()
            self._weights[layer] = output[self.weights_index].detach()

        return fn

    def __enter__(self) -> "RouterRecorder":
        self._handles = [r.register_forward_hook(self._hook(i)) for i, r in enumerate(self.routers)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.clear()

    def clear(self) -> None:
        self._ids = [None] * len(self.routers)
        self._weights = [None] * len(self.routers)

    def take(self, keep_N) -> tuple[np.ndarray, np.ndarray]:
        """Experts ``[T, L, K]`` and weights of the rows where ``keep_N`` (bool, ``N = B*S``) is True, in rank
        order (descending gate weight; the router's order among equal weights); clears the recorder."""
        import torch  # lazy: torch takes seconds to import

        missing = [i for i, x in enumerate(self._ids) if x is None]
        if missing:
            self.clear()
            raise MoeplaceError(f"MoE layers {missing}: router did not run in this forward pass")
        n = int(keep_N.shape[0])
        bad = [i for i, x in enumerate(self._ids) if x.dim() != 2 or x.shape[0] != n]
        if bad:
            shapes = [tuple(self._ids[i].shape) for i in bad]
            self.clear()
            raise MoeplaceError(f"MoE layers {bad}: router returned ids of shape {shapes}, expected [{n}, K]")
        ids_NLK = torch.stack(self._ids, dim=1)
        w_NLK = torch.stack(self._weights, dim=1).float()
        self.clear()
        keep = keep_N.to(ids_NLK.device)
        ids_TLK, w_TLK = ids_NLK[keep], w_NLK[keep]
        order = torch.argsort(-w_TLK, dim=-1, stable=True)
        ids_TLK = ids_TLK.gather(-1, order)
        w_TLK = w_TLK.gather(-1, order)
        return ids_TLK.cpu().numpy(), w_TLK.cpu().numpy()


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int):
    """``input_ids``, ``attention_mask``, ``position_ids`` ``[B, S]`` of left-padded sequences.

    Positions count real tokens only, so a padded sequence is routed exactly as it would be alone.
    """
    import torch  # lazy: torch takes seconds to import

    B, S = len(seqs), max(len(s) for s in seqs)
    ids = torch.full((B, S), pad_id, dtype=torch.long)
    mask = torch.zeros((B, S), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, S - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[b, S - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def trace_batches(
    model,
    recorder: RouterRecorder,
    sequences: Sequence[Sequence[int]],
    opts: TraceOptions,
    pad_id: int,
    eos_ids: frozenset[int] = frozenset(),
    device: str = "cpu",
    seq_offset: int = 0,
) -> Iterator[RoutingBatch]:
    """Run ``sequences`` through ``model`` ``opts.batch_size`` at a time; yield the routing of every real
    token (prefill), then of every token fed during ``opts.generate`` greedy decoding steps (decode).

    Decoding feeds each generated token once, as a server does; a sequence stops after generating an
    end-of-sequence id (that token is not fed).
    """
    import torch  # lazy: torch takes seconds to import

    for start in range(0, len(sequences), opts.batch_size):
        chunk = sequences[start : start + opts.batch_size]
        B = len(chunk)
        seq_ids = np.arange(seq_offset + start, seq_offset + start + B, dtype=np.int64)
        lens = np.array([len(s) for s in chunk], dtype=np.int64)
        ids, mask, pos = left_pad(chunk, pad_id)
        with torch.inference_mode():
            out = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                use_cache=opts.generate > 0, logits_to_keep=1,
            )
        experts, weights = recorder.take(mask.reshape(-1).bool())
        yield RoutingBatch(
            experts_TLK=experts, weights_TLK=weights,
            seq_T=np.repeat(seq_ids, lens),
            position_T=np.concatenate([np.arange(n, dtype=np.int32) for n in lens]),
            phase_T=np.full(int(lens.sum()), PHASE_PREFILL, dtype=np.int8),
            token_T=np.concatenate([np.asarray(s, dtype=np.int32) for s in chunk]),
        )
        if opts.generate == 0:
            continue
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1).cpu()
        alive = torch.ones(B, dtype=torch.bool)
        eos = torch.tensor(sorted(eos_ids), dtype=torch.long)
        for step in range(opts.generate):
            alive &= ~torch.isin(nxt, eos)
            if not alive.any():
                break
            feed = torch.where(alive, nxt, torch.full_like(nxt, pad_id))
            mask = torch.cat([mask, alive.long()[:, None]], dim=1)
            step_pos = torch.from_numpy(lens + step)[:, None]
            with torch.inference_mode():
                out = model(
                    input_ids=feed[:, None].to(device), attention_mask=mask.to(device),
                    position_ids=step_pos.to(device), past_key_values=past, use_cache=True, logits_to_keep=1,
                )
            past = out.past_key_values
            experts, weights = recorder.take(alive)
            keep = alive.numpy()
            yield RoutingBatch(
                experts_TLK=experts, weights_TLK=weights,
                seq_T=seq_ids[keep],
                position_T=(lens[keep] + step).astype(np.int32),
                phase_T=np.full(int(keep.sum()), PHASE_DECODE, dtype=np.int8),
                token_T=feed.numpy()[keep].astype(np.int32),
            )
            nxt = out.logits[:, -1].argmax(-1).cpu()


def count_planned(sequences: Sequence[Sequence[int]], generate: int) -> int:
    """Tokens the trace will hold at most (decoding may stop early at end-of-sequence)."""
    return int(sum(len(s) for s in sequences)) + generate * len(sequences)

