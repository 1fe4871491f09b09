"""Voice-cloning pairs of the ``multilingual_tts`` format: ordered pairs (reference, target) of one speaker's segments
with different texts, chosen within a shard (and split), at most ``pairs_per_speaker`` per speaker and shard, drawn
with a generator seeded by the seed, the shard and the speaker (the same pairs on every run)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd


def speaker_rng(seed: int, shard: str, speaker: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{shard}\0{speaker}".encode()).digest()
    return np.random.default_rng([seed, *np.frombuffer(digest, np.uint32).tolist()])


def speaker_pairs(texts: np.ndarray, cap: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Ordered pairs ``(ref, target)`` (positions in ``texts``) of different texts: all of them in random order when
    there are at most ``cap``, else ``cap`` of them drawn without replacement, without listing them all. Returns the
    refs, the targets and how many pairs there are."""
    n = len(texts)
    if n < 2 or cap <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    _, group, counts = np.unique(texts, return_inverse=True, return_counts=True)
    counts = counts.astype(np.int64)
    possible = n * n - int((counts * counts).sum())
    if possible == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    order = np.argsort(group, kind="stable")  # rows by text group; a group's rows are contiguous
    group_start = np.cumsum(counts) - counts
    sorted_group = group[order]
    valid = n - counts[sorted_group]  # targets of each ref: every row outside its group
    ends = np.cumsum(valid)
    k = min(possible, cap)
    q = rng.permutation(possible) if k == possible else rng.choice(possible, size=k, replace=False)
    p = np.searchsorted(ends, q, side="right")
    r = q - (ends[p] - valid[p])
    g = sorted_group[p]
    t = np.where(r < group_start[g], r, r + counts[g])
    return order[p].astype(np.int64), order[t].astype(np.int64), possible


def choose_pairs(
    shard: str, eligible: np.ndarray, names: np.ndarray, texts: list[str], cap: int, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """The pairs among the ``eligible`` segments (positions in the shard), speaker by speaker in order of first
    appearance (``names``: each segment's speaker name; ``texts``: each segment's text): the refs, the targets and
    the counts (speakers with at least one pair, pairs possible before the cap, pairs chosen)."""
    refs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    stats = {"speakers": 0, "possible": 0, "kept": 0}
    if len(eligible) > 1:
        speaker_code, speakers = pd.factorize(pd.Series(names[eligible]), sort=False)
        text_code, _ = pd.factorize(pd.Series([texts[i] for i in eligible.tolist()]), sort=False)
        order = np.argsort(speaker_code, kind="stable")
        bounds = np.flatnonzero(np.diff(speaker_code[order])) + 1
        for members in np.split(order, bounds):
            if len(members) < 2:
                continue
            rng = speaker_rng(seed, shard, str(speakers[speaker_code[members[0]]]))
            r, t, possible = speaker_pairs(text_code[members], cap, rng)
            if possible:
                stats["speakers"] += 1
                stats["possible"] += possible
                stats["kept"] += len(r)
                refs.append(eligible[members[r]])
                targets.append(eligible[members[t]])
    ref = np.concatenate(refs) if refs else np.zeros(0, np.int64)
    target = np.concatenate(targets) if targets else np.zeros(0, np.int64)
    return ref, target, stats
