"""The machines a placement is solved for: GPUs, nodes, links and expert compute speed.

Defaults describe H100 nodes of 8 GPUs (the ``h100`` preset, ``placer/core/presets/h100.json``, which names the
source of every figure): NVLink 4 inside a node (900 GB/s bidirectional, 450 GB/s each way per GPU), one
400 Gb/s InfiniBand NIC per GPU across nodes (50 GB/s), and an expert FFN whose time is flat below a knee and
linear above it, as measured for this project on an H100 (``docs/reference/h100-expert-ffn.md``: about 75-80
us launch-bound floor, 550-650 TFLOP/s above the knee). ``moeplace calibrate`` measures these figures on the
machine it runs on and writes them as a hardware file (``placer.core.hardware``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from placer.core.errors import InputError, require_positive_ints


@dataclass(frozen=True)
class Topology:
    """GPUs (EP ranks) in nodes, their links, and the compute model of one expert.

    num_gpus / num_nodes: EP ranks and the nodes they sit in (GPU g is on node g // (num_gpus / num_nodes)).
    intra_bw_gbs / inter_bw_gbs: GB/s one GPU can send inside its node (NVLink) / to other nodes (network).
    intra_latency_us / inter_latency_us: per message latency of those links.
    hidden_size, dtype_bytes: a token's hidden state is hidden_size * dtype_bytes bytes on the wire.
    expert_ffn_size: an expert's intermediate size (SwiGLU: 3 matrices of hidden x ffn).
    expert_floor_us: time of one expert's FFN on a small batch (launch-bound floor).
    expert_tflops: achieved TFLOP/s of an expert's FFN above the knee (the slope of the time curve).
    expert_intercept_us: where the throughput-bound line meets zero tokens (0: the line goes through the
        origin, as the H100 preset assumes; a calibrated curve fits it: per-call overheads on a CPU make it
        positive, a GPU whose efficiency drops on large batches negative).

    The expert time curve (``expert_time_us``) is the knee model of docs/cost-model.md:
    ``max(expert_floor_us, expert_intercept_us + tokens x token_compute_us)`` for tokens > 0.
    """

    num_gpus: int
    num_nodes: int = 1
    intra_bw_gbs: float = 450.0
    inter_bw_gbs: float = 50.0
    intra_latency_us: float = 3.0
    inter_latency_us: float = 10.0
    hidden_size: int = 7168
    expert_ffn_size: int = 2048
    dtype_bytes: int = 2
    expert_floor_us: float = 75.0
    expert_tflops: float = 600.0
    expert_intercept_us: float = 0.0

    def __post_init__(self) -> None:
        require_positive_ints(self, ("num_gpus", "num_nodes", "hidden_size", "expert_ffn_size", "dtype_bytes"))
        if self.num_gpus % self.num_nodes:
            raise ValueError(f"gpus ({self.num_gpus}) must divide evenly into nodes ({self.num_nodes})")
        # Finite first: a JSON "Infinity" (or a NaN) passes "> 0" or fails it silently, and breaks the time model.
        for name in ("intra_bw_gbs", "inter_bw_gbs", "expert_tflops", "intra_latency_us", "inter_latency_us",
                     "expert_floor_us"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        for name in ("intra_bw_gbs", "inter_bw_gbs", "expert_tflops"):
            v = getattr(self, name)
            if not v > 0:
                raise ValueError(f"{name} must be positive, got {v!r}")
        for name in ("intra_latency_us", "inter_latency_us", "expert_floor_us"):
            v = getattr(self, name)
            if not v >= 0:
                raise ValueError(f"{name} must be >= 0, got {v!r}")
        if not isinstance(self.expert_intercept_us, (int, float, np.floating)) or not np.isfinite(self.expert_intercept_us):
            raise ValueError(f"expert_intercept_us must be a finite number, got {self.expert_intercept_us!r}")

    # -- structure ---------------------------------------------------------------------------------
    @property
    def gpus_per_node(self) -> int:
        return self.num_gpus // self.num_nodes

    def node_of_gpu(self) -> np.ndarray:
        """[G] node of each GPU."""
        return np.arange(self.num_gpus) // self.gpus_per_node

    @property
    def token_bytes(self) -> int:
        return self.hidden_size * self.dtype_bytes

    # -- time model (the one the cost model, the objective's default weights and replay's modelled
    # communication use) --------------------------------------------------------------------------------
    def _throughput_us(self, tokens: np.ndarray | float) -> np.ndarray:
        """Expert compute of ``tokens`` tokens at ``expert_tflops`` (6 x hidden x ffn FLOPs per token)."""
        return tokens * 6.0 * self.hidden_size * self.expert_ffn_size / (self.expert_tflops * 1e12) * 1e6

    @property
    def token_compute_us(self) -> float:
        """Expert compute of one token above the knee, where time grows linearly with tokens."""
        return float(self._throughput_us(1.0))

    @property
    def token_message_us(self) -> float:
        """Transfer time of one token's hidden state over NVLink (bandwidth only, no latency)."""
        return self.token_bytes / (self.intra_bw_gbs * 1e3)

    @property
    def expert_knee_tokens(self) -> float:
        """Tokens at which the throughput-bound line reaches the floor (the knee of the time curve)."""
        return max(0.0, (self.expert_floor_us - self.expert_intercept_us) / self.token_compute_us)

    def expert_time_us(self, tokens: np.ndarray | float) -> np.ndarray:
        """Time of one expert's SwiGLU FFN on ``tokens`` tokens: flat at ``expert_floor_us`` below the knee,
        linear above it (``expert_intercept_us`` + ``token_compute_us`` per token); 0 for no tokens."""
        tokens = np.asarray(tokens, dtype=np.float64)
        line = self.expert_intercept_us + self._throughput_us(tokens)
        return np.where(tokens > 0, np.maximum(self.expert_floor_us, line), 0.0)

    def token_link_us_GG(self) -> np.ndarray:
        """[G, G] transfer time of one token's hidden state from GPU g to GPU g' (NVLink inside a node, the
        network across nodes; bandwidth only; 0 on the diagonal)."""
        node = self.node_of_gpu()
        bw = np.where(node[:, None] == node[None, :], self.intra_bw_gbs, self.inter_bw_gbs)  # GB/s
        cost = self.token_bytes / (bw * 1e3)   # bytes / (bytes per us)
        np.fill_diagonal(cost, 0.0)
        return cost

    def link_time_us(self, intra_bytes: np.ndarray | float, inter_bytes: np.ndarray | float,
                     intra_msgs: np.ndarray | float = 0, inter_msgs: np.ndarray | float = 0) -> np.ndarray:
        """Time one GPU needs to send ``intra_bytes`` over NVLink and ``inter_bytes`` over the network, in
        that many messages: bytes / bandwidth + latency per link class used (the two links run in parallel,
        so the slower one counts)."""
        intra = np.asarray(intra_bytes, dtype=np.float64) / (self.intra_bw_gbs * 1e3) + np.where(
            np.asarray(intra_msgs) > 0, self.intra_latency_us, 0.0)
        inter = np.asarray(inter_bytes, dtype=np.float64) / (self.inter_bw_gbs * 1e3) + np.where(
            np.asarray(inter_msgs) > 0, self.inter_latency_us, 0.0)
        return np.maximum(intra, inter)

    # -- files ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hardware_fields(self) -> dict[str, Any]:
        """Every field but the GPU and node counts: what the machine is, not how many of it."""
        return {k: v for k, v in asdict(self).items() if k not in ("num_gpus", "num_nodes")}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "topology") -> "Topology":
        if not isinstance(d, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "num_gpus" not in d:
            raise InputError(f"{where}: field 'num_gpus' is missing")
        try:
            return cls(**d)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}: {exc}") from None

    def with_(self, **changes: Any) -> "Topology":
        return replace(self, **changes)


def preset(gpus: int, nodes: int = 1, **overrides: Any) -> Topology:
    """The topology the command line builds from ``--gpus G --nodes N`` (H100 defaults), validated."""
    try:
        return Topology(num_gpus=gpus, num_nodes=nodes, **overrides)
    except (TypeError, ValueError) as exc:
        raise InputError(f"topology: {exc}") from None


def home_gpu(seq_T: np.ndarray, num_gpus: int) -> np.ndarray:
    """[T] home GPU of each token: attention data parallelism puts whole sequences on one rank, round-robin
    by sequence id (``seq_id % num_gpus``). evaluate and replay both use this."""
    return (np.asarray(seq_T, dtype=np.int64) % num_gpus).astype(np.int64)
