"""Which codec made a token file's tokens (its provenance: the weights' sha256, else the seed of random weights, else
codec id and revision), counted over shards, and the cards' lines about them. Used by the dataset's checks and
cards and by ``status`` and ``verify``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

UNKNOWN = "unknown"  # the codec of a foreign token file


def codec_identity(provenance: Mapping[str, Any] | None) -> str | None:
    """What makes two token files' tokens the same codec's: its weights (``sha256:<hex>``), else for random weights
    built in the job the seed (``random:seed=<n>``), else the codec id and revision; None when the file records no
    provenance (foreign). Two names of the same weights (a Hub id and a local copy of its checkpoint) are one codec."""
    if not provenance:
        return None
    sha = provenance.get("weights_sha256")
    if sha:
        return f"sha256:{sha}"
    if provenance.get("random_weights"):
        return f"random:seed={provenance.get('seed')}"
    return f"id:{provenance.get('codec_id')}@{provenance.get('revision')}"


def codec_label(identity: str | None, codec_ids: Iterable[Any] = ()) -> str:
    """A codec as people read it: its id(s), then its weights (sha256 shortened) or its seed."""
    if identity is None:
        return f"{UNKNOWN} (foreign token files: no provenance)"
    names = ", ".join(sorted({str(c) for c in codec_ids if c})) or "?"
    kind, _, value = identity.partition(":")
    if kind == "sha256":
        return f"{names} (weights sha256 {value[:12]})"
    if kind == "random":
        return f"{names} (random weights, {value.replace('=', ' ')})"
    return f"{names} (no weights sha256 recorded)"


def codec_counts(provenances: Iterable[Mapping[str, Any] | None]) -> dict[str, Any]:
    """The codecs of some token files: ``codecs`` (one entry per known codec: ``codec`` its identity, ``label``,
    ``codec_ids``, ``random_weights``, ``shards``; most shards first) and ``unknown`` (files without provenance)."""
    shards: Counter[str] = Counter()
    ids: dict[str, set[str]] = {}
    random: dict[str, bool] = {}
    unknown = 0
    for p in provenances:
        identity = codec_identity(p)
        if identity is None:
            unknown += 1
            continue
        assert p is not None
        shards[identity] += 1
        ids.setdefault(identity, set()).add(str(p.get("codec_id")))
        random[identity] = random.get(identity, False) or bool(p.get("random_weights"))
    codecs = [
        {
            "codec": identity,
            "label": codec_label(identity, ids[identity]),
            "codec_ids": sorted(ids[identity]),
            "random_weights": random[identity],
            "shards": n,
        }
        for identity, n in sorted(shards.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return {"codecs": codecs, "unknown": unknown}


def codec_lines(codecs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The cards' lines on the codecs that made the tokens (``stats.codecs_of``: one entry per codec with its shard
    count; a foreign token file's entry has no codec id)."""
    lines = ["| codec | weights | shards |", "|---|---|---|"]
    for c in codecs:
        if not any(c.get(k) for k in ("codec_id", "weights_sha256", "random_weights")):
            lines.append(
                f"| {UNKNOWN}: foreign token files, no provenance (included as they are) | ? | {c['shards']} |"
            )
            continue
        weights = f"sha256 `{c['weights_sha256']}`" if c.get("weights_sha256") else "not recorded"
        if c.get("random_weights"):
            weights += f", RANDOM (seed {c.get('seed')})"
        lines.append(f"| `{c.get('codec_id')}` (revision {c.get('revision') or '-'}) | {weights} | {c['shards']} |")
    return lines
