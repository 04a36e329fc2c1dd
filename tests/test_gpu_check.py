"""``make gpu-check DRY=1``: the GPU check's every step, on the CPU with small shapes, so that the script cannot rot
(docs/calibrate.md). Its figures are not GPU figures and its Markdown block says so."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--dry", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    block = (tmp_path / "gpu-check.md").read_text()
    assert block.strip() in res.stdout  # printed, ready for BENCHMARKS.md
    assert block.startswith("### GPU check: DRY RUN on the CPU") and "not GPU figures" in block.splitlines()[0]
    figures = json.loads((tmp_path / "gpu-check.json").read_text())
    steps = {s["step"]: s["status"] for s in figures["steps"]}
    assert set(steps) >= {"gpu_tests", "bench_trace", "calibrate_dsv3", "calibrate_bundled", "replay_dsv3",
                          "replay_bundled", "bench_validate"} and set(steps.values()) == {"ok"}, steps
    for part in ("**GPU-marked tests**", "**Tracer overhead**", "**Calibrate, DeepSeek-V3 expert**",
                 "**Replay, virtual backend, DeepSeek-V3 layer shape**", "**Replay, virtual backend, bundled model**",
                 "**Predicted against measured**", "| placement | correct | median step ms |"):
        assert part in block, part
    assert figures["replay_bundled"]["correct"] and len(figures["replay_bundled"]["placements"]) == 3
    # Every step has an estimate for the GPU run's budget, and the bundled model is solved on the topology its
    # replay predicts with (the calibrated file).
    assert set(steps) == set(_script().ESTIMATE_S)
    calibrated = str(tmp_path / "calibrate-bundled.json")
    for s in figures["steps"]:
        if s["step"].startswith(("solve_bundled", "replay_bundled")):
            assert f"--topology {calibrated}" in s["command"], s


def test_gpu_check_refuses_a_machine_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", "/nonexistent/never"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "no CUDA GPU is visible" in res.stderr and "DRY=1" in res.stderr


def _wheel(folder: Path, dist: str, version: str, module: str, source: str) -> Path:
    """A minimal pure-Python wheel, zipped by hand (PEP 427): one module, its METADATA, WHEEL and RECORD."""
    import zipfile

    info = f"{dist.replace('-', '_')}-{version}.dist-info"
    files = {f"{module}/__init__.py": source,
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
             f"{info}/top_level.txt": f"{module}\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    path = folder / f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def test_wheels_install_beside_the_packages_of_a_python_that_is_a_virtual_environment(tmp_path):
    """``make gpu-check WHEELS=dir`` on a machine whose python3 is itself a virtual environment (the project's H200:
    /opt/torch/.venv, with its CUDA torch): the wheels it lacks become importable beside its own packages, and one
    it has (here numpy, as torch would be) is not reinstalled. The test's own interpreter (a virtual environment
    with numpy, and without the dummy package) stands in for it; no registry is reached."""
    assert sys.prefix != sys.base_prefix, "the tests run in a virtual environment (the stand-in)"
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    wheels.mkdir()
    _wheel(wheels, "moeplace-dummy-pkg", "1.0", "moeplace_dummy_pkg", "VALUE = 42\n")
    _wheel(wheels, "numpy", "0.0.1", "numpy", "raise ImportError('the folder's numpy shadowed the machine's')\n")
    # The script's whole path: install, start again with the folder on PYTHONPATH, then stop (no GPU here).
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--wheels", str(wheels), "--site",
                          str(site), "--out", str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert "installing moeplace_dummy_pkg from" in res.stdout, res.stdout + res.stderr
    assert "keeping numpy" in res.stdout and "(the folder has 0.0.1)" in res.stdout
    assert (site / "moeplace_dummy_pkg" / "__init__.py").exists() and not (site / "numpy").exists()
    import torch

    if not torch.cuda.is_available():  # it got past the dependency check, with the installed folder on the path
        assert res.returncode == 2 and "no CUDA GPU is visible" in res.stderr, res.stderr
    # The environment it runs with: the wheel's module, the parent's numpy and the source tree, from anywhere.
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    env = gpu_check.install_from_wheels(wheels, site)  # a second time: nothing to install
    code = ("import moeplace_dummy_pkg, numpy, placer, sys; assert moeplace_dummy_pkg.VALUE == 42; "
            "print(numpy.__file__, placer.__file__)")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    np_file, placer_file = out.stdout.split()
    assert not np_file.startswith(str(site)) and placer_file.startswith(str(ROOT))


def test_wheels_that_do_not_import_are_refused_in_one_line(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "moeplace-broken-pkg", "1.0", "moeplace_broken_pkg", "raise ImportError('needs protobuf 6')\n")
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--wheels", str(wheels), "--site",
                          str(tmp_path / "site"), "--out", str(tmp_path / "out")], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "do not import: ImportError: needs protobuf 6" in res.stderr


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_step_whose_estimate_does_not_fit_the_budget_is_skipped_and_reported(tmp_path, monkeypatch):
    """The 8-minute budget holds: a step is started only when its estimated duration fits what is left."""
    gpu_check = _script()
    r = gpu_check.Runner(tmp_path, budget_s=100, estimates_s={"long": 300, "short": 1})
    assert r.moeplace("long", ["--help"]) is None
    assert r.moeplace("short", ["--help"]) is True
    long, short = r.steps
    assert long["status"] == "skipped" and short["status"] == "ok"
    assert long["detail"].startswith("needs about 300 s (an estimate); ") and "of the 100 s budget left" in long["detail"]
    assert "| long | skipped |" in "\n".join(f"| {s['step']} | {s['status']} |" for s in r.steps)
    # Every step of the GPU run has an estimate, and together they fit the default budget.
    assert sum(gpu_check.ESTIMATE_S.values()) <= gpu_check.BUDGET_S
