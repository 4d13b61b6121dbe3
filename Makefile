# qbench: two commands on a fresh machine —
#   make run    set up .venv (one pip command, pinned) and run the main job offline
#   make test   set up .venv and run the test suite offline on the CPU (what CI runs, .ci/run)
# and, outside CI:
#   make bench          speed + memory regression: pytest-benchmark vs tests/bench/baseline.json
#   make regress        `qbench regress`: quality cells and benchmarks, a table of what moved
#   make report-check   a report opened in headless Chromium at 1280 and 800 px: images load, nothing overflows, labels apart
#   make gpu-check      on a CUDA machine: gpu tests, every method on the tiny twins, GPU kernel benchmark
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.qbench-installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
# the main job: one model, full precision vs naive W8A8 vs naive W4A8, then the comparison (also
# as $(OUT_DIR)/compare.csv), the per-image scores ($(OUT_DIR)/per_image.jsonl) and the report.
# MODEL (default: qbench's default model) and OUT_DIR go to every command; RUN_ARGS (e.g.
# RUN_ARGS="--prompts toy:8") to the three runs only, since `qbench compare` takes no run flags.
# MODEL and OUT_DIR are read from the make command line only, never from the environment.
MODEL   =
OUT_DIR = reports
RUN_ARGS ?=
JOB_ARGS = $(if $(MODEL),--model $(MODEL)) --out-dir $(OUT_DIR)

.PHONY: setup run test bench bench-baseline bench-kernels gpu-check regress report-check clean

setup: $(STAMP)

# one pip command: qbench, its tests' extra, the serve extra (the web app's tests) and the optional pyiqa extra (PIQE; the CLIP-IQA
# cross-check against pyiqa). "setuptools<81" only for this development venv: pyiqa's `clip`
# imports pkg_resources, which setuptools 81 dropped (torch asks for setuptools>=77, so a fresh
# venv would otherwise get the newest); qbench itself pins no setuptools.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c constraints.txt -e ".[test,pyiqa,serve,diffusers-backends]" "setuptools<81"
	touch $(STAMP)

run: $(STAMP)
	$(OFFLINE) $(BIN)/qbench run $(JOB_ARGS) --method fp $(RUN_ARGS)
	$(OFFLINE) $(BIN)/qbench run $(JOB_ARGS) --method naive --bits W8A8 $(RUN_ARGS)
	$(OFFLINE) $(BIN)/qbench run $(JOB_ARGS) --method naive --bits W4A8 $(RUN_ARGS)
	$(OFFLINE) $(BIN)/qbench compare $(JOB_ARGS) --csv $(OUT_DIR)/compare.csv
	$(OFFLINE) $(BIN)/qbench export-results $(JOB_ARGS) -o $(OUT_DIR)/per_image.jsonl
	$(OFFLINE) $(BIN)/qbench report $(JOB_ARGS)

test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q

# fails on a median slower than tests/bench/noise.json's latency_fail_pct or more peak memory than
# its memory_fail_mib (both measured on the machine that recorded the baseline: `make bench-baseline`)
bench: $(STAMP)
	$(OFFLINE) $(BIN)/qbench regress --speed

bench-baseline: $(STAMP)
	$(OFFLINE) $(BIN)/python reports/scripts/bench_baseline.py

bench-kernels: $(STAMP)
	$(OFFLINE) $(BIN)/qbench bench-kernels

# on a machine with one CUDA GPU (< 8 min): pytest -m gpu, every method x tiny twin x mode on
# CUDA, the GPU kernel benchmark (bf16, _int_mm, torchao, Triton W4A8) -> $(OUT_DIR)/gpu_check.json;
# exits 2 with one line where there is no CUDA device
gpu-check: $(STAMP)
	$(OFFLINE) $(BIN)/python tools/gpu_check.py --out $(OUT_DIR)/gpu_check.json

regress: $(STAMP)
	$(OFFLINE) $(BIN)/qbench regress

# CHECK_DIR: where the runs, the report and the screenshot go (default: a new temporary folder)
CHECK_DIR ?=
report-check: $(STAMP)
	@command -v chromium >/dev/null || { echo "report-check: Chromium is not installed: installing the Debian package (apt-get install -y chromium)"; \
	  apt-get install -y chromium >/dev/null; } || { echo "report-check: FAILED: no Chromium (apt-get install -y chromium)"; exit 2; }
	d=$(or $(CHECK_DIR),$$(mktemp -d)); $(OFFLINE) $(BIN)/python reports/scripts/browser_check.py --make-runs "$$d" --screenshot "$$d/report-screenshot.png" \
	  && echo "report-check: screenshots $$d/report-screenshot-1280.png $$d/report-screenshot-800.png"

clean:
	rm -rf $(VENV) reports/images reports/cache reports/qbench.sqlite*
