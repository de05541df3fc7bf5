#!/usr/bin/env bash
# The ablations of docs/ABLATIONS.md: the tiny preset trained at equal steps, data and seed with
# ternary vs full-precision weights and mHC N=2 vs plain residuals vs N=4; prints the table of
# final validation loss and bits per byte. Usage: scripts/ablations.sh [STEPS] [OUT_DIR] [DATA_DIR]
# Needs token files (`make tokens`: runs/tiny/data/) and the release binaries.
set -euo pipefail
steps=${1:-200}
out=${2:-runs/ablations}
data=${3:-runs/tiny/data}
mkdir -p "$out"
common=(--train "$data/train.bin" --val "$data/val.bin" --tokenizer "$data/tokenizer.json"
        --config tiny --seq-len 256 --batch 8 --steps "$steps" --warmup 20 --seed 1
        --eval-every "$steps" --eval-windows 64 --checkpoint-every "$steps" --log-every 50)
run() {
    local name=$1; shift
    if [ ! -f "$out/$name/trainer_state.json" ]; then
        rm -rf "$out/$name"
        target/release/train "${common[@]}" --out "$out/$name" "$@" 2>&1 | tail -3 >&2
    fi
}
run ternary-mhc2 --streams 2
run fullprec-mhc2 --streams 2 --full-precision
run ternary-plain --streams 1
run ternary-mhc4 --streams 4
python3 - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print("| run | weights | residual | steps | val loss | val bpb | tokens/s (median) |")
print("|---|---|---|---|---|---|---|")
for name, weights, residual in [("ternary-mhc2", "ternary", "mHC N=2"),
                                ("fullprec-mhc2", "full precision", "mHC N=2"),
                                ("ternary-plain", "ternary", "plain"),
                                ("ternary-mhc4", "ternary", "mHC N=4")]:
    recs = [json.loads(l) for l in (out / name / "metrics.jsonl").read_text().splitlines()]
    ev = [r["record"] for r in recs if r["kind"] == "eval"][-1]
    tps = sorted(r["record"]["tokens_per_s"] for r in recs if r["kind"] == "step")
    print(f"| {name} | {weights} | {residual} | {ev['step']} | {ev['val_loss']:.4f} "
          f"| {ev['val_bpb']:.4f} | {tps[len(tps) // 2]:.0f} |")
PY
