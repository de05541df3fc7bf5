# nano-125m: dim 768, 12 layers, 12 heads (4 kv heads), vocab 32768, 2,048-token context; about
# 125 M parameters. Sized for a long run: `train` runs on the CPU only (there is no `cuda` feature
# and no device flag; a GPU path is issue 30's work), and at the tiny preset's CPU speed scaled by
# parameters this is days, not minutes, on 2 cores.
# `PIPELINE=nano-125m make` runs it with the same steps as the tiny pipeline.

CONFIG := nano-125m
TRAIN_FLAGS := --streams 2

VOCAB := 32768
TOKENIZER_SAMPLE_BYTES := 64000000

# 16 windows of 1,024 tokens a step; 20,000 steps is 328 M tokens: 2.6 tokens per parameter and
# about ten passes over the 100 MB vendored corpus (add Rust with CORPUS_SOURCES="data/vendor DIR").
SEQ_LEN := 1024
BATCH := 16
STEPS := 20000
WARMUP := 500
MAX_MINUTES := 100000
EVAL_EVERY := 500
EVAL_WINDOWS := 128
CHECKPOINT_EVERY := 500

EVAL_SAMPLES := 8
EVAL_TEMPERATURE := 0.8
EVAL_MAX_TOKENS := 256

SFT_STEPS := 2000
SFT_CHAT_SHARE := 0.3

RL_WARMUP_STEPS := 0
RL_ITERATIONS := 200
RL_BATCH_PROMPTS := 32
RL_SAMPLES := 8
RL_ESTIMATOR := maxrl
RL_REWARD := tests
RL_COMPILE_CREDIT := 0.25
