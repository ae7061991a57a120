# Build, install and test entry points. `make install PREFIX=/usr/local`
# installs the libraries, headers and pkg-config file; `make test` runs
# every test suite (the README's test command and CI both call it).

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
DESTDIR ?=
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
SONAME_MAJOR := 1
CARGO ?= cargo
PROFILE ?= release
TARGET_DIR ?= target
BUILD_DIR := $(TARGET_DIR)/$(PROFILE)
# A staged install used by the C and Python tests.
STAGE := $(abspath $(TARGET_DIR))/stage

.PHONY: demo all build install stage header test test-deps test-rust test-c test-python test-kernel clean bench

all: build

build:
	$(CARGO) build --profile $(PROFILE)

install: build
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(PREFIX)/include/o2dlm $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(BUILD_DIR)/libo2dlm.so $(DESTDIR)$(LIBDIR)/libo2dlm.so.$(VERSION)
	ln -sf libo2dlm.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libo2dlm.so.$(SONAME_MAJOR)
	ln -sf libo2dlm.so.$(SONAME_MAJOR) $(DESTDIR)$(LIBDIR)/libo2dlm.so
	install -m 0644 $(BUILD_DIR)/libo2dlm.a $(DESTDIR)$(LIBDIR)/libo2dlm.a
	install -m 0644 include/o2dlm/o2dlm.h include/o2dlm/o2dlm_err.h $(DESTDIR)$(PREFIX)/include/o2dlm/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@VERSION@|$(VERSION)|' \
		pkgconfig/o2dlm.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/o2dlm.pc
	install -m 0755 $(BUILD_DIR)/o2dlm $(DESTDIR)$(PREFIX)/bin/o2dlm

# Install into target/stage/usr/local, as a user would, for the tests.
stage:
	$(MAKE) install DESTDIR=$(STAGE) PREFIX=/usr/local
	sed -i 's|^prefix=.*|prefix=$(STAGE)/usr/local|; s|^libdir=.*|libdir=$(STAGE)/usr/local/lib|' \
		$(STAGE)/usr/local/lib/pkgconfig/o2dlm.pc

# Regenerate the checked-in headers from the Rust source.
header:
	O2DLM_UPDATE_HEADERS=1 $(CARGO) test --test headers

clean:
	$(CARGO) clean

# The whole test suite: Rust units and integration tests, then the C and
# Python suites against a staged install, then the kernel (qemu) tests.
test: test-deps test-rust stage test-c test-python test-kernel

test-deps:
	./tools/install-test-deps.sh

test-rust:
	$(CARGO) test --release

test-c: stage
	PKG_CONFIG_PATH=$(STAGE)/usr/local/lib/pkgconfig ./c-tests/run.sh

test-python: stage
	O2DLM_LIB=$(STAGE)/usr/local/lib/libo2dlm.so.1 python3 -m pytest -q -m "not kernel" python-tests

# Real Linux kernels with the o2cb stack in qemu (python-tests/kernel).
# O2DLM_SKIP_KERNEL=1 reports them as skipped.
test-kernel: stage
	O2DLM_STAGE=$(STAGE)/usr/local python3 -m pytest -v -m kernel python-tests/kernel

# The README's main command.
demo:
	./tools/demo.sh

# Benchmarks (issue 7): builds benches/ (its own crate) in release mode and
# runs it; prints the table and writes benches/results/. BENCH_ARGS=--quick
# for a ~1 minute run.
BENCH_ARGS ?=
bench:
	./benches/install-deps.sh
	cd benches && $(CARGO) run --release -- $(BENCH_ARGS)
