"""The real Snakemake CLI on tiny real shards: end to end, dry-runs, reruns, failures, lint."""

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, run_snakemake, simple_shard

from neucodec_workflow.demo.corpus import Member, write_shard
from neucodec_workflow.engine.reference import reference_tokens
from neucodec_workflow.shard.audio import decode_member, iter_flac_members

pytestmark = pytest.mark.workflow


def job_counts(stdout: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake run or dry-run."""
    return {
        m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", stdout, re.M) if m.group(1) != "total"
    }


def pending_shards(stdout: str) -> list[str]:
    return sorted(set(re.findall(r"wildcards: shard=(\S+)", stdout)))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf")
    corpus = root / "corpus"
    simple_shard(corpus, "en/shard-0", [0.7, 0.5], sr=16_000, seed=1, speaker="a")
    simple_shard(corpus, "de/deep/shard-1", [0.6], sr=44_100, seed=7, speaker="b")
    config = {"corpus": str(corpus), "output": str(root / "out"), "codec": json.dumps({"weights": "random"})}
    return root, corpus, root / "out", config


@pytest.fixture(scope="module")
def first_run(project):
    root, _, _, config = project
    return run_snakemake(root, config=config)


def test_end_to_end(project, first_run, codec):
    root, corpus, out, _ = project
    for shard in ("en/shard-0", "de/deep/shard-1"):
        df = pd.read_parquet(corpus / shard / "neucodec_tokens.parquet")
        report = json.loads((out / "shards" / f"{shard}.json").read_text())
        assert report["encoded"] == len(df) and report["rejected_count"] == 0
        assert report["codec"]["random_weights"] is True
        assert (out / "logs" / "encode" / f"{shard}.log").exists() and (
            out / "benchmarks" / "encode" / f"{shard}.tsv"
        ).exists()
        # workflow tokens == NeuCodec.encode_code on the same seeded weights
        with open(corpus / shard / "audio.tar", "rb") as f:
            for (member, data), row in zip(iter_flac_members(f), df.itertuples(), strict=True):
                clip = decode_member(row.segment_id, member, data, 60)
                np.testing.assert_array_equal(
                    np.frombuffer(row.neucodec_tokens, "<u2"), reference_tokens(codec, clip.audio)
                )
    stats = json.loads((out / "stats.json").read_text())
    assert stats["shards"] == 2 and stats["encoded"] == 3 and stats["segments"] == 3 and stats["random_weights"]
    assert stats["audit"]["token_agreement"] == 1.0 and stats["audit"]["segments"] >= 1  # exact mode vs encode_code
    assert stats["tokens"] == 35 + 25 + 30
    from datasets import load_dataset

    assert len(load_dataset(str(out / "sft_dataset"), split="train")) == 3
    assert "RANDOM" in (out / "logs" / "encode" / "en" / "shard-0.log").read_text()


def test_rerun_after_success_does_nothing(project, first_run):
    root, _, _, config = project
    proc = run_snakemake(root, "-n", config=config)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_touching_scripts_and_rules_does_not_reencode(project, first_run):
    root, _, _, config = project
    for path in [*REPO.glob("scripts/*.py"), *REPO.glob("rules/*.smk"), REPO / "Snakefile"]:
        path.touch()
    proc = run_snakemake(root, "-n", config=config)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_deleted_output_reruns_exactly_that_shard(project, first_run):
    root, corpus, _, config = project
    (corpus / "de/deep/shard-1" / "neucodec_tokens.parquet").unlink()
    dry = run_snakemake(root, "-n", config=config)
    assert job_counts(dry.stdout + dry.stderr)["encode_shard"] == 1
    assert pending_shards(dry.stdout + dry.stderr) == ["de/deep/shard-1"]
    run = run_snakemake(root, config=config)
    assert job_counts(run.stdout + run.stderr)["encode_shard"] == 1
    assert (corpus / "de/deep/shard-1" / "neucodec_tokens.parquet").exists()


def test_injected_failure_then_rerun_only_missing(project, first_run):
    root, corpus, out, config = project
    bad = simple_shard(corpus, "fr/shard-2", [0.5], seed=11)
    good_tar = (bad / "audio.tar").read_bytes()
    (bad / "audio.tar").write_bytes(b"not a tar at all" * 64)
    simple_shard(corpus, "fr/shard-3", [0.4], seed=12)
    failed = run_snakemake(root, "--keep-going", config=config, check=False)
    assert failed.returncode != 0
    assert "shard fr/shard-2: cannot read audio.tar" in (out / "logs" / "encode" / "fr" / "shard-2.log").read_text()
    assert not (bad / "neucodec_tokens.parquet").exists() and not (out / "shards" / "fr" / "shard-2.json").exists()
    assert (corpus / "fr/shard-3" / "neucodec_tokens.parquet").exists()  # the other shard went on
    assert json.loads((out / "stats.json").read_text())["shards"] == 2  # the final steps waited for every shard
    note = json.loads((out / "logs" / "encode" / "fr" / "shard-2.failed.json").read_text())
    assert note["shard"] == "fr/shard-2" and "cannot read audio.tar" in note["error"]

    # asked again to go on without it: its encode job runs (and fails) again, the final steps are made for the rest
    again = run_snakemake(root, "--keep-going", config=config, check=False)
    assert again.returncode != 0 and job_counts(again.stdout + again.stderr)["summarize"] == 1
    stats = json.loads((out / "stats.json").read_text())
    assert stats["shards"] == 3 and stats["encoded"] == 4
    assert [(f["shard"], f["stage"]) for f in stats["failed_shards"]] == [("fr/shard-2", "encode")]
    for card in ("sft_dataset/README.md", "multilingual_tts/README.md", "neutts/README.md"):
        if (out / card).exists():
            assert "- `fr/shard-2` (encode): " in (out / card).read_text()
    assert "fr/shard-2" not in json.dumps(json.loads((out / "sft_dataset" / "index.json").read_text()))

    (bad / "audio.tar").write_bytes(good_tar)
    dry = run_snakemake(root, "-n", config=config)
    assert pending_shards(dry.stdout + dry.stderr) == ["fr/shard-2"]
    run = run_snakemake(root, config=config)
    assert job_counts(run.stdout + run.stderr)["encode_shard"] == 1
    stats = json.loads((out / "stats.json").read_text())
    assert stats["shards"] == 4 and stats["encoded"] == 5 and stats["failed_shards"] == []
    assert not (out / "logs" / "encode" / "fr" / "shard-2.failed.json").exists()


def test_a_shard_with_every_member_corrupt_is_accounted_not_failed(tmp_path):
    """Nothing encodable in a shard: the run succeeds, the shard's record is a zero-row token file, its report
    rejects every segment (decode_error), its dataset part has zero rows, and the stats count it."""
    corpus = tmp_path / "corpus"
    simple_shard(corpus, "en/good", [0.5, 0.4], seed=3)
    meta = pd.DataFrame({"segment_id": ["x0", "x1", "x2"], "text": "t", "language": "en", "speaker": "s"})
    write_shard(corpus / "en" / "bad", [Member(f"x{i}.flac", b"fLaC broken %d" % i) for i in range(3)], meta)
    out = tmp_path / "out"
    config = {"corpus": str(corpus), "output": str(out), "codec": json.dumps({"weights": "random"})}
    run_snakemake(tmp_path, config=config)
    tokens = pd.read_parquet(corpus / "en/bad/neucodec_tokens.parquet")
    assert len(tokens) == 0 and list(tokens.columns) == ["segment_id", "neucodec_tokens", "token_count"]
    report = json.loads((out / "shards" / "en" / "bad.json").read_text())
    assert report["encoded"] == 0 and report["rejects_by_reason"] == {"decode_error": 3} and report["segments"] == 3
    assert report["token_file"]["rows"] == 0 and report["sft"]["rows_per_split"] == {"train": 0}
    assert len(pd.read_parquet(out / "sft_dataset" / "data" / "train" / "en" / "bad.parquet")) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["shards"] == 2 and stats["segments"] == 5 and stats["encoded"] == 2 and stats["rejected"] == 3
    from datasets import load_dataset

    assert len(load_dataset(str(out / "sft_dataset"), split="train")) == 2
    dry = run_snakemake(tmp_path, "-n", config=config)
    assert "Nothing to be done" in dry.stdout + dry.stderr  # the record counts as done: nothing re-runs


def test_audit_target(project, first_run):
    root, _, out, config = project
    run_snakemake(root, "audit", config={**config, "audit": json.dumps({"shards": ["en/shard-0"]})})
    audit = json.loads((out / "audit" / "en" / "shard-0.json").read_text())
    assert audit["segments"] == 2 and audit["token_agreement"] == 1.0 and audit["mismatched"] == []


def test_config_errors_are_readable(project):
    root, _, _, config = project
    proc = run_snakemake(
        root, "-n", config={**config, "codec": json.dumps({"weights": "random", "device": "tpu"})}, check=False
    )
    assert proc.returncode != 0 and "device" in proc.stdout + proc.stderr
    empty = root / "empty"
    empty.mkdir()
    proc = run_snakemake(root, "-n", config={**config, "corpus": str(empty)}, check=False)
    assert proc.returncode != 0 and "no shard" in proc.stdout + proc.stderr


def test_lint_is_clean(project):
    root, _, _, config = project
    proc = run_snakemake(root, "--lint", config=config, check=False)
    assert proc.returncode == 0 and "Congratulations" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_demo_corpus_layout(tmp_path):
    from neucodec_workflow.demo.corpus import DEMO_SHARDS, make_demo_corpus

    make_demo_corpus(tmp_path, use_espeak=False)
    for shard, _, sr, channels in DEMO_SHARDS:
        meta = pd.read_parquet(tmp_path / shard / "metadata.parquet")
        assert {"segment_id", "text", "language", "speaker", "duration", "dataset"} <= set(meta.columns)
        with open(tmp_path / shard / "audio.tar", "rb") as f:
            import io

            import soundfile as sf

            infos = [sf.info(io.BytesIO(d)) for m, d in iter_flac_members(f) if not m.startswith("broken")]
        assert {(i.samplerate, i.channels) for i in infos} == {(sr, channels)}
    shutil.rmtree(tmp_path)
