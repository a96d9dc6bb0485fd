# Two commands a learner needs:  make lab   (open the course)   make test   (run every check)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0

.PHONY: install lab test test-fast notebooks bench bench-quick check site lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)        # CPU build first, so nothing pulls a CUDA torch
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lab: install  # --allow-root only where it is needed (containers run as root)
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/00_start_here.ipynb

test: install
	$(PY) -m pytest tests -q
	@nbs=$$(ls notebooks/*.ipynb solutions/*.ipynb exercises/*.ipynb 2>/dev/null); \
	if [ -n "$$nbs" ]; then $(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg $$nbs; fi

test-fast: install
	$(PY) -m pytest tests -q -m "not browser and not slow"

bench: install
	$(PY) -m benchmarks.run

bench-quick: install
	$(PY) -m benchmarks.run --quick

check: install
	$(PY) -m cblab_teach.checks $(EX)

site: install
	$(PY) scripts/build_site.py

lint: install
	$(VENV)/bin/ruff check cblab_teach tests benchmarks scripts

clean:
	rm -rf $(VENV) site build *.egg-info .pytest_cache
