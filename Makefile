# Every target first makes libtorch available (a one-time install, then a few seconds).
CARGO ?= cargo

.PHONY: setup build train test bench clean

setup:
	@bash scripts/setup-libtorch.sh

build: setup
	$(CARGO) build --release

train: build
	./target/release/reformer train

test: setup
	$(CARGO) test --release

bench: build
	./target/release/reformer bench

clean:
	$(CARGO) clean
