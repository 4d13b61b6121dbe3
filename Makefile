# qbench: two commands on a fresh machine —
#   make run    set up .venv (one pip command, pinned) and run the main job offline
#   make test   set up .venv and run the test suite offline on the CPU
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.qbench-installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
# the main job: one model, full precision vs naive W8A8 vs naive W4A8, then the comparison.
# MODEL (default: qbench's default model) and OUT_DIR go to all four commands; RUN_ARGS (e.g.
# RUN_ARGS="--prompts toy:8") to the three runs only, since `qbench compare` takes no run flags.
# MODEL and OUT_DIR are read from the make command line only, never from the environment.
MODEL   =
OUT_DIR = reports
RUN_ARGS ?=
JOB_ARGS = $(if $(MODEL),--model $(MODEL)) --out-dir $(OUT_DIR)

.PHONY: setup run test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c constraints.txt -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(OFFLINE) $(BIN)/qbench run $(JOB_ARGS) --method fp $(RUN_ARGS)
	$(OFFLINE) $(BIN)/qbench run $(JOB_ARGS) --method naive --bits W8A8 $(RUN_ARGS)
	$(OFFLINE) $(BIN)/qbench run $(JOB_ARGS) --method naive --bits W4A8 $(RUN_ARGS)
	$(OFFLINE) $(BIN)/qbench compare $(JOB_ARGS)

test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q -m bench tests/bench --benchmark-enable
	$(OFFLINE) $(BIN)/qbench bench-kernels

clean:
	rm -rf $(VENV) reports/images reports/cache reports/qbench.sqlite*
