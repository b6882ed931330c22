# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint reproduce report clean bench bench-growth results-docs budget subset-1b

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev,deploy]"
	touch $(STAMP)

SEEDS ?= 1
demo: $(STAMP)
	$(PY) -m lightning_prune.demo --seeds $(SEEDS)

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

# The accuracy budget: each method at 70 / 80 / 90 % (after `make demo`, whose baseline 1a prunes),
# then the report's budget table (`lightning-prune report --max-drop POINTS`).
budget: $(STAMP)
	$(PY) -m lightning_prune.budget --seeds $(SEEDS)
	$(CLI) report --logs logs --out REPORT.md

# The result tables of docs/results.md, docs/deploy.md and docs/discussion.md, regenerated from the
# latest runs: their results.json files are kept in docs/results (small; checkpoints stay out), and a
# test checks these files against them. The runs: `make demo SEEDS=3`, `make budget SEEDS=3`, and the
# CIFAR-10-subset 1b comparison (`make subset-1b`).
results-docs: $(STAMP)
	$(CLI) report --logs logs --out REPORT.md --snapshot docs/results
	$(CLI) report --logs docs/results --out docs/REPORT.md --readme docs/results.md docs/deploy.md docs/discussion.md

# Task 1b on the real CIFAR-10 subset (../shared/data/cifar10-subset): the never-pruned run of the
# 20-epoch budget (fit, then test: its profile), then GraSP, SNIP and |GraSP|, for seeds 0..SEEDS-1.
subset-1b: $(STAMP)
	for seed in $$(seq 0 $$(($(SEEDS) - 1))); do \
		$(CLI) fit --config configs/cifar10-subset/dense.yaml --seed_everything=$$seed && \
		$(CLI) test --config configs/cifar10-subset/dense.yaml --ckpt_path run:cifar10subset_dense \
			--seed_everything=$$seed && \
		for exp in grasp snip grasp_abs; do \
			$(CLI) fit --config configs/cifar10-subset/$$exp.yaml --seed_everything=$$seed || exit 1; \
		done || exit 1; \
	done

clean:
	rm -rf logs/*/ checkpoints/*/ REPORT.md report_plots

# Costs of every algorithm on the full-width VGG16-BN (time, peak memory, work done), on the real
# CIFAR-10 subset when present (else digits): benchmarks/results/bench-$(ACCELERATOR).json and .md.
# bench-growth adds widths 0.25 and 0.5 to that file's width 1.0: power-law fits of time against
# MACs and benchmarks/results/growth-$(ACCELERATOR).png. ACCELERATOR=cuda runs both on a GPU.
ACCELERATOR ?= cpu
bench: $(STAMP)
	$(PY) -m benchmarks.bench --device $(ACCELERATOR)

bench-growth: $(STAMP)
	$(PY) -m benchmarks.bench --device $(ACCELERATOR) --widths 0.25 0.5 --growth \
		--merge benchmarks/results/bench-$(ACCELERATOR).json
