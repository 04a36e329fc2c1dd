"""Expert weights for replay: seeded random SwiGLU experts, or the real experts of a checkpoint.

An expert is ``y = W_down (silu(W_gate x) * W_up x)`` with ``W_gate, W_up: [F, H]`` and ``W_down: [H, F]``
(the layout of Hugging Face checkpoints: Mixtral's w1/w3/w2, Qwen-MoE/OLMoE/DeepSeek's gate/up/down_proj).
Every rank builds the weights of its own slots, and the reference builds any expert, from the same source:
random weights are seeded per (layer, expert), so any process gets the same tensors without sharing them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from placer.core.errors import InputError
from placer.core.fileio import read_model_config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}

ExpertWeights = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def swiglu(x: torch.Tensor, w: ExpertWeights) -> torch.Tensor:
    """[n, H] -> [n, H]: one SwiGLU expert FFN (three matmuls, as an eager-mode MoE layer runs it)."""
    gate, up, down = w
    return torch.nn.functional.linear(torch.nn.functional.silu(torch.nn.functional.linear(x, gate))
                                      * torch.nn.functional.linear(x, up), down)


def rms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The pre-norm a transformer applies before its MoE block (RMSNorm with unit weight), computed in at least
    float32 and cast back, as Hugging Face models do. Without it an expert's output grows with the square of
    its input and the hidden states blow up over the layers."""
    x32 = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def initial_hidden(seed: int, first_token: int, num_tokens: int, hidden: int) -> torch.Tensor:
    """[T, H] float32 input hidden states of a step that starts at trace token ``first_token`` (standard
    normal, seeded by the step, so every rank and the reference draw the same rows)."""
    g = torch.Generator().manual_seed(_seed(seed, 3, first_token))
    return torch.randn(num_tokens, hidden, generator=g)


@dataclass(frozen=True)
class RandomExperts:
    """Seeded random experts, scaled so an expert's output is of the order of its input.

    weight_bank: 0 gives every (layer, expert) its own weights; N > 0 lets experts share N weight sets
    (expert e of layer l uses set (l * E + e) mod N): the same compute, bounded memory and set-up time for
    large shapes, but the correctness check cannot tell apart two experts that share a set.
    """

    hidden: int
    ffn: int
    num_experts: int
    seed: int = 0
    weight_bank: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden", "ffn", "num_experts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.weight_bank < 0:
            raise ValueError(f"weight bank ({self.weight_bank}) must be >= 0")

    def key(self, layer: int, expert: int) -> tuple[int, ...]:
        """Experts with the same key have the same weights."""
        if self.weight_bank:
            return (2, (layer * self.num_experts + expert) % self.weight_bank)
        return (1, layer, expert)

    def get(self, layer: int, expert: int) -> ExpertWeights:
        g = torch.Generator().manual_seed(_seed(self.seed, *self.key(layer, expert)))
        H, F = self.hidden, self.ffn
        gate = torch.randn(F, H, generator=g) / H ** 0.5
        up = torch.randn(F, H, generator=g) / H ** 0.5
        down = torch.randn(H, F, generator=g) / F ** 0.5
        return gate, up, down

    def describe(self) -> str:
        bank = f", {self.weight_bank} shared weight sets" if self.weight_bank else ""
        return f"random SwiGLU experts (seed {self.seed}{bank})"


# Expert tensor names in Hugging Face checkpoints, per expert: (gate, up, down).
_PER_EXPERT = [
    ("model.layers.{l}.mlp.experts.{e}.", ("gate_proj.weight", "up_proj.weight", "down_proj.weight")),
    ("model.layers.{l}.block_sparse_moe.experts.{e}.", ("w1.weight", "w3.weight", "w2.weight")),
]
# Fused (transformers 5 in-memory layout): gate_up_proj [E, 2F, H], down_proj [E, H, F].
_FUSED = ("model.layers.{l}.mlp.experts.", ("gate_up_proj", "down_proj"))


class CheckpointExperts:
    """The routed experts of a Hugging Face MoE checkpoint (``config.json`` + safetensors), read lazily.

    MoE layer l of the trace is decoder layer ``moe_layer_indices[l]`` of the model. Supported tensor names:
    ``model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight`` (Qwen-MoE, OLMoE, DeepSeek),
    ``model.layers.{i}.block_sparse_moe.experts.{e}.w{1,3,2}.weight`` (Mixtral) and the fused
    ``model.layers.{i}.mlp.experts.{gate_up_proj,down_proj}``. The activation must be SiLU (SwiGLU).
    """

    def __init__(self, path: str | Path, moe_layer_indices: tuple[int, ...], num_experts: int) -> None:
        self.path = Path(path)
        cfg_path, cfg = read_model_config(self.path)
        cfg = cfg.get("text_config", cfg)
        act = cfg.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise InputError(f"{cfg_path}: field 'hidden_act' is {act!r}; replay runs SwiGLU (silu) experts only")
        self.moe_layer_indices = tuple(int(i) for i in moe_layer_indices)
        self.num_experts = num_experts
        self._files = self._tensor_files()
        self._layout = self._find_layout()
        self._check_complete()
        gate, _, down = self.get(0, 0)
        self.ffn, self.hidden = int(gate.shape[0]), int(gate.shape[1])
        if tuple(down.shape) != (self.hidden, self.ffn):
            raise InputError(f"{self.path}: expert down projection has shape {tuple(down.shape)}, "
                             f"expected [{self.hidden}, {self.ffn}]")

    def _tensor_files(self) -> dict[str, Path]:
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            try:
                wm = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"{index}: field 'weight_map' is missing or malformed ({exc})") from None
            return {k: self.path / v for k, v in wm.items()}
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise InputError(f"{self.path}: no *.safetensors weights in the model folder")
        out: dict[str, Path] = {}
        for f in files:
            try:
                with safe_open(str(f), "pt") as h:
                    out.update({k: f for k in h.keys()})
            except Exception as exc:  # safetensors raises its own error types
                raise InputError(f"{f}: not a readable safetensors file ({exc})") from None
        return out

    def _find_layout(self) -> tuple[str, str, tuple[str, ...]]:
        l0 = self.moe_layer_indices[0]
        for prefix, names in _PER_EXPERT:
            if all(prefix.format(l=l0, e=0) + n in self._files for n in names):
                return ("per_expert", prefix, names)
        prefix, names = _FUSED
        if all(prefix.format(l=l0) + n in self._files for n in names):
            return ("fused", prefix, names)
        sample = next((k for k in self._files if f"layers.{l0}." in k), "none")
        raise InputError(f"{self.path}: no routed expert weights found for decoder layer {l0} (MoE layer 0 of the "
                         f"trace); tensors there look like {sample!r}")

    def _names(self, layer: int, expert: int) -> list[str]:
        kind, prefix, names = self._layout
        li = self.moe_layer_indices[layer]
        base = prefix.format(l=li, e=expert) if kind == "per_expert" else prefix.format(l=li)
        return [base + n for n in names]

    def _check_complete(self) -> None:
        """Every expert of every MoE layer of the trace is in the checkpoint (names only, nothing is read)."""
        for layer in range(len(self.moe_layer_indices)):
            for expert in range(self.num_experts):
                missing = [n for n in self._names(layer, expert) if n not in self._files]
                if missing:
                    raise InputError(f"{self.path}: tensor {missing[0]!r} is missing: the trace has "
                                     f"{self.num_experts} experts in decoder layers {list(self.moe_layer_indices)}")

    def _tensor(self, name: str, index: int | None = None) -> torch.Tensor:
        """A tensor of the checkpoint, or only row ``index`` of its first dimension (one expert of a fused one)."""
        f = self._files.get(name)
        if f is None:
            raise InputError(f"{self.path}: tensor {name!r} is missing from the checkpoint")
        with safe_open(str(f), "pt") as h:
            if index is None:
                return h.get_tensor(name)
            sl = h.get_slice(name)
            n = sl.get_shape()[0]
            if n != self.num_experts:
                raise InputError(f"{self.path}: {name} holds {n} experts, the trace {self.num_experts}")
            return sl[index:index + 1][0]

    def get(self, layer: int, expert: int) -> ExpertWeights:
        if not 0 <= layer < len(self.moe_layer_indices):
            raise InputError(f"{self.path}: MoE layer {layer} is beyond the trace's {len(self.moe_layer_indices)}")
        names = self._names(layer, expert)
        if self._layout[0] == "per_expert":
            return tuple(self._tensor(n).float() for n in names)  # type: ignore[return-value]
        gu = self._tensor(names[0], expert)
        f = gu.shape[0] // 2
        return gu[:f].float(), gu[f:].float(), self._tensor(names[1], expert).float()

    def key(self, layer: int, expert: int) -> tuple[int, ...]:
        return (1, layer, expert)

    def describe(self) -> str:
        return f"experts of checkpoint {self.path}"


class ExpertCache:
    """Expert weights cast to the replay's dtype and moved to its device, built once per weight key
    (replicas of an expert, and experts sharing a weight set, share one tensor)."""

    def __init__(self, source, dtype: torch.dtype, device: torch.device) -> None:
        self.source, self.dtype, self.device = source, dtype, device
        self._cache: dict[tuple[int, ...], ExpertWeights] = {}

    def get(self, layer: int, expert: int) -> ExpertWeights:
        key = self.source.key(layer, expert)
        w = self._cache.get(key)
        if w is None:
            w = tuple(t.to(dtype=self.dtype).to(self.device).contiguous() for t in self.source.get(layer, expert))
            self._cache[key] = w  # type: ignore[assignment]
        return w  # type: ignore[return-value]

    def slots(self, phy2log_P: np.ndarray, first_slot: int, count: int, layer: int) -> list[ExpertWeights]:
        """The weights of slots first_slot .. first_slot + count - 1 of a layer."""
        return [self.get(layer, int(phy2log_P[p])) for p in range(first_slot, first_slot + count)]
