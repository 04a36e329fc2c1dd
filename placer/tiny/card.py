"""The model card (README.md) written beside the bundled model's weights, from the training summary."""

from __future__ import annotations


def model_card(summary: dict, command: str) -> str:
    c = summary["config"]
    f = summary["final"]
    v = summary["versions"]
    rows = "\n".join(
        f"| {h['step']} | {h['train_loss']:.3f} | {h['heldout']['loss']:.3f} | {h['heldout']['bits_per_byte']:.3f} "
        f"| {h['heldout']['max_expert_share_over_fair']:.2f} | {h['elapsed_s']:.0f} |"
        for h in summary["history"]
    )
    return f"""# tiny-moe: the bundled MoE language model of moeplace

A small Mixture-of-Experts causal language model, trained on CPU by `moeplace train-tiny`, so that
`moeplace trace` and the demo have a real model whose routing was learned. It is a research fixture,
not a useful language model.

## Architecture

transformers `Qwen3MoeForCausalLM` (`model_type: qwen3_moe`), loads with
`AutoModelForCausalLM.from_pretrained(this_folder)` offline.

| | |
|---|---|
| decoder layers (all MoE) | {c['layers']} |
| routed experts per layer | {c['experts']}, top-{c['top_k']}, normalised top-k weights, no shared expert |
| hidden size / heads | {c['hidden']} / {c['heads']} |
| expert FFN size | {c['expert_ffn']} (SwiGLU) |
| vocabulary | 259: UTF-8 bytes 0-255, pad 256, bos 257, eos 258 (`byte_tokenizer.json`; no tokenizer download) |
| parameters | {summary['parameters']:,} (float32 safetensors, embeddings tied) |

## Training

- Corpus: Python {v['corpus_python']} standard library sources (code, docstrings, comments: code and
  English), the {summary['train_files']} files named in `placer/tiny/stdlib_manifest.json` with their
  SHA-256 ({summary['train_bytes']:,} bytes); {summary['heldout_files']} further files
  ({summary['heldout_bytes']:,} bytes) are held out for the validation loss. Training checks the hashes.
- Objective: next-byte cross-entropy plus the Switch Transformer load-balancing loss applied to every
  MoE layer and averaged (weight {c['aux_loss_coef']}, saved as `router_aux_loss_coef`;
  `placer/tiny/train.py: balance_loss`; transformers' own version pools all layers' counts and left
  single layers unbalanced in a first run).
- Schedule: {c['steps']} steps of {c['batch_size']} random windows of {c['seq_len']} bytes
  ({summary['tokens_seen']:,} tokens), AdamW (lr {c['lr']}, betas 0.9/0.95, weight decay {c['weight_decay']}),
  {c['warmup']} warm-up steps then cosine to 10 %, gradient clipping 1.0, seed {c['seed']},
  torch threads: {c['threads']} (the weights depend on the thread count).
- Command: `{command}`
- Wall time: {summary['wall_time_s'] / 60:.1f} minutes on the 2-core development machine shared with other
  jobs (no GPU);
  torch {v['torch']}, transformers {v['transformers']}, Python {v['python']}.

## Result

Final held-out loss {f['heldout']['loss']:.3f} nats per byte ({f['heldout']['bits_per_byte']:.3f} bits per
byte); the busiest expert of any layer took {f['heldout']['max_expert_share_over_fair']:.2f}x its fair share
of top-{c['top_k']} picks on held-out text (per layer:
{', '.join(f'{v:.2f}' for v in f['heldout']['max_share_over_fair_per_layer'])}).

| step | train loss | held-out loss | held-out bits/byte | busiest expert / fair share | elapsed s |
|---|---|---|---|---|---|
{rows}

`training_log.json` holds these figures as JSON.
"""
