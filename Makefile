# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint reproduce report clean bench bench-growth results-docs budget evidence evidence-baseline \
	evidence-1a evidence-1b evidence-2 evidence-ladder evidence-budget int8-paths int8-diagnosis ladder-docs render-docs \
	fresh-clone-timing

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev,deploy]"
	touch $(STAMP)

SEEDS ?= 1
demo: $(STAMP)
	$(PY) -m studies.demo --seeds $(SEEDS)

# The set-up times the README states: a fresh clone of HEAD beside this one, `bash .ci/run` then `make demo`
# timed there (about 15 minutes on 2 cores), kept in docs/results/fresh-clone-timing.json; then the docs.
fresh-clone-timing: $(STAMP)
	$(PY) -m studies.fresh_clone
	$(MAKE) render-docs

# Two pytest-xdist workers; the launches that race each other (a killed fit, two at once) share one of them.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup

lint: $(STAMP)
	$(VENV)/bin/ruff check lightning_prune tests benchmarks studies

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
	$(PY) -m studies.budget --seeds $(SEEDS)
	$(CLI) report --logs logs --out REPORT.md

# The result tables of docs/results.md, docs/deploy.md and docs/discussion.md, regenerated from the
# latest runs: their results.json files are kept in docs/results (small; checkpoints stay out), and a
# test checks these files against them. The runs: `make demo SEEDS=3`, `make budget SEEDS=3` (digits) and
# `make evidence` (the CIFAR-10 subset); figures go to docs/figures.
results-docs: $(STAMP)
	$(CLI) report --logs logs --out REPORT.md --snapshot docs/results
	cp logs/evidence/timing.json docs/results/evidence-timing.json 2>/dev/null || true
	$(MAKE) ladder-docs render-docs

# Only the rendering of the docs from what docs/results and benchmarks/results keep (no run needed).
render-docs: $(STAMP)
	mkdir -p logs/docs-report
	$(CLI) report --logs docs/results --out logs/docs-report/REPORT.md --render-docs docs

# The evidence on the real CIFAR-10 subset (../shared/data/cifar10-subset): the plateau baseline, every method
# beside its controls, the compression ladder and the budget grid, SEEDS seeds (3; the headline comparisons 5),
# two runs at a time on one thread each; it resumes where it stopped. docs/results.md states its wall time.
# One group alone: make evidence-baseline | evidence-1a | evidence-2 | evidence-1b | evidence-ladder | evidence-budget
EVIDENCE_SEEDS = $(if $(filter command line,$(origin SEEDS)),$(SEEDS),3)
EVIDENCE = $(PY) -m studies.evidence --seeds $(EVIDENCE_SEEDS) --headline-seeds $(shell echo $$(( $(EVIDENCE_SEEDS) > 5 ? $(EVIDENCE_SEEDS) : 5 )))
evidence: $(STAMP)
	$(EVIDENCE)
evidence-baseline: $(STAMP)
	$(EVIDENCE) --groups baseline dense
evidence-1a evidence-1b evidence-2 evidence-ladder evidence-budget: $(STAMP)
	$(EVIDENCE) --groups $(subst evidence-,,$@)

# Which PyTorch int8 path (docs/deploy.md): eager torch.ao against torchao's PT2E, with ONNX Runtime beside them.
int8-paths: $(STAMP)
	$(VENV)/bin/pip install --quiet torchao
	$(PY) -m benchmarks.int8_paths

# The ladder's exports (make evidence-ladder) kept for the docs in docs/results/ladder (handoff.json only: these runs
# start from their own baselines, so their results.json stay out of the other tables); make results-docs then
# renders the ladder from them.
ladder-docs: $(STAMP)
	$(PY) -m studies.ladder docs/results/ladder --seeds $(EVIDENCE_SEEDS)

# Where int8 loses accuracy on the ladder's runs (after make evidence-ladder), and what equalization, the
# calibration methods and QAT buy: benchmarks/results/int8-diagnosis-cpu.{json,md}, shown in docs/deploy.md.
int8-diagnosis: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m benchmarks.int8_diagnosis --evidence-seeds $(EVIDENCE_SEEDS) --jobs 2

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
