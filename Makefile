# Two commands on a fresh Linux machine (python3 with venv, make):
#   make demo   set up, then segment the example CT (total --fast): labelmap, statistics, 3D preview
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-mrml-stable benchmark clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt -e ".[test]"
	# the official tool's RTSTRUCT writer (parity reference); its opencv-python needs GUI libraries: headless cv2 instead
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt --no-deps rt-utils
	touch $@

demo: setup
	$(PY) Testing/demo.py

test: setup test-mrml-stable
	$(PY) -m pytest

# The tests that use real MRML run on two builds: the preview slicer-core pinned in
# constraints.txt (the venv; above) and the stable release's, installed here into a folder
# that goes first on PYTHONPATH (no second venv). The session header names the build.
SLICER_CORE_STABLE_VERSION := 5.12.4.0
SLICER_CORE_STABLE_PINS := slicer-core==$(SLICER_CORE_STABLE_VERSION) vtk==9.6.0
SLICER_CORE_STABLE := .slicer-core-stable
# Which tests the second pass runs (all that use MRML; `MRML_STABLE_TESTS=Testing/mrml` narrows it).
MRML_STABLE_TESTS ?= -m mrml

$(SLICER_CORE_STABLE)/.installed-$(SLICER_CORE_STABLE_VERSION): | setup
	rm -rf $(SLICER_CORE_STABLE)
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --target $(SLICER_CORE_STABLE) $(SLICER_CORE_STABLE_PINS)
	touch $@

test-mrml-stable: setup $(SLICER_CORE_STABLE)/.installed-$(SLICER_CORE_STABLE_VERSION)
	PYTHONPATH=$(CURDIR)/$(SLICER_CORE_STABLE) SLICER_CORE_EXPECTED=$(SLICER_CORE_STABLE_VERSION) $(PY) -m pytest $(MRML_STABLE_TESTS)

benchmark: setup
	$(PY) Testing/benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache $(SLICER_CORE_STABLE)
