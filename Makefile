# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint reproduce report clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m lightning_prune.demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check lightning_prune tests benchmarks

# Full-size runs (internet for CIFAR and the pretrained weights; a GPU is advisable), then the report.
DATASET ?= cifar10
CLI := $(VENV)/bin/lightning-prune
reproduce: $(STAMP)
	$(CLI) test --config configs/$(DATASET)/baseline.yaml
	$(CLI) fit --config configs/$(DATASET)/unstructured.yaml
	$(CLI) fit --config configs/$(DATASET)/grasp.yaml
	$(CLI) fit --config configs/$(DATASET)/snip.yaml
	$(CLI) fit --config configs/$(DATASET)/channel.yaml
	$(CLI) report --logs logs --out REPORT.md

clean:
	rm -rf logs/*/ checkpoints/*/ REPORT.md report_plots
