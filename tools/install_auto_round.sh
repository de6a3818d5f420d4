#!/usr/bin/env bash
# Install Intel's auto-round once, as the GGUF-quantizer peer of `sparsa bench gguf`, in its own
# virtual environment: ${SPARSA_CACHE:-~/.cache/sparsa}/peers/auto-round-$VERSION. It pins its own
# transformers and pulls datasets, which sparsa's environment must not carry; sparsa runs it as a
# separate interpreter (src/sparsa/bench/autoround.py). The CPU torch wheel is installed first so
# nothing pulls a CUDA build. The environment is moved into place only when the install succeeded;
# a second run finds it and does nothing.
#
# usage: tools/install_auto_round.sh PYTHON      (PYTHON: a python3.11 to create the environment with)
set -euo pipefail

VERSION=0.16.1
PYTHON=${1:?usage: tools/install_auto_round.sh PYTHON}
CACHE=${SPARSA_CACHE:-$HOME/.cache/sparsa}
DEST="$CACHE/peers/auto-round-$VERSION"

if [ -f "$DEST/.sparsa-installed" ]; then
    echo "auto-round $VERSION: already installed in $DEST"
    exit 0
fi
mkdir -p "$CACHE/peers"
rm -rf "$DEST.tmp"
trap 'rm -rf "$DEST.tmp"' EXIT
echo "auto-round $VERSION: installing into $DEST"
"$PYTHON" -m venv "$DEST.tmp"
"$DEST.tmp/bin/python" -m pip install --quiet torch==2.13.0
"$DEST.tmp/bin/python" -m pip install --quiet "auto-round==$VERSION" transformers==5.23.0 accelerate==1.15.0 \
    gguf==0.19.0 sentencepiece==0.2.3
"$DEST.tmp/bin/python" -c "import auto_round, gguf"
touch "$DEST.tmp/.sparsa-installed"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "auto-round $VERSION: installed in $DEST"
