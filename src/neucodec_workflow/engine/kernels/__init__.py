"""Native CPU kernels, compiled at first use with the system C compiler and loaded with ctypes.

Only one: ``snake_aa``, CodecEnc's anti-aliased SnakeBeta (``Activation1d``) fused into one pass
(see ``snake_aa.c``). On a CPU it is three quarters of CodecEnc's time in eager torch, which makes
eight memory-bound passes over a signal twice the input's length.

The shared library is cached per source, compiler flags and CPU (``-march=native``) under
``$NEUCODEC_WORKFLOW_CACHE`` or ``~/.cache/neucodec_workflow``; it is written atomically, so
concurrent jobs may build it at the same time. Without a C compiler, or with
``NEUCODEC_WORKFLOW_NATIVE=0``, ``snake_aa_available()`` is False and callers use the stock module.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("snake_aa.c")
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC"]


def _cache_dirs() -> list[Path]:
    """Where the built library may live: the configured cache, then a per-user temp dir (read-only homes)."""
    first = os.environ.get("NEUCODEC_WORKFLOW_CACHE") or Path.home() / ".cache" / "neucodec_workflow"
    return [Path(first), Path(tempfile.gettempdir()) / f"neucodec_workflow-{os.getuid()}"]


def _build(cc: str, path: Path) -> None:
    """Compile into a temp dir beside ``path`` and rename: concurrent jobs never load a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        built = Path(tmp) / path.name
        proc = subprocess.run([cc, *FLAGS, "-o", str(built), str(SOURCE)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        os.replace(built, path)


def _cpu_id() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = ("model name", "flags", "Features")
    return "\n".join(sorted({line for line in lines if line.startswith(wanted)}))


@cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("NEUCODEC_WORKFLOW_NATIVE", "1") == "0":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        log.warning("no C compiler found: CodecEnc's activations run as stock torch ops (slower on CPU)")
        return None
    key = hashlib.sha256(
        b"\0".join([SOURCE.read_bytes(), " ".join([cc, *FLAGS]).encode(), _cpu_id().encode()])
    ).hexdigest()[:16]
    name = f"snake_aa-{platform.machine()}-{key}.so"
    for directory in _cache_dirs():
        path = directory / name
        try:
            if not path.exists():
                _build(cc, path)
            break
        except (OSError, RuntimeError) as exc:
            log.warning("cannot build the native snake_aa kernel in %s: %s", directory.name, exc)
    else:
        log.warning("no native kernels: CodecEnc's activations run as stock torch ops (slower on CPU)")
        return None
    lib = ctypes.CDLL(str(path))
    f = ctypes.c_void_p
    i = ctypes.c_int64
    lib.snake_aa.argtypes = [f, f, i, i, i, i, f, f, f, f]
    lib.snake_aa.restype = ctypes.c_int
    return lib


def snake_aa_available() -> bool:
    return _library() is not None


@cache
def _threads(n: int) -> ThreadPoolExecutor:
    """ctypes releases the GIL: ``n`` Python threads run the kernel on ``n`` cores."""
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="snake_aa")


def snake_aa(
    x: torch.Tensor, up: torch.Tensor, down: torch.Tensor, alpha: torch.Tensor, inv_beta: torch.Tensor
) -> torch.Tensor:
    """``Activation1d(SnakeBeta)`` on a float32 CPU tensor ``[B, C, 1, T]`` (as CodecEnc runs on CPUs) or
    ``[B, C, T]``, computed channels-last (memory ``[B, T, C]``); the result has the input's shape.

    ``up``: 2 x the 12-tap up-sampling filter; ``down``: the 12-tap down-sampling filter;
    ``alpha``, ``inv_beta``: per channel, as SnakeBeta computes them (``exp``, ``1 / (exp(beta) + eps)``).
    """
    lib = _library()
    assert lib is not None, "native kernels unavailable"
    if x.dtype != torch.float32 or x.device.type != "cpu" or not (x.dim() == 3 or (x.dim() == 4 and x.shape[2] == 1)):
        raise ValueError(
            f"snake_aa takes a float32 CPU tensor [B, C, T] or [B, C, 1, T], not {x.dtype} {x.device} {tuple(x.shape)}"
        )
    if x.dim() == 3:
        return snake_aa(x[:, :, None, :], up, down, alpha, inv_beta)[:, :, 0, :]
    x = x.contiguous(memory_format=torch.channels_last)
    B, C, T = x.shape[0], x.shape[1], x.shape[-1]
    y = torch.empty_like(x)  # keeps the memory format
    args = [t.to(torch.float32).contiguous() for t in (up, down, alpha, inv_beta)]
    ptrs = [t.data_ptr() for t in args]
    rows = B * T
    n = min(torch.get_num_threads(), rows)
    bounds = [rows * k // n for k in range(n + 1)]
    calls = [
        (x.data_ptr(), y.data_ptr(), bounds[k], bounds[k + 1], C, T, *ptrs)
        for k in range(n)
        if bounds[k] < bounds[k + 1]
    ]
    fn = lib.snake_aa
    results = [fn(*calls[0])] if len(calls) == 1 else list(_threads(len(calls)).map(lambda a: fn(*a), calls))
    if any(results):
        raise MemoryError("snake_aa: out of memory for its tile buffer")
    return y
