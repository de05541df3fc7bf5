# small: about 3 hours of a 2-core machine for training (issue 26), beside tiny's 10 minutes.
# dim 320, 5 layers, 5 heads (1 kv head), ffn 896, vocabulary 4096: 8.2 M parameters, mHC N=2,
# ternary head. The size comes from a scaling measurement (docs/BENCHMARKS.md, "Model size at
# equal compute"): at 2.25e13 training FLOPs (6 x parameters x tokens) on tiny's tokens,
# 2.9 M parameters reached val loss 3.30, tiny's 5.25 M 3.44 and 12.6 M 4.13: the best size at
# that budget is 2.9 M or below. Three hours is about 36 times that budget at tiny's speed, and
# the compute-optimal size grows as the square root of compute (Hoffmann et al. 2022), so the
# best size here lies at or below 6 x 2.9 M = 17 M (and above Chinchilla's sqrt(C / 120) = 2.6 M);
# 8.2 M sits in the middle of that range. About 16 M tokens (8,000 steps of 2,048) if it trains at
# tiny's FLOP rate; MAX_MINUTES stops it at three hours whatever the machine.

CONFIG := tiny
TRAIN_FLAGS := --streams 2 --dim 320 --layers 5 --heads 5 --kv-heads 1 --ffn-dim 896

VOCAB := 4096
TOKENIZER_SAMPLE_BYTES := 32000000

SEQ_LEN := 256
BATCH := 8
STEPS := 8000
WARMUP := 200
MAX_MINUTES := 180
EVAL_EVERY := 500
EVAL_WINDOWS := 128
CHECKPOINT_EVERY := 500

EVAL_SAMPLES := 4
EVAL_TEMPERATURE := 0.8
EVAL_MAX_TOKENS := 128

SFT_STEPS := 600
SFT_CHAT_SHARE := 0.3

RL_WARMUP_STEPS := 120
RL_ITERATIONS := 40
RL_BATCH_PROMPTS := 16
RL_SAMPLES := 8
RL_ESTIMATOR := maxrl
RL_REWARD := tests
RL_COMPILE_CREDIT := 0.25
