# Every target makes its own virtual environment first, so a fresh machine
# with only Python, gcc and make needs nothing else.
PY        ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
PROMPT    ?= And God said
TOKENS    ?= 32
BACKEND   ?= golden
BOARD     ?= all
PYTEST_ARGS ?=

.PHONY: all venv generate serve test sim synth-units synth bitstream bench bench-accel clean

all: test

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[sim,synth,dev,serve]"
	touch $(STAMP)

venv: $(STAMP)

## The main job: text generation with the bundled model.
generate: $(STAMP)
	$(BIN)/mmfree generate --prompt "$(PROMPT)" --max-new-tokens $(TOKENS) --backend $(BACKEND)

## An OpenAI-compatible server of the bundled model on http://127.0.0.1:8000 (docs/serve.md; Ctrl-C stops it).
serve: $(STAMP)
	$(BIN)/mmfree serve --backend $(BACKEND)

## The whole test suite (what CI runs).
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

## RTL unit benches in Verilator.
sim: $(STAMP)
	$(BIN)/python -m pytest -m sim $(PYTEST_ARGS)

## Synthesis estimates of every RTL unit (yosys synth_xilinx, xc7 and xcup): build/synth/units.json, docs/units.md.
synth-units: $(STAMP)
	$(BIN)/mmfree synth-units --all --json build/synth/units.json --doc docs/units.md

## Synthesis estimate of the whole accelerator per board (BOARD=pynq-z2|kv260|all): bitstreams/<board>/utilization.{json,md};
## fails when a board is over its budget (LUT > 70 %, or anything beyond the part).
synth: $(STAMP)
	$(BIN)/mmfree synth --board $(BOARD)

## Vivado project per board (build/vivado/<board>/); runs Vivado when it is on PATH, else says how (docs/board.md).
bitstream: $(STAMP)
	$(BIN)/mmfree bitstream --board $(BOARD)

## Tokens/s of the golden models on the full 370M shape.
bench: $(STAMP)
	$(BIN)/mmfree bench-golden

## Accelerator RTL cycles per token vs the DDR roofline (PYNQ-Z2, KV260): bench/results/accelerator.{json,png}.
bench-accel: $(STAMP)
	$(BIN)/mmfree bench-accel

clean:
	rm -rf $(VENV) sim_build build *.egg-info
