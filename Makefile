# metarl-jax: fresh clone -> `make run` (main job) or `make test` (test suite).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev

.PHONY: run test test-all install install-dev bench mutation gpu-wheels clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e .
	touch $@

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(STAMP)

## The main job: a short second-order MAML run on 2D navigation, with plots and an adaptation curve.
run: $(VENV)/.installed
	$(PY) -m experiments.maml_navigation

## The default test suite (about 10 minutes on 2 CPU cores at most).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

## Every test, the `slow` ones included (their property is also covered by a faster default test).
test-all: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "slow or not slow" tests

## Throughput benchmark (prints JSON lines).
bench: $(VENV)/.installed
	$(PY) -m experiments.benchmark_speed

## Mutation testing (cosmic-ray) of the core modules, module by module, each with the tests that cover it
## (table in benchmarks/mutation.py): a random sample of SAMPLE mutants per module drawn with SEED
## (SAMPLE=all runs every mutant), JOBS copies side by side. One module:
##   make mutation MODULE=metarl_jax/losses.py SAMPLE=40
## Prints a JSON line per module; survivors go to .mutation/<module>.md. Not part of `make test`.
MODULE ?=
SAMPLE ?= 20
SEED   ?= 0
JOBS   ?= 2
mutation: $(STAMP)
	$(PY) -m benchmarks.mutation $(if $(MODULE),--module $(MODULE)) \
		$(if $(filter all,$(SAMPLE)),,--sample $(SAMPLE)) --seed $(SEED) --jobs $(JOBS)

## Wheels the GPU image lacks (gymnax, gymnasium), for `bash benchmarks/gpu_run.sh` there (Python 3.12).
gpu-wheels: $(VENV)/.installed
	mkdir -p .git/info && (grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude)
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
		"gymnax==$$($(PY) -c 'import importlib.metadata as m; print(m.version("gymnax"))')" \
		"gymnasium==$$($(PY) -c 'import importlib.metadata as m; print(m.version("gymnasium"))')" farama-notifications

clean:
	rm -rf runs .pytest_cache
