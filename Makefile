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

.PHONY: run test build deps lint unit python vm-test rotation-full fuzz bench vectors install install-files uninstall man clean help

# make install: where the programs, units, udev rule, sysusers/tmpfiles files, man pages and
# completions go. Without DESTDIR: /usr/local and /etc (a local install). With DESTDIR (staging a
# package): /usr and the packaging paths /usr/lib/systemd/system, /usr/lib/udev/rules.d.
ifeq ($(DESTDIR),)
PREFIX ?= /usr/local
UNITDIR ?= /etc/systemd/system
UDEVDIR ?= /etc/udev/rules.d
SYSUSERSDIR ?= /etc/sysusers.d
TMPFILESDIR ?= /etc/tmpfiles.d
else
PREFIX ?= /usr
UNITDIR ?= /usr/lib/systemd/system
UDEVDIR ?= /usr/lib/udev/rules.d
SYSUSERSDIR ?= /usr/lib/sysusers.d
TMPFILESDIR ?= /usr/lib/tmpfiles.d
endif
BINDIR ?= $(PREFIX)/bin
DOCDIR ?= $(PREFIX)/share/doc/keyhold
MANDIR ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/vendor-completions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
INSTALL_FROM ?= $(RELEASE_DIR)
# Man pages from the command definitions (swift-argument-parser's generate-manual plugin).
MAN_OUT := $(CURDIR)/.build/plugins/GenerateManual/outputs
PROGRAMS := keyhold keyhold-server keyhold-agent

help:
	@echo "make run     build and run the narrated demo: servers T, S1, S2, S3 and agents D1, D2, D3 (DEMO_FLAGS=--keep leaves them running)"
	@echo "make test    build once and run every test (lint, Swift, Python/Tink interop, VM, fuzz smoke)"
	@echo "make lint    check the house style (.swift-format: layout, line width, /// on every public declaration)"
	@echo "make bench   release build; file encryption vs openssl, age and gpg on 1 GiB; key release load"
	@echo "make fuzz    run the header fuzzer for 5 minutes (FUZZ_LONG=300)"
	@echo "make vectors regenerate Tests/Vectors from scripts/"
	@echo "make install release build; programs to $(BINDIR), units to $(UNITDIR), udev rule to $(UDEVDIR), man pages, completions"
	@echo "make uninstall  remove what make install put in place (data and users stay)"
	@echo "make vm-test the drive hot-plug test in a QEMU guest (part of make test)"
	@echo "make rotation-full  the master-key rotation test with 100,000 keys on SQLite and PostgreSQL"

run:
	@scripts/install-deps.sh build
	swift build $(SWIFT_BUILD_FLAGS) --product keyhold
	swift build $(SWIFT_BUILD_FLAGS) --product keyhold-server
	swift build $(SWIFT_BUILD_FLAGS) --product keyhold-agent
	$(BIN_DIR)/keyhold demo $(DEMO_FLAGS)

deps:
	@scripts/install-deps.sh test

build: deps
	swift build $(SWIFT_BUILD_FLAGS) --build-tests

test: build
	$(MAKE) --no-print-directory lint man unit python vm-test
	scripts/fuzz.sh $(FUZZ_SECONDS)
	@echo "make test: every suite passed"

# The house style, made checkable: swift-format ships with the toolchain; `swift-format format -i
# -r Sources Tests Benchmarks Fuzz Plugins Package.swift` fixes what it can.
lint:
	swift-format lint --strict --recursive Sources Tests Benchmarks Fuzz Plugins Package.swift

# The Swift suites, with a throwaway PostgreSQL cluster for the PostgreSQL cases
# (or the one KEYHOLD_TEST_POSTGRES_URL names).
unit:
	scripts/test-postgres.sh swift test --skip-build

python:
	KEYHOLD_BIN_DIR=$(BIN_DIR) $(PYTEST) -q Tests/python

# Real kernel, udev and systemd in a QEMU guest: plug a Keyhold USB stick, check the unit
# unlocked it, unplug, plug again (Tests/VM/README.md).
vm-test:
	Tests/VM/vm-test.sh $(BIN_DIR)

# The master-key rotation test at full size: 100,000 keys on SQLite and PostgreSQL, two kill -9
# during the rewrap and a release loop throughout (make test runs it with 1,000).
rotation-full: build
	KEYHOLD_ROTATION_KEYS=100000 scripts/test-postgres.sh swift test --skip-build --filter MasterKeyRotationTests

fuzz:
	scripts/fuzz.sh $(FUZZ_LONG)

bench:
	@scripts/install-deps.sh bench
	swift build -c release --product keyhold
	swift build -c release --product keyhold-server
	swift build -c release --product keyhold-bench
	Benchmarks/file-bench.sh $(RELEASE_DIR)/keyhold
	scripts/test-postgres.sh Benchmarks/release-bench.sh $(RELEASE_DIR)
	scripts/test-postgres.sh Benchmarks/metrics-bench.sh $(RELEASE_DIR)
	scripts/test-postgres.sh Benchmarks/hierarchy-bench.sh $(RELEASE_DIR)
	scripts/test-postgres.sh Benchmarks/transfer-bench.sh $(RELEASE_DIR)

vectors: deps
	.venv/bin/python scripts/gen-file-vectors.py
	.venv/bin/python scripts/gen-key-id-vectors.py
	.venv/bin/python scripts/gen-offline-vectors.py

install:
	@scripts/install-deps.sh build
	swift build -c release --product keyhold
	swift build -c release --product keyhold-server
	swift build -c release --product keyhold-agent
	$(MAKE) --no-print-directory man MAN_CONFIGURATION=release
	$(MAKE) --no-print-directory install-files

# The man pages keyhold.1, keyhold-server.1 and keyhold-agent.1, each with every subcommand,
# under $(MAN_OUT)/<target>/. The plugin builds the programs first, in MAN_CONFIGURATION (debug
# for make test, whose build is already there; make install uses the release build).
MAN_CONFIGURATION ?= debug
man:
	swift package plugin generate-manual --configuration $(MAN_CONFIGURATION) --authors "the Keyhold developers" --section 1

# Copies what is built (INSTALL_FROM, default the release build) without building; man pages
# when `make man` made them. Completions come from the programs themselves.
install-files:
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(UDEVDIR) $(DESTDIR)$(DOCDIR) \
	  $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) $(DESTDIR)$(MANDIR)/man1 \
	  $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR)
	install -m 0755 $(addprefix $(INSTALL_FROM)/,$(PROGRAMS)) $(DESTDIR)$(BINDIR)/
	for f in systemd/*.service; do sed 's#/usr/local/bin/#$(BINDIR)/#g; s#/usr/local/share/doc/keyhold/#$(DOCDIR)/#g' $$f > $(DESTDIR)$(UNITDIR)/$$(basename $$f); chmod 0644 $(DESTDIR)$(UNITDIR)/$$(basename $$f); done
	install -m 0644 udev/90-keyhold.rules $(DESTDIR)$(UDEVDIR)/90-keyhold.rules
	install -m 0644 packaging/sysusers.d/*.conf $(DESTDIR)$(SYSUSERSDIR)/
	install -m 0644 packaging/tmpfiles.d/*.conf $(DESTDIR)$(TMPFILESDIR)/
	install -m 0644 docs/spec/*.md $(DESTDIR)$(DOCDIR)/
	for p in $(PROGRAMS); do \
	  $(INSTALL_FROM)/$$p --generate-completion-script bash > $(DESTDIR)$(BASHCOMPDIR)/$$p && \
	  $(INSTALL_FROM)/$$p --generate-completion-script zsh > $(DESTDIR)$(ZSHCOMPDIR)/_$$p && \
	  $(INSTALL_FROM)/$$p --generate-completion-script fish > $(DESTDIR)$(FISHCOMPDIR)/$$p.fish || exit 1; \
	  chmod 0644 $(DESTDIR)$(BASHCOMPDIR)/$$p $(DESTDIR)$(ZSHCOMPDIR)/_$$p $(DESTDIR)$(FISHCOMPDIR)/$$p.fish; done
	if [ -f $(MAN_OUT)/keyhold/keyhold.1 ]; then for p in $(PROGRAMS); do gzip -9n < $(MAN_OUT)/$$p/$$p.1 > $(DESTDIR)$(MANDIR)/man1/$$p.1.gz; chmod 0644 $(DESTDIR)$(MANDIR)/man1/$$p.1.gz; done; \
	  else echo "no man pages built (make man); installing without them"; fi
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemd-sysusers; systemd-tmpfiles --create $(addprefix $(TMPFILESDIR)/,keyhold-server.conf keyhold-agent.conf); \
	  systemctl daemon-reload; udevadm control --reload 2>/dev/null || true; \
	  echo "installed; next: systemctl enable --now keyhold-agent (devices) or keyhold-server (servers)"; fi

# Removes what install-files put in place (same variables). Data stays: /var/lib/keyhold*, the
# keyhold-server user and the keyhold group (remove them by hand once nothing needs them).
uninstall:
	-@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl stop 'keyhold-unlock@*.service' 2>/dev/null; \
	  systemctl disable --now keyhold-server.service keyhold-agent.service 2>/dev/null; fi
	rm -f $(addprefix $(DESTDIR)$(BINDIR)/,$(PROGRAMS))
	rm -f $(addprefix $(DESTDIR)$(UNITDIR)/,$(notdir $(wildcard systemd/*.service)))
	rm -f $(DESTDIR)$(UDEVDIR)/90-keyhold.rules
	rm -f $(addprefix $(DESTDIR)$(SYSUSERSDIR)/,$(notdir $(wildcard packaging/sysusers.d/*.conf)))
	rm -f $(addprefix $(DESTDIR)$(TMPFILESDIR)/,$(notdir $(wildcard packaging/tmpfiles.d/*.conf)))
	rm -f $(addprefix $(DESTDIR)$(BASHCOMPDIR)/,$(PROGRAMS)) $(addprefix $(DESTDIR)$(ZSHCOMPDIR)/_,$(PROGRAMS)) \
	  $(addsuffix .fish,$(addprefix $(DESTDIR)$(FISHCOMPDIR)/,$(PROGRAMS)))
	rm -f $(addsuffix .1.gz,$(addprefix $(DESTDIR)$(MANDIR)/man1/,$(PROGRAMS)))
	rm -f $(addprefix $(DESTDIR)$(DOCDIR)/,$(notdir $(wildcard docs/spec/*.md)))
	-rmdir $(DESTDIR)$(DOCDIR) 2>/dev/null
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; udevadm control --reload 2>/dev/null || true; fi

clean:
	rm -rf .build fuzz/out
