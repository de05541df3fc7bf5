# nanochat-rs-ternary: one Makefile for building, testing and the whole flow from Rust source to a
# served model. Every cargo call uses the release profile: kernels are only meaningful optimised,
# and one profile means the dependency tree is compiled once.
#
#   make                     the default pipeline (pipelines/tiny.mk) end to end -> runs/tiny/report.md
#   PIPELINE=nano-125m make  another file of pipelines/
#   make serve               the server on the pipeline's model (http://127.0.0.1:8000, chat page at /)
#   make sft                 fine-tuning on function pairs, evaluated, added to the report
#   make rl                  fine-tuning, then maxrl on its checkpoint, evaluated, added to the report
#   make test                THE test command (CI)
#
# Every step writes a file under runs/<pipeline>/, so an interrupted `make` resumes at the step that
# had not finished (training itself resumes from its last checkpoint).

CARGO ?= cargo
BIN := target/release

.PHONY: all build test venv sandbox lint fmt verify bench bench-quick bench-serve bench-load bench-train fuzz serve e2e-chat clean \
	corpus tokens functions train export eval report sft rl ablations FORCE

all: report

build:
	$(CARGO) build --release --workspace --bins

# THE test command (CI runs it): formatting, lints, every unit and cross-tool test. The binaries are
# built first: the cross-tool tests in tests/ run them from target/release. The Python the
# interoperability tests run (the reference `gguf` package) comes from the project's own venv.
test: lint venv sandbox
	$(CARGO) build --release --workspace --bins
	NANOCHAT_PYTHON=$(abspath $(VENV_PYTHON)) NANOCHAT_BWRAP=$(abspath $(BWRAP)) \
		$(CARGO) test --release --workspace

# bubblewrap, the sandbox generated code is compiled and run in (eval-compile, maxrl): Debian's
# package unpacked into the git-ignored .tools/ (scripts/install_bwrap.sh), found there by the tools.
BWRAP := .tools/usr/bin/bwrap
sandbox: $(BWRAP)

$(BWRAP):
	scripts/install_bwrap.sh

# A project-local Python environment (git-ignored .venv/) with the pinned requirements.txt, made
# on first use and again when requirements.txt changes; nothing is installed outside the project.
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	@python3 -m venv $(VENV) || { echo "python3 cannot make a venv: install python3's venv module (Debian: apt-get install python3-venv)"; exit 1; }
	$(VENV_PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

lint:
	$(CARGO) fmt --all -- --check
	@if $(CARGO) clippy --version >/dev/null 2>&1; then \
		$(CARGO) clippy --release --workspace --all-targets -- -D warnings; \
	else echo "cargo clippy is not installed: lints skipped"; fi

fmt:
	$(CARGO) fmt --all

# Every kernel this CPU runs against the Rust reference, bit for bit.
verify: build
	$(BIN)/verify-triangle

# Kernel throughput and this machine's memory bandwidth (docs/BENCHMARKS.md has the figures).
bench: build
	$(BIN)/gemv-bench
	$(BIN)/gemv-bench --cold

bench-quick: build
	$(BIN)/gemv-bench --shape 4096x4096 --batch 1 --repeats 5

# End-to-end inference speed: nano-125m with random weights (prefill, decode on 1 and 2 threads,
# 8 concurrent streams, efficiency against the kernel, resident memory).
bench-serve: build
	$(BIN)/serve --bench --threads 2

# serve's HTTP layer under load (issue 25): 2,000 short completions from 16 keep-alive clients, then
# 64 concurrent streams (time to first token), against the echo backend (no model), or against a
# model with LOAD_MODEL=path/to/model.gguf (not MODEL, which defaults to the pipeline's model).
bench-load: build
	$(BIN)/serve-load --serve $(BIN)/serve -- $(if $(LOAD_MODEL),--model $(LOAD_MODEL),--echo-backend)

# Fuzzing serve's request path (fuzz/fuzz_targets/request.rs: raw bytes as one client connection)
# for FUZZ_SECONDS (default 600). Needs a nightly toolchain and cargo-fuzz (installed here if
# missing); not part of `make test`. New inputs go to the first folder, fuzz/corpus/request
# (gitignored); the committed seeds are only read. Crashes land in fuzz/artifacts/request/.
FUZZ_SECONDS ?= 600
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz
	$(CARGO) +nightly fuzz run request --release -- \
		-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 fuzz/corpus/request fuzz/seeds/request

# Training throughput of the 5M-parameter model (dim 256, 4 layers, seq 256, batch 8, vocab 4096).
bench-train: build
	$(BIN)/train --bench --bench-steps 10


# The chat page in a real browser (headless Chromium: apt-get install -y chromium), against the
# echo backend, or against a model with MODEL=path/to/model.gguf.
e2e-chat: build
	python3 scripts/chat_page_e2e.py --serve $(BIN)/serve $(if $(MODEL),-- --model $(MODEL))

clean:
	$(CARGO) clean

# ---------------------------------------------------------------------------------------------
# The pipeline. pipelines/$(PIPELINE).mk sets the model preset, data, training, eval and RL sizes.
PIPELINE ?= tiny
PIPELINE_FILE := pipelines/$(PIPELINE).mk
ifeq ($(wildcard $(PIPELINE_FILE)),)
$(error PIPELINE=$(PIPELINE): there is no $(PIPELINE_FILE) (pipelines: $(notdir $(basename $(wildcard pipelines/*.mk)))))
endif
include $(PIPELINE_FILE)
RUN := runs/$(PIPELINE)
# Every variable a pipeline file must set (TRAIN_FLAGS may be empty): a file that forgets one
# fails here, with its name, not halfway through a run.
PIPELINE_VARS := CONFIG TRAIN_FLAGS VOCAB TOKENIZER_SAMPLE_BYTES SEQ_LEN BATCH STEPS WARMUP \
	MAX_MINUTES EVAL_EVERY EVAL_WINDOWS CHECKPOINT_EVERY EVAL_SAMPLES EVAL_TEMPERATURE \
	EVAL_MAX_TOKENS SFT_STEPS SFT_CHAT_SHARE RL_WARMUP_STEPS RL_ITERATIONS RL_BATCH_PROMPTS \
	RL_SAMPLES RL_ESTIMATOR RL_REWARD RL_COMPILE_CREDIT
$(foreach v,$(PIPELINE_VARS),$(if $(filter undefined,$(origin $(v))),\
	$(error $(PIPELINE_FILE) does not set $(v) (every pipeline sets: $(PIPELINE_VARS)))))

# Rust source to train on (folders; every .rs file under them) and the prompt sets whose functions
# must never be trained on: the project's own sets and, where they are, the MultiPL-E benchmarks.
CORPUS_SOURCES ?= data/vendor
BENCHMARKS_DIR ?= ../shared/benchmarks
HUMANEVAL_RS ?=
HELDOUT_PROMPTS := data/prompts/rust_tasks.jsonl
RL_PROMPTS := data/prompts/rl_train.jsonl
RL_WARMUP_PROMPTS := data/prompts/rl_warmup.jsonl
RL_WARMUP := data/prompts/rl_warmup.solutions.jsonl
EVAL_SETS := $(filter-out %.solutions.jsonl,$(wildcard data/prompts/*.jsonl)) \
	$(wildcard $(BENCHMARKS_DIR)/*.jsonl) $(HUMANEVAL_RS)

# The default corpus, no download: the Rust sources of the project's own locked dependencies
# (cargo vendor reads the local registry cache), in git-ignored data/vendor/. Redone when
# Cargo.lock changes.
corpus: $(RUN)/corpus/corpus.json

data/vendor/.stamp: Cargo.lock
	rm -rf data/vendor
	$(CARGO) vendor --quiet --locked --versioned-dirs data/vendor >/dev/null
	touch $@

# The training corpus: the sources minus every file that holds an evaluation prompt (hard links,
# so no copy of the 100 MB). corpus.key holds the list of sources and prompt sets and changes only
# when the list does, so a prompt set named later (HUMANEVAL_RS=...) rebuilds the corpus, and what
# follows, even when its file is older than the corpus.
$(RUN)/corpus.key: FORCE
	@mkdir -p $(RUN)
	@echo 'sources: $(CORPUS_SOURCES); prompt sets: $(sort $(EVAL_SETS))' > $@.tmp
	@if cmp -s $@.tmp $@; then rm $@.tmp; else mv $@.tmp $@; fi

FORCE:

$(RUN)/corpus/corpus.json: $(if $(filter data/vendor,$(CORPUS_SOURCES)),data/vendor/.stamp) \
		scripts/corpus.py $(EVAL_SETS) $(RUN)/corpus.key
	python3 scripts/corpus.py --out $(RUN)/corpus $(addprefix --source ,$(CORPUS_SOURCES)) \
		$(addprefix --prompts ,$(EVAL_SETS))

# Tokenizer (byte-level BPE on a deterministic sample) and token files (train/val by path hash).
tokens: $(RUN)/data/train.bin

$(RUN)/data/tokenizer.json: $(RUN)/corpus/corpus.json | build
	mkdir -p $(RUN)/data
	$(BIN)/tokenize train --input $(RUN)/corpus --vocab-size $(VOCAB) \
		--max-bytes $(TOKENIZER_SAMPLE_BYTES) --seed 1 --out $@

$(RUN)/data/train.bin: $(RUN)/data/tokenizer.json | build
	$(BIN)/tokenize encode --tokenizer $< --input $(RUN)/corpus --out $@ \
		--val-out $(RUN)/data/val.bin --val-fraction 0.01 --json > $(RUN)/data/encode.json.tmp
	mv $(RUN)/data/encode.json.tmp $(RUN)/data/encode.json

# Function-level data (issue 26): the corpus's documented functions over std types as (doc +
# signature -> body) pairs that compile on their own, and their doc examples that pass as tests
# (tests.jsonl, a prompt set eval-compile and maxrl read); none holds an evaluation prompt, by the
# corpus step's rule. Counts in functions/summary.json (the vendored corpus: 25,793 documented
# functions -> 271 pairs and 7 tasks with tests, 23 s on 2 cores). `make sft` fine-tunes on the
# pairs; `make rl` adds the tasks with tests to its RL prompts.
functions: $(RUN)/functions/pairs.jsonl

$(RUN)/functions/pairs.jsonl: $(RUN)/corpus/corpus.json $(EVAL_SETS) | build sandbox
	$(BIN)/tokenize functions --input $(RUN)/corpus $(addprefix --prompts ,$(EVAL_SETS)) \
		--out $(RUN)/functions

# Training. An interrupted run leaves its last checkpoint: the next `make` resumes it (--resume
# takes every run setting from the checkpoint). train.done marks the end of the run.
train: $(RUN)/train.done

TRAIN_IO := --train $(RUN)/data/train.bin --val $(RUN)/data/val.bin --out $(RUN)/ckpt \
	--eval-every $(EVAL_EVERY) --eval-windows $(EVAL_WINDOWS) \
	--checkpoint-every $(CHECKPOINT_EVERY) --log-every 25 --max-minutes $(MAX_MINUTES)
$(RUN)/train.done: $(RUN)/data/train.bin | build
	if [ -f $(RUN)/ckpt/trainer_state.json ]; then $(BIN)/train --resume $(TRAIN_IO); \
	else $(BIN)/train $(TRAIN_IO) --tokenizer $(RUN)/data/tokenizer.json --config $(CONFIG) \
		--seq-len $(SEQ_LEN) --batch $(BATCH) --steps $(STEPS) --warmup $(WARMUP) --seed 1 \
		$(TRAIN_FLAGS); fi
	touch $@

# GGUF + .mhc, then the checks: the listing of both files and every ternary tensor through every
# kernel of this CPU, bit for bit against the reference.
export: $(RUN)/model.gguf

# The GGUF of a checkpoint folder, its figures in export.json beside it.
export_checkpoint = $(BIN)/quantize-export --checkpoint $(1) --out $@ --json > $(@D)/export.json.tmp \
	&& mv $(@D)/export.json.tmp $(@D)/export.json

$(RUN)/model.gguf: $(RUN)/train.done | build
	$(call export_checkpoint,$(RUN)/ckpt)

$(RUN)/inspect.json: $(RUN)/model.gguf | build
	$(BIN)/gguf-inspect $< --mhc $(RUN)/model.mhc --json > $@.tmp
	mv $@.tmp $@

$(RUN)/verify.json: $(RUN)/model.gguf | build
	$(BIN)/verify-triangle --model $< --json > $@.tmp
	mv $@.tmp $@

# Does the generated code compile, do its tests pass: the project's own prompt set, and
# HumanEval-Rust when HUMANEVAL_RS names a copy; sampled (EVAL_SAMPLES at EVAL_TEMPERATURE, for
# pass@k) and greedy (one answer each), every sample kept beside (eval.samples.jsonl, ...). The same files for
# each stage's model: pretraining ($(RUN)), fine-tuning ($(RUN)/sft), RL ($(RUN)/rl).
EVAL_FLAGS := -n $(EVAL_SAMPLES) --temperature $(EVAL_TEMPERATURE) --max-tokens $(EVAL_MAX_TOKENS) --seed 1
GREEDY_FLAGS := -n 1 --temperature 0 --max-tokens $(EVAL_MAX_TOKENS) --seed 1
STAGE_EVALS := eval.json eval-greedy.json \
	$(if $(HUMANEVAL_RS),eval-humaneval.json eval-humaneval-greedy.json)
EVAL_OUTPUTS := $(addprefix $(RUN)/,$(STAGE_EVALS))
STAGES := $(RUN) $(RUN)/sft $(RUN)/rl
eval: $(EVAL_OUTPUTS)

evaluate = $(BIN)/eval-compile --prompts $(1) --model $< $(2) --out $@
$(STAGES:%=%/eval.json): %/eval.json: %/model.gguf $(HELDOUT_PROMPTS) | build sandbox
	$(call evaluate,$(HELDOUT_PROMPTS),$(EVAL_FLAGS))
$(STAGES:%=%/eval-greedy.json): %/eval-greedy.json: %/model.gguf $(HELDOUT_PROMPTS) | build sandbox
	$(call evaluate,$(HELDOUT_PROMPTS),$(GREEDY_FLAGS))
$(STAGES:%=%/eval-humaneval.json): %/eval-humaneval.json: %/model.gguf $(HUMANEVAL_RS) | build sandbox
	$(call evaluate,$(HUMANEVAL_RS),$(EVAL_FLAGS))
$(STAGES:%=%/eval-humaneval-greedy.json): %/eval-humaneval-greedy.json: %/model.gguf $(HUMANEVAL_RS) \
		| build sandbox
	$(call evaluate,$(HUMANEVAL_RS),$(GREEDY_FLAGS))

# Kernel throughput of this machine: the 4096x4096 GEMV of docs/BENCHMARKS.md, batch 1.
$(RUN)/gemv.json: | build
	mkdir -p $(RUN)
	$(BIN)/gemv-bench --shape 4096x4096 --batch 1 --repeats 5 --json > $@.tmp
	mv $@.tmp $@

# The report card, from whatever stages have run (make, make sft, make rl rewrite it).
report: $(RUN)/report.md

write_report = python3 scripts/report.py --run $(RUN) --pipeline $(PIPELINE_FILE) > $(RUN)/report.md.tmp \
	&& mv $(RUN)/report.md.tmp $(RUN)/report.md && echo "report card: $(RUN)/report.md"

REPORT_INPUTS := $(RUN)/data/train.bin $(RUN)/model.gguf $(RUN)/inspect.json $(RUN)/verify.json \
	$(EVAL_OUTPUTS) $(RUN)/gemv.json scripts/report.py
$(RUN)/report.md: $(REPORT_INPUTS)
	$(write_report)

# Supervised fine-tuning of the pretrained checkpoint on the function pairs of `make functions`
# (the loss on the bodies only; SFT_CHAT_SHARE of them as chat turns in serve's template), then its
# GGUF, its evaluations and the report card with a fine-tuning section. A checkpoint in sft/ older
# than the pretraining run is from an earlier run: it is started afresh, not resumed.
sft: $(REPORT_INPUTS) $(addprefix $(RUN)/sft/,$(STAGE_EVALS))
	$(write_report)

SFT_IO := --sft $(RUN)/functions/pairs.jsonl --out $(RUN)/sft --eval-every 100 --checkpoint-every 100 \
	--log-every 25
$(RUN)/sft.done: $(RUN)/train.done $(RUN)/functions/pairs.jsonl | build
	if [ $(RUN)/sft/trainer_state.json -nt $(RUN)/train.done ]; then $(BIN)/train --resume $(SFT_IO); \
	else rm -rf $(RUN)/sft && $(BIN)/train $(SFT_IO) --init $(RUN)/ckpt --steps $(SFT_STEPS) \
		--sft-chat-share $(SFT_CHAT_SHARE) --seed 1; fi
	touch $@

$(RUN)/sft/model.gguf: $(RUN)/sft.done | build
	$(call export_checkpoint,$(RUN)/sft)

# Reinforcement from the compiler on the fine-tuned checkpoint: a supervised warm-up on the
# warm-up set's solutions (RL_WARMUP_STEPS), then RL on the RL prompt set and the tests harvested by
# `make functions`, from the model's own samples (RL_REWARD: tests, with RL_COMPILE_CREDIT for an
# answer that compiles and fails its tests; or compile, for the ablation);
# greedy rates on the held-out set before, after the warm-up and after RL; then the improved
# model's GGUF, its evaluations, and the report card again with an RL section.
rl: $(REPORT_INPUTS) $(addprefix $(RUN)/sft/,$(STAGE_EVALS)) $(addprefix $(RUN)/rl/,$(STAGE_EVALS))
	$(write_report)

$(RUN)/rl/summary.json: $(RUN)/sft.done $(RL_PROMPTS) $(RL_WARMUP_PROMPTS) $(RL_WARMUP) \
		$(HELDOUT_PROMPTS) | build sandbox
	$(BIN)/maxrl --checkpoint $(RUN)/sft --prompts $(RL_PROMPTS) \
		$$([ -s $(RUN)/functions/tests.jsonl ] && echo --prompts $(RUN)/functions/tests.jsonl) \
		--heldout $(HELDOUT_PROMPTS) --out $(RUN)/rl --iterations $(RL_ITERATIONS) \
		--batch-prompts $(RL_BATCH_PROMPTS) --samples $(RL_SAMPLES) --estimator $(RL_ESTIMATOR) \
		--reward $(RL_REWARD) $(if $(filter tests,$(RL_REWARD)),--compile-credit $(RL_COMPILE_CREDIT)) --seed 1 \
		$(if $(filter-out 0,$(RL_WARMUP_STEPS)),--warmup-prompts $(RL_WARMUP_PROMPTS) \
			--warmup $(RL_WARMUP) --warmup-steps $(RL_WARMUP_STEPS))

$(RUN)/rl/model.gguf: $(RUN)/rl/summary.json | build
	$(call export_checkpoint,$(RUN)/rl)

# The server on the pipeline's model (built first if need be), or on MODEL=path/to/model.gguf.
MODEL ?= $(RUN)/model.gguf
HOST ?= 127.0.0.1
PORT ?= 8000
serve: $(MODEL) | build
	$(BIN)/serve --model $(MODEL) --host $(HOST) --port $(PORT)

# docs/ABLATIONS.md: ternary vs full precision, mHC N=2 vs plain vs N=4, equal steps and data (the
# token files of the tiny pipeline).
ablations: | build
	$(MAKE) PIPELINE=tiny tokens
	scripts/ablations.sh 200 runs/ablations runs/tiny/data
