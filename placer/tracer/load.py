"""Load a local Hugging Face MoE model for tracing: checks, family adapter, routers, device and dtype."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from placer.core.errors import InputError, first_line
from placer.core.fileio import read_model_config
from placer.tracer.adapters import FamilyAdapter, adapter_for, moe_routers, router_shape, supported_families
from placer.tracer.text import Tokenizer, load_tokenizer

EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")


@dataclass
class LoadedModel:
    model: object
    adapter: FamilyAdapter
    tokenizer: Tokenizer
    routers: list
    layer_indices: tuple[int, ...]
    num_experts: int
    top_k: int
    name: str
    model_type: str
    device: str
    dtype: str


def resolve_device(device: str) -> str:
    import torch  # lazy: torch takes seconds to import

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"--device cuda: CUDA is not available here (torch {torch.__version__}, "
            f"{'built without CUDA' if torch.version.cuda is None else 'no GPU visible'}); use --device cpu"
        )
    return device


def resolve_dtype(dtype: str, device: str):
    """The torch dtype: ``auto`` is float32 on CPU and the checkpoint's own dtype on a GPU."""
    import torch  # lazy: torch takes seconds to import

    if dtype == "auto":
        return (torch.float32, "float32") if device == "cpu" else ("auto", "auto")
    return getattr(torch, dtype), dtype


def read_config(model_dir: Path):
    """The folder's transformers config, with one-line errors for a missing folder, file or family."""
    cfg_file, raw = read_model_config(model_dir)
    model_type = raw.get("model_type")
    if not model_type:
        raise InputError(f"{cfg_file}: field 'model_type' is missing")
    if not any(k in raw for k in EXPERT_COUNT_KEYS):
        try:
            adapter_for(model_type, str(model_dir))
        except InputError:
            raise InputError(
                f"{model_dir}: model_type '{model_type}' has no routed experts (not an MoE model); "
                f"supported MoE families: {supported_families()}"
            ) from None
    adapter = adapter_for(model_type, str(model_dir))
    from transformers import AutoConfig  # lazy: transformers takes seconds to import

    try:
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:
        raise InputError(f"{cfg_file}: transformers cannot read it ({first_line(exc)})") from None
    return config, adapter


def load_model(model_dir: str | os.PathLike, device: str = "cpu", dtype: str = "auto") -> LoadedModel:
    """Load the model in eval mode on ``device`` and find its MoE routers."""
    import torch  # lazy: torch takes seconds to import
    from transformers import AutoModelForCausalLM  # lazy: transformers takes seconds to import
    from transformers.utils import logging as hf_logging  # lazy: transformers takes seconds to import

    d = Path(model_dir)
    config, adapter = read_config(d)
    dev = resolve_device(device)
    torch_dtype, dtype_name = resolve_dtype(dtype, dev)
    tokenizer = load_tokenizer(d, config)
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(d), local_files_only=True, dtype=torch_dtype)
    except Exception as exc:
        raise InputError(f"{d}: cannot load the model weights ({first_line(exc)})") from None
    model.to(dev).eval()
    found = moe_routers(model, adapter)
    if not found:
        raise InputError(
            f"{d}: no MoE layer ({adapter.router_class} at layers[i].{adapter.router_path}) in this "
            f"{adapter.family} model: nothing to trace"
        )
    shapes = {router_shape(r) for _, r in found}
    if len(shapes) != 1:
        raise InputError(f"{d}: MoE layers disagree on (experts, top-k): {sorted(shapes)}")
    (E, K), = shapes
    if dtype_name == "auto":
        dtype_name = str(next(model.parameters()).dtype).replace("torch.", "")
    return LoadedModel(
        model=model, adapter=adapter, tokenizer=tokenizer, routers=[r for _, r in found],
        layer_indices=tuple(i for i, _ in found), num_experts=E, top_k=K, name=d.resolve().name,
        model_type=config.model_type, device=dev, dtype=dtype_name,
    )

