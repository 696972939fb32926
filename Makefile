# fruitflow - the two commands a user needs are `make demo` and `make test`; both set up what they need.
# `make help` lists every target.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
FRUITFLOW := $(VENV)/bin/fruitflow
STAMP := $(VENV)/.installed
DATA ?=
PYTEST_ARGS ?=

.PHONY: help setup test test-unit test-dags demo multihost-demo classify quality stack-up stack-status stack-down airflow-ui zip lock clean bench

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  make \1\t/' | expand -t 24

$(STAMP): constraints.txt constraints-dev.txt pyproject.toml scripts/setup.sh scripts/check_setup.py
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with the pinned set and the project (fast when nothing changed)

test: $(STAMP)  ## the whole suite (unit, DAG, integration on the local stack it starts and stops)
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)  # the stack's tests on one worker, the rest beside them (tests/conftest.py)

test-unit: $(STAMP)  ## the fast layer alone: no service, no JVM, no CNN built (under a minute)
	$(PY) -m pytest tests/unit -m "not slow" $(PYTEST_ARGS)

test-dags: $(STAMP)  ## DAG integrity, structure, Params and templates over DagBag
	$(PY) -m pytest tests/dags $(PYTEST_ARGS)

demo: $(STAMP)  ## stack up, upload DATA, run the DAG end to end, stack down; the summary is the last stdout line
	$(FRUITFLOW) demo $(if $(DATA),--data "$(DATA)")

multihost-demo: $(STAMP)  ## the same on a five-host cluster of network namespaces (root); prints `hosts` too
	$(FRUITFLOW) multihost-demo $(if $(DATA),--data "$(DATA)")

IMAGES ?=
classify: $(STAMP)  ## which fruit is in each photo of IMAGES (a file or folder), by the latest demo's models; no Spark
	@test -n "$(IMAGES)" || { echo "usage: make classify IMAGES=photo.jpg|folder" >&2; exit 2; }
	$(FRUITFLOW) classify "$(IMAGES)"

TARGET_VARIANCE ?=
INT8 ?=
BACKBONE ?=
quality: $(STAMP)  ## clustering quality per backbone on both shared sets (VARIANTS=1 TARGET_VARIANCE=0.8 INT8=1 BACKBONE=name)
	$(FRUITFLOW) quality $(if $(VARIANTS),--variants) $(if $(TARGET_VARIANCE),--target-variance $(TARGET_VARIANCE)) \
	  $(if $(INT8),--int8) $(if $(BACKBONE),--backbone $(BACKBONE))

stack-up: $(STAMP)  ## start the local stack (S3, Spark master and worker, Airflow's DB)
	$(FRUITFLOW) stack up

stack-status: $(STAMP)  ## exit 0 only when every service of the stack is healthy
	$(FRUITFLOW) stack status

stack-down: $(STAMP)  ## stop the local stack (its data stays under .state/)
	$(FRUITFLOW) stack down

airflow-ui: $(STAMP)  ## Airflow's UI (airflow standalone) on the local stack; DATA=folder uploads photos first
	$(FRUITFLOW) airflow-ui $(if $(DATA),--data "$(DATA)")

zip: $(STAMP)  ## the shared library for spark-submit --py-files (dist/fruitflow_jobs.zip)
	$(FRUITFLOW) zip

lock:  ## re-resolve pyproject.toml's extras into constraints.txt (what runs) and constraints-dev.txt (what tests add)
	rm -rf .lockvenv && python3.11 -m venv .lockvenv
	.lockvenv/bin/pip install -q ".[airflow,spark-node,resnet50]"
	{ sed -n '1,3p' constraints.txt; .lockvenv/bin/pip freeze --all --exclude-editable | grep -v '^fruitflow\|^pip=='; } > .lock.run
	.lockvenv/bin/pip install -q ".[dev]" -c .lock.run
	{ sed -n '1p' constraints-dev.txt; .lockvenv/bin/pip freeze --all --exclude-editable | grep -v '^fruitflow\|^pip==' \
	  | grep -vxFf .lock.run; } > constraints-dev.txt
	mv .lock.run constraints.txt && rm -rf .lockvenv

clean:  ## stop the stack and remove its state (the store's data included), dist/ and out/
	-$(FRUITFLOW) stack down
	rm -rf .state dist out

N ?=
E2E ?=
SCALE ?=
PRECISION ?=
bench: $(STAMP)  ## featurization benchmark (E2E=1: the whole DAG timed; SCALE=1: N, 4N, 10N, 30N); last line JSON
ifneq ($(E2E)$(SCALE),)
	$(FRUITFLOW) bench-e2e $(if $(DATA),--data "$(DATA)") $(if $(SCALE),--scale) $(if $(PRECISION),--precision $(PRECISION))
else
	$(FRUITFLOW) bench $(if $(DATA),--data "$(DATA)") $(if $(N),--n $(N))
endif
