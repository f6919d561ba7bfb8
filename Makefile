# Two commands on a fresh Linux machine (python3 with venv, make):
#   make demo   set up, then segment the example CT (total --fast): labelmap, statistics, 3D preview
#   make test   set up, build the test models, run the test suite; prints how long each step took
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# --no-compile: no .pyc for the thousands of modules nobody imports (Python writes them on first import)
PIP := $(PY) -m pip install --disable-pip-version-check -q --no-compile -c constraints.txt
# PyTorch's index of CPU-only wheels: on Linux, PyPI's torch wheel brings GBs of CUDA libraries
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

# pytest workers for `make test` (pytest-xdist; a file's tests stay on one worker)
TEST_WORKERS ?= 2

.PHONY: setup setup-mrml-stable testmodels demo test test-mrml-stable benchmark clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ "$$(uname -s)" = Linux ] && $(PY) -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=5)" 2>/dev/null; then \
		echo "Installing the CPU build of torch from $(TORCH_CPU_INDEX)"; \
		$(PIP) --index-url $(TORCH_CPU_INDEX) torch || echo "(that failed: torch comes with the other packages)"; \
	fi
	$(PIP) -e ".[test]"
	# the official tool's RTSTRUCT writer (parity reference); its opencv-python needs GUI libraries: headless cv2 instead
	$(PIP) --no-deps rt-utils
	@$(PY) -c "import torch; print('torch', torch.__version__, '(with CUDA %s)' % torch.version.cuda if torch.version.cuda else '(CPU build)')"
	touch $@

# the known-output and the fitted test models (Testing/support/testmodels.py), once per content
testmodels: setup
	$(PY) Testing/support/testmodels.py --all

demo: setup
	$(PY) Testing/demo.py

# Set-up, test models, the whole suite, then the MRML tests again on the stable slicer-core;
# each step's time is printed at the end. Any failure fails, pytest's exit 5 (no tests) too.
test:
	@t0=$$(date +%s); \
	$(MAKE) --no-print-directory setup setup-mrml-stable || exit $$?; t1=$$(date +%s); \
	$(MAKE) --no-print-directory testmodels || exit $$?; t2=$$(date +%s); \
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile; rc=$$?; t3=$$(date +%s); \
	$(MAKE) --no-print-directory test-mrml-stable; rc2=$$?; t4=$$(date +%s); \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure, not a pass"; fi; \
	echo "make test: set-up $$((t1 - t0)) s, test models $$((t2 - t1)) s, tests $$((t3 - t2)) s +" \
	     "MRML tests on the stable slicer-core $$((t4 - t3)) s, total $$((t4 - t0)) s"; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi; exit $$rc2

# The tests that use real MRML run on two builds: the preview slicer-core pinned in
# constraints.txt (the venv; above) and the stable release's, installed here into a folder
# that goes first on PYTHONPATH (no second venv). The session header names the build.
SLICER_CORE_STABLE_VERSION := 5.12.4.0
SLICER_CORE_STABLE_PINS := slicer-core==$(SLICER_CORE_STABLE_VERSION) vtk==9.6.0
SLICER_CORE_STABLE := .slicer-core-stable
# Which tests the second pass runs: the MRML code itself (Testing/mrml: scenes, import, terminology,
# vessel review, the batch script) and the module's start-up registration; `MRML_STABLE_TESTS="-m mrml"`
# runs every test that uses MRML (the panel and job tests too: about 3 more minutes).
MRML_STABLE_TESTS ?= Testing/mrml Testing/module/test_startup.py Testing/module/test_review_edit.py

$(SLICER_CORE_STABLE)/.installed-$(SLICER_CORE_STABLE_VERSION): | setup
	rm -rf $(SLICER_CORE_STABLE)
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --target $(SLICER_CORE_STABLE) $(SLICER_CORE_STABLE_PINS)
	touch $@

setup-mrml-stable: setup $(SLICER_CORE_STABLE)/.installed-$(SLICER_CORE_STABLE_VERSION)

test-mrml-stable: setup-mrml-stable testmodels
	PYTHONPATH=$(CURDIR)/$(SLICER_CORE_STABLE) SLICER_CORE_EXPECTED=$(SLICER_CORE_STABLE_VERSION) $(PY) -m pytest $(MRML_STABLE_TESTS)

benchmark: setup
	$(PY) Testing/benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache $(SLICER_CORE_STABLE)
