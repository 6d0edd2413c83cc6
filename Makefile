# Quick start: `make demo` and `make test` on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned on these machines to the CPU build on disk; GPU users install their own torch first.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv demo test test-all bench clean

$(BIN)/ctdip: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	touch $(BIN)/ctdip

venv: $(BIN)/ctdip

demo: venv
	bash examples/demo.sh

test: venv
	$(BIN)/python -m pytest -q

test-all: venv
	$(BIN)/python -m pytest -q -m ""

clean:
	rm -rf $(VENV) demo-output .pytest_cache
