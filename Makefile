# Two commands set up everything on a fresh machine: `make run` and `make test`.
# Both depend on `install`, which builds .venv once and is a no-op afterwards.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
SEED    ?=
PORT    ?= 8080
# pytest-xdist workers for make test / make sim: one per core ("auto"); JOBS=0 runs serially.
# Test files stay whole on one worker (their module fixtures and Verilator builds are shared).
JOBS    ?= auto
XDIST   := $(if $(filter 0,$(JOBS)),,-n $(JOBS) --dist loadfile)
BOARD   ?= kv260
export PYTHONHASHSEED := 0
# Multi-threaded BLAS on tiny matrices is slower here, and 8x slower on a loaded 2-core box.
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: install run serve loadtest test test-fast sim synth dse bitstream board-image bench report notebooks train eval clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# Stream tokens from the shipped default model.
run: install
	$(VPY) -m host $(ARGS)

# The token server on the simulated accelerator: OpenAI-style API on http://127.0.0.1:$(PORT)
# (stream from it with: python -m host --remote http://127.0.0.1:$(PORT) -p "ROMEO:").
serve: install
	$(VPY) -m host serve --backend sim --port $(PORT) $(ARGS)

# 8 concurrent streaming clients for 60 s against a loopback server on the golden backend.
loadtest: install
	$(VPY) -m host.loadtest $(ARGS)

# Everything a change can break: lint and import layers, golden, RTL (cocotb on
# Verilator), host, notebooks; test files in parallel on every core (JOBS=0: serially).
test: install lint
	$(VPY) -m pytest -q $(XDIST) $(if $(SEED),--seed=$(SEED))

# ruff (lint + format check) and the import-linter layers (golden <- hw <- host <- sim).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# The RTL regression alone, with a per-block summary (benches in parallel, as make test).
sim: install
	$(VPY) -m sim.regress $(XDIST) $(if $(SEED),--seed=$(SEED))

synth: install
	$(VPY) -m hw.synth

# Design-space exploration on Ray (local; ARGS="--address ray://HOST:10001" for a cluster):
# every point of the sweep built, simulated on full-size layers and synthesized; the table,
# the Pareto frontier and its plot (build/dse/). SWEEP=file.toml picks another sweep.
SWEEP   ?= sweeps/default.toml
dse: install
	nice -n 5 $(VPY) -m host.dse --sweep $(SWEEP) $(ARGS)

# The Vivado project of the board (AXI top's Verilog, block design, constraints, build
# script) in build/$(BOARD)/; runs Vivado when it is on PATH (else says so, exit 0).
bitstream: install
	$(VPY) -m hw.vivado --board $(BOARD) $(ARGS)

# What goes onto the board: build/$(BOARD)/board-image/ (+ .tar.gz): the bitstream when
# built, the model and its compiled image, setup/run/check scripts for Kria-PYNQ.
board-image: install
	$(VPY) -m host.board_image build --board $(BOARD) $(ARGS)

# Golden TLMM vs numpy, TLMM RTL cycles vs ideal, model tokens/s and cycles per backend,
# modeled BitNet-0.73B / 2B-4T decode (INT8 and INT4 KV cache) and time to first token
# (P = 1 and 4 tokens per TLMM weight beat) from simulated full-size layers, and its figure
# (build/bench/perf_model.png).
bench: install
	$(VPY) -m golden.bench
	$(VPY) -m sim.perf
	$(VPY) -m host.bench
	$(VPY) -m host.sparse_bench
	$(VPY) -m host.perf_model --design-point kv260 kv260-kv4 --prefill-design-point kv260 kv260-p2 kv260-p4 --jobs 2

# Error bounds of every golden block: stated vs measured.
report: install
	$(VPY) -m golden.report

notebooks: install
	$(VPY) -m notebooks.run

# Retrain the shipped model (about an hour on 2 idle cores; resumable with ARGS=--resume).
train: install
	$(VPY) -m host.train --out models/default --state-dir runs/default_train --steps 1400 $(ARGS)

# Held-out loss / bits per char / perplexity of a checkpoint in both modes.
eval: install
	$(VPY) -m host.eval $(ARGS)

clean:
	rm -rf build sim_build .pytest_cache
