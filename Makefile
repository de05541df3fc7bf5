# nanochat-rs-ternary: one Makefile for building, testing and (as the tools land) the whole flow.
# Every cargo call uses the release profile: kernels are only meaningful optimised, and one profile
# means the dependency tree is compiled once.

CARGO ?= cargo
BIN := target/release

.PHONY: all build test lint fmt verify bench bench-quick clean

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
