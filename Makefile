# Two commands do all set-up on a fresh machine:
#   make demo   install, then run the toy optimiser sweep -> analysis -> report (CPU, offline)
#   make test   install with test extras, then run the test suite
PY ?= python3
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: install install-dev demo test test-fast test-numerics lint

# torch first, pinned: an open range would pull a multi-GB CUDA build
install:
	$(PIP) torch==2.13.0
	$(PIP) -e .

install-dev:
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev]"

demo: install
	evilspectra demo --out demo

# in a random order (pytest-randomly; its seed is printed, `--randomly-seed=N` replays it)
test: install-dev
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2

# the edit-test loop: every test not marked slow (make test still runs them all)
test-fast: install-dev
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 -m "not slow"

# the tests whose figures depend on the CPU's float kernels, for a rerun under another code path:
#   MKL_CBWR=COMPATIBLE ATEN_CPU_CAPABILITY=default make test-numerics
NUMERICS := tests/test_multiprocess.py tests/test_families.py tests/test_fast.py tests/test_reliability.py
test-numerics: install-dev
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 $(NUMERICS)

lint: install-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
