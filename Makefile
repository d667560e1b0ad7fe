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

.PHONY: demo test install lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[video,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf demo_out
	$(PY) -m jobs.run jobs/recipes/demo.yaml -o demo_out

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) tests/bench/bench_clean.py
	$(PY) tests/bench/bench_pack.py

clean:
	rm -rf demo_out
