"""The ``multilingual_tts`` format: the packed blocks that the Multilingual-TTS trainer
(Scicom-intl/Multilingual-TTS-1.7B-Base) reads, made as its own preparation code makes them. Its tokenizer is
Qwen3-1.7B-Base's with ``<|speech_start|>`` and then ``<|s_0|>`` … ``<|s_65535|>`` added; rows are tokenized without
added special tokens; a block holds whole rows one after the other, with ``input_ids``, ``position_ids`` (restarting
per row) and ``attention_mask`` (the row lengths, from which the trainer computes ``cu_seq_lens``; its labels are the
``input_ids``), uint32, in MosaicML Streaming MDS files. The trainer skips a block whose longest row is longer than a
block, so such rows are left out here, and counted.

A shard's rows of one split become one MDS file of blocks:

- ``mtts_tokenizer``: the model's tokenizer, checked (template and speech token ids; text parts in batches);
- ``mtts_rows``: TTS and voice-cloning rows as spans of one id buffer, and what is left out, by reason;
- ``mtts_pairs``: which voice-cloning pairs (within the shard, capped per speaker, seeded);
- ``mtts_mds``: greedy packing into ``block_tokens`` blocks, and the MDS file ``streaming.MDSWriter`` would write;
- ``mtts_card``: the folder's ``README.md``.

This module loads the tokenizer (``transformers``, which works without torch) and writes a part (``mtts_part``).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from neucodec_workflow.dataset.mtts_mds import Packed, pack, write_mds
from neucodec_workflow.dataset.mtts_rows import MttsSettings, build_rows
from neucodec_workflow.dataset.mtts_tokenizer import MttsError, SpeechTokenizer

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str) -> SpeechTokenizer:
    """``AutoTokenizer.from_pretrained`` (a Hub id from the HF cache, or a directory), checked; once per process."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as exc:
        raise MttsError(f"cannot load tokenizer {name_or_path}: {type(exc).__name__}: {exc}") from exc
    return SpeechTokenizer(tokenizer, name_or_path)


def mtts_part(
    shard: str, rows: pd.DataFrame, tokenizer: SpeechTokenizer, settings: MttsSettings, path: Path, basename: str
) -> dict[str, Any]:
    """One shard's rows of one split (``sft.shard_rows``) as a packed MDS file at ``path``; returns the part's summary
    for the shard report: rows written by kind, blocks, tokens, speech tokens (a voice-cloning row counts both
    utterances), what was left out (by reason, and each), the pairs (speakers with at least one, ordered pairs
    possible before the cap, pairs chosen; chosen pairs longer than a block are dropped) and the file's index entry
    under ``mds``."""
    built = build_rows(shard, rows, tokenizer, settings)
    packed = Packed(built.rows, pack(built.rows.lengths, settings.block_tokens), settings.block_tokens)
    entry = write_mds(Path(path), packed, basename)
    by_reason = Counter(str(r.reason) for r in built.rejects)
    if built.rejects:
        log.info("shard %s: %d rows left out of multilingual_tts %s", shard, len(built.rejects), dict(by_reason))
    return {
        "rows": {"tts": built.tts, "voice_cloning": built.voice_cloning},
        "blocks": len(packed),
        "tokens": packed.tokens,
        "speech_tokens": int(built.rows.speech.sum()),
        "dropped_by_reason": dict(by_reason),
        "dropped": [r.as_dict() for r in built.rejects],
        "pairs": built.pairs,
        "mds": entry,
    }
