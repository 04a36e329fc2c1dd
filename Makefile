# moeplace: `make demo` and `make test` work on a fresh clone (see README).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch: pinned first so that the open range in pyproject.toml is already satisfied and
# pip does not pull a multi-GB CUDA build. Override on a GPU machine: make TORCH_SPEC=torch install
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.moeplace-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-all clean traces tiny-model notebook

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/moeplace demo --out demo-out

# The two bundled traces of the bundled model (traces/README.md); seconds on 2 cores.
TRACE_OPTS := --seq-len 224 --batch-size 8 --generate 32
traces: $(STAMP)
	$(VENV)/bin/moeplace -q trace --text traces/text/train.txt --out traces/train.parquet $(TRACE_OPTS)
	$(VENV)/bin/moeplace -q trace --text traces/text/heldout.txt --out traces/heldout.parquet $(TRACE_OPTS)

# Retrain the bundled model (placer/bundled/tiny-moe/README.md); 15-40 minutes on a shared 2-core machine.
tiny-model: $(STAMP)
	$(VENV)/bin/moeplace train-tiny

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Execute the analysis notebook and save it with its outputs (tests/test_notebook.py re-executes it in memory).
notebook: $(STAMP)
	cd notebooks && ../$(PY) -c "import nbclient, nbformat; nb = nbformat.read('analysis.ipynb', as_version=4); \
	nbclient.NotebookClient(nb, timeout=600, kernel_name='python3', record_timing=False).execute(); \
	nbformat.write(nb, 'analysis.ipynb')"

clean:
	rm -rf $(VENV) demo-out .pytest_cache
