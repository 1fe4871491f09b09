# make setup      : .venv with the pinned dependencies (PyPI only) and this package
# make demo       : setup + build the small demo corpus + run the whole workflow on the CPU
# make test       : setup + lint, test-fast, test-workflow (the README's test command; CI runs it, then the suites below)
# make lint       : ruff check, ruff format --check, snakefmt --check, snakemake --lint, mypy (about a minute)
# make test-fast  : unit tests, no Snakemake runs (a few minutes)
# make test-workflow : the tests that run Snakemake itself (local, S3), and the slow unit tests
# make chromium   : headless Chromium + chromium-driver from Debian's packages (tests/test_report.py; root + apt)
# make ceph       : Ceph's radosgw, ceph-mon and ceph-osd from Debian's packages (tests/test_ceph.py; ~40 s, root + apt)
# make test-faults : the workflow through the S3 fault-injecting proxy (5 % and 20 % faults; ~2.5 min); CI runs it too
# make test-watching : status after a real run, the HTML report of a demo run opened in headless Chromium (~4 min); CI too
# make test-kills : the SIGKILL loop (>= 20 kills of real runs and the reruns after them; minutes); CI runs it too
# make test-gpu-check : the one-call GPU check dry-run on the CPU (~4 min); CI runs it too
# make test-ceph  : the workflow against a real Ceph radosgw over HTTPS (~2.5 min; root + apt); CI runs it too
# make test-slurm : the gpu-cluster profile on a real single-node SLURM (~3 min; root on Debian); CI runs it too
# make bench      : setup + the encoder benchmark
# make bench-sft  : setup + the multilingual_tts format benchmark (one core: speech tokens/s, voice-cloning pairs)
# make bench-jobs : setup + an encode job's fixed cost: Snakemake's encode rule over small shards (one JSON line)
# make gpu-wheels : the wheels a bare GPU machine lacks (CPython 3.12, manylinux x86_64) into .whl/
# make gpu-check  : the one-call GPU check (benchmarks/gpu_check.sh) with this machine's device
VENV ?= .venv
PY := $(VENV)/bin/python
WEIGHTS ?= random
STAMP := $(VENV)/.installed

PY_SOURCES := src tests scripts benchmarks
FAST := not workflow and not slurm and not slow and not gpu_check
# Suites of their own, after `make test` in CI (.ci/run): they hold `make test` under 30 minutes on 2 cores.
OWN_STEPS := kills or gpu_check or ceph or slurm or faults or watching

.PHONY: setup espeak chromium ceph demo test lint test-fast test-workflow test-faults test-watching test-kills test-gpu-check test-ceph test-slurm bench bench-sft bench-jobs gpu-wheels gpu-check clean-demo

setup: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "import neucodec, snakemake, streaming, phonemizer, neucodec_workflow"
	touch $@

# espeak-ng gives the demo real speech; installed from Debian's packages where apt is available.
espeak:
	@command -v espeak-ng >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get install -y -qq --no-install-recommends espeak-ng >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends espeak-ng >/dev/null)) ; } || \
	  echo "espeak-ng not available: the demo uses a synthetic speech-like signal"

# Headless Chromium opens the HTML report in tests/test_report.py (Selenium drives it through chromium-driver); from
# Debian's packages where apt is available, else that test is skipped and says why.
CHROMIUM_PACKAGES := chromium chromium-driver
chromium:
	@{ command -v chromium && command -v chromedriver; } >/dev/null || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(CHROMIUM_PACKAGES) >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(CHROMIUM_PACKAGES) >/dev/null)) ; } || \
	  echo "Chromium ($(CHROMIUM_PACKAGES)) not available (needs root and apt): the report's browser test is skipped"

# Ceph's radosgw on a one-node cluster on loopback is the real S3 server of tests/test_ceph.py (HTTPS); from
# Debian's packages where apt is available (radosgw alone does not pull ceph-mon and ceph-osd without recommends).
CEPH_PACKAGES := radosgw ceph-mon ceph-osd
ceph:
	@{ command -v radosgw && command -v ceph-mon && command -v ceph-osd; } >/dev/null || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(CEPH_PACKAGES) >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(CEPH_PACKAGES) >/dev/null)) ; } || \
	  echo "Ceph ($(CEPH_PACKAGES)) not available (needs root and apt): tests/test_ceph.py is skipped"

demo: setup espeak
	$(PY) -m neucodec_workflow.demo --weights $(WEIGHTS)
	@echo "--- where the run stands (neucodec-workflow status; docs/watching.md):"
	$(VENV)/bin/neucodec-workflow status --config corpus=demo/corpus output=demo/output
	@echo "--- the HTML report (snakemake --report; docs/watching.md): open demo/report.html in a browser"

test: lint test-fast test-workflow

# snakemake --lint parses the workflow, which discovers shards: it gets a throw-away corpus of one (empty) shard.
lint: setup
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/ruff format --check $(PY_SOURCES)
	$(VENV)/bin/snakefmt --check Snakefile rules
	@tmp=$$(mktemp -d) && mkdir -p $$tmp/corpus/lint && touch $$tmp/corpus/lint/audio.tar && \
	  $(VENV)/bin/snakemake --lint --snakefile Snakefile --directory $$tmp --configfile config/config.yaml \
	    --workflow-profile profiles/default --config corpus=$$tmp/corpus output=$$tmp/out; \
	  rc=$$?; rm -rf $$tmp; exit $$rc
	$(VENV)/bin/mypy

test-fast: setup espeak
	$(VENV)/bin/pytest -m "$(FAST)" --durations=10

test-workflow: setup espeak
	$(VENV)/bin/pytest -m "not ($(FAST)) and not ($(OWN_STEPS))" --durations=10

test-faults: setup
	$(VENV)/bin/pytest -m faults --durations=10

test-watching: setup espeak chromium
	$(VENV)/bin/pytest -m watching --durations=10

test-kills: setup
	$(VENV)/bin/pytest -m kills --durations=10

test-gpu-check: setup
	$(VENV)/bin/pytest -m gpu_check --durations=10

test-ceph: setup ceph
	$(VENV)/bin/pytest -m ceph --durations=10

test-slurm: setup
	$(VENV)/bin/pytest -m slurm --durations=10

bench: setup
	$(PY) benchmarks/encoder.py $(BENCH_ARGS)

bench-sft: setup
	$(PY) benchmarks/sft.py $(BENCH_ARGS)

bench-jobs: setup
	$(PY) benchmarks/jobs.py --compare-own-process $(BENCH_ARGS)

gpu-wheels: setup
	$(PY) benchmarks/gpu_wheels.py --dest .whl

# On a GPU machine with .whl/ beside the repo and no .venv, run the script directly: bash benchmarks/gpu_check.sh
gpu-check: setup
	GPU_CHECK_INSTALL=0 PYTHON=$(PY) bash benchmarks/gpu_check.sh $(GPU_CHECK_ARGS)

clean-demo:
	rm -rf demo/ .snakemake/

# envs/*.yaml: each pip section resolves against the package index as pinned (pip --dry-run; no conda, no big downloads)
.PHONY: check-envs
check-envs: setup
	$(PY) .ci/check_envs.py
