# Helpers shared by the rules: config validation, shard discovery, paths.
from snakemake.utils import min_version, validate

from neucodec_workflow.shards import METADATA, TAR, TOKENS, shard_list


min_version("9.0")


validate(config, schema="../config/config.schema.yaml")

CORPUS = config["corpus"].rstrip("/")
OUTPUT = config["output"].rstrip("/")
SHARDS = shard_list(CORPUS, config.get("shards"), config.get("shards_file"))


wildcard_constraints:
    shard=r"[^.][^\s]*",


def shard_path(shard, name):
    return f"{CORPUS}/{shard}/{name}"


def all_of(name):
    return [shard_path(s, name) for s in SHARDS]


def all_reports():
    return [f"{OUTPUT}/shards/{s}.json" for s in SHARDS]
