# Set-up and everyday commands. `make train` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Offline by default: the quickstart and the tests build every model from its config.
export HF_HUB_OFFLINE ?= 1

.PHONY: setup train test test-slow test-long benchmark clean

setup: $(VENV)/.installed

# torch first, pinned by constraints.txt, so that no later requirement can replace it.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

train: setup
	$(PY) -m cvexp.train $(ARGS)

test: setup
	$(PY) -m pytest -m "not slow and not long" $(ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(ARGS)

# The longest drills (learning runs per task, kill -9 and resume, the serving load test, the notebooks, the
# exports of more families): run before a release, not in CI.
test-long: setup
	$(PY) -m pytest -m long $(ARGS)

benchmark: setup
	$(PY) benchmarks/training_throughput.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
