# moeplace: `make demo` and `make test` work on a fresh clone (see README).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch: pinned first so that the open range in pyproject.toml is already satisfied and
# pip does not pull a multi-GB CUDA build. Override on a GPU machine: make TORCH_SPEC=torch install
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.moeplace-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-all clean traces tiny-model notebook gpu-check gpu-wheels

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[dev,dask]'
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

# Every measurement that needs a GPU, in one script of at most 8 minutes (docs/calibrate.md): on a GPU machine
# `make gpu-check` runs it with that machine's python3 (its CUDA torch) from the source tree; WHEELS=dir
# installs what that Python lacks from a folder of wheels (`make gpu-wheels`) into .gpu-site, put on PYTHONPATH
# (never a virtual environment: one made from a python3 that is itself a virtual environment would not see its
# torch), without a registry. `make gpu-check DRY=1` runs the same steps on the CPU with small shapes (the test
# suite does).
GPU_PYTHON ?= python3
GPU_OUT ?= gpu-check-out
ifdef DRY
gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py --dry --out $(GPU_OUT)
else
gpu-check:
	$(GPU_PYTHON) scripts/gpu_check.py --out $(GPU_OUT) $(if $(WHEELS),--wheels $(WHEELS))
endif

# Wheels for a GPU machine without a registry (CPython $(GPU_WHEELS_PY), x86-64 Linux) of the dependencies it
# lacks when it has torch, numpy, pandas, pyarrow, numba, matplotlib, networkx, typer, rich, transformers,
# safetensors and pytest (the project's H200): ortools and jsonschema with their dependencies, at the versions
# this checkout's $(VENV) has (the ones the tests pass with); 31 MB (docs/calibrate.md). A name with ==VERSION
# is taken as it is. pulp and highspy (the ILP solvers, which no step of gpu-check runs) add 20 MB:
# make gpu-wheels GPU_WHEELS="$(GPU_WHEELS) pulp highspy"
GPU_WHEELS_PY ?= 3.12
GPU_WHEELS ?= ortools protobuf absl-py immutabledict jsonschema jsonschema-specifications referencing rpds-py attrs \
	pytest-timeout
gpu-wheels: $(STAMP)
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_WHEELS_PY) \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
		--platform manylinux_2_28_x86_64 --platform any -d wheels \
		$$($(PY) -c "import importlib.metadata as m, sys; print(' '.join(d if '==' in d else d + '==' + \
		m.version(d) for d in sys.argv[1:]))" $(GPU_WHEELS))

clean:
	rm -rf $(VENV) demo-out .pytest_cache gpu-check-out .gpu-site
