# The two commands of the README: `make demo` and `make test`.
# Each creates .venv with Python 3.11 if missing and installs what it needs once (the stamp file).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo test install lint bench clean vllm-check

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch torchvision
	$(PY) -m pip install --quiet -c constraints.txt -e '.[video,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf demo_out demo_out_ocr
	$(PY) -m jobs.run jobs/recipes/demo.yaml -o demo_out
	$(PY) -m jobs.run jobs/recipes/ocr.yaml -o demo_out_ocr

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) tests/bench/bench_clean.py
	$(PY) tests/bench/bench_pack.py

clean:
	rm -rf demo_out demo_out_ocr

# Not part of `make test`: a separate environment with vLLM 0.33 (which pins its own torch), checked against
# every vLLM name and argument model/backends/vllm_llm.py uses. Needs Linux x86_64; vLLM's CUDA build.
VLLM_VENV := .venv-vllm
vllm-check:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet 'vllm==0.33.0' pillow
	PYTHONPATH=. $(VLLM_VENV)/bin/python tests/gpu/vllm_check.py
