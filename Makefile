# DeepfakeMAE — the two newcomer commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: setup test lint

## setup: create .venv and install the project with its dev extras (quick when nothing changed)
setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@# face-alignment pins the GUI opencv-python, which would shadow the headless build: no deps.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps 'face-alignment>=1.4,<1.6'
	@touch $(STAMP)

## test: set up, then run the whole test suite
test: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest -q

## lint: ruff over the code
lint: setup
	$(PY) -m ruff check deepfakemae data_modules tests bench
