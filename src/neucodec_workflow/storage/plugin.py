"""Patches of ``snakemake-storage-plugin-s3`` (runs inside Snakemake, at parse time, from rules/common.smk).

The plugin's ``exists``, ``mtime``, ``size``, ``is_dir``, ``bucket_exists`` and ``inventory`` answer from the run's
``Inventory`` for objects under the workflow's prefixes; ``store_object`` and ``remove`` keep it current (no request
after an upload of a file; ``remove`` no longer deletes a bucket that became empty), and so do the receipts of what
jobs uploaded themselves (``uploads``: the derive jobs' dataset parts). Objects outside the prefixes keep the stock
behaviour; every other upload, and every delete, stays the plugin's. These methods are upstream internals
(docs/upstream.md): the installed versions must be the tested ones.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from neucodec_workflow import upstream
from neucodec_workflow.storage.inventory import Inventory
from neucodec_workflow.storage.s3 import S3Error, S3Settings, split_url

log = logging.getLogger(__name__)
#: Set to 1 to leave the plugin unpatched (to measure the stock behaviour in benchmarks/s3_requests.py).
STOCK_ENV = "NEUCODEC_S3_STOCK_PLUGIN"

_ACTIVE: Inventory | None = None
_ORIGINAL: dict[str, Any] = {}
#: The methods of snakemake_storage_plugin_s3.StorageObject that are replaced (tests check they still exist).
PATCHED_METHODS = ("inventory", "exists", "mtime", "size", "is_dir", "bucket_exists", "store_object", "remove")


def _covering(obj: Any) -> Inventory | None:
    inv = _ACTIVE
    if inv is not None and getattr(obj, "bucket", None) is not None and inv.covers(obj.bucket, obj.key):
        return inv
    return None


def _missing(obj: Any) -> FileNotFoundError:
    return FileNotFoundError(f"{obj.query} does not exist (per the S3 listing of this run)")


async def _inventory(self: Any, cache: Any) -> None:
    if _covering(self) is None:
        await _ORIGINAL["inventory"](self, cache)
    # covered: exists()/mtime()/size() below answer from the listing, nothing to pre-fill


def _exists(self: Any) -> bool:
    inv = _covering(self)
    return _ORIGINAL["exists"](self) if inv is None else inv.exists(self.bucket, self.key)


def _mtime(self: Any) -> float:
    inv = _covering(self)
    if inv is None:
        return _ORIGINAL["mtime"](self)
    info = inv.info(self.bucket, self.key)
    if info is not None:
        return info.mtime
    sub = inv.subobjects(self.bucket, self.key)
    if not sub:
        raise _missing(self)
    return max(i.mtime for i in sub)


def _size(self: Any) -> int:
    inv = _covering(self)
    if inv is None:
        return _ORIGINAL["size"](self)
    info = inv.info(self.bucket, self.key)
    if info is not None:
        return info.size
    sub = inv.subobjects(self.bucket, self.key)
    if not sub:
        raise _missing(self)
    return sum(i.size for i in sub)


def _is_dir(self: Any) -> bool:
    inv = _covering(self)
    if inv is None:
        return _ORIGINAL["is_dir"](self)
    if self._is_dir is None:
        self._is_dir = inv.info(self.bucket, self.key) is None and inv.is_dir(self.bucket, self.key)
    return bool(self._is_dir)


def _bucket_exists(self: Any) -> bool:
    inv = _covering(self)
    if inv is not None and inv.bucket_exists(self.bucket):
        return True  # listed it this run: no HEAD bucket (and no create_bucket attempt on upload)
    return _ORIGINAL["bucket_exists"](self)


def _store_object(self: Any) -> None:
    _ORIGINAL["store_object"](self)
    inv = _covering(self)
    if inv is not None:
        local = self.local_path()
        inv.refresh(self.bucket, self.key, directory=local.is_dir(), size=0 if local.is_dir() else local.stat().st_size)


def _remove(self: Any) -> None:
    """The plugin's remove() minus its last step (delete the bucket when it became empty, one LIST per call)."""
    if self.is_dir():
        prefix = self.key + "/"
        for item in self.s3bucket().objects.filter(Prefix=prefix):
            item.delete()
    else:
        self.s3obj().delete()
    inv = _covering(self)
    if inv is not None:
        inv.forget(self.bucket, self.key)
    self._is_dir = None


_PATCHES = {
    "inventory": _inventory,
    "exists": _exists,
    "mtime": _mtime,
    "size": _size,
    "is_dir": _is_dir,
    "bucket_exists": _bucket_exists,
    "store_object": _store_object,
    "remove": _remove,
}


def _remembered_validity(original: Any) -> Any:
    """The provider's ``is_valid_query`` (a URL parse) with its answers kept: Snakemake asks it twice for every
    storage object it makes, and a DAG over 5,000 shards makes ~140,000 of them from ~30,000 distinct URLs."""
    answers: dict[str, Any] = {}

    def is_valid_query(cls: Any, query: str) -> Any:
        found = answers.get(query)
        if found is None:
            found = answers[query] = original(query)
        return found

    return classmethod(is_valid_query)


def install_plugin_patches(inventory: Inventory) -> None:
    """Route the plugin's metadata queries under the inventory's roots through it (idempotent)."""
    global _ACTIVE
    from snakemake_storage_plugin_s3 import StorageObject, StorageProvider

    upstream.require("snakemake", "snakemake-storage-plugin-s3")
    missing = [m for m in PATCHED_METHODS if not callable(getattr(StorageObject, m, None))]
    if missing:
        raise S3Error(
            f"snakemake-storage-plugin-s3 {upstream.installed('snakemake-storage-plugin-s3')} lacks {missing}: "
            "the S3 patches need the tested version (docs/upstream.md)"
        )
    if not _ORIGINAL:
        for name in PATCHED_METHODS:
            _ORIGINAL[name] = getattr(StorageObject, name)
            setattr(StorageObject, name, _PATCHES[name])
        StorageProvider.is_valid_query = _remembered_validity(StorageProvider.is_valid_query)
    _ACTIVE = inventory


def activate(
    plugin_settings: Any, roots: list[str], receipts: Path | None = None, listed: list[str] | None = None
) -> Inventory:
    """For the Snakefile: one inventory over ``roots`` (the S3 corpus/output), patches on, settings exported;
    ``receipts``: where jobs record what they upload themselves (``uploads.Uploader``); ``listed``: the prefixes
    to list (default: ``roots``; a job's process lists its shards' folders only)."""
    settings = S3Settings.from_plugin(plugin_settings)
    settings.export_to_env()
    inv = (
        _ACTIVE
        if _ACTIVE is not None
        and sorted({split_url(r) for r in roots}) == _ACTIVE.roots
        and sorted({split_url(r) for r in (roots if listed is None else listed)}) == _ACTIVE.listed
        else Inventory(settings, roots, listed=listed)
    )
    inv.receipts = receipts
    if os.environ.get(STOCK_ENV) == "1":
        log.warning("%s=1: the S3 storage plugin runs unpatched (one request per question; benchmarks only)", STOCK_ENV)
        return inv
    install_plugin_patches(inv)
    return inv
