#!/usr/bin/env bash
# Installs this workflow's own package (neucodec_workflow) into the conda env of envs/encode.yaml.
#
# Snakemake (9.27.1, snakemake/deployment/conda.py, Env.create) runs it once, right after `conda env create`: it copies
# it to <env prefix>.post-deploy.sh and runs `source activate <env prefix>; bash <env prefix>.post-deploy.sh` from its
# working directory. A relative pip entry in the yaml cannot do this job: conda resolves it against the copy of the yaml
# that Snakemake writes beside the env (.snakemake/conda/<hash>.yaml, or under --conda-prefix), not against envs/.
#
# The install is editable, like `make setup`: the env runs the code of the clone it was created from, so a `git pull`
# takes effect without rebuilding the env (Snakemake's env hash covers the yaml and this script, not src/). --no-deps:
# the dependencies are exactly the pins in the yaml.
# Source tree: $NEUCODEC_WORKFLOW_SRC if set, else the first directory from the working directory upward whose
# pyproject.toml is this project's (snakemake run in the clone, or with --directory inside it).
set -euo pipefail

# What the rules import (scripts/encode_shard.py, scripts/audit_shard.py); the tested upstream versions.
CHECK='import neucodec, neucodec_workflow.workflow.encode_jobs, neucodec_workflow.engine.codec, neucodec_workflow.engine.device
import neucodec_workflow.engine.engine, neucodec_workflow.engine.reference, neucodec_workflow.shard.encode
import neucodec_workflow.shard.audit, neucodec_workflow.storage.streams
from neucodec_workflow import upstream; upstream.require("neucodec", "transformers", "torch")'

is_project() { grep -qs '^name = "neucodec-workflow"$' "$1/pyproject.toml"; }

src="${NEUCODEC_WORKFLOW_SRC:-}"
if [ -z "$src" ]; then
  dir="$PWD"
  while ! is_project "$dir" && [ "$dir" != / ]; do dir="$(dirname "$dir")"; done
  is_project "$dir" && src="$dir"
fi
if [ -z "$src" ] || ! is_project "$src"; then
  echo "post-deploy: no neucodec-workflow source tree at NEUCODEC_WORKFLOW_SRC='${NEUCODEC_WORKFLOW_SRC:-}'" \
    "nor upward from $PWD; set NEUCODEC_WORKFLOW_SRC to the clone that holds the Snakefile" >&2
  exit 1
fi

# The env: the prefix Snakemake named this copy after (robust even if activation failed), else the active env.
prefix="${0%.post-deploy.sh}"
[ -d "$prefix/conda-meta" ] || prefix="${CONDA_PREFIX:?post-deploy: not in a conda environment}"
py="$prefix/bin/python"

echo "post-deploy: pip install --no-deps --editable $src into $prefix"
"$py" -m pip install --quiet --no-deps --editable "$src"
# pip check, less this package's own requirements: it declares the whole project's (snakemake, and torch, which the
# dataset env leaves out on purpose); the rules' needs are checked by importing them.
broken="$("$py" -m pip check | grep -v -e '^neucodec-workflow ' -e '^No broken requirements found' || true)"
if [ -n "$broken" ]; then
  echo "post-deploy: pip check: $broken" >&2
  exit 1
fi
"$py" -c "$CHECK"
