"""``moeplace stats``: routing statistics of traces (load, co-activation, transitions), their summary, graph
and heatmaps; ``moeplace stats merge``: the sum of stats files of several shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.table import Table
from typer.core import TyperGroup

from placer.cli.common import UsageError, console, kv_table, print_json, state
from placer.core.fileio import prepare_output

HELP = (
    "Routing statistics of traces, and merging of stats files.\n\n"
    "[bold]moeplace stats TRACE... --out stats.npz[/bold] [--json] [--by phase|domain|seq:N|position:N|window:N] "
    "[--graph g.graphml] [--plots DIR]\n\n"
    "counts, in one streaming pass over the traces (files or directories), expert load, co-activation inside a "
    "layer and transitions between adjacent layers (exact integers), prints a summary (imbalance, entropy, mutual "
    "information, affinity concentration, next-layer predictability) and writes what is asked. Stats files (.npz) "
    "among the inputs are added in; [bold]--load FILE[/bold] takes a load matrix (.npy, .csv, .pt; counts or "
    "real-valued loads) or an SGLang logical_count file (.pt stat dump, .json) as load-only statistics. This is the [bold]compute[/bold] command, whose "
    "name may be left out: see [bold]moeplace stats compute --help[/bold].\n\n"
    "[bold]moeplace stats merge a.npz b.npz --out all.npz[/bold]\n\n"
    "sums stats files of shards taken on different machines or days: the result equals the statistics of the "
    "concatenated traces.\n\n"
    "[bold]moeplace stats SHARDS... --engine dask [--address tcp://HOST:8786] [--workers N] --out stats.npz[/bold]\n\n"
    "counts the shards (files, or row-group ranges of large ones) on Dask workers, a local cluster or yours, and "
    "adds the counts up in a tree: the same statistics, bit for bit (docs/scale.md).\n\n"
    "The stats file format: docs/stats-format.md."
)


class _ComputeByDefault(TyperGroup):
    """A group whose default command is ``compute``: ``moeplace stats TRACE...`` = ``moeplace stats compute TRACE...``."""

    def parse_args(self, ctx, args):  # type: ignore[override]
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["compute", *args]
        return super().parse_args(ctx, args)


stats_app = typer.Typer(cls=_ComputeByDefault, help=HELP, no_args_is_help=True, rich_markup_mode="rich",
                        context_settings={"help_option_names": ["-h", "--help"]})


def _parse_layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UsageError(f"--plot-layers {text!r}: expected comma-separated MoE layer numbers, e.g. 0,5,10") from None


@stats_app.command("compute")
def compute(
    inputs: Optional[List[Path]] = typer.Argument(
        None, help="Trace files (.parquet) or directories of them (read as one dataset), and stats files (.npz) to add in."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the statistics here (.npz; see docs/stats-format.md)."),
    load: Optional[List[Path]] = typer.Option(
        None, "--load", help="Load-only input: a \\[layers, experts] load matrix (.npy, .csv, .pt) of token counts "
        "or real-valued loads (rates, averages: balance only), or an SGLang logical_count file: the "
        "expert-distribution stat dump (.pt) or the --init-expert-location JSON (.json), summed over its steps, "
        "all-zero (dense) layers dropped. Repeatable."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Experts per token of --load inputs (they do not record it)."),
    by: Optional[str] = typer.Option(
        None, "--by", help="Also count per group of tokens: phase (prefill/decode), domain, seq:N (sequence ids in "
        "ranges of N), position:N (positions in ranges of N) or window:N (consecutive windows of N tokens in "
        "trace order). Traces only."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of tables."),
    top_m: Optional[int] = typer.Option(
        None, "--top-m", help="m of the concentration and predictability figures [default: top-k]."),
    sample_tokens: int = typer.Option(
        8192, "--sample-tokens", help="Tokens (spread over the traces) kept to measure next-layer predictability; 0: skip."),
    graph: Optional[List[Path]] = typer.Option(
        None, "--graph", help="Write the routing graph (networkx) as .graphml or .gexf. Repeatable."),
    min_prob: float = typer.Option(0.2, "--min-prob", help="Leave out graph edges whose conditional probability is below this (0: keep all)."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write PNG heatmaps (load, transitions, co-activation) into this folder."),
    plot_layers: Optional[str] = typer.Option(
        None, "--plot-layers", help="MoE layers (0-based) whose transition and co-activation heatmaps to draw, e.g. 0,5,10 "
        "[default: first, middle, last]."),
    per_layer: Optional[bool] = typer.Option(
        None, "--per-layer/--no-per-layer", help="Show the per-layer table [default: when there are at most 16 layers]."),
    batch_size: int = typer.Option(65536, "--batch-size", help="Tokens read at a time."),
    engine: Optional[str] = typer.Option(
        None, "--engine", help="Count the traces shard by shard on a distributed engine: dask (needs "
        "pip install 'moeplace\\[dask]'; ray is not supported). Same statistics as without it, bit for bit. "
        "See docs/scale.md.", rich_help_panel="Distributed"),
    address: Optional[str] = typer.Option(
        None, "--address", help="Join the dask scheduler at this address (tcp://host:8786); workers must see the "
        "traces at the same paths. Without it a local cluster is started and stopped.", rich_help_panel="Distributed"),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="Local cluster: worker processes (default: one per core). With --address: workers "
        "to wait for (default: 1).", rich_help_panel="Distributed"),
    shard_tokens: int = typer.Option(
        1 << 20, "--shard-tokens", help="Most tokens per shard: a larger file is cut into ranges of whole row "
        "groups (one file is one shard at most).", rich_help_panel="Distributed"),
) -> None:
    """Count routing statistics of traces (and add stats files, load files); print a summary; write stats, graph, plots.

    Counts are exact integers: load (each token adds 1 to each of its K experts), co-activation (pairs of experts chosen by one token in one layer), transitions (expert i at layer l and j at l+1 for one token, all K x K pairs, only where the token is present at both layers) and their top-1-only variants. Everything given is added up.
    """
    stats = compute_stats_cli(inputs or [], load or [], top_k, by, sample_tokens, batch_size, top_m, min_prob,
                              graph or [], plot_layers, engine=engine, address=address, workers=workers,
                              shard_tokens=shard_tokens)
    report(stats, out=out, as_json=as_json, top_m=top_m, graph=graph or [], min_prob=min_prob, plots=plots,
           plot_layers=_parse_layers(plot_layers), per_layer=per_layer)


def compute_stats_cli(inputs: list[Path], loads: list[Path], top_k: int | None, by: str | None, sample_tokens: int,
                      batch_size: int, top_m: int | None, min_prob: float, graphs: list[Path], plot_layers: str | None,
                      engine: str | None = None, address: str | None = None, workers: int | None = None,
                      shard_tokens: int = 1 << 20):
    """Check the options, then read every input and add the statistics up (the traces on ``engine`` if given)."""
    # lazy: loads the solvers (numba, OR-Tools) and pyarrow; kept out of `moeplace --help`
    from placer.core.stats.core import merge_stats
    from placer.core.stats.io import load_stats
    from placer.core.stats.loadonly import load_only_stats
    from placer.core.stats.stream import SplitBy
    from placer.inputs import stats_from_traces
    from placer.plots.graph import GRAPH_SUFFIXES
    from placer.scale import distributed_stats, require_engine

    # Step 1: options, checked before any long work.
    split = None
    if by is not None:
        try:
            split = SplitBy.parse(by)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    for name, value, ok in (("--top-m", top_m, top_m is None or top_m >= 1),
                            ("--sample-tokens", sample_tokens, sample_tokens >= 0),
                            ("--batch-size", batch_size, batch_size >= 1),
                            ("--min-prob", min_prob, 0.0 <= min_prob <= 1.0),
                            ("--top-k", top_k, top_k is None or top_k >= 1),
                            ("--workers", workers, workers is None or workers >= 1),
                            ("--shard-tokens", shard_tokens, shard_tokens >= 1)):
        if not ok:
            raise UsageError(f"{name} {value} is out of range")
    for g in graphs:
        if g.suffix.lower() not in GRAPH_SUFFIXES:
            raise UsageError(f"{g}: unknown graph format '{g.suffix}'; use .graphml or .gexf")
    _parse_layers(plot_layers)
    if top_k is not None and not loads:
        raise UsageError("--top-k is for --load inputs only (traces record their top-k)")
    if not inputs and not loads:
        raise UsageError("give trace files (.parquet or a directory), stats files (.npz) or --load FILE")

    # Step 2: sort the inputs by kind.
    traces, npz = [], []
    for p in inputs:
        if p.is_dir() or p.suffix.lower() in (".parquet", ".pq"):
            traces.append(p)
        elif p.suffix.lower() == ".npz":
            npz.append(p)
        elif not p.exists():
            raise UsageError(f"{p}: input not found")
        else:
            raise UsageError(f"{p}: unknown input type '{p.suffix}'; expected a trace (.parquet or a directory) or "
                             f"a stats file (.npz); give load matrices and SGLang stat dumps with --load")
    if engine is None:
        given = [flag for flag, v in (("--address", address), ("--workers", workers)) if v is not None]
        if given:
            raise UsageError(f"{given[0]} is for distributed counting: add --engine dask")
    else:
        require_engine(engine)
        if not traces:
            raise UsageError(f"--engine {engine} counts traces, and none is given (stats files and --load inputs "
                             f"are only added in)")
    if split is not None and (npz or loads):
        raise UsageError(f"--by {split} splits the tokens of traces; {(npz + loads)[0]} holds counts only: "
                         f"compute split statistics from traces only")

    # Step 3: count, read, add up.
    parts = []
    if traces and engine is not None:
        parts.append(distributed_stats(traces, engine=engine, address=address, workers=workers, by=split,
                                       sample_tokens=sample_tokens, batch_size=batch_size, shard_tokens=shard_tokens,
                                       debug=bool(state.get("debug"))))
    elif traces:
        parts.append(stats_from_traces(traces, by=split, sample_tokens=sample_tokens, batch_size=batch_size))
    parts += [load_stats(p) for p in npz]
    parts += [load_only_stats(p, top_k=top_k) for p in loads]
    return parts[0] if len(parts) == 1 else merge_stats(parts)


def report(stats, out: Path | None = None, as_json: bool = False, top_m: int | None = None, graph: list[Path] = (),
           min_prob: float = 0.2, plots: Path | None = None, plot_layers: list[int] | None = None,
           per_layer: bool | None = None) -> dict[str, Any]:
    """Write the outputs asked for and print the summary (tables, or JSON); return the summary."""
    # lazy: loads numba and pyarrow; kept out of `moeplace --help`
    from placer.core.stats.io import save_stats
    from placer.core.stats.summary import summarize
    from placer.plots.graph import write_graph
    from placer.plots.stats import write_plots

    # Step 1: everything that can fail on bad options (graph of load-only stats, plot layers) before writing.
    if graph:
        stats.require_affinity("--graph")
    if out is not None:
        prepare_output(out)
    summary = summarize(stats, top_m=top_m)
    written: dict[str, Any] = {}
    if plots is not None:
        written["plots"] = [str(p) for p in write_plots(plots, stats, plot_layers)]
    for g in graph:
        written[str(g)] = write_graph(g, stats, min_prob)
    if out is not None:
        save_stats(out, stats)
        written["stats"] = str(out)
    if as_json:
        print_json({**summary, "written": written})
    else:
        _print_tables(console(), summary, written, per_layer)
    return summary


def _num(v: Any, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def _print_tables(con, s: dict[str, Any], written: dict[str, Any], per_layer: bool | None) -> None:
    o = s["overall"]
    L, E, K, m = s["num_layers"], s["num_experts"], s["top_k"], s["top_m"]
    rows = [
        ("model", s["model_name"]),
        ("shape (L, E, K)", f"{L} layers x {E} experts x top-{K}" + ("" if s["top_k_known"] else " (top-k unknown)")),
        ("tokens", f"{s['tokens']:,}" if s["tokens"] or s["top_k_known"] else "unknown"),
        ("load imbalance (max/mean)", f"mean {_num(o['imbalance_mean'])}, worst layer {_num(o['imbalance_max'])}"),
        ("load CV (std/mean)", f"mean {_num(o['cv_mean'])}"),
        ("routing entropy", f"mean {_num(o['entropy_bits_mean'])} bits (even: {_num(o['entropy_bits_uniform'])})"),
    ]
    if s["load_only"]:
        rows.append(("affinity", "none: load-only statistics (no co-activation or transitions)"))
    elif "mutual_information_bits_mean" in o:
        rows += [
            ("mutual information l -> l+1", f"mean {_num(o['mutual_information_bits_mean'])} bits (top-1 experts)"),
            (f"concentration top-{m}", f"mean {_num(o['concentration_mean'])} (uniform successors: "
                                       f"{_num(o['concentration_uniform'])})"),
        ]
        if "predictability_mean" in o:
            rows.append((f"predictability top-{m}", f"{_num(o['predictability_mean'])} of next-layer experts "
                         f"(popularity alone: {_num(o['predictability_popularity_mean'])}; "
                         f"{o['predictability_sample_tokens']:,} sampled tokens)"))
        else:
            rows.append((f"predictability top-{m}", "- (needs a trace: merged counts keep no tokens)"))
    rows += [("note", n) for n in s.get("notes", [])]
    for k, v in written.items():
        if k == "stats":
            rows.append(("wrote stats", v))
        elif k == "plots":
            rows.append(("wrote plots", f"{len(v)} PNG files in {Path(v[0]).parent}"))
        else:
            rows.append((f"wrote {k}", f"{v['nodes']:,} nodes, {v['transition_edges']:,} transition + "
                                       f"{v['coactivation_edges']:,} co-activation edges"))
    con.print(kv_table(", ".join(s["sources"][:3]) + (" ..." if len(s["sources"]) > 3 else ""), rows))

    if per_layer if per_layer is not None else L <= 16:
        t = Table(title="per layer", title_justify="left")
        for col in ("layer", "model", "tokens", "max/mean", "CV", "H bits", "MI bits", f"conc@{m}", f"pred@{m}"):
            t.add_column(col, justify="right")
        lay, pairs = s["layers"], s.get("pairs", {})
        for l in range(L):
            pair = lambda key: _num(pairs[key][l]) if key in pairs and l < len(pairs[key]) else "-"  # noqa: E731
            t.add_row(str(l), str(lay["model_layer"][l]), "-" if lay["tokens"] is None else f"{lay['tokens'][l]:,}",
                      _num(lay["imbalance"][l]), _num(lay["cv"][l]), _num(lay["entropy_bits"][l]),
                      pair("mutual_information_bits"), pair("concentration"), pair("predictability"))
        con.print(t)

    if s.get("splits"):
        t = Table(title=f"by {s['split_by']}", title_justify="left")
        for col in ("split", "tokens", "max/mean", "H bits", "MI bits", f"conc@{m}", f"pred@{m}", "popular"):
            t.add_column(col, justify="right")
        for name, sub in s["splits"].items():
            so = sub["overall"]
            t.add_row(name, f"{sub['tokens']:,}", _num(so["imbalance_mean"]), _num(so["entropy_bits_mean"]),
                      _num(so.get("mutual_information_bits_mean")), _num(so.get("concentration_mean")),
                      _num(so.get("predictability_mean")), _num(so.get("predictability_popularity_mean")))
        con.print(t)


@stats_app.command("merge")
def merge(
    files: List[Path] = typer.Argument(..., help="Stats files (.npz) of shards of one model's traces."),
    out: Path = typer.Option(..., "--out", "-o", help="The merged stats file (.npz)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary of the merged statistics."),
) -> None:
    """Sum stats files of shards taken on different machines or days.

    The result equals the statistics of the concatenated traces. Shapes must agree; splits are summed by name.
    """
    # lazy: loads numba and pyarrow; kept out of `moeplace --help`
    from placer.core.stats.io import merge_files, save_stats
    from placer.core.stats.summary import summarize

    s = merge_files(files)
    save_stats(out, s)
    if as_json:
        print_json({**summarize(s), "written": {"stats": str(out)}})
        return
    rows = [("inputs", ", ".join(map(str, files))), ("shape (L, E, K)", f"{s.num_layers} x {s.num_experts} x top-{s.top_k}"),
            ("tokens", f"{s.tokens:,}"), ("load only", "yes" if s.load_only else "no")]
    if s.splits:
        rows.append((f"splits ({s.extra.get('split_by', '?')})", ", ".join(s.splits)))
    rows += [("note", n) for n in s.extra.get("notes", [])]
    console().print(kv_table(f"wrote {out}", rows))


def register(app: typer.Typer) -> None:
    app.add_typer(stats_app, name="stats")
