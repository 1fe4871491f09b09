"""Decoding, resampling, downmixing and the per-segment checks (no model)."""

import io
import tarfile

import numpy as np
import pytest
import torch
import torchaudio.functional as AF
from conftest import clip, float_wav_bytes

from neucodec_workflow.demo.corpus import flac_bytes
from neucodec_workflow.shard.audio import (
    HOP,
    Clip,
    Reason,
    Reject,
    decode_member,
    iter_flac_members,
    segment_id_of,
    to_mono_16k,
)


def test_segment_id_from_nested_member():
    assert segment_id_of("a/b/seg-1.flac") == "seg-1"
    assert segment_id_of("ünïcode_ä.flac") == "ünïcode_ä"


def test_16k_mono_passthrough_is_exact():
    audio = clip(1.0)
    out = decode_member("s", "s.flac", flac_bytes(audio, 16_000), max_seconds=60)
    assert isinstance(out, Clip)
    # FLAC PCM_16 quantisation only
    np.testing.assert_allclose(out.audio, audio, atol=1 / 2**15)
    assert out.n_tokens == len(audio) // HOP == 50


@pytest.mark.parametrize("sr", [8_000, 22_050, 24_000, 44_100, 48_000])
def test_resample_matches_torchaudio_and_length(sr):
    audio = clip(1.3, sr)
    out = decode_member("s", "s.flac", flac_bytes(audio, sr), max_seconds=60)
    assert isinstance(out, Clip) and out.source_rate == sr
    decoded = np.round(audio * 32767) / 32768  # what FLAC PCM_16 gives back
    expect = AF.resample(torch.from_numpy(decoded.astype(np.float32)), sr, 16_000).numpy()
    np.testing.assert_allclose(out.audio, expect, atol=1e-4)
    assert abs(len(out.audio) - round(len(audio) * 16_000 / sr)) <= 1


def test_stereo_is_averaged():
    left = clip(1.0, seed=1)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    out = decode_member("s", "s.flac", flac_bytes(stereo, 16_000), max_seconds=60)
    assert isinstance(out, Clip) and out.source_channels == 2
    np.testing.assert_allclose(out.audio, np.round(left * 32767) / 32768 / 2, atol=1e-4)


def test_downmix_three_channels():
    x = np.stack([np.ones(800), np.zeros(800), -np.ones(800) * 0.5], axis=1).astype(np.float32)
    np.testing.assert_allclose(to_mono_16k(x, 16_000), np.full(800, 0.5 / 3, np.float32), rtol=1e-6)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"fLaC\x00\x00\x00garbage", Reason.DECODE_ERROR),
        (b"", Reason.EMPTY),  # a 0-byte member
        (float_wav_bytes(np.zeros(0, np.float32), 16_000), Reason.EMPTY),
        (flac_bytes(clip(0.015), 16_000), Reason.TOO_SHORT),  # 240 samples < 320
        (float_wav_bytes(np.array([0.1, np.nan, 0.2] * 400, np.float32), 16_000), Reason.NON_FINITE),
        (float_wav_bytes(np.array([0.1, np.inf] * 400, np.float32), 16_000), Reason.NON_FINITE),
        (flac_bytes(clip(3.0, 8_000), 8_000), Reason.TOO_LONG),
    ],
    ids=["garbage", "zero_bytes", "empty_wav", "short_flac", "nan_wav", "inf_wav", "long_flac"],  # WAVs carry a time
)
def test_bad_members_are_rejected_with_reason(payload, reason):
    out = decode_member("seg", "dir/seg.flac", payload, max_seconds=2.5)
    assert isinstance(out, Reject)
    assert (out.segment_id, out.reason, out.member) == ("seg", reason, "dir/seg.flac")
    assert "0x" not in out.detail  # no object addresses in reports


def test_exact_frame_multiple_and_subframe_boundary():
    exact = decode_member("a", "a.flac", flac_bytes(np.full(320 * 7, 0.1, np.float32), 16_000), 60)
    one = decode_member("b", "b.flac", flac_bytes(np.full(320, 0.1, np.float32), 16_000), 60)
    assert isinstance(exact, Clip) and exact.n_tokens == 7
    assert isinstance(one, Clip) and one.n_tokens == 1


def test_tar_is_streamed_with_nested_members_and_other_files_ignored():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in [("x/y/a.flac", b"1"), ("notes.txt", b"2"), ("b.FLAC", b"3")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)

    class NoSeek(io.RawIOBase):  # proves nothing seeks: works on a network stream
        def readable(self):
            return True

        def readinto(self, b):
            data = buf.read(len(b))
            b[: len(data)] = data
            return len(data)

    assert list(iter_flac_members(NoSeek())) == [("x/y/a.flac", b"1"), ("b.FLAC", b"3")]
