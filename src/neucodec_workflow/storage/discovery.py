"""Finding shards: every directory under the corpus holding an ``audio.tar``, or an explicit list."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from neucodec_workflow.record.contract import TAR

if TYPE_CHECKING:
    from neucodec_workflow.storage.inventory import Inventory


class ShardListError(ValueError):
    pass


def _clean(names: list[str]) -> list[str]:
    out = []
    for raw in names:
        name = raw.strip().strip("/")
        if not name or name.startswith("#"):
            continue
        parts = name.split("/")
        if ".." in parts:
            raise ShardListError(f"shard name {raw!r} leaves the corpus")
        if "" in parts or "." in parts:  # a/./b or a//b: another spelling of a shard, or an S3 key that never exists
            raise ShardListError(f"shard name {raw!r} is not normalised (empty or '.' component)")
        out.append(name)
    if len(set(out)) != len(out):
        dup = sorted({n for n in out if out.count(n) > 1})
        raise ShardListError(f"shards listed twice: {dup[:5]}")
    return out


def discover_local(corpus: str | Path) -> list[str]:
    """Shard prefixes (posix, relative to ``corpus``) of every directory holding ``audio.tar``; sorted."""
    root = Path(corpus)
    if not root.is_dir():
        raise ShardListError(f"corpus directory {corpus} does not exist")
    return sorted(p.parent.relative_to(root).as_posix() for p in root.rglob(TAR) if p.is_file() and p.parent != root)


def discover_s3(corpus: str, inventory: Inventory) -> list[str]:
    """Shard prefixes under ``s3://bucket/prefix`` with an ``audio.tar``, from the run's one listing; sorted."""
    from neucodec_workflow.storage.s3 import split_url

    bucket, prefix = split_url(corpus)
    start = len(prefix) + 1 if prefix else 0
    suffix = "/" + TAR
    return sorted(
        key[start : -len(suffix)]
        for key in inventory.keys(bucket, prefix)
        if key.endswith(suffix) and len(key) > start + len(suffix)
    )


def shard_list(
    corpus: str, shards: list[str] | None = None, shards_file: str | None = None, inventory: Inventory | None = None
) -> list[str]:
    """The shards to process: ``shards`` (config list), else ``shards_file`` (one per line), else discovery
    (a directory walk, or for an ``s3://`` corpus the ``inventory`` listing)."""
    if shards:
        return _clean(list(shards))
    if shards_file:
        return _clean(Path(shards_file).read_text().splitlines())
    if corpus.startswith("s3://"):
        if inventory is None:
            raise ShardListError(f"corpus {corpus} is in S3: discovery needs the run's S3 inventory")
        found = discover_s3(corpus, inventory)
    else:
        found = discover_local(corpus)
    if not found:
        raise ShardListError(f"no shard (a directory holding {TAR}) under corpus {corpus}")
    return found
