# Set-up and everyday commands. `make train` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Offline by default: the quickstart and the tests build every model from its config.
export HF_HUB_OFFLINE ?= 1

.PHONY: setup setup-spark train test test-slow test-spark test-long benchmark clean

setup: $(VENV)/.installed

# torch first, pinned by constraints.txt, so that no later requirement can replace it.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

# pyspark (the spark extra) for ray=spark outside Databricks and for make test-spark.
setup-spark: $(VENV)/.installed-spark

$(VENV)/.installed-spark: $(VENV)/.installed
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,spark]"
	touch $@

train: setup
	$(PY) -m cvexp.train $(ARGS)

test: setup
	$(PY) -m pytest -m "not slow and not long and not spark" $(ARGS)

test-slow: setup
	$(PY) -m pytest -m "slow and not spark" $(ARGS)

# trainer=ray_on_spark and engine=ray on Ray on a Spark standalone master and worker started on 127.0.0.1 (Java 17).
test-spark: setup-spark
	$(PY) -m pytest -m spark $(ARGS)

# The longest drills (learning runs per task, kill -9 and resume, the serving load test, the notebooks, the
# exports of more families): run before a release, not in CI.
test-long: setup
	$(PY) -m pytest -m long $(ARGS)

benchmark: setup
	$(PY) benchmarks/training_throughput.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
