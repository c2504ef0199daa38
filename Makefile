# DeepfakeMAE — the two newcomer commands are `make demo` and `make test`.
# Paper runs: `make pretrain DATA_ROOT=/data/FaceForensics++`, `make train-stage2 DATA_ROOT=...`,
# `make caches ...` then `make eval` / `make table1` ... `make table6` (see README).
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
CHROMIUM := $(VENV)/.chromium-checked
DFM     := $(PY) -m deepfakemae.cli
RUNS    ?= runs
CACHE_DIR ?= data/cache
DEMO_DIR  ?= data/demo
SENSITIVITY_DIR ?= data/demo-sensitivity
WORKERS ?= 4
BRANCH  ?= both
SEED    ?= 0
ARGS    ?=
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_SILENT ?= true
# bf16 autocast on a GPU, fp32 on a CPU (read by the experiment configs)
export PRECISION ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo bf16-mixed || echo 32-true)
export CACHE_DIR
export DEMO_CACHE := $(abspath $(DEMO_DIR))/cache

# Without DATA_ROOT the training targets run on the embedded demo set (tiny presets);
# with DATA_ROOT=<FaceForensics++ root> they run the paper configs (ViT-B/16 at 224 px: our reading, see docs/DESIGN.md).
ifeq ($(strip $(DATA_ROOT)),)
  RUN_DIR_  := $(RUNS)/demo/main
  DATA_DEP  := demo-cache
  overlay    = -c experiments/demo/$(1).yaml
else
  RUN_DIR_  := $(RUNS)
  DATA_DEP  := ffpp-cache
  overlay    =
endif
stage = RUN_DIR=$(RUN_DIR_) $(DFM) $(2) -c experiments/$(1).yaml $(call overlay,$(1)) $(ARGS)

TABLES := table1 table2 table3 table4 table5 table6
.PHONY: setup test lint demo demo-cv demo-cv-pseudo demo-sensitivity demo-sensitivity-cache demo-cache ffpp-cache caches pretrain train-stage2 eval bench $(TABLES)

## setup: create .venv and install the project with its dev extras (quick when nothing changed)
setup: $(STAMP) $(CHROMIUM)

# the headless browser of tests/test_score_report.py: installed once with apt-get when missing
# and this is root on a Debian-like system (elsewhere that test is skipped, saying why)
$(CHROMIUM): | $(STAMP)
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium with apt-get (for the report's browser test)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	    >/dev/null 2>&1 || echo "note: apt-get could not install chromium; tests/test_score_report.py will skip its browser checks"; \
	else echo "note: no chromium (install it, e.g. apt-get install chromium, for the report's browser test)"; fi
	@touch $@

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,fan]'
	@# face-alignment pins the GUI opencv-python, which would shadow the headless build, and
	@# facenet-pytorch (MTCNN, weights in its wheel) pins torch<2.3 and numpy<2, which the code
	@# does not need: both without their dependencies.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps 'face-alignment>=1.4,<1.6' 'facenet-pytorch==2.6.0'
	@touch $(STAMP)

## test: set up, then run the whole test suite
test: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest -q

## lint: ruff over the code
lint: setup
	$(PY) -m ruff check deepfakemae data_modules tests bench

## demo: the whole method on the embedded demo set (data, faces, stage 1, stage 2, evaluation)
demo: setup
	$(DFM) demo --data-dir $(DEMO_DIR) --run-root $(RUNS)

## demo-cv: 5-fold identity-disjoint cross-validation of the demo (pooled AUCs with 95% CIs)
demo-cv: setup
	$(DFM) demo --folds 5 --data-dir $(DEMO_DIR) --run-root $(RUNS)

## demo-cv-pseudo: the same cross-validation, stage 2 on self-blended pseudo-fakes only (no demo method seen in training)
demo-cv-pseudo: setup
	$(DFM) demo --folds 5 --fake-source pseudo --data-dir $(DEMO_DIR) --run-root $(RUNS)

## demo-sensitivity: 5-fold CV, stage 2 on every demo method at artifact strength 3, tested at strengths 0-3: AUC against strength per method (SEED=N: another training run of every stage, runs/demo-sensitivity-seedN; SEED="0 1": each fold's two seeds as one ensemble, runs/demo-sensitivity-seed0+1)
demo-sensitivity: setup
	$(DFM) demo --folds 5 --sensitivity --data-dir $(SENSITIVITY_DIR) --run-root $(RUNS) --seed $(SEED)

## demo-sensitivity-cache: only the demo set at strengths 0-3 and its faces (e.g. on a CPU before bench/gpu_check.sh)
demo-sensitivity-cache: setup
	$(DFM) demo --folds 5 --sensitivity --data-dir $(SENSITIVITY_DIR) --prepare-only

## demo-cache: build the demo videos and cache their faces (reused when present)
demo-cache: setup
	$(DFM) demo-data --output $(DEMO_DIR)/raw
	$(DFM) preprocess --dataset demo --root $(DEMO_DIR)/raw --output $(DEMO_DIR)/cache --size 112 --workers 2

## ffpp-cache: faces of FaceForensics++ c23 under DATA_ROOT (resumes where it stopped)
ffpp-cache: setup
	$(DFM) preprocess --dataset ffpp --root $(DATA_ROOT) --compression c23 --output $(CACHE_DIR)/ffpp_c23 --workers $(WORKERS)

## caches: test-set caches, each for the roots given (CELEBDF_ROOT, WILDDEEPFAKE_ROOT, DFDC_ROOT)
caches: setup $(if $(strip $(DATA_ROOT)),ffpp-cache)
	$(if $(CELEBDF_ROOT),$(DFM) preprocess --dataset celebdf --root $(CELEBDF_ROOT) --split test --output $(CACHE_DIR)/celebdf --workers $(WORKERS))
	$(if $(WILDDEEPFAKE_ROOT),$(DFM) preprocess --dataset wilddeepfake --root $(WILDDEEPFAKE_ROOT) --split test --output $(CACHE_DIR)/wilddeepfake --workers $(WORKERS))
	$(if $(DFDC_ROOT),$(DFM) preprocess --dataset dfdc --root $(DFDC_ROOT) --split test --output $(CACHE_DIR)/dfdc --workers $(WORKERS))

## pretrain: stage 1 (demo set by default; DATA_ROOT=<FF++ root> for the paper configs)
pretrain: $(DATA_DEP)
	$(call stage,pretrain,fit)

## train-stage2: both stage-2 branches (BRANCH=finetune or BRANCH=mapping for one)
train-stage2: $(DATA_DEP)
	$(if $(filter both finetune,$(BRANCH)),$(call stage,finetune,fit))
	$(if $(filter both mapping,$(BRANCH)),$(call stage,mapping,fit))

## eval: the fused detector on the configured test sets
eval: $(DATA_DEP)
	$(call stage,detector,test)

## table1 … table6: a paper table end to end (needs the caches), then its report
# demo-mode tables live under $(RUNS)/demo so they can never pass for the real runs
TABLE_ROOT = $(if $(strip $(DATA_ROOT)),$(RUNS),$(RUNS)/demo)
$(TABLES): table%: setup
	$(DFM) run experiments/tables/table$*.yaml --run-root $(TABLE_ROOT) $(if $(strip $(DATA_ROOT)),,--demo)
	$(DFM) report $(TABLE_ROOT)/table$*

## bench: speed figures (face pipeline, stage 1, stage 2, training loader with pseudo-fakes)
bench: setup demo-cache
	$(PY) bench/preprocess.py
	$(PY) bench/hard_faces.py
	$(PY) bench/pretrain.py
	$(PY) bench/stage2.py
	$(PY) bench/loader.py --cache $(DEMO_DIR)/cache
