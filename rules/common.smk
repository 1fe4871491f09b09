# Helpers shared by the rules: config validation, shard discovery, paths (local or S3 through the storage plugin).
import atexit
import datetime
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.io import get_flag_value
from snakemake.utils import min_version, validate

from neucodec_workflow.workflow import plan, recovery
from neucodec_workflow.record import layout
from neucodec_workflow.record.contract import METADATA, TAR, TOKENS
from neucodec_workflow.dataset import formats
from neucodec_workflow.workflow.plan import derive_batches, one_of
from neucodec_workflow.storage import digests, plugin, s3, uploads
from neucodec_workflow.storage.discovery import shard_list

min_version("9.0")

# envs/*.post-deploy.sh install this package from the workflow's own source tree into each new conda env.
os.environ.setdefault("NEUCODEC_WORKFLOW_SRC", workflow.basedir)


validate(config, schema="../config/config.schema.yaml")

CORPUS = config["corpus"].rstrip("/")
OUTPUT = config["output"].rstrip("/")
# Logs and benchmarks always stay on local disk (the plugin would otherwise upload each one).
LOCAL = layout.logs_root(OUTPUT, config["local_dir"], s3.is_s3(OUTPUT))
SPLITS = ["train", "validation"] if config["sft"]["validation_fraction"] > 0 else ["train"]
# The training-data formats, each under OUTPUT/{root}; their layouts: neucodec_workflow/dataset/formats.py.
FORMATS = config["sft"]["formats"]
if config["sft"]["push_to_hub"] and formats.HF not in FORMATS:
    raise WorkflowError("sft.push_to_hub pushes the hf format: add hf to sft.formats")
SFT = formats.ROOTS[formats.HF]  # the hf format (and the Hub push): data/{split}/{shard}.parquet, README.md, index.json

# A job's own Snakemake process (a cluster job, or each job of a group job) plans only the shards it runs, which
# Snakemake hands it (--target-jobs); None in the process a user started: every shard.
JOB_SHARDS = None if workflow.is_main_process else plan.job_shards(sys.argv)
# S3 corpus/output: one listing of these prefixes per run answers every exists/mtime/size question of the storage
# plugin and the shard discovery (docs/s3.md); a job's process lists only its shards' folders. Endpoint, region and
# keys come from the plugin's settings.
S3_ROOTS = [p for p in (CORPUS, OUTPUT) if s3.is_s3(p)]
S3_LISTED = S3_ROOTS if JOB_SHARDS is None else [f"{CORPUS}/{s}" for s in JOB_SHARDS if s3.is_s3(CORPUS)]
# Jobs upload what they make in S3 themselves (the token file, reports, dataset parts: one at a time, never twice)
# and record each upload here, where the inventory finds it when Snakemake checks the outputs after a job that ran
# in this process; outputs of jobs elsewhere (cluster nodes) are looked up once each (storage/uploads.py).
UPLOAD_RECEIPTS = str(recovery.receipts_dir(Path(".snakemake").resolve())) if S3_ROOTS else None
# The storage plugin's provider (its settings; local copies at {local_prefix}/{bucket}/{key}: local_copy()).
S3_PROVIDER = get_flag_value(storage.s3(f"{S3_ROOTS[0]}/_"), "storage_object").provider if S3_ROOTS else None
if S3_PROVIDER is not None and workflow.remote_exec:
    # a cluster job leaves nothing on its node: its files are removed by the job, the folders when it exits
    atexit.register(recovery.remove_empty_tree, S3_PROVIDER.local_prefix)
S3_INVENTORY = (
    plugin.activate(
        S3_PROVIDER.settings, S3_ROOTS, receipts=UPLOAD_RECEIPTS and Path(UPLOAD_RECEIPTS), listed=S3_LISTED
    )
    if S3_ROOTS
    else None
)
if S3_INVENTORY is not None and not workflow.is_main_process:
    S3_INVENTORY.go_live()  # a job's process: what its listing lacks is looked up (the main one: from onstart)


def written_here(url):
    """Whether the workflow writes this s3:// URL: anything under the output, a token file in the corpus."""
    return url.startswith(f"{OUTPUT}/") or (url.startswith(f"{CORPUS}/") and url.rpartition("/")[2] == TOKENS)


def storage_at_start():
    """onstart (this run holds its lock, no job has begun): from now on the S3 outputs of the jobs that run elsewhere
    (cluster jobs) are looked up when the listing lacks them (what this process or its own jobs write, it knows),
    and multipart uploads that killed jobs left open under our outputs are aborted."""
    if S3_INVENTORY is None:
        return
    if not workflow.local_exec:
        elsewhere = [
            f.storage_object.query
            for job in workflow.dag.needrun_jobs()
            if not job.is_local
            for f in job.output
            if f.is_storage
        ]
        S3_INVENTORY.go_live(expected=elsewhere)
    aborted = uploads.abort_abandoned_uploads(S3_INVENTORY.client, S3_INVENTORY.roots, written_here)
    if aborted:
        print(
            f"neucodec-workflow: aborted {len(aborted)} unfinished upload(s) of killed jobs: {aborted[:5]}",
            file=sys.stderr,
        )


SHARDS = JOB_SHARDS or shard_list(CORPUS, config["shards"], config["shards_file"], inventory=S3_INVENTORY)


ANY_SHARD = r"[^.][^\s]*"


wildcard_constraints:
    shard=ANY_SHARD,


def tracked(path, retrieve=True):
    """A file target: an s3:// URL through the storage plugin (retrieve=False: tracked, never downloaded)."""
    return storage.s3(path, retrieve=retrieve) if s3.is_s3(path) else path


def shard_path(shard, name):
    """Where a shard's file lives: a local path or an s3:// URL (what jobs read and stream)."""
    return f"{CORPUS}/{shard}/{name}"


def shard_file(shard, name, retrieve=True):
    return tracked(shard_path(shard, name), retrieve)


def output_file(name, retrieve=True):
    return tracked(f"{OUTPUT}/{name}", retrieve)


def all_of(name):
    return [shard_path(s, name) for s in SHARDS]


def local_corpus_files(name):
    """Every shard's file as a tracked input when the corpus is local; none when it is in S3 (jobs read the
    bucket one shard at a time, and the reports carry the dependency)."""
    return [] if s3.is_s3(CORPUS) else all_of(name)


# S3 output: each derive job sends one digest of its reports here, and summarize reads them (storage/digests.py).
REPORT_DIGESTS = digests.folder(OUTPUT) if s3.is_s3(OUTPUT) else None


# (format, split) of each dataset part of a shard, in the order of derived_files()["parts"]
PART_KEYS = [(fmt, split) for fmt in FORMATS for split in SPLITS]


def part_paths(shard):
    """A shard's dataset parts, one per format and split (PART_KEYS), relative to OUTPUT."""
    return [f"{formats.ROOTS[f]}/{formats.part_path(f, x, shard)}" for f, x in PART_KEYS]


def derived_files(shard):
    """What is derived from a shard's token file: its report and its dataset parts (one per format and split). In
    S3 they are never downloaded nor uploaded by Snakemake: the derive job sends each one as soon as it is written
    (so a batch holds one file on local disk, not all of them until it ends; storage/uploads.py)."""
    return {
        "reports": [output_file(layout.report_path(shard), retrieve=False)],
        "parts": [output_file(p, retrieve=False) for p in part_paths(shard)],
    }


def summary_files():
    """What summarize writes: stats.json, shards.parquet (a row per shard) and, per format, the small files that tie
    the parts together."""
    files = {"stats": output_file(layout.STATS), "shards": output_file(layout.SHARD_TABLE)}
    for fmt in FORMATS:
        for name, path in formats.summary_files(fmt, SPLITS).items():
            files[f"{fmt}_{name}"] = output_file(f"{formats.ROOTS[fmt]}/{path}")
    return files


def local_copy(path):
    """Where the storage plugin keeps its local copy of an s3:// file (present when this run made it); a local path
    as it is. A retrieve=False input reaches a job as its URL, so jobs are given this path to look for first. The
    plugin's layout, without making a storage object per call (tests/test_s3.py checks it)."""
    if not s3.is_s3(path):
        return path
    bucket, key = s3.split_url(path)
    return f"{S3_PROVIDER.local_prefix}/{bucket}/{key}"


def _mtime(path):
    """Modification time of a local path or an s3:// object (from the run's listing); None when missing."""
    if s3.is_s3(path):
        info = S3_INVENTORY.info(*s3.split_url(path))
        return info.mtime if info else None
    return os.stat(path).st_mtime if os.path.exists(path) else None


# Shards whose token file exists and whose derived outputs are missing or older: derived in batches (one job per
# batch, rules derive_batch_N), not one job per shard (neucodec_workflow/workflow/plan.py says why). None in a job's process.
DERIVE_BATCHES = (
    derive_batches(
        SHARDS,
        _mtime,
        inputs=lambda s: [shard_path(s, TOKENS), shard_path(s, METADATA)],
        outputs=lambda s: [f"{OUTPUT}/{layout.report_path(s)}", *(f"{OUTPUT}/{p}" for p in part_paths(s))],
    )
    if JOB_SHARDS is None
    else []
)


def unbatched_shards():
    """derive_shard's wildcard constraint: the shards no derive_batch_N rule covers. Without it, each batched shard's
    report and parts would also match derive_shard, and Snakemake would build (then discard) a second candidate job
    for each: half of the DAG's jobs in a dry-run over 4,990 adopted shards."""
    if not DERIVE_BATCHES:
        return ANY_SHARD
    batched = {s for batch in DERIVE_BATCHES for s in batch}
    return one_of(s for s in SHARDS if s not in batched)


def encode_candidates():
    """encode_shard's wildcard constraint: the shards whose token file is missing or older than their audio.tar or
    metadata (Snakemake's own rerun rule). A finished shard's token file is then a plain input of its derive job,
    not the output of a candidate encode job with two inputs of its own: a dry-run over 4,990 encoded shards builds
    5,000 fewer jobs (docs/record.md). Under --forcerun, --forceall, --force, --touch, --summary, --list-changes,
    --delete-all-output, in a remote job, or outside Snakemake's CLI: every shard (plan.every_encode_job_needed)."""
    if JOB_SHARDS is not None or plan.every_encode_job_needed(sys.argv):
        return ANY_SHARD

    def pending(shard):
        mtimes = [_mtime(shard_path(shard, name)) for name in (TAR, METADATA, TOKENS)]
        return mtimes[2] is None or plan.stale(mtimes, inputs=2)

    todo = [s for s in SHARDS if pending(s)]
    return ANY_SHARD if len(todo) == len(SHARDS) else one_of(todo)


ENCODE_LOGS = f"{LOCAL}/{layout.ENCODE_LOGS}"
KEEP_GOING = plan.keep_going(sys.argv)


def failure_note_path(shard):
    return f"{LOCAL}/{layout.failure_note(shard)}"


def failed_encodes():
    """--keep-going: the shards whose last encode job failed and whose token file is still missing (their failure
    notes). Their encode jobs run again, but the final steps (summarize and what follows) go on without them and list
    them. Empty otherwise: the final steps wait for every shard."""
    if JOB_SHARDS is not None or not KEEP_GOING:
        return {}
    return plan.failed_encodes(ENCODE_LOGS, _note_outdated)


def _note_outdated(note):
    """A failure note no longer holds: its shard is gone or encoded, or its tar or metadata changed since (repaired)."""
    shard = note["shard"]
    if shard not in SHARDS or _mtime(shard_path(shard, TOKENS)) is not None:
        return True
    failed_at = datetime.datetime.fromisoformat(note["time"]).timestamp()
    return max(_mtime(shard_path(shard, name)) or 0 for name in (TAR, METADATA)) > failed_at


FAILED_ENCODES = failed_encodes()


def rerun_targets():
    """What the default target lists besides the summary. Snakemake does not re-make a deleted file whose consumers
    are up to date, so: every report (retrieve=False: never downloaded), and a token file or dataset part that is
    missing while its shard's report exists. Only missing ones: with S3, a listed file stays on local disk until
    the run ends. None in a job's process (it runs its target jobs only)."""
    if JOB_SHARDS is not None:
        return []
    targets = [r for s in SHARDS for r in derived_files(s)["reports"]]
    for s in SHARDS:
        if _mtime(f"{OUTPUT}/{layout.report_path(s)}") is None:
            continue
        if _mtime(shard_path(s, TOKENS)) is None:
            targets.append(shard_file(s, TOKENS, retrieve=False))
        targets += [output_file(p, retrieve=False) for p in part_paths(s) if _mtime(f"{OUTPUT}/{p}") is None]
    return targets


def encode_mem_mb(wildcards, attempt):
    """Host memory (MB) of a job that holds the model: the model, decoded audio, the token buffer; grows with the attempt."""
    return 16000 * attempt


def encode_runtime(wildcards, input, attempt):
    """Minutes of wall time for one encode_shard job, from the size of its audio.tar and the attempt.

    20 min for start-up (model load, staging) plus 1 min per 25 MB of FLAC: a shard of ~28 h of 16 kHz
    speech (~1.9 GB) gets ~96 min, about twice what it needs at 40x real time on one GPU. A retry gets
    twice (then three times) as long. Override per site in the profile (set-resources).
    """
    return int(attempt * (20 + input.size_mb / 25))


def audit_targets():
    return [output_file(f"audit/{s}.json") for s in (config["audit"]["shards"] or SHARDS)]
