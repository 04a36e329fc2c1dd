#!/usr/bin/env python3
"""Every measurement of moeplace that needs a GPU, in one run of at most 8 minutes on one H100 or H200
(``make gpu-check``; docs/calibrate.md). It prints a Markdown block ready for BENCHMARKS.md and writes it,
with every step's JSON, under ``--out``.

Steps (run in this process, one after the other, so torch is imported once; a step that fails is reported
and the others still run; a step whose estimated duration no longer fits the budget is skipped and reported;
the exit code is 1 if any failed or was skipped):

1. the GPU-marked tests (``pytest -m gpu``);
2. the tracer's overhead on CUDA (``moeplace bench trace --device cuda``);
3. calibrate: the DeepSeek-V3 expert (7168 x 2048, bf16) and the bundled model's (with ``--backend nccl``
   when there are several GPUs);
4. replay on the virtual backend, on the GPU, of the DeepSeek-V3 layer shape and of the bundled model
   (contiguous, eplb, auto), with the cost model's prediction beside each measurement;
5. the predicted-versus-measured table (``moeplace bench validate`` on the GPU).

``--dry`` runs the same steps on the CPU with small shapes (a minute or two on a loaded 2-core machine), so that
the test suite can run the script and it cannot rot; its figures are not GPU figures and the block says so.

Runs from the source tree (the repository root is put on ``PYTHONPATH``); nothing is downloaded. With
``--wheels DIR`` the wheels of that folder whose distribution this Python lacks are installed, without an
index and without their dependencies, into a folder (``--site``, default ``.gpu-site``) that is put on
``PYTHONPATH`` before this script runs again: the machine's own packages (its CUDA build of torch) stay where
they are and are never reinstalled, also when this Python is itself a virtual environment (a virtual
environment made from one would not see them). ``make gpu-wheels`` fills such a folder on a machine that can
reach the registry. Without it, a missing dependency is named and the check stops.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Import name -> distribution of every dependency the steps need (pyproject.toml) but torch, which the GPU machine
# brings.
DEPENDENCIES = {
    "numpy": "numpy", "pandas": "pandas", "pyarrow": "pyarrow", "networkx": "networkx", "ortools": "ortools",
    "transformers": "transformers", "safetensors": "safetensors", "typer": "typer", "rich": "rich",
    "matplotlib": "matplotlib", "jsonschema": "jsonschema", "yaml": "pyyaml", "numba": "numba", "pytest": "pytest",
    "pytest_timeout": "pytest-timeout",
}
# Needed only by the ILP solvers (milp, moetuner, exflow), which no step runs: a missing one is reported, not fatal.
OPTIONAL = {"pulp": "pulp", "highspy": "highspy"}
BUDGET_S = 480.0
# Seconds each step is expected to take on one H100/H200: its own budgets and time limits (calibrate's 20 s of
# rounds, auto's 20 s limit, bench validate's 20 s calibration and 5 s solves) plus the start and the work around
# them. Estimates, not measurements (no GPU run has timed them yet): a step is skipped, and reported so, when its
# estimate exceeds what is left of the budget, so that the run ends inside it. The dry run's steps take a few
# seconds each (DRY_ESTIMATE_S).
ESTIMATE_S = {
    "gpu_tests": 60, "bench_trace": 30, "calibrate_dsv3": 45, "calibrate_bundled": 25, "synth_dsv3": 10,
    "solve_dsv3_contiguous": 10, "solve_dsv3_eplb": 10, "solve_dsv3_auto": 30, "replay_dsv3": 60,
    "solve_bundled_contiguous": 5, "solve_bundled_eplb": 5, "solve_bundled_auto": 25, "replay_bundled": 30,
    "bench_validate": 120,
}
DRY_ESTIMATE_S = 5.0


def missing_modules(python: str, modules=DEPENDENCIES) -> list[str]:
    code = ("import importlib.util, json, sys; print(json.dumps([m for m in sys.argv[1:] "
            "if importlib.util.find_spec(m) is None]))")
    out = subprocess.run([python, "-c", code, *modules], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _dist(name: str) -> str:
    """A distribution's normalised name (PEP 503): ``PyYAML`` and ``pyyaml``, ``absl_py`` and ``absl-py`` agree."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _distributions(python: str, paths: list[str] | None = None) -> dict[str, str]:
    """Normalised name -> version of the distributions ``python`` has (isolated from ``PYTHONPATH``), or of those
    under ``paths``."""
    code = ("import importlib.metadata as m, json, sys; a = sys.argv[1:]; "
            "print(json.dumps({d.metadata['Name']: d.version for d in (m.distributions(path=a) if a "
            "else m.distributions()) if d.metadata['Name']}))")
    out = subprocess.run([python, "-I", "-c", code, *(paths or [])], capture_output=True, text=True, check=True)
    return {_dist(k): v for k, v in json.loads(out.stdout).items()}


def with_path(env: dict[str, str], *paths: Path) -> dict[str, str]:
    """``env`` with ``paths`` in front of its ``PYTHONPATH``."""
    old = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in map(str, paths)]
    return {**env, "PYTHONPATH": os.pathsep.join([*map(str, paths), *old])}


def install_from_wheels(wheels: Path, site: Path, python: str = sys.executable) -> dict[str, str]:
    """Install into ``site`` the wheels of ``wheels`` whose distribution ``python`` lacks (``pip install --no-index
    --no-deps --target``), check that they import beside its own packages, and return the environment to run with
    (``site`` and the source tree on ``PYTHONPATH``). A distribution ``python`` has is kept at its version."""
    if not wheels.is_dir():
        raise ValueError(f"--wheels {wheels}: not a folder")
    have = _distributions(python)
    site.mkdir(parents=True, exist_ok=True)
    in_site = _distributions(python, [str(site)])
    install, seen = [], {}
    for whl in sorted(wheels.glob("*.whl")):
        name, version = whl.name.split("-")[:2]
        d = _dist(name)
        if d in seen:
            raise ValueError(f"--wheels {wheels}: two wheels of {d} ({seen[d]}, {whl.name}); keep one")
        seen[d] = whl.name
        if d in have:
            if have[d] != version:
                print(f"gpu-check: keeping {d} {have[d]} of {python} (the folder has {version})", flush=True)
        elif in_site.get(d) != version:
            install.append(whl)
    env = with_path(dict(os.environ), site, ROOT)
    if install:
        print(f"gpu-check: installing {' '.join(w.name.split('-')[0] for w in install)} from {wheels} into {site} "
              f"(no index)", flush=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
                        "--no-deps", "--upgrade", "--target", str(site), *map(str, install)], check=True)
    # The modules the folder brought must import beside this Python's own (a version clash shows here).
    tops = sorted({t for w in install for t in _top_level(site, w)})
    if tops:
        res = subprocess.run([python, "-c", "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)",
                              *tops], env=env, capture_output=True, text=True)
        if res.returncode != 0:
            last = [l for l in res.stderr.splitlines() if l.strip()]
            raise ValueError(f"the wheels installed into {site} do not import: {last[-1] if last else res.returncode}")
    return env


def _top_level(site: Path, whl: Path) -> list[str]:
    """The importable top-level names a wheel installed into ``site`` (its ``top_level.txt``, else its folders)."""
    name = whl.name.split("-")[0]
    info = next((p for p in site.glob("*.dist-info") if _dist(p.name.split("-")[0]) == _dist(name)), None)
    if info is None:
        return []
    top = info / "top_level.txt"
    if top.exists():
        names = top.read_text().split()
    else:  # RECORD's first path parts
        names = {line.split(",")[0].split("/")[0] for line in (info / "RECORD").read_text().splitlines() if line}
        names = [n.removesuffix(".py") for n in names if not n.endswith((".dist-info", ".data")) and "." not in
                 n.removesuffix(".py") and not n.startswith("_")]
    return [n for n in names if n.isidentifier() and not n.startswith("_")]


class Runner:
    """Runs the steps, records what each did, and keeps the whole run inside the budget."""

    def __init__(self, out: Path, budget_s: float, estimates_s: dict[str, float] | None = None,
                 default_s: float = DRY_ESTIMATE_S) -> None:
        self.out, self.budget_s = out, budget_s
        self.estimates_s, self.default_s = estimates_s or {}, default_s
        self.t0 = time.monotonic()
        self.steps: list[dict] = []

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def _start(self, name: str, command: list[str]) -> dict | None:
        """The step's record, or None (recorded as skipped) when its estimate does not fit what is left."""
        step = {"step": name, "command": " ".join(map(str, command))}
        self.steps.append(step)
        need, left = self.estimates_s.get(name, self.default_s), self.left()
        if left < need:
            step.update(status="skipped", detail=f"needs about {need:.0f} s (an estimate); {max(left, 0):.0f} s of "
                                                 f"the {self.budget_s:.0f} s budget left")
            return None
        return step

    def moeplace(self, name: str, args: list[object], json_out: bool = False):
        """Run ``moeplace args`` in this process; its JSON (stdout) if ``json_out``, else True; None on failure."""
        import contextlib
        import io

        from placer.cli.main import run

        args = [str(a) for a in args]
        step = self._start(name, ["moeplace", *args])
        if step is None:
            return None
        t, out, err = time.monotonic(), io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(args)
        step["wall_s"] = round(time.monotonic() - t, 1)
        (self.out / f"{name}.log").write_text(out.getvalue() + "\n--- stderr ---\n" + err.getvalue())
        if code != 0:
            lines = [l for l in err.getvalue().splitlines() if l.strip()]
            step.update(status="failed", detail=(lines[-1] if lines else f"exit code {code}")[:300])
            return None
        step["status"] = "ok"
        if not json_out:
            return True
        data = json.loads(out.getvalue())
        (self.out / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
        return data

    def pytest(self, name: str, args: list[str]) -> str | None:
        """Run pytest in this process (torch is imported already); the last line of its report."""
        import contextlib
        import io

        import pytest

        step = self._start(name, ["pytest", *args])
        if step is None:
            return None
        t, out = time.monotonic(), io.StringIO()
        cwd = os.getcwd()
        try:
            os.chdir(ROOT)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                code = pytest.main(args)
        finally:
            os.chdir(cwd)
        step["wall_s"] = round(time.monotonic() - t, 1)
        (self.out / f"{name}.log").write_text(out.getvalue())
        lines = [l for l in out.getvalue().splitlines() if l.strip()]
        last = lines[-1].strip("= ") if lines else f"exit code {code}"
        step.update(status="ok" if code == 0 else "failed", detail="" if code == 0 else last[:300])
        return last


def environment() -> dict:
    """The machine: Python, torch, the GPUs and the driver."""
    import platform

    import torch

    d = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if d["cuda"]:
        d.update(gpus=torch.cuda.device_count(), gpu=torch.cuda.get_device_name(0), cuda_version=torch.version.cuda)
        if shutil.which("nvidia-smi"):
            res = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True)
            d["driver"] = res.stdout.strip().splitlines()[0] if res.returncode == 0 and res.stdout.strip() else None
    return d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry", action="store_true", help="the same steps on the CPU with small shapes")
    ap.add_argument("--wheels", type=Path, help="install missing dependencies from this folder of wheels")
    ap.add_argument("--site", type=Path, default=ROOT / ".gpu-site",
                    help="the folder --wheels installs into (put on PYTHONPATH)")
    ap.add_argument("--out", type=Path, default=ROOT / "gpu-check-out", help="folder for the block and the JSON")
    ap.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole run")
    a = ap.parse_args(argv)
    site = str(a.site.resolve())
    if a.wheels and os.environ.get("MOEPLACE_GPU_SITE") != site:
        try:
            env = install_from_wheels(a.wheels, a.site.resolve())
        except (ValueError, subprocess.CalledProcessError) as e:
            print(f"gpu-check: {e}", file=sys.stderr)
            return 2
        # Again, with the folder on PYTHONPATH (the interpreter reads it when it starts).
        os.execve(sys.executable, [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])],
                  {**env, "MOEPLACE_GPU_SITE": site})
    missing = missing_modules(sys.executable)
    if missing:
        print(f"gpu-check: this Python lacks {', '.join(DEPENDENCIES[m] for m in missing)}: give WHEELS=dir (a "
              f"folder of wheels, `make gpu-wheels`)", file=sys.stderr)
        return 2
    optional = missing_modules(sys.executable, OPTIONAL)
    if optional:
        print(f"gpu-check: this Python lacks {', '.join(OPTIONAL[m] for m in optional)}: the ILP solvers will not "
              f"run (no step needs them)", file=sys.stderr)
    os.environ["MOEPLACE_QUIET"] = "1"
    # The source tree, for this process and the processes the steps start.
    sys.path.insert(0, str(ROOT))
    os.environ.update(with_path(dict(os.environ), ROOT))
    env = environment()
    dry = a.dry
    if not dry and not env["cuda"]:
        print("gpu-check: no CUDA GPU is visible; `make gpu-check DRY=1` runs the CPU dry run", file=sys.stderr)
        return 2
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    r = Runner(out, a.budget, None if dry else ESTIMATE_S)
    dev = "cpu" if dry else "cuda"
    figures: dict = {"dry": dry, "environment": env}

    # Step 1: the GPU-marked tests (on a CPU they all skip: the dry run checks that they are collected).
    gpu_tests = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                       if "mark.gpu" in p.read_text(encoding="utf-8"))
    figures["gpu_tests"] = r.pytest("gpu_tests", ["-q", "-m", "gpu", "-p", "no:cacheprovider", *gpu_tests])
    # Step 2: the tracer's overhead.
    figures["bench_trace"] = r.moeplace("bench_trace", ["bench", "trace", "--device", dev, "--json"]
                                        + (["--repeats", 1, "--max-tokens", 512] if dry else ["--repeats", 10]),
                                        json_out=True)
    # Step 3: calibrate (the DeepSeek-V3 expert; the bundled model's, for its replay).
    ds = dict(hidden=64, ffn=64, dtype="float32") if dry else dict(hidden=7168, ffn=2048, dtype="bfloat16")
    budget = ["--budget", 2, "--max-tokens", 256, "--threads", 1] if dry else ["--budget", 20]
    links = (["--backend", "nccl", "--world-size", env["gpus"]] if not dry and env.get("gpus", 0) >= 2
             else ["--backend", "gloo", "--world-size", 2, "--link-repeats", 2] if dry else [])
    calib_ds, calib_tiny = out / "calibrate-dsv3.json", out / "calibrate-bundled.json"
    figures["calibrate_dsv3"] = r.moeplace("calibrate_dsv3", [
        "calibrate", "--device", dev, "--hidden", ds["hidden"], "--ffn", ds["ffn"], "--dtype", ds["dtype"], *budget,
        *links, "--out", calib_ds, "--json"], json_out=True)
    figures["calibrate_bundled"] = r.moeplace("calibrate_bundled", [
        "calibrate", "--device", dev, "--model", ROOT / "placer" / "bundled" / "tiny-moe", *budget, "--out",
        calib_tiny, "--json"], json_out=True)
    # Step 4: replay on the virtual backend: the DeepSeek-V3 layer shape (synthetic routing) and the bundled model.
    shape = dict(layers=2, experts=32, top_k=4, tokens=2048, G=4, step=512) if dry else \
        dict(layers=4, experts=256, top_k=8, tokens=16384, G=8, step=4096)
    synth = out / "dsv3.parquet"
    r.moeplace("synth_dsv3", ["-q", "synth", "--layers", shape["layers"], "--experts", shape["experts"], "--top-k",
                              shape["top_k"], "--tokens", shape["tokens"], "--zipf", 1.2, "--clusters", 8, "--seed", 0,
                              "--out", synth])
    topo_ds = calib_ds if calib_ds.exists() else "h100"
    placements = []
    for name, extra in (("contiguous", []), ("eplb", ["--redundant", shape["G"] * (1 if dry else 4)]),
                        ("auto", ["--time-limit", 1 if dry else 20])):
        p = out / f"dsv3-{name}.json"
        r.moeplace(f"solve_dsv3_{name}", ["-q", "solve", synth, "--solver", name, "--gpus", shape["G"], *extra,
                                          "--topology", topo_ds, "--out", p])
        placements.append(p)
    figures["replay_dsv3"] = r.moeplace("replay_dsv3", [
        "replay", synth, *[p for p in placements if p.exists()], "--backend", "virtual", "--device", dev,
        "--hidden", ds["hidden"], "--ffn", ds["ffn"], "--dtype", ds["dtype"], "--weight-bank", 16,
        "--tokens-per-step", shape["step"], "--steps", 3 if dry else 5, "--check", "first", "--topology", topo_ds,
        *(["--threads", 1] if dry else []), "--json"], json_out=True)
    train, heldout = ROOT / "traces" / "train.parquet", ROOT / "traces" / "heldout.parquet"
    tiny, topo_tiny = [], calib_tiny if calib_tiny.exists() else "h100"
    for name, extra in (("contiguous", []), ("eplb", ["--redundant", 4]), ("auto", ["--time-limit", 1 if dry else 20])):
        p = out / f"bundled-{name}.json"
        r.moeplace(f"solve_bundled_{name}", ["-q", "solve", train, "--solver", name, "--gpus", 4, *extra,
                                             "--topology", topo_tiny, "--out", p])
        tiny.append(p)
    figures["replay_bundled"] = r.moeplace("replay_bundled", [
        "replay", heldout, *[p for p in tiny if p.exists()], "--backend", "virtual", "--device", dev, "--model",
        ROOT / "placer" / "bundled" / "tiny-moe", "--dtype", "float32" if dry else "bfloat16", "--tokens-per-step",
        1024, "--steps", 3 if dry else 5, "--check", "first",
        "--topology", topo_tiny, *(["--threads", 1] if dry else []), "--json"],
        json_out=True)
    # Step 5: predicted against measured, several placements over several traces.
    val = ["--hidden", 64, "--ffn", 128, "--experts", 16, "--tokens-per-step", 512, "--steps", 3, "--threads", 1,
           "--calibrate-budget", 2, "--placement", "contiguous", "--placement", "greedy", "--placement", "eplb:G"] \
        if dry else ["--hidden", 4096, "--ffn", 1024, "--dtype", "bfloat16", "--experts", 64, "--top-k", 8,
                     "--layers", 4, "--gpus", 8, "--tokens-per-step", 4096, "--steps", 5, "--threads", 0,
                     "--weight-bank", 16, "--time-limit", 5]
    figures["bench_validate"] = r.moeplace("bench_validate", ["-q", "bench", "validate", "--device", dev, *val,
                                                              "--out-dir", out / "validate", "--json"], json_out=True)
    figures["steps"] = r.steps
    figures["wall_s"] = round(time.monotonic() - r.t0, 1)
    block = markdown(figures)
    (out / "gpu-check.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    (out / "gpu-check.md").write_text(block)
    print(block)
    return 0 if all(s["status"] == "ok" for s in r.steps) else 1


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def _replay_table(rep: dict | None) -> list[str]:
    if not rep:
        return ["(not run: see the steps above)"]
    lines = [f"{rep['trace']}: {rep['world_size']} ranks, {rep['num_layers']} layers x {rep['num_experts']} experts, "
             f"hidden {rep['hidden']} x FFN {rep['ffn']} {rep['dtype']}, {rep['tokens_replayed']:,} tokens, timer "
             f"{rep['timer']}, topology {rep['topology']['source']}", "",
             "| placement | correct | median step ms | speedup | predicted step ms | predicted speedup |",
             "|---|---|---|---|---|---|"]
    for c in rep["placements"]:
        lines.append(f"| {c['name']} | {'yes' if c['check'].get('correct', True) else 'NO'} | {c['step_ms_median']:.3f} | "
                     f"{c['speedup_vs_first']:.2f}x | {c['predicted_step_ms']:.3f} | {c['predicted_speedup_vs_first']:.2f}x |")
    rho = rep["prediction"]["rank_correlation"]
    lines += ["", f"rank correlation of predicted and measured speedups: {'-' if rho is None else f'{rho:.2f}'}"]
    return lines


def markdown(f: dict) -> str:
    env = f["environment"] or {}
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    rev = shutil.which("git") and subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                                  text=True).stdout.strip()
    head = ("### GPU check: DRY RUN on the CPU (`make gpu-check DRY=1`): not GPU figures" if f["dry"]
            else f"### GPU check on {env.get('gpu')} (`make gpu-check`, {when})")
    machine = "CPU" if f["dry"] else (f"{env.get('gpu')} x {env.get('gpus')}, driver {env.get('driver')}, CUDA "
                                      f"{env.get('cuda_version')}")
    out = [head, "",
           f"Machine: {machine}, torch {env.get('torch')}, Python {env.get('python')}; moeplace {rev or '?'}; "
           f"whole run {f['wall_s']:.0f} s", "",
           "| step | status | wall s | detail |", "|---|---|---|---|"]
    for s in f["steps"]:
        out.append(f"| {s['step']} | {s['status']} | {s.get('wall_s', '-')} | {s.get('detail', '')} |")
    out += ["", f"**GPU-marked tests**: {f['gpu_tests'] or 'not run'}", ""]
    bt = f.get("bench_trace")
    out.append(f"**Tracer overhead** ({bt['device']}, {bt['dtype']}, {bt['tokens']:,} tokens): traced / plain median "
               f"{bt['ratio_median']:.3f} (min {bt['ratio_min']:.3f}, max {bt['ratio_max']:.3f}), "
               f"{bt['overhead_pct_median']:+.1f} %" if bt else "**Tracer overhead**: not run")
    out.append("")
    for key, label in (("calibrate_dsv3", "DeepSeek-V3 expert"), ("calibrate_bundled", "bundled model's expert")):
        c = f.get(key)
        if not c:
            out += [f"**Calibrate, {label}**: not run", ""]
            continue
        e, fit = c["expert"], c["expert"]["fit"]
        line = (f"**Calibrate, {label}** ({e['hidden_size']} x {e['ffn_size']} {e['dtype']} on {e['device']}): floor "
                f"{e['floor_us']:.1f} us, knee {e['knee_tokens']:.0f} tokens, {e['tflops']:.4g} TFLOP/s above it; fit "
                f"error max {_pct(fit['max_rel_error'])} (median {_pct(fit['median_rel_error'])}), held out max "
                f"{_pct(fit.get('heldout', {}).get('max_rel_error'))} (median "
                f"{_pct(fit.get('heldout', {}).get('median_rel_error'))}); wall {c['metadata']['wall_time_s']} s")
        for cls in ("intra", "inter"):
            ln = c["links"][cls]
            if ln["source"].startswith("measured"):
                line += (f"; {cls} link {ln['bandwidth_gbs']:.4g} GB/s, {ln['latency_us']:.3g} us ({ln['backend']}, "
                         f"{ln['world_size']} ranks, fit error max {_pct(ln['fit']['max_rel_error'])})")
        out += [line, ""]
    out += ["**Replay, virtual backend, DeepSeek-V3 layer shape** (synthetic routing):", ""]
    out += _replay_table(f.get("replay_dsv3")) + [""]
    out += ["**Replay, virtual backend, bundled model** (solved on traces/train.parquet, replayed on heldout):", ""]
    out += _replay_table(f.get("replay_bundled")) + [""]
    v = f.get("bench_validate")
    if v:
        s = v["summary"]
        out += [f"**Predicted against measured** (`moeplace bench validate`, {v['backend']} on {v['device']}, "
                f"{v['gpus']} ranks, {v['hidden']} x {v['ffn']} {v['dtype']}): rank correlation per trace "
                + ", ".join(f"{k} {'-' if x is None else f'{x:.2f}'}" for k, x in s["rank_correlation_per_trace"].items())
                + f"; pooled {s['rank_correlation_pooled']}; absolute step-time error median {_pct(s['median_abs_step_error'])}, "
                f"largest {_pct(s['max_abs_step_error'])}; absolute speedup error median "
                f"{_pct(s['median_abs_speedup_error'])}", ""]
    else:
        out += ["**Predicted against measured**: not run", ""]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
