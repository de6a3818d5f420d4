#!/usr/bin/env bash
# Build llama.cpp's llama-bench, llama-quantize, llama-imatrix and llama-perplexity once, for the
# llama.cpp rows of `sparsa bench decode` and the GGUF quality comparison.
#
# The source is the llama.cpp tree vendored in the llama-cpp-python sdist (a package registry,
# the only network this project uses). Static binaries land in
# ${SPARSA_CACHE:-~/.cache/sparsa}/peers/llama.cpp-$VERSION/bin, moved into place only when the
# whole build succeeded, beside cpu-flags (the build is -march=native: a cache built on another
# CPU is rebuilt). A second run on the same CPU finds them and does nothing. About 9 to 15 minutes
# on 2 cores.
#
# usage: tools/build_llama_cpp.sh PIP      (PIP: the venv's pip, used only to download the sdist)
set -euo pipefail

VERSION=0.3.36
PIP=${1:?usage: tools/build_llama_cpp.sh PIP}
CACHE=${SPARSA_CACHE:-$HOME/.cache/sparsa}
DEST="$CACHE/peers/llama.cpp-$VERSION"
TOOLS=(llama-bench llama-quantize llama-imatrix llama-perplexity)
FLAGS=$(grep -m1 '^flags' /proc/cpuinfo || true)

built=1
for tool in "${TOOLS[@]}"; do [ -x "$DEST/bin/$tool" ] || built=0; done
if [ "$built" = 1 ] && [ "$(cat "$DEST/cpu-flags" 2>/dev/null)" = "$FLAGS" ]; then
    echo "llama.cpp $VERSION: already built for this CPU in $DEST"
    exit 0
fi
for tool in cmake cc c++; do
    command -v "$tool" >/dev/null || { echo "sparsa: error: building llama.cpp needs $tool, which is not installed" >&2; exit 2; }
done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "llama.cpp $VERSION: downloading the llama-cpp-python sdist"
"$PIP" download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK"
tar -xzf "$WORK"/llama_cpp_python-"$VERSION".tar.gz -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
echo "llama.cpp $VERSION: building ${TOOLS[*]} (about 9 minutes on 2 cores)"
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF \
      > "$WORK/cmake.log" 2>&1 || { tail -20 "$WORK/cmake.log" >&2; exit 1; }
cmake --build "$WORK/build" -j"$(nproc)" --target "${TOOLS[@]}" > "$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log" >&2; exit 1; }

mkdir -p "$WORK/out/bin"
for tool in "${TOOLS[@]}"; do cp "$WORK/build/bin/$tool" "$WORK/out/bin/"; done
printf '%s\n' "$FLAGS" > "$WORK/out/cpu-flags"
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.tmp" "$DEST.old" && mv "$WORK/out" "$DEST.tmp"
[ -e "$DEST" ] && mv "$DEST" "$DEST.old"
mv "$DEST.tmp" "$DEST" && rm -rf "$DEST.old"
echo "llama.cpp $VERSION: built in $DEST"
