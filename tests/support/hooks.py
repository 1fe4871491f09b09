"""Wrappers a test installs from outside the product in the Snakemake processes it starts (the product has no test
seam): a test runs Snakemake with ``environ(env)``, which puts ``site/`` first on ``PYTHONPATH``; its
``sitecustomize`` calls ``install()`` in every Python process of the run (Snakemake, its jobs, their scripts). Each
wrapper is patched in right after its module is imported and reads its variable at each call, so it does nothing
where the variable is unset:

``NEUCODEC_TEST_SLOW_CLIP_SECONDS``  ``shard.encode.encode_shard`` waits this long after each encoded clip, so a kill
                                     aimed mid-encode lands there (tests/test_kills.py)
``NEUCODEC_STORAGE_PROBE``           ``storage.uploads.Uploader.send`` records each upload a job makes before it is
                                     sent (``storage_probe.job_upload``; set by the storage probe)
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import inspect
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

SITE = Path(__file__).resolve().parent / "site"
SLOW_CLIP_ENV = "NEUCODEC_TEST_SLOW_CLIP_SECONDS"


def environ(env: Mapping[str, str], **settings: str) -> dict[str, str]:
    """``env`` plus ``settings``, with ``site/`` first on ``PYTHONPATH``: the processes started with it get the
    wrappers."""
    path = [str(SITE), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(SITE))]
    return {**env, **settings, "PYTHONPATH": os.pathsep.join(path)}


class _SlowEncoder:
    """An encoder that waits ``seconds`` after each clip it yields; everything else is the wrapped one's."""

    def __init__(self, inner: Any, seconds: float) -> None:
        self.inner, self.seconds = inner, seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode(self, clips: Iterable[Any]) -> Iterator[Any]:
        for item in self.inner.encode(clips):
            time.sleep(self.seconds)
            yield item


def _slow_clips(module: ModuleType) -> None:
    encode_shard = module.encode_shard
    signature = inspect.signature(encode_shard)

    def slowed(*args: Any, **kwargs: Any) -> Any:
        seconds = float(os.environ.get(SLOW_CLIP_ENV) or 0)
        if seconds:
            bound = signature.bind(*args, **kwargs)
            bound.arguments["encoder"] = _SlowEncoder(bound.arguments["encoder"], seconds)
            args, kwargs = bound.args, bound.kwargs
        return encode_shard(*args, **kwargs)

    setattr(module, "encode_shard", slowed)  # noqa: B010 (a module attribute mypy does not know)


def _observe_uploads(module: ModuleType) -> None:
    send = module.Uploader.send

    def observed(self: Any, staging: str | Path, url: str) -> Any:
        from support.storage_probe import job_upload

        job_upload(Path(staging), url)  # nothing without the probe's record file
        return send(self, staging, url)

    module.Uploader.send = observed


PATCHES: dict[str, Callable[[ModuleType], None]] = {
    "neucodec_workflow.shard.encode": _slow_clips,
    "neucodec_workflow.storage.uploads": _observe_uploads,
}


class _Patching(importlib.abc.Loader):
    """Runs the module as its own loader would, then patches it."""

    def __init__(self, loader: Any, patch: Callable[[ModuleType], None]) -> None:
        self.loader, self.patch = loader, patch

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ...: the real loader's
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.patch(module)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds the modules of ``PATCHES`` as the other finders would and hands them to ``_Patching``."""

    def find_spec(
        self, name: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name not in PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Patching(spec.loader, PATCHES[name])
                return spec
        return None


def install() -> None:
    """Patch the modules of ``PATCHES`` when they are imported (now, for any imported already)."""
    if not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
        for name, patch in PATCHES.items():
            if name in sys.modules:
                patch(sys.modules[name])
