# fruitflow - the two commands a user needs are `make demo` and `make test`; both set up what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?=
PYTEST_ARGS ?=

.PHONY: setup test demo quality stack-up stack-status stack-down airflow-ui zip lock clean bench

$(STAMP): requirements.in constraints.txt scripts/setup.sh scripts/check_setup.py
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with the pinned set (fast when nothing changed)

test: $(STAMP)  ## the whole test suite; starts and stops the local stack itself
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)  ## stack up, upload images, run the DAG end to end, stack down; the summary is the last stdout line
	$(PY) -m scripts.demo $(if $(DATA),--data "$(DATA)")

TARGET_VARIANCE ?=
quality: $(STAMP)  ## clustering quality per backbone on both shared sets (VARIANTS=1: the table of choices; TARGET_VARIANCE=0.8: k by variance)
	$(PY) -m scripts.quality $(if $(VARIANTS),--variants) $(if $(TARGET_VARIANCE),--target-variance $(TARGET_VARIANCE))

stack-up: $(STAMP)
	$(PY) -m scripts.stack up

stack-status: $(STAMP)
	$(PY) -m scripts.stack status

stack-down: $(STAMP)
	$(PY) -m scripts.stack down

airflow-ui: $(STAMP)  ## airflow standalone on top of the local stack
	$(PY) -m scripts.airflow_ui

zip: $(STAMP)  ## the shared library for --py-files
	$(PY) -m scripts.package

lock:  ## re-resolve requirements.in into constraints.txt (needs a fresh venv)
	rm -rf .lockvenv && python3.11 -m venv .lockvenv && .lockvenv/bin/pip install -q -r requirements.in
	.lockvenv/bin/pip install -q --no-deps --force-reinstall "$$(grep -E '^pyspark==' requirements.in)"
	{ sed -n '1,3p' constraints.txt; .lockvenv/bin/pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .lockvenv

clean:
	-$(PY) -m scripts.stack down
	rm -rf .state dist out

N ?=
E2E ?=
SCALE ?=
PRECISION ?=
bench: $(STAMP)  ## featurization benchmark (E2E=1: the whole DAG timed; SCALE=1: N vs 4N); the last stdout line is JSON
ifneq ($(E2E)$(SCALE),)
	$(PY) bench/e2e_bench.py $(if $(DATA),--data "$(DATA)") $(if $(SCALE),--scale) $(if $(PRECISION),--precision $(PRECISION))
else
	$(PY) bench/featurize_bench.py $(if $(DATA),--data "$(DATA)") $(if $(N),--n $(N))
endif
