#!/usr/bin/env bash
# Decode and prefill speed and resident memory of llama.cpp (llama-bench) and of this project's
# engine (serve --bench) on the same random-weight llama files, alternated A B A B so that a
# shared machine's noise falls on both. Prints one line per run; docs/BENCHMARKS.md has figures.
#
#   benches/llamacpp_side_by_side.sh LLAMA_BENCH MODELS_DIR SHAPE [ROUNDS]
#
# LLAMA_BENCH: llama-bench built by scripts/build_llamacpp.sh. MODELS_DIR: where
# scripts/bench_model.py wrote bench-SHAPE-TQ2_0.gguf, bench-SHAPE-TQ1_0.gguf and
# bench-SHAPE-TQ2_0-pt.gguf (--scales per-tensor); this script imports them with quantize-export
# into MODELS_DIR/ours-*.gguf once. Each run: decode of 32 tokens on 1 and 2 threads, prefill
# of 128 tokens on 2 threads.
#
# Environment (defaults in brackets): TYPES, the llama.cpp files' weight types [TQ2_0 TQ1_0];
# KINDS, the files ours imports [TQ2_0 TQ2_0-pt]; HEADS, the embedding and head types [f16]:
# f16 runs the files above, q8_0 runs bench-SHAPE-TYPE-q8_0.gguf (bench_model.py --tables Q8_0,
# the same f16 values quantized by llama.cpp's rule), which ours imports with its Q8_0 blocks kept.
# Each round runs every head type of llama.cpp, then of ours.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 LLAMA_BENCH MODELS_DIR SHAPE [ROUNDS]" >&2
  exit 2
fi
llama_bench=$1 models=$2 shape=$3 rounds=${4:-2}
types=${TYPES:-TQ2_0 TQ1_0} kinds=${KINDS:-TQ2_0 TQ2_0-pt} heads=${HEADS:-f16}
bin=$(cd "$(dirname "$0")/.." && pwd)/target/release
suffix() { [ "$1" = f16 ] && echo "" || echo "-$1"; }
for head in $heads; do
  for kind in $kinds; do
    name=$shape-$kind$(suffix "$head")
    if [ ! -f "$models/ours-$name.gguf" ]; then
      "$bin/quantize-export" --gguf "$models/bench-$name.gguf" --out "$models/ours-$name.gguf" >&2
    fi
  done
done
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs) ($(nproc) cores)"
for round in $(seq "$rounds"); do
  for head in $heads; do
    for type in $types; do
      name=$shape-$type$(suffix "$head")
      out=$( { /usr/bin/time -f 'maxrss_kb %M' "$llama_bench" -m "$models/bench-$name.gguf" \
        -t 1,2 -p 128 -n 32 -r 1; } 2>&1 )
      echo "$out" | grep -E 'pp128|tg32|maxrss_kb' | sed -E 's/ +/ /g' \
        | sed "s/^/round $round llama.cpp $type $head: /"
    done
  done
  for head in $heads; do
    for kind in $kinds; do
      "$bin/serve" --bench --model "$models/ours-$shape-$kind$(suffix "$head").gguf" --threads 2 \
        --bench-prompt-tokens 128 --bench-decode-tokens 32 --bench-repeats 1 --bench-streams 2 2>&1 \
        | grep -E 'thread\(s\)|resident|roofline' | sed "s/^/round $round ours $kind $head: /"
    done
  done
done
