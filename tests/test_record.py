"""The token file is the record (real Snakemake, tiny real shards): a fresh output never re-encodes, a deleted report
is re-derived, foreign token files are adopted and audited, a new shard costs one encode and only its own derived
files, and the earlier layout migrates with one command."""

import io
import json
import os
import re
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_snakemake, simple_shard

from neucodec_workflow.engine.reference import reference_tokens
from neucodec_workflow.record.contract import REPORT_KEY, SCHEMA, footer, read_report
from neucodec_workflow.shard.audio import decode_member, iter_flac_members

pytestmark = pytest.mark.workflow
TOKENS = "neucodec_tokens.parquet"


def job_counts(text: str) -> dict[str, int]:
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)\s*$", text, re.M) if m[0] != "total"}


def foreign_tokens(shard_dir, codec, drop: str) -> None:
    """A token file as another tool writes it: the contract's three columns, no key-value metadata; the tokens are
    the reference encoder's (so the audit agrees), and the segment ``drop`` has no row."""
    rows = []
    with open(shard_dir / "audio.tar", "rb") as f:
        for member, data in iter_flac_members(f):
            seg = member.removesuffix(".flac")
            if seg != drop:
                tokens = reference_tokens(codec, decode_member(seg, member, data, 60).audio)
                rows.append((seg, np.asarray(tokens, "<u2").tobytes(), len(tokens)))
    table = pa.table(list(zip(*rows, strict=True)), schema=SCHEMA.with_metadata(None))
    pq.write_table(table, shard_dir / TOKENS)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, codec):
    """Two shards encoded by the workflow, one with a foreign token file, and the run's output."""
    root = tmp_path_factory.mktemp("record")
    corpus = root / "corpus"
    simple_shard(corpus, "en/shard-0", [0.6, 0.5], seed=1, speaker="a")
    simple_shard(corpus, "en/shard-1", [0.5], seed=3, speaker="b")
    foreign = simple_shard(corpus, "elsewhere/shard-f", [0.5, 0.4, 0.3], seed=5, speaker="c")
    foreign_tokens(foreign, codec, drop="elsewhere_shard-f_002")
    config = {"corpus": str(corpus), "output": str(root / "out"), "codec": json.dumps({"weights": "random"})}
    run = run_snakemake(root, config=config)
    return root, corpus, config, run


def test_foreign_token_file_is_adopted_not_reencoded(encoded):
    root, corpus, config, run = encoded
    assert job_counts(run.stdout + run.stderr)["encode_shard"] == 2  # the foreign shard was not encoded
    assert read_report(corpus / "en/shard-0" / TOKENS)["encoded"] == 2  # the encode report is inside the token file
    assert REPORT_KEY not in footer(corpus / "elsewhere/shard-f" / TOKENS)  # the foreign file was left as it was
    report = json.loads((root / "out/shards/elsewhere/shard-f.json").read_text())
    assert report["record"] == "foreign" and report["provenance"] == {}
    assert report["segments"] == 3 and report["encoded"] == 2 and report["rejected_count"] == 1
    assert report["rejected"][0]["segment_id"] == "elsewhere_shard-f_002"
    assert report["rejected"][0]["reason"] == "no_tokens_in_foreign_file"
    assert report["token_file"]["rows"] == 2 and report["token_file"]["tokens"] == 25 + 20
    assert report["token_file"]["token_count_mismatches"] == 0
    stats = json.loads((root / "out/stats.json").read_text())
    assert stats["records"] == {"foreign": 1, "workflow": 2} and stats["shards"] == 3
    from datasets import load_dataset

    ds = load_dataset(str(root / "out/sft_dataset"), split="train")
    assert sorted(ds["shard"]) == sorted(["en/shard-0"] * 2 + ["en/shard-1"] + ["elsewhere/shard-f"] * 2)


def test_audit_measures_a_foreign_token_file(encoded):
    root, _, config, _ = encoded
    run_snakemake(root, "audit", config={**config, "audit": json.dumps({"shards": ["elsewhere/shard-f"]})})
    audit = json.loads((root / "out/audit/elsewhere/shard-f.json").read_text())
    assert audit["provenance"] == {} and audit["segments"] >= 1 and audit["token_agreement"] == 1.0


def test_fresh_output_derives_everything_and_encodes_nothing(encoded):
    root, corpus, config, _ = encoded
    before = {p: p.stat().st_mtime_ns for p in corpus.rglob(TOKENS)}
    fresh = {**config, "output": str(root / "fresh")}
    dry = run_snakemake(root, "-n", config=fresh)
    counts = job_counts(dry.stdout + dry.stderr)
    assert "encode_shard" not in counts and counts["derive_batch_0"] == 1 and counts["summarize"] == 1, counts
    run_snakemake(root, config=fresh)
    assert {p: p.stat().st_mtime_ns for p in corpus.rglob(TOKENS)} == before
    for shard in ("en/shard-0", "en/shard-1", "elsewhere/shard-f"):
        new = json.loads((root / "fresh/shards" / f"{shard}.json").read_text())
        old = json.loads((root / "out/shards" / f"{shard}.json").read_text())
        assert new == old  # every report re-derived from the token file alone
    assert json.loads((root / "fresh/stats.json").read_text()) == json.loads((root / "out/stats.json").read_text())
    shutil.rmtree(root / "fresh")


def test_deleted_report_is_rederived_not_reencoded(encoded):
    root, _, config, _ = encoded
    report = root / "out/shards/en/shard-1.json"
    old = report.read_text()
    report.unlink()
    run = run_snakemake(root, config=config)
    counts = job_counts(run.stdout + run.stderr)
    assert "encode_shard" not in counts and counts["derive_batch_0"] == 1, counts
    assert json.loads(report.read_text()) == json.loads(old)


def test_push_to_a_loopback_hub_sends_only_what_changed(encoded):
    """sft.push_to_hub against a loopback HTTP server implementing the Hub calls huggingface_hub makes (no Hub can be
    reached from here): every part and the card arrive; after a re-derivation that changes nothing, nothing is sent."""
    from support.loopback_hub import FAKE_TOKEN, LoopbackHub

    root, _, config, _ = encoded
    pushed = {**config, "sft": json.dumps({"push_to_hub": "org/tokens"})}
    with LoopbackHub() as hub:
        env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": FAKE_TOKEN, "HF_HUB_OFFLINE": "0"}
        run_snakemake(root, config=pushed, env=env)
        index = json.loads((root / "out/sft_dataset/index.json").read_text())
        files = hub.files("org/tokens")
        for part in index["parts"]:
            assert files[part["path"]] == (root / "out/sft_dataset" / part["path"]).read_bytes()
        assert files["README.md"] == (root / "out/sft_dataset/README.md").read_bytes()
        first = json.loads((root / "out/hub/org/tokens.json").read_text())
        assert first["uploaded"] == len(index["parts"]) + 1 and FAKE_TOKEN not in json.dumps(first)
        (root / "out/shards/en/shard-1.json").unlink()  # re-derived: same part, new index and card files
        run = run_snakemake(root, config=pushed, env=env)
        assert job_counts(run.stdout + run.stderr)["push_to_hub"] == 1
        second = json.loads((root / "out/hub/org/tokens.json").read_text())
        assert second["uploaded"] == 0 and second["commits"] == 0 and second["unchanged"] == first["uploaded"]


HF_TOKEN_SENTINEL = "hf_SENTINELdoNotPrintLoopback7f3a9c2e"  # fake; allowlisted in tests/test_secret_scan.py


def test_push_never_leaks_the_hf_token(encoded):
    """HF_TOKEN is a sentinel: after a push the hub refuses (401), one whose commit fails (500, a traceback in the
    job's log) and one that succeeds, and Snakemake's report, it is in no stdout/stderr and no file of the work
    directory (logs, outputs, receipts, .snakemake metadata, report.html)."""
    from support.loopback_hub import LoopbackHub

    root, _, config, _ = encoded
    pushed = {**config, "sft": json.dumps({"push_to_hub": "org/leak-check"})}
    log = root / "out/logs/push_to_hub.log"
    texts = []
    refusing, failing = LoopbackHub(token="hf_another_token"), LoopbackHub(HF_TOKEN_SENTINEL, fail_commits={1})
    with refusing, failing, LoopbackHub(HF_TOKEN_SENTINEL) as accepting:
        for hub, expect in ((refusing, "401"), (failing, "500"), (accepting, None)):
            env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": HF_TOKEN_SENTINEL, "HF_HUB_OFFLINE": "0"}
            run = run_snakemake(root, config=pushed, env=env, check=expect is None)
            texts += [run.stdout, run.stderr, log.read_text()]
            if expect:
                assert run.returncode != 0 and "job failed" in texts[-1] and expect in texts[-1], texts[-1]
        assert refusing.unauthorized >= 1 and failing.commit_requests == 1 and accepting.unauthorized == 0
        assert accepting.files("org/leak-check")["README.md"] == (root / "out/sft_dataset/README.md").read_bytes()
    report = run_snakemake(root, "--report", str(root / "report.html"), config=pushed, env=env)
    texts += [report.stdout, report.stderr]
    for text in texts:
        assert HF_TOKEN_SENTINEL not in text
    files = [f for f in root.rglob("*") if f.is_file()]
    assert any(".snakemake" in f.parts for f in files) and (root / "out/hub/org/leak-check.json").is_file()
    assert (root / "report.html").is_file()
    for f in files:
        assert HF_TOKEN_SENTINEL.encode() not in f.read_bytes(), f"HF token leaked into {f}"
    (root / "report.html").unlink()


def test_one_new_shard_writes_only_its_own_files(encoded):
    root, corpus, config, _ = encoded
    out = root / "out"
    before = {p: p.stat().st_mtime_ns for p in [*out.rglob("*.json"), *out.rglob("*.parquet"), *corpus.rglob(TOKENS)]}
    simple_shard(corpus, "en/shard-new", [0.4], seed=9, speaker="d")
    run = run_snakemake(root, config=config)
    counts = job_counts(run.stdout + run.stderr)
    assert counts == {"encode_shard": 1, "derive_shard": 1, "summarize": 1, "report_figures": 1, "all": 1}, counts
    changed = {p.relative_to(root).as_posix() for p, t in before.items() if p.stat().st_mtime_ns != t}
    # the small files of the final steps (the figures are .svg and .html, not counted here)
    assert changed == {"out/stats.json", "out/shards.parquet", "out/sft_dataset/index.json"}, changed
    assert (out / "shards/en/shard-new.json").exists() and (
        out / "sft_dataset/data/train/en/shard-new.parquet"
    ).exists()
    assert json.loads((out / "stats.json").read_text())["shards"] == 4


def test_migrating_the_earlier_layout(encoded, tmp_path):
    """Earlier layout: token files with provenance but no report inside, reports in output/shards, one monolithic
    dataset. One command moves the reports into the token files; then snakemake derives, never encodes."""
    from neucodec_workflow.commands.migrate import migrate

    root, corpus, config, _ = encoded
    old_corpus, old_out = tmp_path / "corpus", tmp_path / "out"
    shutil.copytree(corpus / "en", old_corpus / "en")
    reports = {}
    for path in old_corpus.rglob(TOKENS):
        shard = path.parent.relative_to(old_corpus).as_posix()
        reports[shard] = read_report(path)
        table = pq.read_table(path)
        meta = {k: v for k, v in footer(path).items() if k not in (REPORT_KEY, b"ARROW:schema")}
        pq.write_table(table.replace_schema_metadata(meta), path)  # what the earlier layout wrote
        (old_out / "shards" / f"{shard}.json").parent.mkdir(parents=True, exist_ok=True)
        (old_out / "shards" / f"{shard}.json").write_text(json.dumps(reports[shard]))
    (old_out / "sft_dataset/data").mkdir(parents=True)
    (old_out / "sft_dataset/data/train-00000-of-00001.parquet").write_bytes(b"old")
    rows_before = {s: pd.read_parquet(old_corpus / s / TOKENS) for s in reports}
    done = migrate(str(old_corpus), str(old_out), None)
    assert done["migrated"] == len(reports) >= 2 and done["old_dataset_files"] == 1, done
    for shard, report in reports.items():
        path = old_corpus / shard / TOKENS
        assert read_report(path) == report
        pd.testing.assert_frame_equal(pd.read_parquet(io.BytesIO(path.read_bytes())), rows_before[shard])
    assert not (old_out / "sft_dataset/data/train-00000-of-00001.parquet").exists()
    assert migrate(str(old_corpus), str(old_out), None)["already"] == len(reports)  # idempotent
    run = run_snakemake(tmp_path, config={**config, "corpus": str(old_corpus), "output": str(old_out)})
    counts = job_counts(run.stdout + run.stderr)
    assert "encode_shard" not in counts and counts["derive_batch_0"] == 1, counts
    assert json.loads((old_out / "stats.json").read_text())["records"] == {"workflow": len(reports)}
    assert os.path.exists(old_out / "sft_dataset/data/train/en/shard-0.parquet")


def test_a_bad_token_file_is_named_and_costs_the_other_shards_nothing(tmp_path):
    """Token files already there, one of them truncated: the derive batch makes the other shards' reports and parts
    and keeps them (it does not fail: Snakemake would remove them all), summarize fails naming the bad shard and
    why; once its token file is fixed, the plain rerun derives that shard alone and summarizes."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    shards = ["en/shard-0", "en/shard-1", "en/shard-2"]
    for i, shard in enumerate(shards):
        d = simple_shard(corpus, shard, [0.5, 0.4], seed=i)
        ids = list(pd.read_parquet(d / "metadata.parquet")["segment_id"])
        rows = [(seg, np.zeros(20, "<u2").tobytes(), 20) for seg in ids]  # foreign: no provenance, no report
        pq.write_table(pa.table(list(zip(*rows, strict=True)), schema=SCHEMA.with_metadata(None)), d / TOKENS)
    bad = corpus / "en/shard-1" / TOKENS
    whole = bad.read_bytes()
    bad.write_bytes(whole[:-100])
    config = {"corpus": str(corpus), "output": str(out), "codec": json.dumps({"weights": "random"})}

    first = run_snakemake(tmp_path, config=config, check=False)
    text = first.stdout + first.stderr
    assert first.returncode != 0, text[-3000:]
    counts = job_counts(text)
    assert "encode_shard" not in counts and counts["derive_batch_0"] == 1, counts
    refusal = (out / "logs/summarize.log").read_text()
    assert "1 of 3 shards could not be derived" in refusal, refusal[-3000:]
    assert re.search(r"^  en/shard-1: cannot read neucodec_tokens\.parquet: ", refusal, re.M), refusal[-3000:]
    assert "en/shard-1: cannot read neucodec_tokens.parquet" in (out / "logs/derive/batch_0.log").read_text()
    assert not (out / "stats.json").exists()
    kept = {}
    for shard in ("en/shard-0", "en/shard-2"):  # the good shards' work survived the run
        report = out / "shards" / f"{shard}.json"
        assert json.loads(report.read_text())["record"] == "foreign"
        assert len(pd.read_parquet(out / "sft_dataset/data/train" / f"{shard}.parquet")) == 2
        kept[report] = report.stat().st_mtime_ns
    assert json.loads((out / "shards/en/shard-1.json").read_text())["record"] == "failed"

    going = run_snakemake(tmp_path, "--keep-going", config=config)  # asked to go on: listed, not refused
    assert job_counts(going.stdout + going.stderr) == {"summarize": 1, "report_figures": 1, "all": 1}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["shards"] == 3 and stats["records"] == {"failed": 1, "foreign": 2}
    assert [(f["shard"], f["stage"]) for f in stats["failed_shards"]] == [("en/shard-1", "derive")]
    assert stats["failed_shards"][0]["error"].startswith("shard en/shard-1: cannot read neucodec_tokens.parquet")
    assert "- `en/shard-1` (derive): shard en/shard-1: cannot read" in (out / "sft_dataset/README.md").read_text()

    bad.write_bytes(whole)  # fixed: newer than its report
    again = run_snakemake(tmp_path, config=config)
    counts = job_counts(again.stdout + again.stderr)
    assert "encode_shard" not in counts and counts["derive_batch_0"] == 1 and counts["summarize"] == 1, counts
    assert {report: report.stat().st_mtime_ns for report in kept} == kept  # not derived again
    assert json.loads((out / "shards/en/shard-1.json").read_text())["record"] == "foreign"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["shards"] == 3 and stats["records"] == {"foreign": 3} and stats["failed_shards"] == []
