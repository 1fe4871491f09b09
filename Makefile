# make setup : .venv with the pinned dependencies (PyPI only) and this package
# make demo  : setup + build the small demo corpus + run the whole workflow on the CPU
# make test  : setup + the whole test suite (what CI runs)
# make bench : setup + the encoder benchmark
VENV ?= .venv
PY := $(VENV)/bin/python
WEIGHTS ?= random
STAMP := $(VENV)/.installed

.PHONY: setup espeak demo test lint bench clean-demo

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "import neucodec, snakemake, neucodec_workflow"
	touch $@

# espeak-ng gives the demo real speech; installed from Debian's packages where apt is available.
espeak:
	@command -v espeak-ng >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get install -y -qq --no-install-recommends espeak-ng >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends espeak-ng >/dev/null)) ; } || \
	  echo "espeak-ng not available: the demo uses a synthetic speech-like signal"

demo: setup espeak
	$(PY) -m neucodec_workflow.testing.demo --weights $(WEIGHTS)

test: setup
	$(VENV)/bin/pytest

lint: setup
	$(VENV)/bin/ruff check src tests scripts benchmarks
	$(PY) -c "from pathlib import Path; from neucodec_workflow.testing.synth import make_demo_corpus as m; p = Path('demo/corpus'); p.exists() or m(p, use_espeak=False)"
	$(VENV)/bin/snakemake --lint

bench: setup
	$(PY) benchmarks/encoder.py $(BENCH_ARGS)

clean-demo:
	rm -rf demo/ .snakemake/
