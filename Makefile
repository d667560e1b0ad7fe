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

.PHONY: demo test install lint bench clean vllm-check conformance

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch torchvision
	$(PY) -m pip install --quiet -c constraints.txt -e '.[video,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf demo_out demo_out_ocr
	$(PY) -m jobs.run jobs/recipes/demo.yaml -o demo_out --executor ray
	$(PY) -m jobs.run jobs/recipes/ocr.yaml -o demo_out_ocr

test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
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

# Not part of `make test` (.ci/run runs it after the tests): LLaMA-Factory 0.9.5 and ms-swift 4.6 installed together in their own
# environment on the pinned torch; small jobs on the shared dev data are exported, each export is loaded through
# the trainer's own dataset loading + template encoding + collator and compared with the shards (input_ids,
# labels, grids, M-RoPE positions); prints a table per trainer and kind. Needs network access to PyPI once.
TRAINERS_VENV := .venv-trainers
CONFORMANCE_OUT ?= conformance_out
$(TRAINERS_VENV)/.installed: constraints.txt
	test -x $(TRAINERS_VENV)/bin/python || $(PYTHON) -m venv $(TRAINERS_VENV)
	$(TRAINERS_VENV)/bin/pip install --quiet -c constraints.txt torch torchvision torchaudio \
	  'llamafactory==0.9.5' 'ms-swift>=4.6,<4.7' 'qwen-vl-utils==0.0.14'
	# ms-swift 4.6.0 imports datasets.features.Json (datasets >= 4.7) though it declares >= 4.0; LLaMA-Factory
	# 0.9.5 declares <= 4.0.0 and runs with 4.8 under DISABLE_VERSION_CHECK=1 (check_trainers.py sets it)
	$(TRAINERS_VENV)/bin/pip install --quiet -c constraints.txt 'datasets>=4.7,<4.8.5'
	touch $@

conformance: $(STAMP) $(TRAINERS_VENV)/.installed
	rm -rf $(CONFORMANCE_OUT)
	$(PY) tests/conformance/build_jobs.py $(CONFORMANCE_OUT)
	$(TRAINERS_VENV)/bin/python tests/conformance/check_trainers.py $(CONFORMANCE_OUT)
