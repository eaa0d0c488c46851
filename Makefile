# Keyhold. The two commands a newcomer needs:
#   make run    install what is missing, build, run the narrated demo
#   make test   install what is missing, build once, run every test
SHELL := /bin/bash
export PATH := $(PATH):/opt/swift/usr/bin

SWIFT_BUILD_FLAGS ?=
BIN_DIR := $(CURDIR)/.build/debug
RELEASE_DIR := $(CURDIR)/.build/release
FUZZ_SECONDS ?= 20
FUZZ_LONG ?= 300
PYTEST := .venv/bin/python -m pytest

.PHONY: run test build deps unit python fuzz bench vectors clean help

help:
	@echo "make run     build and run the narrated demo (keyhold demo)"
	@echo "make test    build once and run every test (Swift, Python/Tink interop, fuzz smoke)"
	@echo "make bench   release build; file encryption vs openssl, age and gpg on 1 GiB; key release load"
	@echo "make fuzz    run the header fuzzer for 5 minutes (FUZZ_LONG=300)"
	@echo "make vectors regenerate Tests/Vectors from scripts/"

run:
	@scripts/install-deps.sh build
	swift build $(SWIFT_BUILD_FLAGS) --product keyhold
	$(BIN_DIR)/keyhold demo

deps:
	@scripts/install-deps.sh test

build: deps
	swift build $(SWIFT_BUILD_FLAGS) --build-tests

test: build
	$(MAKE) --no-print-directory unit python
	scripts/fuzz.sh $(FUZZ_SECONDS)
	@echo "make test: every suite passed"

# The Swift suites, with a throwaway PostgreSQL cluster for the PostgreSQL cases
# (or the one KEYHOLD_TEST_POSTGRES_URL names).
unit:
	scripts/test-postgres.sh swift test --skip-build

python:
	KEYHOLD_BIN_DIR=$(BIN_DIR) $(PYTEST) -q Tests/python

fuzz:
	scripts/fuzz.sh $(FUZZ_LONG)

bench:
	@scripts/install-deps.sh bench
	swift build -c release --product keyhold
	swift build -c release --product keyhold-server
	swift build -c release --product keyhold-release-bench
	Benchmarks/file-bench.sh $(RELEASE_DIR)/keyhold
	scripts/test-postgres.sh Benchmarks/release-bench.sh $(RELEASE_DIR)
	scripts/test-postgres.sh Benchmarks/hierarchy-bench.sh $(RELEASE_DIR)
	scripts/test-postgres.sh Benchmarks/transfer-bench.sh $(RELEASE_DIR)

vectors: deps
	.venv/bin/python scripts/gen-file-vectors.py

clean:
	rm -rf .build fuzz/out
