# al_assets: `make demo` and `make test` are the two commands a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pytest-xdist workers of the default suite (one per core of the 2-core CI machine; each is
# pinned to its share of the cores in tests/conftest.py). The slow suite stays serial: its
# training, resume and daemon tests slowed 1.6-6x when run side by side (README, "CI").
TEST_WORKERS ?= 2

export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export AL_ASSETS_STORAGE_ROOT ?= $(CURDIR)/.storage
export AL_ASSETS_SOURCE_ROOT ?= $(CURDIR)/data/demo
# glibc keeps freed buffers: CPU training/inference is 10-80x steadier (docs/performance.md).
export MALLOC_MMAP_MAX_ ?= 0
export MALLOC_TRIM_THRESHOLD_ ?= 68719476736
export MALLOC_TOP_PAD_ ?= 1073741824

.PHONY: setup demo test test-slow bench ui train-demo simulate simulate-preset clean

setup: $(VENV)/.installed
	@$(BIN)/al-assets setup-instance

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: setup  ## demo data -> detector in MLflow -> predictions -> queue, analysis, report
	$(BIN)/al-assets demo

test: setup  ## the default suite (596 tests, about 9-10 min on 2 cores: two pytest-xdist workers)
	$(BIN)/pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile --durations=15

test-slow: setup  ## real-process fault tests and training (CI runs them after `make test`)
	$(BIN)/pytest -q -m slow --durations=0

bench: setup  ## benchmarks with ratios against baselines measured in the same run
	$(BIN)/python benchmarks/run_all.py

ui: setup  ## Dagster UI on http://127.0.0.1:3000 (webserver + daemon)
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

train-demo: setup  ## retrain the shipped demo detector (about 16 min on 2 cores)
	$(BIN)/al-assets train-demo

simulate: setup  ## active-learning replay on the demo data: strategies vs random (about 30 min)
	$(BIN)/al-assets simulate

PRESET ?= long_tail
simulate-preset: setup  ## preset pool (PRESET=iid|long_tail|bursts|domain_shift|empty_frames), 3 seeds (~35 min + 25 min pretraining once)
	OMP_NUM_THREADS=1 $(BIN)/al-assets simulate --preset $(PRESET)

clean:
	rm -rf .storage .dagster_home data
