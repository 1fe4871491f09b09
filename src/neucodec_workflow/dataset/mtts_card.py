"""The ``README.md`` card of the ``multilingual_tts`` folder (``mtts.py``): what the blocks hold, per split, the
settings and tokenizer, how the trainer reads them, and the codec provenance."""

from __future__ import annotations

import json
from typing import Any

from neucodec_workflow.dataset.codecs import codec_lines

READER = """\
import numpy as np
from streaming import LocalDataset
from streaming.base.format.mds.encodings import Encoding, _encodings


class UInt32(Encoding):  # the encoding the Multilingual-TTS notebooks and trainer register
    def encode(self, obj) -> bytes:
        return obj.tobytes()

    def decode(self, data: bytes):
        return np.frombuffer(data, np.uint32)


_encodings["uint32"] = UInt32
blocks = LocalDataset(local="multilingual_tts/train")  # this folder's split directory
block = blocks[0]  # input_ids, position_ids, attention_mask (row lengths), audio, text
cu_seq_lens = np.concatenate([[0], np.cumsum(block["attention_mask"])])  # labels = input_ids
"""


def card_text(
    splits: dict[str, dict[str, Any]],
    n_shards: int,
    sft: dict[str, Any],
    codecs: list[dict[str, Any]],
    fingerprint: dict[str, Any] | None = None,
) -> str:
    """README.md of the multilingual_tts folder: what the blocks hold, per split (rows by kind, blocks, tokens, rows
    left out by reason, voice-cloning pairs), the settings and tokenizer, how the trainer reads them, and the codec
    provenance (with a warning on top when random test weights made the tokens). ``splits``: split -> the shards'
    part summaries added up (``stats.format_totals``); ``fingerprint``: what shaped the parts (the same for all:
    ``consistency.check_reports``), with the tokenizer's identity."""
    random = any(c.get("random_weights") for c in codecs)
    lines = [
        "# neucodec tokens for Multilingual-TTS",
        "",
        *(
            ["> **WARNING: encoded with RANDOM test weights: these are not real neucodec tokens.**", ""]
            if random
            else []
        ),
        f"TTS and voice-cloning rows of {n_shards} shards, tokenized with `{sft['tokenizer']}` and packed into blocks",
        f"of {sft['block_tokens']} tokens: `input_ids`, `position_ids` (restarting per row) and `attention_mask` (the",
        "row lengths), uint32, as MosaicML Streaming MDS: `{split}/{shard}.mds`, one `{split}/index.json` per split.",
        f"Speakers are `{sft['speaker_format']}`; voice-cloning pairs are made within a shard, at most",
        f"{sft['pairs_per_speaker']} per speaker and shard (seed {sft['seed']}); segments over {sft['max_seconds']} s",
        "are left out.",
        "",
        "| split | TTS rows | voice-cloning rows | blocks | tokens | speech tokens | left out |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in splits.items():
        rows = t.get("rows", {})
        left = dict(sorted(t.get("dropped_by_reason", {}).items())) or "none"
        lines.append(
            f"| {name} | {rows.get('tts', 0)} | {rows.get('voice_cloning', 0)} | {t.get('blocks', 0)} | "
            f"{t.get('tokens', 0)} | {t.get('speech_tokens', 0)} | {left} |"
        )
    lines += ["", "Reading it as the trainer does:", "", "```python", READER.rstrip("\n"), "```", ""]
    if fingerprint:
        lines += [
            "What shaped every part (each shard report's `sft.fingerprint`; summarize refuses parts made otherwise):",
            "",
            "```json",
            json.dumps(fingerprint, indent=2, sort_keys=True),
            "```",
            "",
        ]
    lines += ["Codec provenance (the codecs that made the tokens, with their shards):", "", *codec_lines(codecs), ""]
    lines += ["```json", json.dumps(codecs, indent=2), "```", ""]
    return "\n".join(lines)
