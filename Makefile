# diffplan: `make test` and `make demo` are the two commands; both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test lint typecheck pytest demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check simulation rewards planners bev_warp training benchmarks tests
	$(VENV)/bin/ruff format --check simulation rewards planners bev_warp training benchmarks tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy simulation rewards planners bev_warp training

pytest: $(STAMP)
	$(PY) -m pytest -n 2 tests

test: lint typecheck pytest

demo: $(STAMP)
	$(PY) -m training.pipeline --out outputs/demo

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf outputs .mypy_cache .ruff_cache
