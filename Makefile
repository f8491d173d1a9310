# Every target works on a fresh clone with Python >= 3.11 and make: .venv is created on demand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PROTOS := $(wildcard proto/blindmatch/v1/*.proto proto/blindmatch/v2/*.proto)

.PHONY: install demo test test-fast stress-refusal wheel-check bench bench-full bench-ab lint format proto proto-check clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "blindmatch needs Python >= 3.11 (set PYTHON=...)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/blindmatch demo

test: install
	$(BIN)/python -m pytest

# The inner loop: everything but the tests marked slow (real processes, waits for node timeouts).
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# Not in CI: the refusal test that once failed one run in twelve, run STRESS_RUNS times in a row,
# each in a fresh pytest, with two CPU burners loading the machine. Any failure stops it.
STRESS_RUNS ?= 50
STRESS_TEST ?= tests/test_privacy.py::test_no_key_material_after_a_round_a_node_refused
stress-refusal: install
	@mkdir -p build; burn() { while :; do :; done; }; burn & b1=$$!; burn & b2=$$!; \
	trap 'kill $$b1 $$b2 2>/dev/null' EXIT INT TERM; \
	for i in $$(seq $(STRESS_RUNS)); do \
		$(BIN)/python -m pytest -q -p no:cacheprovider "$(STRESS_TEST)" > build/stress-refusal.log 2>&1 \
		|| { cat build/stress-refusal.log; echo "stress-refusal: run $$i of $(STRESS_RUNS) failed"; exit 1; }; \
		echo "run $$i of $(STRESS_RUNS): passed"; \
	done; echo "stress-refusal: $(STRESS_RUNS) runs in a row passed with two CPU burners"

# The wheel as a user gets it: built from the tree, installed (not editable) in a fresh venv, and
# its demo run from an empty directory outside the repo, so nothing can come from the source tree.
# Catches generated code, package data or modules the wheel leaves out.
WHEEL_DIR  := build/wheel
WHEEL_VENV := build/wheel-venv
wheel-check: install
	rm -rf $(WHEEL_DIR) $(WHEEL_VENV)
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir $(WHEEL_DIR) .
	$(BIN)/python -c 'import glob, sys, zipfile; \
		tops = {n.split("/")[0] for n in zipfile.ZipFile(glob.glob("$(WHEEL_DIR)/blindmatch-*.whl")[0]).namelist() if not n.split("/")[0].endswith(".dist-info")}; \
		sys.exit(0 if tops == {"blindmatch", "node", "coordinator"} else f"wheel-check: unexpected top-level packages {sorted(tops)}")'
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install --quiet $(WHEEL_DIR)/blindmatch-*.whl
	run=$$(mktemp -d) && trap 'rm -rf "$$run"' EXIT && cd "$$run" \
		&& env -u PYTHONPATH "$(CURDIR)/$(WHEEL_VENV)/bin/blindmatch" demo

bench: install
	$(BIN)/python -m pytest bench --benchmark-only --benchmark-columns=min,median,mean,ops,rounds -p no:cacheprovider
	$(BIN)/python bench/compare.py

bench-full: install
	$(BIN)/python bench/compare.py --full

# before and after side by side: make bench-ab BEFORE=../other-checkout (with its own .venv)
bench-ab: install
	@test -n "$(BEFORE)" || { echo "usage: make bench-ab BEFORE=path/to/other/checkout"; exit 2; }
	$(BIN)/python bench/compare.py --before $(BEFORE) --sizes 100000 --cores $$(nproc)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Generated code is committed; grpc_tools runs in-process so the protoc version is the pinned one.
proto: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. $(PROTOS)

proto-check: install
	@rm -rf build/proto-check && mkdir -p build/proto-check
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iproto --python_out=build/proto-check --grpc_python_out=build/proto-check --mypy_out=build/proto-check --mypy_grpc_out=build/proto-check $(PROTOS)
	@for v in v1 v2; do \
		diff -r -x __init__.py -x __pycache__ build/proto-check/blindmatch/$$v blindmatch/$$v \
		|| { echo "proto-check: blindmatch/$$v is out of date; run 'make proto' and commit" >&2; exit 1; }; \
	done; echo "proto-check: generated code matches proto/"

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache .hypothesis .benchmarks
