# nanochat-rs-ternary: one Makefile for building, testing and (as the tools land) the whole flow.
# Every cargo call uses the release profile: kernels are only meaningful optimised, and one profile
# means the dependency tree is compiled once.

CARGO ?= cargo
BIN := target/release

.PHONY: all build test lint fmt verify bench bench-quick bench-serve bench-train serve e2e-chat clean

all: build verify

build:
	$(CARGO) build --release --workspace --bins

# THE test command (CI runs it): formatting, lints, every unit and cross-tool test. The binaries are
# built first: the cross-tool tests in tests/ run them from target/release.
test: lint
	$(CARGO) build --release --workspace --bins
	$(CARGO) test --release --workspace

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

# Training throughput of the 5M-parameter model (dim 256, 4 layers, seq 256, batch 8, vocab 4096).
bench-train: build
	$(BIN)/train --bench --bench-steps 10

# Serve a model file on http://127.0.0.1:8000 (chat page at /): MODEL=path/to/model.gguf make serve
serve: build
	@test -n "$(MODEL)" || { echo "make serve needs MODEL=path/to/model.gguf"; exit 2; }
	$(BIN)/serve --model $(MODEL)

# The chat page in a real browser (headless Chromium: apt-get install -y chromium), against the
# echo backend, or against a model with MODEL=path/to/model.gguf.
e2e-chat: build
	python3 scripts/chat_page_e2e.py --serve $(BIN)/serve $(if $(MODEL),-- --model $(MODEL))

clean:
	$(CARGO) clean

# The default training corpus, no download: the Rust sources of the project's own locked
# dependencies (cargo vendor reads the local registry cache), in git-ignored data/vendor/.
# Redone when Cargo.lock changes. `make corpus` then `find data/vendor -name '*.rs'` is the corpus.
.PHONY: corpus
corpus: data/vendor/.stamp

data/vendor/.stamp: Cargo.lock
	rm -rf data/vendor
	$(CARGO) vendor --locked --versioned-dirs data/vendor >/dev/null
	touch $@

# Tokenizer and token files of the vendored corpus (4096-token byte-level BPE trained on a 32 MB
# sample; train/val split by path hash).
GEN := data/generated
.PHONY: tokens
tokens: $(GEN)/train.bin

$(GEN)/tokenizer.json: data/vendor/.stamp
	$(CARGO) build --release -p tokenize
	mkdir -p $(GEN)
	$(BIN)/tokenize train --input data/vendor --vocab-size 4096 --max-bytes 32000000 --seed 1 --out $@

$(GEN)/train.bin: $(GEN)/tokenizer.json
	$(BIN)/tokenize encode --tokenizer $< --input data/vendor --out $@ --val-out $(GEN)/val.bin --val-fraction 0.01

# A 20-minute CPU run of the tiny preset (docs/BENCHMARKS.md "Training"), then its GGUF + .mhc.
.PHONY: train-tiny
train-tiny: runs/tiny/model.gguf

# An interrupted run leaves its last checkpoint: the next `make` resumes it (--resume takes every
# run setting from the checkpoint).
TINY_RUN := --train $(GEN)/train.bin --val $(GEN)/val.bin --out runs/tiny/ckpt \
	--eval-every 100 --eval-windows 64 --checkpoint-every 250 --log-every 25
runs/tiny/train.done: $(GEN)/train.bin
	$(CARGO) build --release -p train-cli
	if [ -f runs/tiny/ckpt/trainer_state.json ]; then $(BIN)/train --resume $(TINY_RUN); \
	else $(BIN)/train $(TINY_RUN) --tokenizer $(GEN)/tokenizer.json --config tiny --seq-len 256 \
		--batch 8 --steps 1100 --warmup 50 --seed 1; fi
	touch $@

runs/tiny/model.gguf: runs/tiny/train.done
	$(CARGO) build --release -p quantize-export
	$(BIN)/quantize-export --checkpoint runs/tiny/ckpt --out $@

# docs/ABLATIONS.md: ternary vs full precision, mHC N=2 vs plain vs N=4, equal steps and data.
.PHONY: ablations
ablations: $(GEN)/train.bin build
	scripts/ablations.sh 200 runs/ablations
