"""The batched engine: exact mode equals NeuCodec.encode_code token for token; fbank; fast mode; devices."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import clip, make_clips

from neucodec_workflow.engine.engine import Engine, EngineConfig
from neucodec_workflow.engine.fbank import TorchFbank
from neucodec_workflow.engine.numerics import tf32_state
from neucodec_workflow.engine.reference import reference_tokens

STRICT_FP32 = (False, False, "highest")


def exact(batch_seconds: float, **kw) -> EngineConfig:
    return EngineConfig(mode="exact", batch_seconds=batch_seconds, **kw)


MIXED = [
    (0.3, 16_000, 1),
    (320 * 40, 16_000, 1),
    (320 * 40, 16_000, 1),
    (1.37, 44_100, 2),
    (320, 16_000, 1),
    (2.05, 24_000, 1),
    (0.9, 48_000, 2),
]
LONG = (20.5, 16_000, 1)


@pytest.fixture(scope="module")
def mixed(codec):
    clips = make_clips(MIXED)
    return clips, [reference_tokens(codec, c.audio) for c in clips]


_expected: dict[bytes, np.ndarray] = {}


def expected(codec, clip) -> np.ndarray:
    """``encode_code``'s tokens for ``clip``, computed once per module (tests encode the same short clips; each
    reference call costs ~1 s on 2 cores whatever the clip's length). Call it before patching the model."""
    key = clip.audio.tobytes()
    if key not in _expected:
        _expected[key] = reference_tokens(codec, clip.audio)
    return _expected[key]


def assert_equal_to_reference(out, clips, refs):
    assert [c.segment_id for c, _ in out] == [c.segment_id for c in clips]  # tar order kept
    for (c, tokens), ref in zip(out, refs, strict=True):
        assert len(tokens) == c.n_tokens
        np.testing.assert_array_equal(tokens, ref, err_msg=f"{c.segment_id} ({c.seconds:.2f} s)")


@pytest.mark.parametrize("batch_seconds", [pytest.param(1.0, marks=pytest.mark.slow), 6.0])
def test_exact_mode_equals_encode_code(codec, mixed, batch_seconds):
    clips, refs = mixed
    assert_equal_to_reference(list(Engine(codec, exact(batch_seconds)).encode(clips)), clips, refs)


@pytest.mark.slow  # the 20.5 s clip: ~40 s of reference and engine on 2 cores
def test_exact_mode_equals_encode_code_with_a_long_clip_in_a_large_batch(codec, mixed):
    clips, refs = mixed
    long = make_clips([*MIXED, LONG])[-1]
    clips, refs = [*clips, long], [*refs, reference_tokens(codec, long.audio)]
    assert_equal_to_reference(list(Engine(codec, exact(60.0)).encode(clips)), clips, refs)


@pytest.mark.slow  # several windows: ~6 s
def test_window_smaller_than_input(codec, mixed):
    clips, refs = mixed
    out = list(Engine(codec, exact(4.0, window_clips=3)).encode(clips[:5]))
    for (_, tokens), ref in zip(out, refs[:5], strict=True):
        np.testing.assert_array_equal(tokens, ref)


def test_torch_fbank_matches_stock_extractor(codec):
    fb = TorchFbank("cpu")
    for seconds in (0.02, 0.5, 3.3):
        wave = torch.from_numpy(clip(seconds, seed=9))
        wave = torch.nn.functional.pad(wave, (0, 320 - wave.shape[-1] % 320))
        stock = codec.model.feature_extractor(wave, sampling_rate=16_000, return_tensors="pt").input_features[0]
        ours = fb.one(wave)
        assert ours.shape == stock.shape
        assert (ours - stock).abs().max().item() < 1e-4


@pytest.mark.slow  # bf16 on a CPU without AVX-512: torch's slow path
def test_fast_mode_changes_arithmetic_and_stays_close(codec, mixed):
    """bf16 autocast is in effect (random weights sit near rounding boundaries, so some tokens flip: ~0.75 on CPU),
    and the tokens stay mostly those of the reference (a broken fast path lands near chance, 1/65,536)."""
    clips, refs = mixed
    out = list(Engine(codec, EngineConfig(mode="fast", batch_seconds=60)).encode(clips[:4]))
    agree = np.concatenate([t == r for (_, t), r in zip(out, refs[:4], strict=True)]).mean()
    print(f"fast mode token agreement on random weights (CPU bf16): {agree:.3f}")
    assert all(len(t) == c.n_tokens for c, t in out)
    assert 0.5 < agree < 1.0


@pytest.mark.slow  # fast mode (bf16) on the CPU
def test_numerics_are_scoped_and_the_audit_reference_is_strict_fp32(codec, mixed, monkeypatch):
    """Fast mode's TF32 holds only inside its own forward passes; the reference that audits it runs in strict fp32
    (on a GPU, TF32 in the reference would overstate fast mode's agreement), and nothing leaks to the process."""
    clips, _ = mixed
    before = tf32_state()
    engine = Engine(codec, EngineConfig(mode="fast", batch_seconds=60))
    assert tf32_state() == before  # constructing an engine changes no process-wide switch
    seen = {}
    real_w2v, real_encode_code = engine.w2v.__call__, codec.model.encode_code

    def w2v(*args, **kw):
        seen["engine"] = tf32_state()
        return real_w2v(*args, **kw)

    def encode_code(*args, **kw):
        seen["reference"] = tf32_state()
        return real_encode_code(*args, **kw)

    monkeypatch.setattr(engine, "w2v", w2v)
    monkeypatch.setattr(codec.model, "encode_code", encode_code)
    for _clip, _tokens in engine.encode(clips[:2]):
        reference_tokens(codec, _clip.audio)  # the inline audit, between the engine's batches
    assert seen["engine"] == (True, True, "high")
    assert seen["reference"] == STRICT_FP32
    assert tf32_state() == before


CPU_ALLOC_FAILURE = (
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
    "allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"
)


@pytest.mark.parametrize(
    "batch_error,alone_error",
    [
        (
            torch.OutOfMemoryError("CUDA out of memory (simulated)"),
            torch.OutOfMemoryError("CUDA out of memory (simulated)"),
        ),
        pytest.param(  # torch's CPU allocator
            RuntimeError(CPU_ALLOC_FAILURE), RuntimeError(CPU_ALLOC_FAILURE), marks=pytest.mark.slow
        ),
        pytest.param(  # the native kernel, Python
            MemoryError("snake_aa: out of memory for its tile buffer"), MemoryError(), marks=pytest.mark.slow
        ),
    ],
    ids=["cuda", "cpu-allocator", "memoryerror"],
)
def test_oom_in_batch_retries_one_by_one_and_rejects_what_never_fits(codec, monkeypatch, batch_error, alone_error):
    # lengths within the engine's padding limit: one batch of three, which fails, then one clip at a time
    clips = make_clips([(0.40, 16_000, 1), (0.42, 16_000, 1), (0.44, 16_000, 1)])
    engine = Engine(codec, exact(60))
    real = engine._encode_batch
    sizes = []

    def flaky(batch):
        sizes.append(len(batch))
        if len(batch) > 1:
            raise batch_error
        if batch[0].segment_id == "c2":
            raise alone_error
        return real(batch)

    monkeypatch.setattr(engine, "_encode_batch", flaky)
    out = dict((c.segment_id, t) for c, t in engine.encode(clips))
    assert sizes == [3, 1, 1, 1]
    assert out["c2"] is alone_error
    np.testing.assert_array_equal(out["c0"], expected(codec, clips[0]))
    np.testing.assert_array_equal(out["c1"], expected(codec, clips[1]))


def test_other_errors_are_not_taken_for_memory(codec, monkeypatch):
    engine = Engine(codec, exact(60))
    monkeypatch.setattr(engine, "_encode_batch", lambda batch: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        list(engine.encode(make_clips([(0.4, 16_000, 1)])))


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="encode.mode"):
        EngineConfig(mode="turbo", batch_seconds=60)  # type: ignore[arg-type]


def test_gpu_claim_locks_are_exclusive(tmp_path):
    import subprocess
    import sys

    from neucodec_workflow.engine.device import claim_gpu, release_gpus

    try:
        assert claim_gpu(["0", "1"], tmp_path) == 0
        code = f"from neucodec_workflow.engine.device import claim_gpu; from pathlib import Path; print(claim_gpu(['0', '1'], Path({str(tmp_path)!r})))"
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert other.stdout.strip() == "1"  # another process (another encode job) gets the other GPU
    finally:
        release_gpus()


@pytest.fixture
def gpus(monkeypatch, tmp_path):
    """Pretend this machine has N CUDA devices (device choice is tested without a GPU); locks in a fresh directory."""
    from neucodec_workflow.engine import device

    monkeypatch.setenv("NEUCODEC_GPU_LOCK_DIR", str(tmp_path))

    def fake(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    yield fake
    device.release_gpus()


def test_several_visible_gpus_are_claimed_one_per_job(gpus, monkeypatch):
    """CUDA_VISIBLE_DEVICES=0,1,2,3 with --resources gpu=4: four jobs on four GPUs, not four on the first."""
    from neucodec_workflow.engine.device import pick_device

    gpus(4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert [pick_device("auto") for _ in range(4)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]


def test_gpu_choice(gpus, monkeypatch, tmp_path):
    from neucodec_workflow.engine.device import pick_device

    gpus(0)
    assert pick_device("auto") == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA device is visible"):
        pick_device("cuda")
    gpus(1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")  # SLURM gave this job one GPU: it is cuda:0 to the job
    assert pick_device("auto") == pick_device("auto") == "cuda:0"  # never locked: one visible GPU is this job's own
    assert pick_device("cpu") == "cpu" and pick_device("cuda:0") == "cuda:0"
    gpus(2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa,GPU-bbbb")  # locks named by the physical GPU's id
    assert pick_device("auto") == "cuda:0"
    assert sorted(p.name for p in tmp_path.glob("*.lock")) == ["neucodec_workflow-gpu-GPU-aaaa.lock"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # a local box with 2 GPUs and nothing assigned
    assert pick_device("auto") == "cuda:0"
    assert pick_device("auto") == "cuda:1"


def _forge_codes(model_or_engine, attr, n_tokens, value):
    """Wrap ``attr`` (the quantizer ``(emb) -> (_, codes)`` or ``encode_code``) so that the clip of ``n_tokens``
    tokens gets ``value`` as its first code: a model whose output does not fit uint16."""
    real = getattr(model_or_engine, attr)

    def forged(x):
        out = real(x)
        codes = out[1] if isinstance(out, tuple) else out
        if codes.shape[1 if isinstance(out, tuple) else -1] == n_tokens:
            codes = codes.to(torch.int64).clone()
            codes.view(-1)[0] = value
        return (out[0], codes) if isinstance(out, tuple) else codes

    return forged


@pytest.mark.parametrize("value", [65_536 + 7, -3])
@pytest.mark.slow  # three reference encodes and the engine: ~8 s each
def test_codes_outside_uint16_are_the_segments_error_not_a_wrapped_token(codec, monkeypatch, value):
    """The range check runs before the narrowing cast (which would wrap 65,543 to 7): the forged clip is an error
    naming its segment, the others are tokens equal to encode_code's."""
    from neucodec_workflow.engine.reference import TokenRangeError

    clips = make_clips([(0.3, 16_000, 1), (0.5, 16_000, 1), (0.7, 16_000, 1)])  # 15, 25, 35 tokens
    refs = [expected(codec, c) for c in clips]
    engine = Engine(codec, exact(60))
    monkeypatch.setattr(engine, "quantizer", _forge_codes(engine, "quantizer", 25, value))
    out = dict((c.segment_id, t) for c, t in engine.encode(clips))
    assert isinstance(out["c1"], TokenRangeError)
    assert str(out["c1"]).startswith(f"segment c1: 1 code(s) outside the uint16 range 0..65535 (first: {value})")
    np.testing.assert_array_equal(out["c0"], refs[0])
    np.testing.assert_array_equal(out["c2"], refs[2])


@pytest.mark.slow  # four reference encodes
def test_the_reference_path_checks_range_and_count_per_segment(codec, monkeypatch):
    """ReferenceEncoder: a code out of range, or a count other than n_samples // 320, is that clip's error."""
    from neucodec_workflow.engine.reference import ReferenceEncoder, TokenCountError, TokenRangeError

    clips = make_clips([(0.3, 16_000, 1), (0.5, 16_000, 1), (0.7, 16_000, 1)])
    refs = [expected(codec, c) for c in clips]
    monkeypatch.setattr(codec.model, "encode_code", _forge_codes(codec.model, "encode_code", 25, 70_000))
    with pytest.raises(TokenRangeError, match="a clip of 8000 samples: 1 code"):
        reference_tokens(codec, clips[1].audio)
    real = codec.model.encode_code
    monkeypatch.setattr(
        codec.model, "encode_code", lambda x: real(x)[..., :-1] if x.shape[-1] == 11_200 else real(x)
    )  # clip c2 (0.7 s): one token short
    out = dict((c.segment_id, t) for c, t in ReferenceEncoder(codec).encode(clips))
    assert isinstance(out["c1"], TokenRangeError) and str(out["c1"]).startswith("segment c1:")
    assert isinstance(out["c2"], TokenCountError) and "segment c2: 34 tokens" in str(out["c2"])
    np.testing.assert_array_equal(out["c0"], refs[0])


def test_a_token_count_mismatch_in_a_batch_is_that_clips_error(codec, monkeypatch):
    """The engine's batch collection returns a TokenCountError for the clip that miscounts, never raises it."""
    from neucodec_workflow.engine.reference import TokenCountError

    clips = make_clips([(0.3, 16_000, 1), (0.5, 16_000, 1), (0.7, 16_000, 1)])
    engine = Engine(codec, exact(60))
    real = engine.sem

    def sem(x):  # one frame too few for the 35-token clip (a model that miscounts)
        out = real(x)
        return out[..., :-1] if out.shape[-1] == 35 else out

    monkeypatch.setattr(engine, "sem", sem)
    out = dict((c.segment_id, t) for c, t in engine.encode(clips))
    assert isinstance(out["c2"], TokenCountError) and "segment c2: 34 tokens" in str(out["c2"])
    np.testing.assert_array_equal(out["c0"], expected(codec, clips[0]))
    np.testing.assert_array_equal(out["c1"], expected(codec, clips[1]))


REPO = Path(__file__).resolve().parents[1]


def test_docs_claim_identical_tokens_on_cpus_only():
    """Exact mode is identical to encode_code on CPUs; on GPUs its measured agreement is >= 0.9999 (an H200: 3-9
    tokens in 100,000 differ, cause not yet found). Every sentence in the docs, config and docstrings that calls
    the tokens identical to encode_code says on CPUs, and its file gives the GPU figure."""
    files = [
        REPO / "README.md",
        *REPO.glob("docs/*.md"),
        *REPO.glob("config/*"),
        *REPO.glob("report/*.rst"),
        *(REPO / "src" / "neucodec_workflow").rglob("*.py"),
    ]
    offenders = []
    for path in files:
        text = re.sub(r"\s*\n\s*(#\s*)*", " ", path.read_text())  # comment markers and line breaks away
        for sentence in re.split(r"(?<=[.;])\s+", text):
            if "identical" in sentence and "encode_code" in sentence:
                if "CPU" not in sentence or "0.9999" not in text:
                    offenders.append(f"{path.relative_to(REPO)}: {sentence.strip()[:160]}")
    assert offenders == []
