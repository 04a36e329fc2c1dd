"""Train the bundled tiny MoE language model (a Qwen3-MoE config) on the Python standard library, on CPU.

Step 1 reads the corpus named by the manifest; step 2 builds the model from ``TinyConfig``; step 3 trains
with AdamW, a warm-up then cosine learning rate, and a per-layer load-balancing loss (``balance_loss``,
weighted by ``aux_loss_coef``, saved as the config's ``router_aux_loss_coef``);
step 4 measures the held-out loss and the routing balance and saves weights, config, vocabulary and the
training log. The same config, seed, corpus, torch version and thread count give the same weights.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from placer.core.errors import require_positive_ints
from placer.tiny.vocab import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, ByteCodec


@dataclass(frozen=True)
class TinyConfig:
    """Architecture and training schedule of the bundled model (the defaults made the bundled weights)."""

    layers: int = 8
    experts: int = 16
    top_k: int = 2
    hidden: int = 128
    heads: int = 4
    expert_ffn: int = 64
    steps: int = 1500
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.1
    aux_loss_coef: float = 0.05
    seed: int = 0
    threads: int = 1
    eval_every: int = 250
    eval_batches: int = 8

    def __post_init__(self) -> None:
        require_positive_ints(self, ("layers", "experts", "top_k", "hidden", "heads", "expert_ffn", "steps",
                                     "batch_size", "seq_len", "threads", "eval_every", "eval_batches"))
        if self.top_k > self.experts:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed experts ({self.experts})")
        if self.hidden % self.heads or (self.hidden // self.heads) % 2:
            raise ValueError(f"hidden ({self.hidden}) must divide into {self.heads} heads of even size")
        if not (self.lr > 0 and self.aux_loss_coef >= 0 and 0 <= self.warmup < self.steps):
            raise ValueError(
                f"need lr > 0 ({self.lr}), aux_loss_coef >= 0 ({self.aux_loss_coef}), 0 <= warmup ({self.warmup}) < steps ({self.steps})"
            )


def hf_config(cfg: TinyConfig):
    """The transformers ``Qwen3MoeConfig`` of the tiny model: every decoder layer is an MoE layer."""
    # lazy: transformers takes seconds to import
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=cfg.hidden,
        intermediate_size=4 * cfg.hidden,  # unused: no dense MLP layers (mlp_only_layers is empty)
        moe_intermediate_size=cfg.expert_ffn,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        head_dim=cfg.hidden // cfg.heads,
        num_experts=cfg.experts,
        num_experts_per_tok=cfg.top_k,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        router_aux_loss_coef=cfg.aux_loss_coef,
        output_router_logits=False,
        tie_word_embeddings=True,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        initializer_range=0.02,
    )


def _lr_at(step: int, cfg: TinyConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def _windows(ids: np.ndarray, rng: np.random.Generator, batch: int, length: int):
    # lazy: torch takes seconds to import
    import torch

    starts = rng.integers(0, len(ids) - length, size=batch)
    x = np.stack([ids[s : s + length] for s in starts]).astype(np.int64)
    return torch.from_numpy(x)


def lm_loss(logits, x):
    """Mean next-byte cross-entropy (nats) of ``logits [B, S, V]`` for the windows ``x [B, S]``."""
    # lazy: torch takes seconds to import
    import torch.nn.functional as F

    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1))


def balance_loss(router_logits, top_k: int):
    """The Switch Transformer load-balancing loss of every MoE layer, averaged over layers.

    Per layer: ``E * sum_e f_e * P_e`` with ``f_e`` the share of the layer's top-k picks that went to expert
    e and ``P_e`` its mean router probability (1 when balanced). transformers' own ``load_balancing_loss_func``
    pools the counts of all layers before the product, which leaves each single layer free to be unbalanced
    (the first training run of this model came out with 5-7x the fair share on one expert); this one
    balances every layer.
    """
    # lazy: torch takes seconds to import
    import torch

    losses = []
    for logits in router_logits:
        probs = logits.float().softmax(-1)
        E = probs.shape[-1]
        picks = torch.topk(probs, top_k, dim=-1).indices.reshape(-1)
        f = torch.bincount(picks, minlength=E).float() / picks.numel()
        losses.append(E * (f * probs.mean(0)).sum())
    return torch.stack(losses).mean()


def evaluate(model, ids: np.ndarray, cfg: TinyConfig, seed: int = 1234) -> dict:
    """Mean next-byte loss (nats and bits per byte) and, per layer, the busiest expert's share of the
    top-k picks over its fair share K/E (1 = balanced), on fixed windows of ``ids``."""
    # lazy: torch takes seconds to import
    import torch

    rng = np.random.default_rng(seed)
    losses = []
    counts_LE = np.zeros((cfg.layers, cfg.experts), dtype=np.int64)
    model.eval()
    with torch.no_grad():
        for _ in range(cfg.eval_batches):
            x = _windows(ids, rng, cfg.batch_size, cfg.seq_len)
            out = model(input_ids=x, output_router_logits=True)
            losses.append(float(lm_loss(out.logits, x)))
            for layer, logits in enumerate(out.router_logits):
                top = torch.topk(logits, cfg.top_k, dim=-1).indices.reshape(-1).numpy()
                counts_LE[layer] += np.bincount(top, minlength=cfg.experts)
    model.train()
    over_fair_L = counts_LE.max(axis=1) / (counts_LE.sum(axis=1) / cfg.experts)
    loss = float(np.mean(losses))
    return {
        "loss": round(loss, 4),
        "bits_per_byte": round(loss / math.log(2), 4),
        "max_expert_share_over_fair": round(float(over_fair_L.max()), 3),
        "max_share_over_fair_per_layer": [round(float(v), 2) for v in over_fair_L],
    }


def train(
    cfg: TinyConfig,
    out_dir: str | os.PathLike,
    corpus,
    advance: Callable[[int], None] = lambda n: None,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Train the model and save it in ``out_dir`` (which must exist); return the training summary."""
    # lazy: torch and transformers take seconds to import
    import torch
    from transformers import Qwen3MoeForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    # Step 1: seed everything and fix the thread count (results depend on it).
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)

    # Step 2: the model, initialised by transformers from the seeded generator.
    model = Qwen3MoeForCausalLM(hf_config(cfg))
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8,
    )

    # Step 3: next-byte prediction on random windows of the training text, load balancing on.
    history = []
    t0 = time.perf_counter()
    running = None
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        x = _windows(corpus.train_ids, rng, cfg.batch_size, cfg.seq_len)
        out = model(input_ids=x, output_router_logits=True)
        lm = lm_loss(out.logits, x)
        aux = balance_loss(out.router_logits, cfg.top_k)
        opt.zero_grad(set_to_none=True)
        (lm + cfg.aux_loss_coef * aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lm_value = float(lm.detach())
        running = lm_value if running is None else 0.98 * running + 0.02 * lm_value
        advance(1)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            ev = evaluate(model, corpus.heldout_ids, cfg)
            rec = {"step": step + 1, "train_loss": round(running, 4), "balance_loss": round(float(aux.detach()), 4),
                   "heldout": ev, "elapsed_s": round(time.perf_counter() - t0, 1)}
            history.append(rec)
            log(json.dumps(rec))
    wall = time.perf_counter() - t0

    # Step 4: save in the Hugging Face layout (float32 safetensors), the byte vocabulary and the log.
    out_dir = Path(out_dir)
    model.eval()
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.bos_token_id = BOS_ID
    model.save_pretrained(out_dir, safe_serialization=True)
    ByteCodec().save(out_dir)
    import torch as _t
    import transformers as _tf

    summary = {
        "config": asdict(cfg),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "train_files": corpus.train_files,
        "heldout_files": corpus.heldout_files,
        "train_bytes": int(len(corpus.train_ids)),
        "heldout_bytes": int(len(corpus.heldout_ids)),
        "tokens_seen": cfg.steps * cfg.batch_size * cfg.seq_len,
        "wall_time_s": round(wall, 1),
        "final": history[-1],
        "history": history,
        "versions": {"python": platform.python_version(), "corpus_python": corpus.python,
                     "torch": _t.__version__, "transformers": _tf.__version__},
    }
    (out_dir / "training_log.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
