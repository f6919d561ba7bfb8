# Two commands on a fresh Linux machine (python3 with venv, make):
#   make demo   set up, then segment the example CT (total --fast): labelmap, statistics, 3D preview
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test benchmark clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt -e ".[test]"
	# the official tool's RTSTRUCT writer (parity reference); its opencv-python needs GUI libraries: headless cv2 instead
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt --no-deps rt-utils
	touch $@

demo: setup
	$(PY) Testing/demo.py

test: setup
	$(PY) -m pytest

benchmark: setup
	$(PY) Testing/benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
