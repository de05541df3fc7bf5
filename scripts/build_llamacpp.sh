#!/usr/bin/env bash
# Build llama.cpp's CPU benchmark binaries (llama-bench, llama-simple) from a
# llama.cpp source tree that lives OUTSIDE this repository, for a side-by-side
# speed comparison with our engine. The source tree is an argument; nothing of
# llama.cpp is vendored, copied or fetched into this project.
#
#   scripts/build_llamacpp.sh LLAMA_CPP_SOURCE_DIR [BUILD_DIR]
#
# LLAMA_CPP_SOURCE_DIR: a llama.cpp checkout, e.g. the vendor/llama.cpp folder of
#   an unpacked llama-cpp-python sdist (pip download --no-deps --no-binary :all:
#   --no-build-isolation llama-cpp-python).
# BUILD_DIR: where to build (default: LLAMA_CPP_SOURCE_DIR/build-cpu-native).
#
# Configuration: Release, GGML_NATIVE=ON (tuned for the CPU this runs on, so build
# on the machine you benchmark on), CPU backend only (no CUDA/Metal/Vulkan/BLAS),
# no tests, no server/web UI, no OpenSSL, FetchContent disconnected (nothing is
# downloaded). Builds with Ninja when available, JOBS=2 parallel jobs by default.
# cmake and ninja come from PATH, or from $CMAKE / $NINJA, or from the throwaway
# venv in $LLAMA_TOOLS_VENV (default /work/peers/venv: pip install cmake ninja).
# Optional: LLAMA_BUILD_COMMIT / LLAMA_BUILD_NUMBER are passed through so that
# llama-bench reports them when the tree has no git metadata (sdist trees don't).
#
# FETCHCONTENT_FULLY_DISCONNECTED is a safety net: this configuration reaches no
# FetchContent on x86, so cmake reports it as an unused variable (harmless).
#
# Prints the llama.cpp commit (when the tree has git metadata) and the binary paths.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 LLAMA_CPP_SOURCE_DIR [BUILD_DIR]" >&2
    exit 2
fi

SRC=$(cd "$1" && pwd)
BUILD=${2:-$SRC/build-cpu-native}
JOBS=${JOBS:-2}
TOOLS_VENV=${LLAMA_TOOLS_VENV:-/work/peers/venv}

if [[ ! -f "$SRC/CMakeLists.txt" || ! -d "$SRC/ggml" || ! -d "$SRC/tools/llama-bench" ]]; then
    echo "error: $SRC does not look like a llama.cpp source tree (no CMakeLists.txt, ggml/ or tools/llama-bench/)" >&2
    exit 2
fi

find_tool() {  # $1 name, $2 override
    if [[ -n "$2" ]]; then echo "$2"; return; fi
    if command -v "$1" >/dev/null 2>&1; then command -v "$1"; return; fi
    if [[ -x "$TOOLS_VENV/bin/$1" ]]; then echo "$TOOLS_VENV/bin/$1"; return; fi
    echo ""
}
CMAKE_BIN=$(find_tool cmake "${CMAKE:-}")
NINJA_BIN=$(find_tool ninja "${NINJA:-}")
if [[ -z "$CMAKE_BIN" ]]; then
    echo "error: cmake not found; e.g. python3 -m venv $TOOLS_VENV && $TOOLS_VENV/bin/pip install cmake ninja" >&2
    exit 2
fi

GEN_ARGS=()
if [[ -n "$NINJA_BIN" ]]; then
    GEN_ARGS=(-G Ninja -DCMAKE_MAKE_PROGRAM="$NINJA_BIN")
fi

EXTRA_ARGS=()
[[ -n "${LLAMA_BUILD_COMMIT:-}" ]] && EXTRA_ARGS+=(-DLLAMA_BUILD_COMMIT="$LLAMA_BUILD_COMMIT")
[[ -n "${LLAMA_BUILD_NUMBER:-}" ]] && EXTRA_ARGS+=(-DLLAMA_BUILD_NUMBER="$LLAMA_BUILD_NUMBER")

echo "== cmake: $("$CMAKE_BIN" --version | head -n1)"
echo "== source: $SRC"
echo "== build:  $BUILD"
if commit=$(git -C "$SRC" log -1 --format='%H %cs' 2>/dev/null); then
    echo "== llama.cpp commit: $commit"
fi

start=$(date +%s)
"$CMAKE_BIN" -S "$SRC" -B "$BUILD" "${GEN_ARGS[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON \
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_HIP=OFF \
    -DGGML_SYCL=OFF -DGGML_OPENCL=OFF -DGGML_BLAS=OFF -DGGML_RPC=OFF \
    -DGGML_BACKEND_DL=OFF -DGGML_CPU_KLEIDIAI=OFF \
    -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_OPENSSL=OFF -DLLAMA_LLGUIDANCE=OFF \
    -DFETCHCONTENT_FULLY_DISCONNECTED=ON \
    "${EXTRA_ARGS[@]}"

"$CMAKE_BIN" --build "$BUILD" --config Release -j "$JOBS" --target llama-bench llama-simple
end=$(date +%s)

echo "== built in $((end - start)) s"
for bin in llama-bench llama-simple; do
    path="$BUILD/bin/$bin"
    if [[ -x "$path" ]]; then echo "== $path"; else echo "error: $path missing" >&2; exit 1; fi
done
