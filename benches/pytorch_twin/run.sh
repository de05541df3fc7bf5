#!/usr/bin/env bash
# Training tokens/s of `train --bench` beside its PyTorch twin (twin.py), alternated A B A B so
# that a shared machine's noise falls on both. Prints the CPU, then one line per run; the figures
# and what they mean are in docs/BENCHMARKS.md ("Training throughput beside a PyTorch twin").
#
#   benches/pytorch_twin/run.sh [ROUNDS] [STEPS]          (defaults: 2 rounds, 8 timed steps)
#
# Environment: THREADS (default 2) for both sides; TRAIN (default target/release/train, build it
# first: cargo build --release -p train-cli); TWIN_ARGS, extra flags for every twin run (e.g.
# "--residual mhc2 --optim muon-lion"); COMPILE=1 adds a torch.compile twin run to each round;
# TWIN_PYTHON, an interpreter that already has torch (skips the venv).
#
# The venv: benches/pytorch_twin/.venv (git-ignored), built on first use and rebuilt when
# requirements.txt changes. Not part of `make test`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
rounds=${1:-2}
steps=${2:-8}
threads=${THREADS:-2}
train=${TRAIN:-$root/target/release/train}
read -r -a twin_args <<< "${TWIN_ARGS:-}"

if [[ -n "${TWIN_PYTHON:-}" ]]; then
    python=$TWIN_PYTHON
else
    venv="$here/.venv"
    req="$here/requirements.txt"
    stamp="$venv/.requirements.sha256"
    want="$(sha256sum "$req" | cut -d' ' -f1)"
    if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
        echo "run.sh: building $venv from $req" >&2
        rm -rf "$venv"
        "${PYTHON:-python3}" -m venv "$venv"
        pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input)
        # The CPU build from PyTorch's own index where it answers, PyPI's wheel otherwise.
        if ! "${pip[@]}" --timeout 20 --retries 0 --index-url https://download.pytorch.org/whl/cpu \
            "torch==$(sed -n 's/^torch==//p' "$req")"; then
            echo "run.sh: the PyTorch CPU index is not reachable; installing PyPI's torch wheel" >&2
        fi
        "${pip[@]}" -r "$req"
        "$venv/bin/python" -c 'import torch'
        echo "$want" > "$stamp"
    fi
    python="$venv/bin/python"
fi

if [[ ! -x "$train" ]]; then
    echo "run.sh: $train not found (cargo build --release -p train-cli)" >&2
    exit 2
fi

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs) ($(nproc) cores), $threads threads"
for round in $(seq "$rounds"); do
    echo "round $round A train: $("$train" --bench --threads "$threads" --bench-steps "$steps" 2>/dev/null | tail -1)"
    echo "round $round B twin:  $("$python" "$here/twin.py" --threads "$threads" --bench-steps "$steps" "${twin_args[@]}" | tail -1)"
    if [[ "${COMPILE:-0}" == 1 ]]; then
        echo "round $round C twin compiled: $("$python" "$here/twin.py" --threads "$threads" --bench-steps "$steps" --compile "${twin_args[@]}" 2>/dev/null | tail -1)"
    fi
done
