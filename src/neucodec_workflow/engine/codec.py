"""Build and load the neucodec encoder: Hub id, local checkpoint, or seeded random weights.

One loader for every source. The model is the real ``neucodec.NeuCodec`` architecture, built
without the Hub (``NeuCodec.__init__`` would download w2v-bert-2.0), with the w2v-bert stack cut
to the 16 layers the encoder reads (``hidden_states[16]`` is bit-identical), in eval mode.

Weights are loaded strictly for every module the encoder uses: a missing or unexpected key is an
error. Decoder-only weights (vocos backbone and head, ``fc_post_a``) may be absent: encoding never
touches them.

Loading is cheap: checkpoints are memory-mapped (safetensors, or torch's zip format) and their tensors become the
model's parameters without a copy; modules whose weights the checkpoint holds are never randomly initialised first;
a checkpoint's sha256 is computed once per file (then kept in the cache, by the file's identity and times).

``random``: the seeded random weights are built once per (seed, layers, versions of the packages and of the recipe
that make them) and kept in ``$NEUCODEC_WORKFLOW_CACHE`` (default ``~/.cache/neucodec_workflow``), written
atomically (several jobs may start at once: one builds, the others wait for it and load it); every later job loads
them (seconds, not the build's tens of seconds). The tokens are those of the in-process build.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from neucodec_workflow import upstream
from neucodec_workflow.engine.probe import speech_like

log = logging.getLogger(__name__)

HUB_IDS = ("neuphonic/neucodec",)
W2V_BERT_ID = "facebook/w2v-bert-2.0"
SEMANTIC_LAYERS = 16
RANDOM = "random"

# Top-level modules upstream's own loader drops from the published checkpoint (training-only heads), as key prefixes:
# the same names deeper in the tree (``generator.fc_post_s...``) are unexpected keys, not training heads.
UPSTREAM_IGNORED = ("fc_post_s.", "SemanticDecoder")
# Modules encoding never runs: their weights may be absent from a checkpoint.
DECODER_ONLY = ("generator.backbone.", "generator.head.", "fc_post_a.", "semantic_model.masked_spec_embed")
CHECKPOINT_FILES = ("pytorch_model.bin", "model.safetensors", "model.pt", "neucodec.pt")
# Where built weights (and checkpoint digests) are cached; the native kernels use it too (engine/kernels).
CACHE_ENV = "NEUCODEC_WORKFLOW_CACHE"
META_KEY = "neucodec_workflow"  # our metadata in a checkpoint (a .pt's dict key, a .safetensors header entry)
# Packages whose versions can change the seeded random weights (init order and functions, the probe's arithmetic).
RANDOM_WEIGHT_PACKAGES = ("torch", "transformers", "neucodec", "vector-quantize-pytorch", "torchtune", "numpy")
# The modules built on the meta device when their weights come from a checkpoint (no init, no allocation).
META_MODULES = ("semantic_model", "SemanticEncoder_module", "CodecEnc")


class CodecLoadError(RuntimeError):
    """The requested weights cannot be turned into a complete encoder."""


@dataclass
class Codec:
    """A ready-to-encode NeuCodec model plus where its weights came from."""

    model: Any  # neucodec.NeuCodec
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def is_random(self) -> bool:
        return bool(self.provenance.get("random_weights"))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def build_neucodec(semantic_layers: int = SEMANTIC_LAYERS, *, init: bool = True) -> nn.Module:
    """The NeuCodec module tree exactly as ``NeuCodec.__init__`` builds it, minus the Hub calls.

    ``init=True``: torch's default random init. ``init=False``: the large modules are allocated but
    not initialised (built on the meta device, ~10 s faster); only for loading a checkpoint over it.
    """
    model = _encoder_skeleton(semantic_layers, meta=not init)
    _build_rest(model, init=True)
    if not init:
        for name in META_MODULES:
            getattr(model, name).to_empty(device="cpu")
    return model


def _encoder_skeleton(semantic_layers: int, *, meta: bool) -> Any:
    """``build_neucodec``'s module tree up to the encoder: the large encoder modules (``META_MODULES``; on the meta
    device when ``meta``) and the feature extractor; ``_build_rest`` adds the others. Same order of random draws as
    ``NeuCodec.__init__``: the seeded random weights depend on it."""
    upstream.require("neucodec", "transformers", "torch")  # the rebuilt __init__ and the re-implemented internals
    from neucodec.codec_encoder import CodecEncoder
    from neucodec.model import NeuCodec
    from neucodec.module import SemanticEncoder
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

    model = NeuCodec.__new__(NeuCodec)
    nn.Module.__init__(model)
    model.sample_rate = 24_000
    model.hop_length = 480
    with torch.device("meta") if meta else contextlib.nullcontext():
        # Wav2Vec2BertConfig() defaults equal facebook/w2v-bert-2.0 for every value the forward uses.
        config = Wav2Vec2BertConfig(num_hidden_layers=semantic_layers, output_hidden_states=True)
        model.semantic_model = Wav2Vec2BertModel(config)
        model.SemanticEncoder_module = SemanticEncoder(1024, 1024, 1024)
        model.CodecEnc = CodecEncoder()
    model.feature_extractor = SeamlessM4TFeatureExtractor(
        feature_size=80,
        num_mel_bins=80,
        padding_value=1,
        stride=2,
        sampling_rate=16_000,
        return_attention_mask=True,
        padding_side="right",
    )
    return model.eval()


def _build_rest(model: Any, *, init: bool) -> None:
    """The modules after the encoder's: the decoder with its quantizer, ``fc_prior``, ``fc_post_a`` (on the CPU: the
    FSQ quantizer computes buffers at init, never on the meta device); torch's random init only with ``init``."""
    from neucodec.codec_decoder_vocos import CodecDecoderVocos

    with contextlib.nullcontext() if init else _no_init():
        model.generator = CodecDecoderVocos(hop_length=model.hop_length)
        model.fc_prior = nn.Linear(2048, 2048)
        model.fc_post_a = nn.Linear(2048, 1024)


_INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "eye_",
    "dirac_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
    "sparse_",
)


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """Modules built inside skip torch's random init (``torch.nn.init``'s functions do nothing): their parameters
    are allocated, not filled, and must all be loaded afterwards. Buffers computed by the modules stay right."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in saved:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


# --- reading checkpoints -------------------------------------------------------------------


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and our own metadata (empty for foreign checkpoints) from one checkpoint file. Memory-mapped where the
    format allows (safetensors, torch's zip format): nothing is read until used, and the pages are shared by every
    process that maps the file; the tensors are copy-on-write, the file is never changed."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        return load_file(str(path)), (json.loads(header[META_KEY]) if META_KEY in header else {})
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (pre-zip) file cannot be mapped
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        meta = obj.get(META_KEY) or {}
        return obj["state_dict"], (json.loads(meta) if isinstance(meta, str) else dict(meta))
    if not isinstance(obj, dict):
        raise CodecLoadError(f"checkpoint {path.name} holds {type(obj).__name__}, not a state dict")
    return obj, {}


def _checkpoint_in(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for name in CHECKPOINT_FILES:
            if (path / name).is_file():
                return path / name
        raise CodecLoadError(f"no checkpoint ({', '.join(CHECKPOINT_FILES)}) in directory {path.name}/")
    raise CodecLoadError(f"codec.weights: {path} is neither a Hub id, 'random', nor an existing file or directory")


def fingerprint(path: Path) -> str:
    """The file's sha256; kept in the cache by the file's identity (path, device, inode, size, modification and
    change times), so that the jobs after the first do not read a checkpoint of gigabytes again only to hash it. A
    file changed in the last seconds is hashed but its digest not kept (a change within the file system's clock
    tick would leave the times as they were)."""
    identity = _file_identity(path)
    name = hashlib.sha256(identity.encode()).hexdigest()[:32] if identity else None
    for directory in cache_dirs() if name else []:
        try:
            known = (directory / "sha256" / str(name)).read_text().strip()
        except OSError:
            continue
        if re.fullmatch(r"[0-9a-f]{64}", known):
            return known
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    digest = h.hexdigest()
    if name and _file_identity(path) == identity and time.time() - path.stat().st_mtime > 2:
        for directory in cache_dirs():
            try:
                with _atomic_file(directory / "sha256" / name) as tmp:
                    tmp.write_text(digest + "\n")
                break
            except OSError:
                continue
    return digest


def _file_identity(path: Path) -> str | None:
    try:
        st = path.stat()
        return f"{path.resolve()}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
    except OSError:
        return None


def _hub_checkpoint(repo_id: str, revision: str | None) -> tuple[Path, str | None]:
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(repo_id=repo_id, filename="pytorch_model.bin", revision=revision))
    except Exception as exc:  # offline without cache, auth, network: say what to do
        raise CodecLoadError(
            f"cannot get {repo_id} from the Hugging Face Hub or its cache ({type(exc).__name__}: {exc}). "
            "Fill the HF cache once (huggingface-cli download neuphonic/neucodec; facebook/w2v-bert-2.0) and set "
            "HF_HUB_OFFLINE=1, or point codec.weights at a local checkpoint."
        ) from exc
    snapshot = re.search(r"snapshots/([0-9a-f]{40})/", path.as_posix())
    return path, snapshot.group(1) if snapshot else revision


def _w2v_bert_state_dict() -> dict[str, torch.Tensor]:
    """The pretrained w2v-bert-2.0 weights, as upstream's NeuCodec.__init__ takes them from the Hub."""
    from transformers import Wav2Vec2BertModel

    try:
        w2v = Wav2Vec2BertModel.from_pretrained(W2V_BERT_ID)
    except Exception as exc:
        raise CodecLoadError(
            f"the checkpoint has no semantic_model weights and {W2V_BERT_ID} is not reachable or cached: {exc}"
        ) from exc
    return {f"semantic_model.{k}": v for k, v in w2v.state_dict().items()}


# --- strict loading ------------------------------------------------------------------------


def load_state_dict_checked(
    model: nn.Module, state: dict[str, torch.Tensor], semantic_layers: int, source: str, *, assign: bool = False
) -> list[str]:
    """Load ``state`` into ``model``; every key the encoder needs must be present and no key unknown.

    ``assign``: the state's tensors become the parameters (no copy; each in the model's dtype), as for a model
    built by ``_model_from_state`` whose parameters were never filled; what the state lacks is then allocated, unfilled
    (only decoder-only weights may be lacking, and the modules built for real keep their init).
    Returns the decoder-only keys that were absent (allowed: encoding does not use them).
    """
    kept = _kept(state, semantic_layers)
    expected = model.state_dict()
    unexpected = sorted(set(kept) - set(expected))
    missing = sorted(set(expected) - set(kept))
    missing_required = [k for k in missing if not k.startswith(DECODER_ONLY)]
    if unexpected or missing_required:
        raise CodecLoadError(
            f"{source} does not match the neucodec encoder: "
            f"{len(missing_required)} missing keys {missing_required[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    wrong_shape = [k for k in kept if tuple(kept[k].shape) != tuple(expected[k].shape)]
    if wrong_shape:
        raise CodecLoadError(f"{source}: shape mismatch for {wrong_shape[:5]}")
    if assign:
        kept = {k: v if v.dtype == expected[k].dtype else v.to(expected[k].dtype) for k, v in kept.items()}
    result = model.load_state_dict(kept, strict=False, assign=assign)
    assert not result.unexpected_keys and set(result.missing_keys) == set(missing)
    if assign:
        _materialize(model)
    return missing


def _kept(state: dict[str, torch.Tensor], semantic_layers: int) -> dict[str, torch.Tensor]:
    """The state without upstream's training heads and the w2v-bert layers past ``semantic_layers``."""
    dropped_layers = re.compile(r"^semantic_model\.encoder\.layers\.(\d+)\.")
    kept: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(UPSTREAM_IGNORED):
            continue
        m = dropped_layers.match(key)
        if m and int(m.group(1)) >= semantic_layers:
            continue  # layers past the ones the encoder reads
        kept[key] = value
    return kept


def _materialize(model: nn.Module) -> None:
    """Parameters and buffers still on the meta device (decoder-only ones a checkpoint lacks) get CPU memory,
    unfilled, as ``to_empty`` gives them: encoding never reads them."""
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.is_meta:
                setattr(module, name, nn.Parameter(torch.empty_like(p, device="cpu"), requires_grad=p.requires_grad))
        for name, b in list(module.named_buffers(recurse=False)):
            if b is not None and b.is_meta:
                module._buffers[name] = torch.empty_like(b, device="cpu")


def _model_from_state(state: dict[str, torch.Tensor], semantic_layers: int, source: str) -> tuple[Any, list[str]]:
    """The model with ``state`` loaded: the encoder's large modules are never allocated nor initialised (the state's
    tensors become their parameters), nor are the others when the state holds all their weights."""
    kept = _kept(state, semantic_layers)
    model = _encoder_skeleton(semantic_layers, meta=True)
    rng = torch.get_rng_state()
    _build_rest(model, init=False)
    rest = [k for k in model.state_dict() if not k.startswith(tuple(f"{m}." for m in META_MODULES))]
    if any(k not in kept for k in rest):  # a checkpoint without (all of) the decoder: it keeps torch's init, drawn
        torch.set_rng_state(rng)  # as build_neucodec(init=False) draws it (codec_fit seeds it for random checkpoints)
        _build_rest(model, init=True)
    return model, load_state_dict_checked(model, state, semantic_layers, source, assign=True)


# --- seeded random weights -----------------------------------------------------------------


def probe_signal(seconds: float = 6.0, seed: int = 1234) -> np.ndarray:
    """A fixed speech-like 16 kHz signal: voiced harmonics with moving pitch and syllable-rate envelope."""
    return speech_like(seconds, 16_000, np.random.default_rng(seed))


def _rescale_linear(layer: nn.Linear, inputs: torch.Tensor, gain: float = 1.0) -> None:
    """LSUV step: make each output channel zero-mean with std ``gain`` over the probe frames."""
    with torch.no_grad():
        out = inputs @ layer.weight.T + layer.bias
        mean, std = out.mean(0), out.std(0).clamp_min(1e-8)
        layer.weight.mul_((gain / std)[:, None])
        layer.bias.copy_((layer.bias - mean) * gain / std)


def make_random_weights(seed: int, semantic_layers: int = SEMANTIC_LAYERS) -> nn.Module:
    """Seeded, non-degenerate random weights of the real architecture.

    Default init sends every frame to one code (43690). A data-dependent rescale (LSUV-style) of the
    two linear layers feeding the quantizer (``fc_prior`` and the FSQ ``project_in``), computed on a
    fixed probe signal in one forward pass, spreads frames over the codebook so that numerical changes flip tokens.
    """
    torch.manual_seed(seed)
    model: Any = build_neucodec(semantic_layers)  # a neucodec.NeuCodec, untyped like Codec.model
    probe = torch.from_numpy(probe_signal())[None, None]
    captured: list[torch.Tensor] = []
    handle = model.fc_prior.register_forward_hook(
        lambda _m, args, _out: captured.append(args[0].reshape(-1, 2048).clone())
    )
    with torch.inference_mode():
        model.encode_code(probe)
    handle.remove()
    with torch.no_grad():
        _rescale_linear(model.fc_prior, captured[0])
        # fc_prior feeds the FSQ project_in directly (generator.forward only permutes).
        _rescale_linear(model.generator.quantizer.project_in, model.fc_prior(captured[0]), gain=1.5)
    return model


def save_random_checkpoint(path: str | Path, seed: int, semantic_layers: int = SEMANTIC_LAYERS) -> Path:
    """Write seeded random weights as a checkpoint (encoder keys only) that ``load_codec`` reads like real ones.
    The weights come from the cache (``random_state_dict``): built there first if they are not yet."""
    state = {k: v for k, v in random_state_dict(seed, semantic_layers).items() if not k.startswith(DECODER_ONLY)}
    meta = {"random_weights": True, "seed": seed, "semantic_layers": semantic_layers}
    with _atomic_file(Path(path)) as tmp:
        torch.save({"state_dict": state, META_KEY: json.dumps(meta)}, tmp)
    return Path(path)


# --- the cache of seeded random weights ----------------------------------------------------


def cache_dirs() -> list[Path]:
    """Where built weights and digests are kept: ``$NEUCODEC_WORKFLOW_CACHE`` (default ``~/.cache/neucodec_workflow``),
    then a per-user temp dir (read-only homes). The native kernels (engine/kernels) use the same places."""
    first = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "neucodec_workflow"
    return [Path(first), Path(tempfile.gettempdir()) / f"neucodec_workflow-{os.getuid()}"]


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[Path]:
    """A temp path beside ``path``, renamed over it once the block has written it: readers never see a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask's permissions, as for any file
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock`` (created if needed): jobs that start at once build the weights once; where
    the file system has no locks, each builds (the rename keeps that safe)."""
    import fcntl

    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


def random_weights_key(seed: int, semantic_layers: int = SEMANTIC_LAYERS) -> str:
    """What the seeded random weights depend on, hashed: seed, layers, the versions of the packages that make them
    and the source of the functions that make them (architecture, init order, probe signal, rescale)."""
    try:
        recipe = "".join(
            inspect.getsource(f)
            for f in (
                build_neucodec,
                _encoder_skeleton,
                _build_rest,
                make_random_weights,
                _rescale_linear,
                probe_signal,
                speech_like,
            )
        )
    except (OSError, TypeError):  # no source files: the package's own version stands for the recipe
        recipe = upstream.installed("neucodec-workflow")
    what = {
        "seed": seed,
        "semantic_layers": semantic_layers,
        "versions": {name: upstream.installed(name) for name in RANDOM_WEIGHT_PACKAGES},
        "recipe": hashlib.sha256(recipe.encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def random_weights_file(seed: int, semantic_layers: int = SEMANTIC_LAYERS) -> Path | None:
    """The cached seeded random weights (every key of the model, decoder included: ``codec_fit`` decodes with them),
    built and written now if they are not yet; None where no cache directory can be written."""
    name = f"seed{seed}-layers{semantic_layers}-{random_weights_key(seed, semantic_layers)}.safetensors"
    for directory in cache_dirs():
        path = directory / "random-weights" / name
        if path.is_file():
            return path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with _exclusive(path.with_name(name + ".lock")):
                if not path.is_file():  # not built meanwhile by a job that held the lock
                    for stale in path.parent.glob(f".{name}.*.tmp"):  # left by a build that was killed
                        stale.unlink(missing_ok=True)
                    _write_random_weights(path, seed, semantic_layers)
                    _remove_older_builds(path, f"seed{seed}-layers{semantic_layers}-")
            return path
        except OSError as exc:
            log.warning("cannot keep the random weights in the cache (%s): %s", directory.name, exc)
    return None


def _remove_older_builds(path: Path, prefix: str) -> None:
    """The same seed and layers built for other versions (gigabytes each) go once a new build is in; a job that
    still has one open keeps reading it (the file lives on until it is closed)."""
    for other in path.parent.glob(f"{prefix}*.safetensors"):
        if other != path:
            other.unlink(missing_ok=True)
            other.with_name(other.name + ".lock").unlink(missing_ok=True)
            log.info("removed the seeded random weights built for other versions: %s", other.name)


def _write_random_weights(path: Path, seed: int, semantic_layers: int) -> None:
    from safetensors.torch import save_file

    log.info("seeded random weights (seed %s): built once, kept in the weights cache as %s", seed, path.name)
    state = {k: v.contiguous() for k, v in make_random_weights(seed, semantic_layers).state_dict().items()}
    meta = {"random_weights": True, "seed": seed, "semantic_layers": semantic_layers}
    with _atomic_file(path) as tmp:
        save_file(state, str(tmp), metadata={META_KEY: json.dumps(meta)})


def random_state_dict(seed: int, semantic_layers: int = SEMANTIC_LAYERS) -> dict[str, torch.Tensor]:
    """The seeded random weights' state dict (``make_random_weights``), from the cache (built there if needed)."""
    path = random_weights_file(seed, semantic_layers)
    if path is None:
        return dict(make_random_weights(seed, semantic_layers).state_dict())
    return _read_state_dict(path)[0]


# --- the one loader ------------------------------------------------------------------------


def package_versions() -> dict[str, str]:
    return {name: upstream.installed(name) for name in ("neucodec-workflow", "neucodec", "torch", "transformers")}


def load_codec(
    weights: str, *, seed: int = 0, semantic_layers: int = SEMANTIC_LAYERS, device: str | torch.device = "cpu"
) -> Codec:
    """Load the encoder from ``neuphonic/neucodec`` (Hub/HF cache), a local checkpoint, or ``random``.

    ``random``: seeded random weights (``make_random_weights``), from the cache where they are built once.
    """
    provenance: dict[str, Any] = {
        "semantic_layers": semantic_layers,
        "precision": "fp32",
        "versions": package_versions(),
    }
    model: Any
    missing: list[str]
    if weights == RANDOM:
        cached = random_weights_file(seed, semantic_layers)
        if cached is None:  # no cache can be written: built here, as the cache would have built it
            model, missing = make_random_weights(seed, semantic_layers), []
        else:
            model, missing = _model_from_state(_read_state_dict(cached)[0], semantic_layers, source="random")
        provenance.update(codec_id="random", revision=None, random_weights=True, seed=seed)
    else:
        if weights in HUB_IDS:
            revision = os.environ.get("NEUCODEC_REVISION") or None
            path, revision = _hub_checkpoint(weights, revision)
            provenance.update(codec_id=weights, revision=revision)
        elif "/" in weights and not Path(weights).exists() and not weights.startswith((".", "/", "~")):
            raise CodecLoadError(
                f"codec.weights: {weights!r} is not a supported Hub id ({', '.join(HUB_IDS)}) nor an existing path"
            )
        else:
            path = _checkpoint_in(Path(weights).expanduser())
            provenance.update(codec_id=f"checkpoint:{path.name}", revision=None)  # no machine paths in outputs
        state, meta = _read_state_dict(path)
        if not any(k.startswith("semantic_model.") for k in state):
            state = {**state, **_w2v_bert_state_dict()}
            provenance["semantic_weights"] = W2V_BERT_ID
        model, missing = _model_from_state(state, semantic_layers, source=provenance["codec_id"])
        provenance["weights_sha256"] = fingerprint(path)
        provenance["random_weights"] = bool(meta.get("random_weights"))
        if meta.get("random_weights"):
            provenance["seed"] = meta.get("seed")
    provenance["decoder_weights"] = "absent" if missing else "loaded"
    model = model.eval().requires_grad_(False).to(device)
    if provenance["random_weights"]:
        log.warning(
            "RANDOM WEIGHTS (seed %s): tokens are for testing only, not real neucodec tokens", provenance.get("seed")
        )
    return Codec(model=model, provenance=provenance)
