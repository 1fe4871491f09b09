"""The gpu-cluster profile through a real single-node SLURM (munge, slurmctld, slurmd from Debian) with fake GPUs.

.ci/slurm-cluster.sh starts the cluster (apt-get installs the packages when they are missing and this is root) and
stops exactly the daemons it started, by PID. Snakemake runs with the repo's `gpu-cluster` profile (the `./gpu-cluster`
link a user at the repo root gets with `--profile gpu-cluster`, named by its absolute path), from a temporary working
directory (nothing is written into the repository: the SLURM plugin keeps its logs under the directory Snakemake
started in), with test overrides only where this cluster differs from a real one:
  --slurm-status-command squeue             no accounting daemon here, so no sacct
  --slurm-init-seconds-before-status-checks the default 40 s only slows a test down
  --set-threads encode_shard=1              the node claims 16 CPUs, this machine has 2
  --retries 0                               the injected failure is deterministic; retrying it proves nothing
Encode jobs run on the CPU (the GPUs are /dev/null), but SLURM schedules and counts them as GPUs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, simple_shard

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

CLUSTER = REPO / ".ci" / "slurm-cluster.sh"
SHARDS = ["a/shard-0", "a/shard-1", "b/shard-0"]
BROKEN = "b/shard-0"  # first run: its metadata lacks segment_id, so its encode job fails
LOST = "a/shard-0"  # after the first run: its outputs are deleted, as if lost
RUN_TIMEOUT_S = 420
TEST_OVERRIDES = [
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "3",
    "--set-threads",
    "encode_shard=1",
    "--retries",
    "0",
]


def cluster_cmd(action: str, state: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    args = ["bash", str(CLUSTER), action] + ([str(state)] if state else [])
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running test cluster; yields the environment that points SLURM's clients at it."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the test cluster needs Linux")
    if os.geteuid() != 0:
        pytest.skip("the test SLURM cluster runs its daemons as root (CI runs as root)")
    state = tmp_path_factory.mktemp("slurm")
    t0 = time.monotonic()
    proc = cluster_cmd("start", state, timeout=700)  # apt-get is bounded inside the script (3 x 200 s)
    if proc.returncode == 77:
        pytest.skip(f"no SLURM test cluster here: {proc.stderr.strip()}")
    if proc.returncode != 0:
        cluster_cmd("stop", state, timeout=90)
        pytest.fail(f"test cluster did not start ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    print(f"\nSLURM test cluster up in {time.monotonic() - t0:.1f} s")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "NEUCODEC_SLURM_"))}
    env.update(SLURM_CONF=str(state / "slurm.conf"), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    try:
        yield env
    finally:
        stop = cluster_cmd("stop", state, timeout=90)
        assert stop.returncode == 0, stop.stderr
        assert not (state / "pids").exists(), f"daemons still recorded after stop: {list((state / 'pids').iterdir())}"


@pytest.fixture(scope="module")
def project(tmp_path_factory, random_ckpt):
    root = tmp_path_factory.mktemp("slurm-wf")
    corpus = root / "corpus"
    for i, shard in enumerate(SHARDS):
        simple_shard(corpus, shard, [1.0, 0.6], seed=10 * i, speaker=f"s{i}")
    meta = corpus / BROKEN / "metadata.parquet"
    shutil.copy(meta, root / "good-metadata.parquet")
    pd.read_parquet(meta).drop(columns=["segment_id"]).to_parquet(meta, index=False)
    config = root / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "corpus": str(corpus),
                "output": str(root / "out"),
                "codec": {"weights": str(random_ckpt), "seed": 0, "device": "auto"},
            }
        )
    )
    return root, corpus, root / "out", config


def snakemake(env: dict[str, str], project, *args: str) -> subprocess.CompletedProcess:
    """`snakemake --profile <repo>/gpu-cluster` (-> profiles/gpu-cluster) from the work directory, bounded."""
    root, _, _, config = project
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        str(REPO / "gpu-cluster"),
        "--directory",
        str(root / "work"),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        str(config),
        *args,
    ]
    (root / "work").mkdir(exist_ok=True)
    proc = subprocess.Popen(
        cmd,
        cwd=root / "work",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # Our own process group only (started above); the plugin may ignore SIGTERM while polling.
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        pytest.fail(f"snakemake did not finish within {RUN_TIMEOUT_S} s:\n{out[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def slurm_jobs(env: dict[str, str]) -> dict[int, dict[str, str]]:
    """Every job this cluster has seen (MinJobAge keeps finished ones): id -> comment, state, start, end."""
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i|%k|%T|%S|%e"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    jobs = {}
    for line in out.splitlines():
        jid, comment, st, start, end = line.split("|")
        jobs[int(jid)] = {"comment": comment, "state": st, "start": start, "end": end}
    return jobs


def tres_per_job(env: dict[str, str], jid: int) -> str:
    out = subprocess.run(
        ["scontrol", "show", "job", str(jid)], env=env, capture_output=True, text=True, timeout=30, check=True
    ).stdout
    m = re.search(r"TresPerJob=(\S+)", out)
    return m.group(1) if m else ""


def gpu_seen(out: Path, shard: str) -> tuple[str | None, int]:
    """(CUDA_VISIBLE_DEVICES, SLURM_JOB_ID) as the encode job logged them."""
    text = (out / "logs" / "encode" / f"{shard}.log").read_text()
    m = re.search(r"CUDA_VISIBLE_DEVICES=(\S+) SLURM_JOB_ID=(\d+)", text)
    assert m, f"{shard}: the encode log does not record its GPU and SLURM job:\n{text[-2000:]}"
    return m.group(1), int(m.group(2))


def complete(out: Path, corpus: Path, shard: str) -> bool:
    return (corpus / shard / "neucodec_tokens.parquet").exists() and (out / "shards" / f"{shard}.json").exists()


def test_gpu_cluster_profile_on_real_slurm(cluster, project):
    env = cluster
    root, corpus, out, _ = project
    assert (REPO / "gpu-cluster").resolve() == (REPO / "profiles" / "gpu-cluster").resolve()

    # Dry-run: the pending shards.
    dry = snakemake(env, project, "-n")
    assert dry.returncode == 0, dry.stdout[-4000:]
    assert sorted(set(re.findall(r"shard=(\S+)", dry.stdout))) == SHARDS
    assert re.search(r"^encode_shard\s+3\s*$", dry.stdout, re.M), dry.stdout[-3000:]

    # First run, one shard per cluster job (the profile's default), one shard broken.
    t0 = time.monotonic()
    first = snakemake(env, project, *TEST_OVERRIDES)
    print(f"first run (3 encode jobs, 1 failing): {time.monotonic() - t0:.1f} s")
    assert first.returncode != 0, "the broken shard should fail its job"
    why = f"shard {BROKEN}: cannot read metadata.parquet"
    assert why in first.stdout or why in (out / "logs" / "encode" / f"{BROKEN}.log").read_text(), first.stdout[-4000:]
    assert [s for s in SHARDS if complete(out, corpus, s)] == [s for s in SHARDS if s != BROKEN]
    assert not (out / "stats.json").exists()
    jobs = slurm_jobs(env)
    first_ids = set(jobs)
    seen = {s: gpu_seen(out, s) for s in SHARDS}
    assert len({jid for _, jid in seen.values()}) == 3, f"one SLURM job per shard: {seen}"
    for shard, (cvd, jid) in seen.items():
        # The job saw exactly one GPU, the one SLURM assigned it (0 or 1 on this 2-GPU node) ...
        assert cvd in {"0", "1"}, f"{shard}: CUDA_VISIBLE_DEVICES={cvd}"
        assert tres_per_job(env, jid) == "gres:gpu:1", f"{shard}: job {jid} did not ask for one GPU"
        assert jobs[jid]["comment"] == "rule_encode_encode_shard"
    # ... and jobs that ran at the same time had different GPUs.
    for s1, (cvd1, j1) in seen.items():
        for s2, (cvd2, j2) in seen.items():
            a, b = jobs[j1], jobs[j2]
            if j1 < j2 and a["start"] < b["end"] and b["start"] < a["end"]:
                assert cvd1 != cvd2, f"{s1} (job {j1}) and {s2} (job {j2}) ran at the same time on GPU {cvd1}"

    # Repair the broken shard, lose one finished shard's outputs.
    shutil.copy(root / "good-metadata.parquet", corpus / BROKEN / "metadata.parquet")
    (corpus / LOST / "neucodec_tokens.parquet").unlink()
    (out / "shards" / f"{LOST}.json").unlink()
    missing = sorted([BROKEN, LOST])

    dry = snakemake(env, project, "-n")
    assert sorted(set(re.findall(r"shard=(\S+)", dry.stdout))) == missing, dry.stdout[-3000:]

    # Rerun with two shards packed per cluster job: only the missing shards, in ONE job asking for ONE GPU.
    t0 = time.monotonic()
    rerun = snakemake(env, project, *TEST_OVERRIDES, "--group-components", "encode=2")
    print(f"rerun (2 missing shards packed in 1 job, then dataset and stats): {time.monotonic() - t0:.1f} s")
    assert rerun.returncode == 0, rerun.stdout[-6000:]
    assert all(complete(out, corpus, s) for s in SHARDS)
    assert (out / "stats.json").exists() and (out / "sft_dataset").is_dir()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["shards"] == 3 and stats["encoded"] == 6, stats

    new = {jid: j for jid, j in slurm_jobs(env).items() if jid not in first_ids}
    encode_jobs = [jid for jid, j in new.items() if j["comment"] == "rule_encode_encode_shard"]
    assert len(encode_jobs) == 1, f"rerun submitted {new}"
    # derive_shard and summarize are local rules: they run beside Snakemake, never as SLURM jobs
    assert sorted(j["comment"] for j in new.values()) == ["rule_encode_encode_shard"], new
    assert tres_per_job(env, encode_jobs[0]) == "gres:gpu:1"
    after = {s: gpu_seen(out, s) for s in SHARDS}
    for shard in SHARDS:
        if shard in missing:
            assert after[shard][1] == encode_jobs[0], f"{shard} ran in job {after[shard][1]}"
            assert after[shard][0] in {"0", "1"}
        else:
            assert after[shard] == seen[shard], f"{shard} was encoded again"
    assert after[missing[0]][0] == after[missing[1]][0], "shards of one group job share its GPU"

    # Nothing left to do.
    dry = snakemake(env, project, "-n")
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout, dry.stdout[-3000:]
