"""The worked analysis notebook runs from top to bottom, on a kernel of the running interpreter."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "analysis.ipynb"


def test_analysis_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # A kernel spec of this very interpreter under a name no user-installed spec can shadow.
    spec = tmp_path / "kernels" / "moeplace-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "moeplace test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    committed = NOTEBOOK.read_bytes()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Run from notebooks/ (as a reader would); outputs stay in memory, the committed file is not touched.
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="moeplace-test",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "best baseline on held-out (ep):" in text and "train" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2, "the heatmaps and the bar charts"
    table = next(o["data"]["text/plain"] for o in outputs
                 if "text/plain" in o.get("data", {}) and "speedup" in o["data"]["text/plain"])
    assert "contiguous" in table and "eplb" in table and "coherent" in table
    assert NOTEBOOK.read_bytes() == committed, "executing the notebook must not rewrite the committed file"


def test_analysis_notebook_is_committed_with_its_outputs():
    """Readers see the tables and plots without running it (``make notebook`` refreshes them); the file stays small."""
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), "every code cell executed"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2
    assert any("text/html" in o.get("data", {}) for o in outputs), "the tables"
    assert NOTEBOOK.stat().st_size < 1_000_000
