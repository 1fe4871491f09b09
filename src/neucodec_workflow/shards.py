"""Finding shards: every directory under the corpus holding an ``audio.tar``, or an explicit list."""

from __future__ import annotations

from pathlib import Path

TAR = "audio.tar"
METADATA = "metadata.parquet"
TOKENS = "neucodec_tokens.parquet"


class ShardListError(ValueError):
    pass


def _clean(names: list[str]) -> list[str]:
    out = []
    for raw in names:
        name = raw.strip().strip("/")
        if not name or name.startswith("#"):
            continue
        if ".." in name.split("/"):
            raise ShardListError(f"shard name {raw!r} leaves the corpus")
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


def shard_list(corpus: str, shards: list[str] | None = None, shards_file: str | None = None) -> list[str]:
    """The shards to process: ``shards`` (config list), else ``shards_file`` (one per line), else discovery."""
    if shards:
        return _clean(list(shards))
    if shards_file:
        return _clean(Path(shards_file).read_text().splitlines())
    found = discover_local(corpus)
    if not found:
        raise ShardListError(f"no shard (a directory holding {TAR}) under corpus {corpus}")
    return found
