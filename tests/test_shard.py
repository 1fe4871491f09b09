"""One shard end to end in the package: dirty input, accounting, the output contract."""

import json
import os
import threading

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import clip, float_wav_bytes, simple_shard

from neucodec_workflow.demo.corpus import Member, flac_bytes, write_shard
from neucodec_workflow.engine.reference import ReferenceEncoder, reference_tokens
from neucodec_workflow.record.contract import REPORT_KEY, SCHEMA, footer, read_provenance, read_report
from neucodec_workflow.record.records import Reason
from neucodec_workflow.shard.audio import ShardError
from neucodec_workflow.shard.encode import encode_shard, read_metadata_ids


def encode(
    name,
    shard_dir,
    codec,
    *,
    tar=None,
    out="out.parquet",
    max_seconds=60.0,
    decode_workers=2,
    reference=None,
    audit=0,
    encoder=None,
):
    """encode_shard as the job calls it: the metadata's ids read once, then the tar (a path or a stream)."""
    ids = read_metadata_ids(name, shard_dir / "metadata.parquet", ["segment_id"])
    return encode_shard(
        name,
        shard_dir / "audio.tar" if tar is None else tar,
        ids,
        shard_dir / out,
        encoder or ReferenceEncoder(codec),
        max_seconds=max_seconds,
        decode_workers=decode_workers,
        reference=reference,
        audit_segments=audit,
        device="cpu",
    )


TIMING = ("wall_seconds", "audio_seconds_per_wall_second")  # the only fields of a report that vary run to run


def assert_report_inside(tokens_path, result):
    """The token file carries the encode job's report (the record of the shard): the returned report, as JSON."""
    embedded = read_report(tokens_path)
    assert embedded is not None
    expected = json.loads(json.dumps(result.as_dict()))
    assert {k: v for k, v in embedded.items() if k not in TIMING} == {
        k: v for k, v in expected.items() if k not in TIMING
    }
    assert set(embedded) == set(expected) and embedded["wall_seconds"] > 0
    assert embedded["encoded"] + embedded["rejected_count"] == embedded["segments"]
    return embedded


@pytest.fixture(scope="module")
def dirty_shard(tmp_path_factory):
    """Every kind of dirt the contract lists, next to clean segments of other rates and channel counts."""
    good = {
        "good_16k": (clip(0.6, 16_000, 1), 16_000),
        "good_44k_stereo": (clip(0.5, 44_100, 2, channels=2), 44_100),
        "sub/dir/nested_24k": (clip(0.4, 24_000, 3), 24_000),
        "ünïcode_ид": (clip(0.3, 16_000, 4), 16_000),
        "dup_in_tar": (clip(0.3, 16_000, 5), 16_000),
    }
    members = [Member(f"{k}.flac", flac_bytes(a, sr)) for k, (a, sr) in good.items()]
    members += [
        Member("dup_in_tar.flac", flac_bytes(clip(0.3, 16_000, 6), 16_000)),
        Member("corrupt.flac", b"fLaC not really"),
        Member("empty.flac", float_wav_bytes(np.zeros(0, np.float32), 16_000)),
        Member("subframe.flac", flac_bytes(clip(0.01), 16_000)),
        Member("nan.flac", float_wav_bytes(np.array([0.0, np.nan] * 4000, np.float32), 16_000)),
        Member("too_long.flac", flac_bytes(clip(3.0, 8_000), 8_000)),
        Member("orphan_in_tar.flac", flac_bytes(clip(0.3), 16_000)),
        Member("dup_in_meta.flac", flac_bytes(clip(0.3), 16_000)),
        Member("readme.txt", b"not audio"),
    ]
    ids = [
        "good_16k",
        "good_44k_stereo",
        "nested_24k",
        "ünïcode_ид",
        "dup_in_tar",
        "corrupt",
        "empty",
        "subframe",
        "nan",
        "too_long",
        "dup_in_meta",
        "dup_in_meta",
        "only_in_metadata",
    ]
    meta = pd.DataFrame({"segment_id": ids, "text": [f"t{i}" for i in range(len(ids))]})
    return write_shard(tmp_path_factory.mktemp("corpus") / "lang" / "shard-1", members, meta)


@pytest.fixture(scope="module")
def encoded(dirty_shard, codec):
    out = dirty_shard / "neucodec_tokens.parquet"
    report = encode("lang/shard-1", dirty_shard, codec, out=out.name, max_seconds=2.0)
    return report, out


def test_every_segment_is_accounted_for(encoded):
    report, _ = encoded
    d = report.as_dict()
    reasons = {r["segment_id"]: r["reason"] for r in d["rejected"] if r["segment_id"] != "dup_in_tar"}
    assert reasons == {
        "corrupt": Reason.DECODE_ERROR,
        "empty": Reason.EMPTY,
        "subframe": Reason.TOO_SHORT,
        "nan": Reason.NON_FINITE,
        "too_long": Reason.TOO_LONG,
        "orphan_in_tar": Reason.NOT_IN_METADATA,
        "dup_in_meta": Reason.DUPLICATE_IN_METADATA,
        "only_in_metadata": Reason.MISSING_FROM_TAR,
    }
    assert [r["reason"] for r in d["rejected"] if r["segment_id"] == "dup_in_tar"] == [Reason.DUPLICATE_IN_TAR]
    assert d["encoded"] == 5 and d["segments_in_tar"] == 13 and d["segments_in_metadata"] == 12
    # each tar member + each metadata id without a member: one outcome each
    assert d["encoded"] + d["rejected_count"] == d["segments"] == d["segments_in_tar"] + 1
    assert d["resampled"] == 2 and d["downmixed"] == 1
    # 0.6 s, 0.5 s, 0.4 s, 0.3 s, 0.3 s of audio at 50 tokens per second
    assert d["tokens"] == 30 + 25 + 20 + 15 + 15


def test_the_report_travels_inside_the_token_file(encoded):
    report, out = encoded
    embedded = assert_report_inside(out, report)
    assert embedded["shard"] == "lang/shard-1" and embedded["device"] == "cpu" and embedded["encoder"] == report.encoder
    assert embedded["codec"] == read_provenance(out) == report.codec
    assert {(r["segment_id"], r["reason"]) for r in embedded["rejected"]} == {
        (r.segment_id, str(r.reason)) for r in report.rejected
    }
    assert embedded["tokens"] == int(pd.read_parquet(out).token_count.sum())
    assert embedded["audit"] is None  # no reference: no audit
    assert REPORT_KEY in footer(out)


def test_tokens_parquet_contract_and_reference_equality(encoded, dirty_shard, codec):
    report, out = encoded
    # the exact reading snippet from contracts.md
    df = pd.read_parquet(out)
    tokens = np.frombuffer(df.iloc[0].neucodec_tokens, dtype=np.uint16)
    codes = torch.tensor(tokens, dtype=torch.long)[None, None]
    assert codes.shape == (1, 1, df.iloc[0].token_count)
    assert list(df.columns) == ["segment_id", "neucodec_tokens", "token_count"]
    assert df.segment_id.tolist() == ["good_16k", "good_44k_stereo", "nested_24k", "ünïcode_ид", "dup_in_tar"]
    assert (df.neucodec_tokens.map(len) // 2 == df.token_count).all()
    # n_samples_16k // 320 on every row; first clip: 0.6 s at 16 kHz = 9600 samples -> 30 tokens
    assert df.token_count.tolist()[0] == 30 and report.tokens == df.token_count.sum()
    # tokens equal NeuCodec.encode_code on the same audio
    from neucodec_workflow.shard.audio import decode_member, iter_flac_members

    with open(dirty_shard / "audio.tar", "rb") as f:
        first = next(decode_member("good_16k", m, b, 60) for m, b in iter_flac_members(f) if m == "good_16k.flac")
    np.testing.assert_array_equal(
        np.frombuffer(df.iloc[0].neucodec_tokens, "<u2"), reference_tokens(codec, first.audio)
    )
    prov = read_provenance(out)
    assert prov["random_weights"] is True and prov["semantic_layers"] == 16 and prov["versions"]["neucodec"] == "0.0.6"


@pytest.mark.parametrize(
    "members, ids, reasons",
    [
        (
            [Member("a.flac", b"garbage"), Member("b.flac", b"fLaC no"), Member("c.flac", b"RIFF\x00")],
            ["a", "b", "c"],
            {"decode_error": 3},
        ),
        # every id settled only at the end (missing from the tar), next to a member that is no FLAC
        ([Member("readme.txt", b"not audio")], ["a", "b"], {"missing_from_tar": 2}),
        ([Member("x.flac", b"garbage")], [], {"not_in_metadata": 1}),
        ([Member("x.flac", b"garbage")], [None], {"not_in_metadata": 1, "missing_segment_id": 1}),
        ([], [], {}),  # an empty tar and empty metadata: zero segments, still a record
    ],
)
def test_shard_without_valid_segment_gets_a_zero_row_record(tmp_path, codec, members, ids, reasons):
    """Nothing encodable is still accounted: a token file with zero rows (the contract's schema, both records
    inside) whose report rejects every segment with its reason; the job does not fail."""
    shard = write_shard(tmp_path / "s", members, pd.DataFrame({"segment_id": pd.Series(ids, dtype="string")}))
    report = encode("bad/one", shard, codec, out="neucodec_tokens.parquet")
    path = shard / "neucodec_tokens.parquet"
    assert pq.read_schema(path).remove_metadata() == SCHEMA.remove_metadata()
    df = pd.read_parquet(path)
    assert len(df) == 0 and list(df.columns) == ["segment_id", "neucodec_tokens", "token_count"]
    embedded = assert_report_inside(path, report)
    assert embedded["encoded"] == 0 and embedded["tokens"] == 0 and embedded["rejects_by_reason"] == reasons
    assert embedded["segments"] == embedded["rejected_count"] == sum(reasons.values())
    assert read_provenance(path) == report.codec
    assert not list(shard.glob(".*tmp*"))


def test_a_zero_row_record_derives_and_counts(tmp_path, codec):
    """The derive step and the stats take a zero-row token file: zero-row dataset parts, the shard's rejects in
    the totals."""
    from neucodec_workflow.dataset.derive import derive_shard
    from neucodec_workflow.dataset.sft import part_path
    from neucodec_workflow.dataset.stats import corpus_stats, dataset_card, dataset_index, shard_table

    meta = pd.DataFrame({"segment_id": ["a", "b"], "text": ["x", "y"], "language": "en", "speaker": "s"})
    shard = write_shard(tmp_path / "c" / "s", [Member("a.flac", b"junk"), Member("b.flac", b"junk")], meta)
    encode("s", shard, codec, out="neucodec_tokens.parquet")
    part = tmp_path / "out" / part_path("train", "s")
    derived = derive_shard(
        "s",
        shard / "neucodec_tokens.parquet",
        shard / "metadata.parquet",
        {f: f for f in ("segment_id", "text", "language", "speaker", "duration", "dataset")},
        report_path=tmp_path / "out" / "s.json",
        parts={"hf": {"train": part}},
        validation_fraction=0.0,
        rows_per_row_group=100,
    )
    assert derived["token_file"]["rows"] == 0 and derived["sft"]["rows_per_split"] == {"train": 0}
    assert derived["sft"]["parts"]["train"]["rows"] == 0 and len(pd.read_parquet(part)) == 0
    stats = corpus_stats([derived])
    assert stats["segments"] == stats["rejected"] == 2 and stats["encoded"] == 0
    assert stats["rejects_by_reason"] == {"decode_error": 2} and stats["audio_hours"] == 0
    assert "0 encoded" in dataset_card([derived], stats) and dataset_index([derived])["parts"][0]["rows"] == 0
    assert shard_table([derived]).num_rows == 1


def test_null_and_empty_metadata_ids_are_rejects_naming_their_rows(tmp_path, codec):
    """A metadata row without an id is that row's reject (missing_segment_id, the row number in the detail); the
    other segments are encoded and the record is written."""
    members = [Member(f"{i}.flac", flac_bytes(clip(0.3, seed=k), 16_000)) for k, i in enumerate(["a", "b"])]
    ids = pd.Series(["a", None, "", "b"], dtype="string")
    shard = write_shard(tmp_path / "s", members, pd.DataFrame({"segment_id": ids}))
    report = encode("x/ids", shard, codec)
    assert report.encoded == 2 and report.segments_in_metadata == 2
    assert [(r.segment_id, r.reason, r.detail) for r in report.rejected] == [
        ("", Reason.MISSING_SEGMENT_ID, "metadata row 1 (0-based): segment_id is null"),
        ("", Reason.MISSING_SEGMENT_ID, "metadata row 2 (0-based): segment_id is empty"),
    ]
    assert pd.read_parquet(shard / "out.parquet").segment_id.tolist() == ["a", "b"]
    embedded = assert_report_inside(shard / "out.parquet", report)
    assert embedded["segments"] == 4  # 2 members + 2 metadata rows without an id


def _drop_a_frame_of(engine, n_tokens):
    """The engine's SemanticEncoder gives one frame too few for the clip of ``n_tokens`` tokens (a model that
    miscounts): that clip's codes come out one short."""
    real = engine.sem

    def sem(x):
        out = real(x)
        return out[..., :-1] if out.shape[-1] == n_tokens else out

    engine.sem = sem


def test_a_token_count_mismatch_rejects_that_segment_only(tmp_path, codec):
    """A TokenCountError in the engine's batch collection is the segment's encode_error; the others are encoded."""
    from neucodec_workflow.engine.engine import Engine, EngineConfig

    shard = simple_shard(tmp_path, "x/tc", [0.3, 0.5, 0.7])  # 15, 25, 35 tokens: one batch
    engine = Engine(codec, EngineConfig(mode="exact", batch_seconds=60))
    _drop_a_frame_of(engine, 25)
    report = encode("x/tc", shard, codec, encoder=engine)
    assert report.encoded == 2 and [(r.segment_id, r.reason) for r in report.rejected] == [
        ("x_tc_001", Reason.ENCODE_ERROR)
    ]
    detail = report.rejected[0].detail
    assert detail.startswith("TokenCountError: segment x_tc_001: 24 tokens") and "expected 25" in detail
    df = pd.read_parquet(shard / "out.parquet")
    assert df.segment_id.tolist() == ["x_tc_000", "x_tc_002"] and df.token_count.tolist() == [15, 35]
    assert_report_inside(shard / "out.parquet", report)


def test_unreadable_tar_fails_naming_shard(tmp_path, codec):
    shard = simple_shard(tmp_path, "x/s1", [0.3])
    (shard / "audio.tar").write_bytes(b"\x00" * 10 + b"definitely not a tar" * 100)
    with pytest.raises(ShardError, match="shard x/s1: cannot read audio.tar"):
        encode("x/s1", shard, codec)


def test_truncated_tar_fails_naming_shard(tmp_path, codec):
    shard = simple_shard(tmp_path, "x/s2", [0.3, 0.3])
    data = (shard / "audio.tar").read_bytes()
    (shard / "audio.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match="shard x/s2: cannot read audio.tar"):
        encode("x/s2", shard, codec)
    assert not (shard / "out.parquet").exists()


def test_unreadable_metadata_fails_naming_shard(tmp_path, codec):
    shard = simple_shard(tmp_path, "x/s3", [0.3])
    (shard / "metadata.parquet").write_bytes(b"PAR1 broken")
    with pytest.raises(ShardError, match="shard x/s3: cannot read metadata.parquet"):
        encode("x/s3", shard, codec)


def test_missing_id_column_fails_naming_shard(tmp_path, codec):
    shard = simple_shard(tmp_path, "x/s4", [0.3])
    pd.DataFrame({"id": ["x"]}).to_parquet(shard / "metadata.parquet")
    with pytest.raises(
        ShardError,
        match=r"shard x/s4: cannot read metadata.parquet: .*no segment id column: none of the columns \['segment_id'\]",
    ):
        encode("x/s4", shard, codec)


def test_tar_from_a_pipe(tmp_path, codec):
    """The tar arrives through a pipe (forward only, not seekable, in small writes), as from a network stream."""
    shard = simple_shard(tmp_path, "x/s5", [0.4, 0.3, 0.5])
    data = (shard / "audio.tar").read_bytes()
    read_fd, write_fd = os.pipe()

    def feed():
        with os.fdopen(write_fd, "wb") as w:
            for i in range(0, len(data), 1000):
                w.write(data[i : i + 1000])

    writer = threading.Thread(target=feed)
    writer.start()
    with os.fdopen(read_fd, "rb") as stream:
        assert not stream.seekable()
        report = encode("x/s5", shard, codec, tar=stream)
    writer.join()
    assert report.encoded == 3 and not report.rejected
    assert pd.read_parquet(shard / "out.parquet").segment_id.tolist() == [f"x_s5_{i:03d}" for i in range(3)]
    embedded = assert_report_inside(shard / "out.parquet", report)
    assert embedded["segments_in_tar"] == 3 and embedded["rejected"] == []


class _OutOfMemoryModel(torch.nn.Module):
    """A model whose encode_code fails the way torch's CPU allocator does (or with ``error``)."""

    def __init__(self, error: Exception):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # Codec.device reads it
        self.error = error

    def encode_code(self, x):
        raise self.error


def test_inline_audit_skips_what_the_reference_cannot_hold(tmp_path, codec):
    """Out of memory in the audit's reference leaves that clip unaudited; the shard's tokens are still written."""
    from neucodec_workflow.engine.codec import Codec
    from neucodec_workflow.engine.reference import audit_reference

    shard = simple_shard(tmp_path, "x/s6", [0.3, 0.4])
    oom = Codec(
        _OutOfMemoryModel(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"))
    )
    report = encode("x/s6", shard, codec, out="out.parquet", decode_workers=1, reference=audit_reference(oom), audit=2)
    assert report.encoded == 2 and report.audit is not None and report.audit.segments == 0
    assert len(pd.read_parquet(shard / "out.parquet")) == 2
    embedded = assert_report_inside(shard / "out.parquet", report)
    assert embedded["audit"] == report.audit.as_dict() and embedded["audit"]["token_agreement"] is None
    broken = Codec(_OutOfMemoryModel(RuntimeError("shape mismatch")))  # any other failure is a bug: it surfaces
    with pytest.raises(RuntimeError, match="shape mismatch"):
        encode("x/s6", shard, codec, out="out2.parquet", decode_workers=1, reference=audit_reference(broken), audit=2)
    assert not (shard / "out2.parquet").exists()  # a failed job publishes no token file
    assert not list(shard.glob(".*tmp*"))


@pytest.mark.slow  # the audit's reference encodes: ~6 s
def test_inline_audit_travels_inside_the_token_file(tmp_path, codec):
    from neucodec_workflow.engine.reference import audit_reference

    shard = simple_shard(tmp_path, "x/s7", [0.3, 0.4, 0.2])
    report = encode(
        "x/s7", shard, codec, out="out.parquet", decode_workers=1, reference=audit_reference(codec), audit=3
    )
    embedded = assert_report_inside(shard / "out.parquet", report)
    assert embedded["audit"]["segments"] == report.audit.segments > 0
    assert embedded["audit"]["tokens"] == report.audit.tokens > 0
    assert embedded["audit"]["token_agreement"] == 1.0  # the same encoder on both paths
