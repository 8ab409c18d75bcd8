# Makefile — the everyday entry points. Each target creates .venv when missing and
# (re)installs pipec into it, editable, when csrc/, setup.py, pyproject.toml or the build
# settings changed since the last install.
#
#   make demo     train the example MLP (examples/train_mlp.py)
#   make test     the Python test suite (pytest tests)
#   make bench    CPU op benchmarks (bench/ops_cpu.py; BENCH=... to choose others)
#   make ctest    the C tests under tests/c/ (no Python), against a CPU-only static library
#   make clean    build outputs; `make distclean` also removes .venv
#
# Settings (environment or `make VAR=...`):
#   PIPEC_CUDA=auto|0|1  CUDA build: auto = on iff nvcc is found (see setup.py)
#   PIPEC_WERROR=1       warnings fail the build (CI)
#   PYTHON=python3       interpreter that creates the venv; VENV=.venv its location

PYTHON       ?= python3
VENV         ?= .venv
PIPEC_CUDA   ?= auto
PIPEC_WERROR ?= 0
BENCH        ?= bench/ops_cpu.py
export PIPEC_CUDA PIPEC_WERROR

PY      := $(VENV)/bin/python
DEPS    := $(VENV)/.pipec-deps
CONFIG  := $(VENV)/.pipec-config
INSTALL := $(VENV)/.pipec-installed
SOURCES := $(shell find csrc -name '*.c' -o -name '*.h' -o -name '*.cu' 2>/dev/null) \
           setup.py pyproject.toml

.PHONY: all demo test bench ctest install clean distclean FORCE
all: install

# ---- environment and install ----

$(PY):
	$(PYTHON) -m venv $(VENV)

# Build and test dependencies. scipy-openblas32 is installed before pipec is built so that
# setup.py links the wheel's OpenBLAS (it falls back to the system OpenBLAS without it).
# --no-build-isolation below reuses these instead of fetching a build environment.
$(DEPS): | $(PY)
	$(PY) -m pip install -q "setuptools>=64" wheel numpy pytest scipy-openblas32
	@touch $@

# Rewritten only when the build settings change, so that a change triggers a rebuild.
$(CONFIG): FORCE | $(PY)
	@echo "PIPEC_CUDA=$(PIPEC_CUDA) PIPEC_WERROR=$(PIPEC_WERROR)" > $@.new
	@cmp -s $@.new $@ && rm -f $@.new || mv -f $@.new $@

$(INSTALL): $(DEPS) $(CONFIG) $(SOURCES)
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	@$(PY) -c "import pipec._C" || { echo "pipec._C built but does not import (see above)"; exit 1; }
	@touch $@

install: $(INSTALL)

# ---- targets ----

demo: $(INSTALL)
	$(PY) examples/train_mlp.py

test: $(INSTALL)
	$(PY) -m pytest -q tests

bench: $(INSTALL)
	@for b in $(BENCH); do echo "== $$b"; $(PY) $$b || exit 1; done

# ---- C tests: every csrc .c outside csrc/py/ in a static library, CPU only ----

CT_DIR   := build/ctest
CT_SRCS  := $(filter-out csrc/py/%,$(shell find csrc -name '*.c' 2>/dev/null))
CT_OBJS  := $(patsubst csrc/%.c,$(CT_DIR)/obj/%.o,$(CT_SRCS))
CT_LIB   := $(CT_DIR)/libpipec_core.a
CT_TESTS := $(filter-out %_stub.c,$(wildcard tests/c/test_*.c))
CT_WERR  := $(if $(filter 1,$(PIPEC_WERROR)),-Werror,)
CT_CFLAGS = -std=c11 -O2 -g -Wall -Wextra $(CT_WERR) -Icsrc $(BLAS_CFLAGS)
# BLAS flags from the venv's scipy-openblas32 when present, else the system OpenBLAS.
BLAS_CFLAGS = $(shell $(PY) -c "import scipy_openblas32 as s; print('-DPC_BLAS_SCIPY=1 -I' + s.get_include_dir())" 2>/dev/null)
BLAS_LIBS   = $(shell $(PY) -c "import scipy_openblas32 as s; d = s.get_lib_dir(); print('-L' + d, '-lscipy_openblas', '-Wl,-rpath,' + d)" 2>/dev/null || echo -lopenblas)

$(CT_DIR)/obj/%.o: csrc/%.c $(wildcard csrc/*/*.h csrc/*/*/*.h) | $(DEPS)
	@mkdir -p $(dir $@)
	$(CC) $(CT_CFLAGS) -c $< -o $@

$(CT_LIB): $(CT_OBJS)
	@rm -f $@
	ar rcs $@ $^

# A test with its own makefile (tests/c/Makefile.NAME) is built by it; every other
# tests/c/test_NAME.c is linked against the library.
ctest: $(CT_LIB) | $(DEPS)
	@set -e; fails=0; \
	for src in $(CT_TESTS); do \
	  name=$$(basename $$src .c); short=$${name#test_}; \
	  echo "== $$name"; \
	  if [ -f tests/c/Makefile.$$short ]; then \
	    $(MAKE) --no-print-directory -C tests/c -f Makefile.$$short || fails=$$((fails + 1)); \
	  else \
	    $(CC) $(CT_CFLAGS) $$src $(CT_LIB) $(BLAS_LIBS) -lm -lpthread -o $(CT_DIR)/$$name \
	      && ./$(CT_DIR)/$$name || fails=$$((fails + 1)); \
	  fi; \
	done; \
	if [ $$fails -ne 0 ]; then echo "ctest: $$fails C test(s) failed"; exit 1; fi; \
	echo "ctest: all C tests passed"

# ---- cleaning ----

clean:
	rm -rf build dist *.egg-info pipec/_C*.so .pytest_cache $(INSTALL) $(CONFIG)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print | xargs rm -rf

distclean: clean
	rm -rf $(VENV)

FORCE:
