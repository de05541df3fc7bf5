# The default pipeline: the tiny preset (5.6 M parameters, dim 256, 4 layers, mHC N=2, ternary LM
# head) trained on the CPU for about 10 minutes of a 2-core machine; the whole `make` takes about
# 15 minutes after the build. Every variable can be overridden on the command line
# (`make STEPS=200`), and `PIPELINE=name make` reads pipelines/name.mk instead.

# Model preset of libs/model (train --config) and extra train flags (ablations: --streams 1,
# --full-precision; see `train --help`).
CONFIG := tiny
TRAIN_FLAGS := --streams 2

# Data: the tokenizer's vocabulary (must equal the preset's) and the bytes of corpus it is trained
# on (a deterministic sample; encoding always covers the whole corpus).
VOCAB := 4096
TOKENIZER_SAMPLE_BYTES := 32000000

# Training: steps of BATCH windows of SEQ_LEN tokens (2,048 tokens a step), WSD warmup, a wall-time
# cap (the run stops with a checkpoint and an eval at the cap), eval and checkpoint cadence.
SEQ_LEN := 256
BATCH := 8
STEPS := 700
WARMUP := 40
MAX_MINUTES := 12
EVAL_EVERY := 100
EVAL_WINDOWS := 64
CHECKPOINT_EVERY := 100

# eval-compile on data/prompts/rust_tasks.jsonl: samples per prompt, temperature, tokens per sample.
EVAL_SAMPLES := 4
EVAL_TEMPERATURE := 0.8
EVAL_MAX_TOKENS := 128

# Supervised fine-tuning (make sft) on the function pairs of `make functions`: optimizer steps, and
# the share of examples drawn as chat turns instead of plain completions.
SFT_STEPS := 300
SFT_CHAT_SHARE := 0.3

# maxrl (make rl): supervised warm-up steps on data/prompts/rl_warmup's solutions (0 = none),
# iterations, prompts per iteration, samples per prompt, estimator (maxrl | rft), reward (tests |
# compile) and, with tests, the reward of an answer that compiles but fails them.
RL_WARMUP_STEPS := 120
RL_ITERATIONS := 20
RL_BATCH_PROMPTS := 16
RL_SAMPLES := 8
RL_ESTIMATOR := maxrl
RL_REWARD := tests
RL_COMPILE_CREDIT := 0.25
