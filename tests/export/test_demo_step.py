"""The demo's export step writes the placement in every format and says what loads each file."""

from __future__ import annotations

from rich.console import Console

from placer.demo import DemoContext, step_export
from placer.export import PLACEMENT_FORMATS, import_placement
from placer.core.placement_io import load_placement
from placer.synth import SynthConfig, generate
from placer.core.trace.writer import TraceWriter


def test_demo_export_step(tmp_path):
    meta, batches = generate(SynthConfig(layers=3, experts=8, top_k=2, tokens=500, seed=1))
    with TraceWriter(tmp_path / "t.parquet", meta) as w:
        for b in batches:
            w.write(b)
    console = Console(record=True, width=200)
    ctx = DemoContext(out=tmp_path, console=console, files={"trace": tmp_path / "t.parquet"})
    step_export(ctx)
    text = console.export_text()
    p = load_placement(ctx.files["placement"])  # no solver step ran: the contiguous baseline
    assert p.report.solver == "contiguous" and p.num_gpus == 4
    for fmt in PLACEMENT_FORMATS:
        path = ctx.files[f"export-{fmt}"]
        assert path.is_file() and str(path) in text
        gpus = None if fmt in ("vllm-ascend", "moeplace") else 4
        numbering = "model" if fmt in ("sglang", "trtllm") else "moe"
        assert import_placement(path, fmt, numbering, moe_layers=[0, 1, 2], gpus=gpus) == p
    assert "--init-expert-location" in text and "expert_map_path" in text and "--extra_llm_api_options" in text
