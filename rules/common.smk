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


def encode_runtime(wildcards, input, attempt):
    """Minutes of wall time for one encode_shard job, from the size of its audio.tar and the attempt.

    20 min for start-up (model load, staging) plus 1 min per 25 MB of FLAC: a shard of ~28 h of 16 kHz
    speech (~1.9 GB) gets ~96 min, about twice what it needs at 40x real time on one GPU. A retry gets
    twice (then three times) as long. Override per site in the profile (set-resources).
    """
    return int(attempt * (20 + input.size_mb / 25))


def audit_targets():
    return [f"{OUTPUT}/audit/{s}.json" for s in (config["audit"]["shards"] or SHARDS)]
