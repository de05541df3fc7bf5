#!/usr/bin/env bash
# Regenerates tests/fixtures/bitnet-tiny/ (a tiny random BitNet model in Hugging Face layout, packed
# and master variants, plus the logits transformers' BitNetForCausalLM computes for it) with
# scripts/bitnet_reference.py, inside the project-local, git-ignored venv .venv-reference/ that
# holds the pinned versions of scripts/reference-requirements.txt. Idempotent: the venv is built
# (or rebuilt) only when it is missing or the requirements file changed; the fixture folder is
# rewritten from scratch each run, byte-for-byte the same for the same pins.
#
# Usage (from anywhere):  bash scripts/bitnet_reference.sh      PYTHON=python3.11 to pick the interpreter
#
# How torch is installed: from PyPI only, as the pinned CUDA build plus its nvidia-*/cuda-*/triton
# runtime wheels (about 2.8 GB download, 5.6 GB installed). A CPU-only torch is not on PyPI for
# Linux x86_64 (the +cpu builds live on the PyTorch index, which this project cannot reach), and
# `pip install --no-deps torch` does not work: torch 2.15's own libraries link the CUDA runtime
# (libtorch_cpu.so: libcudart.so.13, libcupti.so.13; libtorch_python.so: libtorch_cuda.so ->
# cuBLAS, cuDNN, cuFFT, cuSPARSE(Lt), NCCL, NVSHMEM, cuFile, NVRTC), so `import torch` fails
# with "libcublasLt.so.*[0-9] not found". With those wheels installed torch runs on the CPU with
# no GPU or driver (torch.cuda.is_available() is False); the generator never touches CUDA.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-reference"
REQ="$ROOT/scripts/reference-requirements.txt"
STAMP="$VENV/.requirements.sha256"
PYTHON="${PYTHON:-python3}"

want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" || ! -f "$STAMP" || "$(cat "$STAMP")" != "$want" ]]; then
    echo "bitnet_reference: building $VENV from $REQ" >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$REQ"
    "$VENV/bin/python" -c 'import torch, transformers, tokenizers, safetensors, accelerate'
    echo "$want" > "$STAMP"
fi

cd "$ROOT"
TORCHDYNAMO_DISABLE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    "$VENV/bin/python" scripts/bitnet_reference.py
