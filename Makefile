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

# scripts that time make demo's city and checkpoints (make demo first); the others bring their own data
DEMO := outputs/demo
DEMO_BENCH := bench_log_cache bench_masked bench_safety_gate
bench: $(STAMP)
	for f in benchmarks/bench_*.py; do case " $(DEMO_BENCH) " in *" $$(basename $$f .py) "*) ;; \
		*) $(PY) $$f || exit 1;; esac; done
	@test -d $(DEMO)/train || { echo "make demo first: $(DEMO_BENCH) time its city and checkpoints"; exit 1; }
	$(PY) benchmarks/bench_log_cache.py --data-root $(DEMO)/data --maps-root $(DEMO)/data/maps
	$(PY) benchmarks/bench_masked.py --data-root $(DEMO)/data --maps-root $(DEMO)/data/maps \
		--ckpt $(DEMO)/train/masked_il/lightning_logs/version_0/checkpoints/best.ckpt
	$(PY) benchmarks/bench_safety_gate.py --data-root $(DEMO)/data --maps-root $(DEMO)/data/maps \
		--ckpt $(DEMO)/train/discriminator_tcgrpo/lightning_logs/version_0/checkpoints/best.ckpt

clean:
	rm -rf outputs .mypy_cache .ruff_cache
