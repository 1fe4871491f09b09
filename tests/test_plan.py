"""plan.py: which shards' derived outputs are stale, how they are cut into derive batches, and the wildcard
constraints that keep finished shards' jobs out of the DAG."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from neucodec_workflow.workflow.plan import derive_batches, every_encode_job_needed, one_of, stale


def test_stale_follows_snakemakes_rule() -> None:
    assert stale([1.0, 2.0, None], inputs=2), "a missing output"
    assert stale([1.0, 3.0, 2.0], inputs=2), "an output older than an input"
    assert not stale([1.0, 2.0, 5.0, 3.0], inputs=2), "every output newer than every input"
    assert not stale([None, 2.0, None], inputs=2), "a missing input: nothing to derive from"


def test_batches_hold_the_stale_shards_in_order() -> None:
    times = {f"s{i}/tokens": 10.0 for i in range(7)} | {f"s{i}/report": 20.0 for i in range(7)}
    times["s1/report"] = 5.0  # older than its token file
    del times["s3/report"], times["s4/report"], times["s6/report"]  # missing
    del times["s5/tokens"]  # no token file: its encode job makes it, derive_shard follows

    batches = derive_batches(
        [f"s{i}" for i in range(7)],
        times.get,
        inputs=lambda s: [f"{s}/tokens"],
        outputs=lambda s: [f"{s}/report"],
        size=2,
    )
    assert batches == [["s1", "s3"], ["s4", "s6"]]
    assert derive_batches(["s0", "s2"], times.get, lambda s: [f"{s}/tokens"], lambda s: [f"{s}/report"]) == []


def test_one_of_matches_exactly_the_names() -> None:
    names = ["a/shard-0", "a/shard-1", "a/shard-10", "b.x/s+1(2)", "c"]
    rx = re.compile(f"(?:{one_of(names)})")
    assert all(rx.fullmatch(n) for n in names)
    for other in ["a/shard-2", "a/shard-", "a/shard-100", "b.x/s1(2)", "bxx/s+1(2)", "", "cc", "a/shard-0 "]:
        assert not rx.fullmatch(other), other
    nothing = re.compile(one_of([]))
    assert not any(nothing.fullmatch(n) for n in ["", "a", "a/shard-0"])
    many = [f"part-{i // 1000:02d}/shard-{i:05d}" for i in range(5000)]
    assert len(one_of(many)) < 2 * sum(map(len, many)) // 3, "a trie, not one alternative per name"


@pytest.mark.parametrize(
    ("options", "needed"),
    [
        ([], False),
        (["-n"], False),
        (["-n", "--cores", "2", "--config", "a=1"], False),
        (["--forcerun", "encode_shard"], True),
        (["-R", "encode_shard", "-n"], True),
        (["-nF"], True),
        (["--forceall"], True),
        (["-f", "all"], True),
        (["--touch"], True),
        (["--summary"], True),
        (["--list-changes", "input"], True),
        (["--delete-all-output"], True),
        (["--target-jobs", "encode_shard:shard=a/shard-0", "--mode", "remote"], True),
    ],
)
def test_every_encode_job_needed_reads_snakemakes_own_command_line(
    options: list[str], needed: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no profiles/default here
    snakefile = str(Path(__file__).resolve().parents[1] / "Snakefile")
    for program in ("/venv/bin/snakemake", str(Path(sys.prefix) / "snakemake" / "__main__.py")):
        assert every_encode_job_needed([program, "--snakefile", snakefile, *options]) is needed, (program, options)


def test_every_encode_job_needed_outside_snakemakes_cli() -> None:
    assert every_encode_job_needed([]), "no command line (the API)"
    assert every_encode_job_needed(["/usr/bin/python", "-c", "..."]), "not Snakemake's CLI"
    assert every_encode_job_needed(["snakemake", "--no-such-option"]), "a command line Snakemake would refuse"


def test_job_shards_from_the_target_jobs_of_a_job_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster job's Snakemake process plans only its shards: those of its --target-jobs, in order, once each."""
    from neucodec_workflow.workflow.plan import job_shards

    monkeypatch.chdir(tmp_path)
    program = str(Path(sys.prefix) / "snakemake" / "__main__.py")
    snakefile = ["--snakefile", str(Path(__file__).resolve().parents[1] / "Snakefile")]
    one = ["--target-jobs", "encode_shard:shard=a/shard-0", "--mode", "remote"]
    assert job_shards([program, *snakefile, *one]) == ["a/shard-0"]
    group = ["--target-jobs", "encode_shard:shard=b/x", "audit_shard:shard=a/y", "encode_shard:shard=b/x"]
    assert job_shards([program, *snakefile, *group, "--mode", "remote"]) == ["b/x", "a/y"]
    no_shard = ["--target-jobs", "codec_fit:", "--mode", "remote"]
    assert job_shards([program, *snakefile, *no_shard]) is None, "codec_fit reads the whole corpus: plan all"
    assert job_shards([program, *snakefile, "-n"]) is None, "no target job: the main process"
    assert job_shards(["/usr/bin/python", "-c", "..."]) is None


def test_failure_notes_name_the_shards_left_out_under_keep_going(tmp_path):
    """A failed encode job leaves its note (and still fails); a later success removes it; planning takes the notes
    of shards whose token file is still missing, and skips a note that is not one."""
    from neucodec_workflow.record import layout
    from neucodec_workflow.workflow.plan import failed_encodes, failure_note

    def note_of(shard):
        return tmp_path / layout.failure_note(shard)

    with pytest.raises(RuntimeError, match="cannot read audio.tar"):
        with failure_note(note_of("fr/s2"), "fr/s2"):
            raise RuntimeError("shard fr/s2: cannot read audio.tar")
    with pytest.raises(ValueError):
        with failure_note(note_of("en/s0"), "en/s0"):
            raise ValueError("no id column")
    (tmp_path / layout.ENCODE_LOGS / "junk.failed.json").write_text("{not json")
    notes = failed_encodes(tmp_path / layout.ENCODE_LOGS, done=lambda note: note["shard"] == "en/s0")
    assert list(notes) == ["fr/s2"] and notes["fr/s2"]["stage"] == "encode"
    assert notes["fr/s2"]["error"] == "RuntimeError: shard fr/s2: cannot read audio.tar"
    with failure_note(note_of("fr/s2"), "fr/s2"):
        pass  # encoded this time
    assert not note_of("fr/s2").exists() and failed_encodes(tmp_path / layout.ENCODE_LOGS, lambda note: False) == {
        "en/s0": json.loads(note_of("en/s0").read_text())
    }
