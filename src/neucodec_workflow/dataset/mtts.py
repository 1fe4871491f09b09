"""The ``multilingual_tts`` format: what the Multilingual-TTS trainer reads (../shared/docs/trainers.md,
"Multilingual-TTS"). A shard's rows of one split become TTS rows
``<|im_start|>{speaker}: {text}<|speech_start|><|s_…|>…<|im_end|>`` and voice-cloning rows (reference and target of
one speaker), tokenized, packed greedily into blocks of ``block_tokens`` and written as one MosaicML Streaming MDS
shard file, byte for byte what ``streaming.MDSWriter`` writes (``streaming`` itself is not imported: it pulls torch).

Only the text parts are tokenized, as ``<|im_start|>{text}<|speech_start|>`` would be in the fully rendered row:
through tiktoken where ``FastBPE`` reproduces the tokenizer's ids (checked; about 4x faster on one core), else
through the tokenizer with the special tokens around them in the string. A speech code ``c`` is the id ``base + c``
(``base`` = the id of ``<|s_0|>``, read from the tokenizer, which is checked once to render every speech token that
way). One id buffer holds the TTS
rows one after the other and each paired segment's utterance once; a row is a list of spans of it (a voice-cloning
row: two utterances). The file is encoded about ``CHUNK_TOKENS`` at a time in one reused buffer while it is written
and hashed, so a shard's many voice-cloning rows never sit in memory at once.

Voice-cloning pairs are made within the shard (and split): ``pairs_per_speaker`` caps them per speaker and shard.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xxhash

from neucodec_workflow.contract import publishing
from neucodec_workflow.dataset.consistency import codec_lines
from neucodec_workflow.records import Reason, Reject

log = logging.getLogger(__name__)

IM_START, IM_END, SPEECH_START = "<|im_start|>", "<|im_end|>", "<|speech_start|>"
SPEECH_TOKENS = 65_536  # <|s_0|> … <|s_65535|>: the neucodec FSQ codes
UNKNOWN = "unknown"  # a null dataset or speaker in a speaker name

# the MDS columns of the upstream notebooks and the trainer; "uint32" is their own encoding (raw bytes of a uint32
# array, registered over streaming's scalar one), so every column has a variable size
MDS_COLUMNS = {
    "input_ids": "uint32",
    "position_ids": "uint32",
    "attention_mask": "uint32",
    "audio": "str",
    "text": "str",
}
MDS_HASHES = ["sha1", "xxh64"]
MDS_SIZE_LIMIT = (1 << 32) - 1  # one file per shard: sample offsets are uint32, so a file holds at most this
CHUNK_TOKENS = 1 << 20  # tokens (ids and positions) encoded at a time while writing


class MttsError(RuntimeError):
    pass


# The split regex of Qwen2's pre-tokenizer (transformers' ``qwen2.tokenization_qwen2.PRETOKENIZE_REGEX``; Qwen3 uses
# the same): the one pre-tokenizer ``FastBPE`` reproduces.
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
_CHECKED, _REFUSED, _INERT = 1, 2, 4  # FastBPE's flags per code point (_INERT: NFC leaves it as it is)
# Per character c, strings whose splitting shows how the split regex sees c: "!{c}a" whether it is a letter, a digit,
# a space or other (whether "!" and "a" join it), the others whether it folds to a letter of 's 't 'm 'd, 're 've, 'll
_PROBES = ("!{}a", "'{}a", "'{}ea", "'r{}a", "'{}la", "'l{}a")
# Texts the fast path is checked on when it is built (any mismatch turns it off): scripts, digits, whitespace runs,
# contractions, emoji, combining marks, compatibility characters, rare planes, control characters
_BATTERY = (
    "",
    "a",
    " ",
    "  leading and trailing  ",
    "Hello, World! It's 'quoted' - don't, WE'LL see; they're I'M 'Ve 'D 'ſ x's",
    "tabs\tand\nnewlines\r\n and  runs   of    spaces \n\n\t end \r",
    "digits 0123456789 ١٢٣٤ ৩৪ ௧௨ 3.14 1,000,000 ²³ ½ Ⅻ",
    "emoji 😀👍🏽 👨‍👩‍👧 ❤️ 🇲🇾 🫠",
    "Привет, мир! Ёжик съел 5 яблок.",
    "مرحبا بالعالم؟ كيف حالك اليوم",
    "नमस्ते दुनिया, क़िला",
    "வணக்கம் உலகம் கொ",
    "สวัสดีชาวโลก วันนี้อากาศดีมาก",
    "我们今天去公园散步。天气很好！",
    "こんにちは世界、カタカナ ｶﾀｶﾅ が か\u3099",
    "안녕하세요 세계 \u1100\u1161\u11a8",
    "Xin chào các bạn, tiếng Việt rất hay",
    "e\u0301cole in NFD, ca\u0300 va, A\u030a\u0323, \u0b47\u0b3e",
    "\u0301 starts and ends with a mark a\u0301",
    "ﬁ ligature, ＦＵＬＬ width, ℌ, Ω, K, Å",
    "\u00a0nbsp\u2009thin\u3000ideographic\u200bzero-width\u2028line\u2029para\u0085nel\u180e",
    'symbols ~!@#$%^&*()_+-=[]{}|;:",./?` \\ «» „“ ‹› ¿¡ — …',
    "rare planes \U00020000\U00031350\U0001e5d0 private \ue000\U000f0000 unassigned \U000e0080\u0378 \U0010fffd",
    "control \x01\x08\x0b\x0c\x0e\x1c\x1f\x7f\x80\x9f end",
    "".join(chr(c) for c in range(1, 128) if chr(c) != "<"),
    "a literal <|s_5|> and <|im_end|> and <|speech_start|> in the text",
)


class Unsupported(Exception):
    """The tokenizer is not one ``FastBPE`` reproduces (the reason)."""


def _byte_chars() -> list[str]:
    """The byte-level alphabet: the character that stands for each byte (GPT-2's ``bytes_to_unicode``)."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _bpe(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """tiktoken's byte pair encoding of one piece, in Python (for the probes' few short pieces)."""
    if piece in ranks:
        return [ranks[piece]]
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        pair = [ranks.get(parts[i] + parts[i + 1]) for i in range(len(parts) - 1)]
        known = [(r, i) for i, r in enumerate(pair) if r is not None]
        if not known:
            break
        _, i = min(known)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return [ranks[p] for p in parts]


@functools.lru_cache(maxsize=1)
def _compose_second() -> frozenset[str]:
    """Characters canonical composition may join to what precedes them (Python's Unicode data): the second character
    of every two-character canonical decomposition, and Hangul's medial and final jamo."""
    second = {chr(c) for c in [*range(0x1161, 0x1176), *range(0x11A8, 0x11C3)]}
    for cp in range(0x110000):
        d = unicodedata.decomposition(chr(cp))
        if d and not d.startswith("<") and len(parts := d.split()) == 2:
            second.add(chr(int(parts[1], 16)))
    return frozenset(second)


def _nfc_inert(c: str) -> bool:
    """Whether NFC leaves ``c`` as it is whatever surrounds it, by Python's Unicode data: assigned, a starter, NFC of
    itself, and neither it nor the start of its decomposition joins what precedes it. Unicode's normalization
    stability (an assigned character's decomposition and class never change, no composition is added between assigned
    characters) makes that hold under any other Unicode version too, the tokenizers library's included."""
    second = _compose_second()
    if unicodedata.category(c) == "Cn" or unicodedata.combining(c) or c in second:
        return False
    head = unicodedata.normalize("NFD", c)[0]
    return unicodedata.normalize("NFC", c) == c and not unicodedata.combining(head) and head not in second


def _pipeline_unsupported(spec: dict[str, Any]) -> str | None:
    """Why the tokenizer's pipeline is not normalizer NFC (or none), Qwen2's split, byte level, plain BPE; None if it
    is."""
    normalizer = spec.get("normalizer")
    if normalizer is not None and normalizer != {"type": "NFC"}:
        return f"normalizer {json.dumps(normalizer)[:200]} (only NFC or none)"
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if (
        len(steps) != 2
        or steps[0].get("type") != "Split"
        or steps[0].get("pattern") != {"Regex": QWEN2_SPLIT}
        or steps[0].get("behavior") != "Isolated"
        or steps[0].get("invert")
        or steps[1].get("type") != "ByteLevel"
        or steps[1].get("add_prefix_space")
        or steps[1].get("use_regex")
    ):
        return f"pre-tokenizer {json.dumps(pre)[:300]} (only Qwen2's split regex, then byte level)"
    model = spec.get("model") or {}
    plain = model.get("type") == "BPE" and not any(
        model.get(k)
        for k in ("dropout", "continuing_subword_prefix", "end_of_word_suffix", "byte_fallback", "ignore_merges")
    )
    if not plain:
        return "model: not a plain BPE (dropout, subword prefix or suffix, byte fallback or ignore_merges)"
    return None


class FastBPE:
    """Texts tokenized as the tokenizer's ``tokenizers`` backend tokenizes them (``add_special_tokens=False``), by
    tiktoken: about 4x faster on one core (benchmarks/results/sft.md), since the backend spends most of its time in
    Qwen2's split regex.

    Why the ids are the same; each premise is checked when it is built (else ``Unsupported``) or per character:
    - Pipeline: normalizer NFC or none (the backend's own normalizer is applied, to the texts whose characters NFC
      might change: ``_nfc_inert``), Qwen2's split regex, byte level without prefix space, a BPE without dropout,
      affixes, byte fallback or ignore_merges; every byte in the vocabulary.
    - Added tokens: texts holding the first character of any added token (``<`` for Qwen's), NUL or a lone surrogate
      go through the backend instead, so no added token can be matched inside a text tiktoken encodes.
    - Split: tiktoken applies the same regex with fancy-regex, the backend with Oniguruma, both backtracking and
      leftmost-first; a match depends only on whether each character is a letter, a digit, a space or other, and
      which characters fold to the contraction letters, i.e. on the engines' Unicode tables. The first time a
      character is seen it is probed through both (``_PROBES``, read through small probe vocabularies); a character
      they split differently sends its texts to the backend (logged). With tokenizers 0.23.3 and tiktoken 0.14.0
      every code point agrees (all 1,112,062 probed: all but the surrogates, NUL and ``<``).
    - BPE: the backend merges the adjacent pair whose merge comes first in the merges list, leftmost first; tiktoken
      the pair whose concatenation has the lowest rank, leftmost first, for any pair whose concatenation is a token.
      Ranks here are merge positions (bytes 0-255, the token of merge i 256 + i), each token is made by one merge,
      and the backend's BPE of every token's own bytes ends at that token (a token for which it does not is left out
      of the ranks: the backend never produces it). Then both pick the same pair at every step: when the backend
      holds adjacent tokens a, b whose bytes make a token T, the merges made inside those bytes are the ones the
      backend makes on them alone (no merge crossed their ends, and merges go in the same order), which ends at T;
      from [a, b] it gets there only by merging (a, b), so (a, b) is T's merge. Ids come from a rank -> id table, so
      merge order and id order need not agree (a trained tokenizer's do: the test one's).
    """

    def __init__(self, backend: Any, name: str) -> None:
        import tiktoken

        spec = json.loads(backend.to_str())
        why = _pipeline_unsupported(spec)
        if why:
            raise Unsupported(why)
        model = spec["model"]
        vocab: dict[str, int] = model["vocab"]
        chars = _byte_chars()
        if any(c not in vocab for c in chars):
            raise Unsupported("not every byte is in the vocabulary (not byte-level BPE)")
        byte_of = {c: b for b, c in enumerate(chars)}
        ranks: dict[bytes, int] = {bytes([b]): b for b in range(256)}
        ids = [vocab[c] for c in chars]
        results: list[str] = []
        for merge in model["merges"]:
            a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
            token = a + b
            if token not in vocab or any(c not in byte_of for c in token):
                raise Unsupported(f"merge {a!r} {b!r}: its result is not a byte-level token of the vocabulary")
            key = bytes(byte_of[c] for c in token)
            if key in ranks:
                raise Unsupported(f"token {token!r} is made by more than one merge")
            ranks[key] = len(ids)
            ids.append(vocab[token])
            results.append(token)
        bpe = backend.model
        unreachable = [t for t in results if [x.id for x in bpe.tokenize(t)] != [vocab[t]]]
        for t in unreachable:
            del ranks[bytes(byte_of[c] for c in t)]
        self.unreachable = len(unreachable)
        self._encoding = tiktoken.Encoding(
            f"mtts:{name}", pat_str=QWEN2_SPLIT, mergeable_ranks=ranks, special_tokens={}
        )
        self._ids = np.array(ids, np.uint32)
        self._normalizer = backend.normalizer if spec.get("normalizer") else None
        self._pre_tokenizer = backend.pre_tokenizer
        # the probes' vocabularies: a token for "!" + any byte (does "!" join what follows?) and for any byte + "a"
        # (does "a" join what precedes? "aa" first, so that "aa" in a probe reads one way); tiktoken encodes a probe
        # with them, which must equal the same BPE applied to the backend's pieces
        single = {bytes([b]): b for b in range(256)}
        left = {**single, **{b"!" + bytes([x]): 256 + x for x in range(256)}}
        right = {**single, **{bytes([x]) + b"a": 256 + (0 if x == ord("a") else 1 + x) for x in range(256)}}
        self._probes = [
            (tiktoken.Encoding(f"mtts-probe-{i}", pat_str=QWEN2_SPLIT, mergeable_ranks=r, special_tokens={}), r)
            for i, r in enumerate((left, right))
        ]
        self._flags = np.zeros(0x110000, np.uint8)
        first = {t["content"][0] for t in spec.get("added_tokens", []) if t.get("content")}
        refused = [0, *range(0xD800, 0xE000), *map(ord, first)]
        self._flags[refused] = _CHECKED | _REFUSED
        self.split_differs: set[str] = set()

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The ids of each text one after the other (uint32), and each text's count (int64; -1: not encoded here,
        tokenize it with the backend)."""
        counts = np.full(len(texts), -1, np.int64)
        ok, inert = self._acceptable(texts)
        take = np.flatnonzero(ok)
        chosen = [texts[i] for i in take.tolist()]
        normalize = np.flatnonzero(~inert[take])  # texts NFC may change go through the backend's normalizer
        if len(normalize) and self._normalizer is not None:
            joined = "\0".join(chosen[k] for k in normalize.tolist())  # no text has a NUL; NFC neither makes one
            parts = self._normalizer.normalize_str(joined).split("\0")  # nor joins anything to it
            if len(parts) != len(normalize):
                raise MttsError(f"NFC changed the number of texts ({len(normalize)} -> {len(parts)})")
            for k, part in zip(normalize.tolist(), parts, strict=True):
                chosen[k] = part
            again = self._acceptable(parts)[0]
            if not again.all():
                keep = np.ones(len(take), bool)
                keep[normalize[~again]] = False
                take, chosen = take[keep], [t for t, k in zip(chosen, keep.tolist(), strict=True) if k]
        encode = self._encoding.encode_ordinary
        lists = [encode(t) for t in chosen]
        n = np.fromiter(map(len, lists), np.int64, len(lists))
        ranks = np.fromiter(chain.from_iterable(lists), np.int64, int(n.sum()))
        counts[take] = n
        return self._ids[ranks], counts

    def _acceptable(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Whether each text has only characters the fast path takes, and whether NFC leaves it as it is (probing
        characters not seen before)."""
        chars = np.fromiter(map(len, texts), np.int64, len(texts))
        if not len(texts):
            return np.zeros(0, bool), np.zeros(0, bool)
        points = np.frombuffer(("\0".join(texts) + "\0").encode("utf-32-le", "surrogatepass"), np.uint32)
        flags = self._flags[points]
        new = (flags & _CHECKED) == 0
        if new.any():
            self._probe(np.unique(points[new]))
            flags = self._flags[points]
        ends = np.cumsum(chars + 1) - 1  # the NUL after each text
        flags[ends] = _CHECKED | _INERT
        starts = ends - chars
        refused = (flags & _REFUSED) != 0
        ok = ~np.logical_or.reduceat(refused, starts) if refused.any() else np.ones(len(texts), bool)
        changing = (flags & _INERT) == 0
        inert = ~np.logical_or.reduceat(changing, starts) if changing.any() else np.ones(len(texts), bool)
        return ok, inert

    def _probe(self, points: np.ndarray) -> None:
        """Probe characters not seen before: one that tiktoken and the backend split differently is refused; one
        that NFC leaves as it is (``_nfc_inert``, confirmed by the backend's normalizer) needs no normalizing."""
        chars = [chr(p) for p in points.tolist()]
        differ = [c for c in chars if not all(self._same_split(f.format(c)) for f in _PROBES)]
        self._flags[points] |= _CHECKED
        if self._normalizer is None:
            self._flags[points] |= _INERT
        else:
            # alone, after a mark of class 240 (a mark of class 1-239 moves before it), before one of class 1
            inert = [c for c in chars if _nfc_inert(c) and self._is_nfc(f"{c}\0\u0345{c}\0{c}\u0334")]
            self._flags[[ord(c) for c in inert]] |= _INERT
        if differ:
            self._flags[[ord(c) for c in differ]] |= _REFUSED
            self.split_differs.update(differ)
            log.warning(
                "%d characters are split differently by tiktoken and the tokenizers library (%s); texts with them "
                "are tokenized by the latter",
                len(differ),
                " ".join(f"U+{ord(c):04X}" for c in differ[:20]),
            )

    def _is_nfc(self, text: str) -> bool:
        return self._normalizer is None or self._normalizer.normalize_str(text) == text

    def _same_split(self, probe: str) -> bool:
        pieces = [probe[a:b].encode() for _, (a, b) in self._pre_tokenizer.pre_tokenize_str(probe)]
        if b"".join(pieces) != probe.encode():
            return False
        return all(
            encoding.encode_ordinary(probe) == [t for p in pieces for t in _bpe(p, ranks)]
            for encoding, ranks in self._probes
        )


class SpeechTokenizer:
    """The model's tokenizer, checked: the ids of ``<|im_start|>``, ``<|im_end|>``, ``<|speech_start|>`` and the
    contiguous ``<|s_N|>`` (``speech_base + N``). Text goes through the fast backend in batches; the text parts of
    rows (``heads``) through tiktoken where ``FastBPE`` reproduces the tokenizer (``fast``; None: it does not, or
    ``fast=False``), checked on ``_BATTERY`` against the backend when built."""

    def __init__(self, tokenizer: Any, name: str, fast: bool = True) -> None:
        self.name = name
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise MttsError(f"tokenizer {name}: no fast (tokenizers) backend ({type(tokenizer).__name__})")
        if backend.truncation is not None or backend.padding is not None:
            backend = type(backend).from_str(backend.to_str())
            backend.no_truncation()
            backend.no_padding()
        self.backend = backend
        vocab = backend.get_vocab(with_added_tokens=True)

        def token_id(token: str) -> int:
            if token not in vocab:
                raise MttsError(f"tokenizer {name}: has no token {token} (not the Multilingual-TTS tokenizer?)")
            return int(vocab[token])

        self.im_start = token_id(IM_START)
        self.im_end = token_id(IM_END)
        self.speech_start = token_id(SPEECH_START)
        self.speech_base = token_id("<|s_0|>")
        speech = np.array([vocab.get(f"<|s_{i}|>", -1) for i in range(SPEECH_TOKENS)], np.int64)
        missing = np.flatnonzero(speech < 0)
        if len(missing):
            raise MttsError(
                f"tokenizer {name}: {len(missing)} of the {SPEECH_TOKENS} speech tokens are missing, "
                f"e.g. <|s_{missing[0]}|>"
            )
        off = np.flatnonzero(speech != self.speech_base + np.arange(SPEECH_TOKENS))
        if len(off):
            i = int(off[0])
            raise MttsError(
                f"tokenizer {name}: the speech token ids are not contiguous: <|s_{i}|> is {speech[i]}, "
                f"not {self.speech_base + i} (<|s_0|> is {self.speech_base})"
            )
        # each special and speech token, rendered in a string, must come out as exactly its own id
        rendered = IM_START + SPEECH_START + "".join(f"<|s_{i}|>" for i in range(SPEECH_TOKENS)) + IM_END
        expected = [self.im_start, self.speech_start, *range(self.speech_base, self.speech_base + SPEECH_TOKENS)]
        if backend.encode(rendered, add_special_tokens=False).ids != [*expected, self.im_end]:
            raise MttsError(f"tokenizer {name}: rendered speech tokens do not tokenize to their own ids")
        self.fast: FastBPE | None = None
        if fast:
            self.fast = self._fast_bpe()

    def _fast_bpe(self) -> FastBPE | None:
        """``FastBPE`` for this tokenizer if it reproduces it (premises, then ``_BATTERY``), else None (logged)."""
        name = self.name
        try:
            fast = FastBPE(self.backend, name)
        except ImportError as exc:
            log.warning("tokenizer %s: text through the tokenizers library (tiktoken: %s)", name, exc)
            return None
        except Unsupported as exc:
            log.warning(
                "tokenizer %s: text through the tokenizers library (tiktoken cannot reproduce it: %s)", name, exc
            )
            return None
        contents = [t.content for t in self.backend.get_added_tokens_decoder().values()]
        longer = [c for c in contents if c != IM_START and c.startswith(IM_START)]
        if longer:  # would be matched instead of <|im_start|> before a text starting with the rest
            log.warning("tokenizer %s: text through the tokenizers library (added token %r)", name, longer[0])
            return None
        self.fast = fast
        differ = [
            t
            for t in _BATTERY
            if not np.array_equal(self.heads([t])[0], self.encode([f"{IM_START}{t}{SPEECH_START}"])[0])
        ]
        self.fast = None
        if differ:
            log.warning("tokenizer %s: text through the tokenizers library (tiktoken differs on %r)", name, differ[0])
            return None
        log.info(
            "tokenizer %s: text parts through tiktoken (%d tokens no merge reaches left out; checked on %d texts)",
            name,
            fast.unreachable,
            len(_BATTERY),
        )
        return fast

    def encode(self, texts: Sequence[str], batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """All ``texts`` tokenized (``add_special_tokens=False``): the ids one after the other (uint32) and the number
        of ids of each text (int64)."""
        ids: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        for lo in range(0, len(texts), batch):
            encodings = self.backend.encode_batch_fast(list(texts[lo : lo + batch]), add_special_tokens=False)
            n = np.fromiter(map(len, encodings), np.int64, len(encodings))
            ids.append(np.fromiter(chain.from_iterable(e.ids for e in encodings), np.uint32, int(n.sum())))
            lengths.append(n)
        if not ids:
            return np.zeros(0, np.uint32), np.zeros(0, np.int64)
        return np.concatenate(ids), np.concatenate(lengths)

    def heads(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``<|im_start|>{text}<|speech_start|>`` for each of ``texts``, tokenized: the ids one after the other (uint32)
        and the number of ids of each (int64), equal to ``encode`` of those strings. Through ``fast`` where it takes
        the text, the rest through ``encode``."""
        if self.fast is None:
            return self.encode([f"{IM_START}{t}{SPEECH_START}" for t in texts])
        inner, inner_len = self.fast.encode(texts)
        slow = np.flatnonzero(inner_len < 0)
        lengths = inner_len + 2
        if len(slow):
            slow_ids, lengths[slow] = self.encode([f"{IM_START}{texts[i]}{SPEECH_START}" for i in slow.tolist()])
        out = np.empty(int(lengths.sum()), np.uint32)
        starts = np.cumsum(lengths) - lengths
        fast = inner_len >= 0
        start, n = starts[fast], inner_len[fast]
        out[start] = self.im_start
        out[start + n + 1] = self.speech_start
        out[_spans(start + 1, n)] = inner
        if len(slow):
            out[_spans(starts[slow], lengths[slow])] = slow_ids
        return out, lengths

    def speech_ids(self, codes: np.ndarray) -> np.ndarray:
        """Speech codes (0..65535) as token ids."""
        return np.uint32(self.speech_base) + np.asarray(codes).astype(np.uint32)

    @functools.cached_property
    def identity(self) -> str:
        """What makes this tokenizer's ids, as a sha256 (not its name: a Hub id or a directory can change under the
        same name): its vocabulary and merges, its added tokens (with how each is matched), its normalizer and
        pre-tokenizer. The dataset parts record it (``formats.FormatWriter.fingerprint``)."""
        spec = json.loads(self.backend.to_str())
        model = spec.get("model") or {}
        merges = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model.get("merges") or []]
        keys = ("id", "content", "single_word", "lstrip", "rstrip", "normalized", "special")
        identity = {
            "model": {"type": model.get("type"), "vocab": model.get("vocab"), "merges": merges},
            "added_tokens": [{k: t.get(k) for k in keys} for t in spec.get("added_tokens") or []],
            "normalizer": spec.get("normalizer"),
            "pre_tokenizer": spec.get("pre_tokenizer"),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    @functools.cached_property
    def _added(self) -> np.ndarray:
        """Whether each id is one of the tokenizer's added tokens (special, speech or other)."""
        added = np.zeros(self.backend.get_vocab_size(with_added_tokens=True) + 1, bool)
        added[list(self.backend.get_added_tokens_decoder())] = True
        return added

    def added_inside(self, heads: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """For each head ``<|im_start|>{text}<|speech_start|>`` (as ``heads`` returns them), the first added token id
        the tokenizer read inside ``{text}`` (-1: none). A transcript holding ``<|im_end|>`` or ``<|s_12|>`` is
        tokenized as those tokens: a row with it would be a corrupt training row."""
        found = np.full(len(starts), -1, np.int64)
        if not len(starts):
            return found
        ids = heads.astype(np.int64)
        inside = self._added[np.minimum(ids, len(self._added) - 1)]
        inside[starts] = False  # the template's own <|im_start|> and <|speech_start|>
        inside[starts + lengths - 1] = False
        hit = np.logical_or.reduceat(inside, starts)
        for k in np.flatnonzero(hit).tolist():
            lo = int(starts[k])
            found[k] = int(ids[lo + int(np.argmax(inside[lo : lo + int(lengths[k])]))])
        return found

    def token(self, token_id: int) -> str:
        return str(self.backend.id_to_token(token_id))


def _spans(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions ``starts[k] .. starts[k] + lengths[k] - 1`` of every span, one after the other."""
    within = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + within


@functools.lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str) -> SpeechTokenizer:
    """``AutoTokenizer.from_pretrained`` (a Hub id from the HF cache, or a directory), checked; once per process."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as exc:
        raise MttsError(f"cannot load tokenizer {name_or_path}: {type(exc).__name__}: {exc}") from exc
    return SpeechTokenizer(tokenizer, name_or_path)


@dataclass(frozen=True)
class MttsSettings:
    block_tokens: int = 10240
    speaker_format: str = "{dataset}_{speaker}"  # also {language}; a null one renders as "unknown"
    pairs_per_speaker: int = 1000  # voice-cloning rows per speaker and shard (sft.multilingual_tts); 0: none
    min_text_chars: int = 2
    min_ref_chars: int = 5  # both texts of a voice-cloning pair
    max_seconds: float = 20.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.block_tokens < 1 or self.pairs_per_speaker < 0:
            raise ValueError(f"block_tokens must be >= 1 and pairs_per_speaker >= 0: {self}")
        try:
            self.speaker_format.format(dataset="d", speaker="s", language="l")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"speaker_format {self.speaker_format!r}: only {{dataset}}, {{speaker}}, {{language}}: {exc}"
            ) from exc


def render_tts(speaker: str, text: str, codes: np.ndarray) -> str:
    """A TTS row as the upstream packer renders it (``text`` as given: strip it first)."""
    return f"{IM_START}{speaker}: {text}{SPEECH_START}{''.join(f'<|s_{c}|>' for c in codes.tolist())}{IM_END}"


def render_vc(ref_text: str, ref_codes: np.ndarray, text: str, codes: np.ndarray) -> str:
    """A voice-cloning row as the upstream notebook renders it."""
    ref = "".join(f"<|s_{c}|>" for c in ref_codes.tolist())
    target = "".join(f"<|s_{c}|>" for c in codes.tolist())
    return f"{IM_START}{ref_text}{SPEECH_START}{ref}{IM_END}{IM_START}{text}{SPEECH_START}{target}{IM_END}"


@dataclass
class Rows:
    """Training rows as spans of one id buffer: row ``r`` is ``source[src[k] : src[k] + length[k]]`` for the spans
    ``k`` in ``row_spans[r] : row_spans[r + 1]``, one after the other. ``ref`` and ``target`` are the input rows
    (positions in the shard's DataFrame) a row was made of; ``ref`` is -1 for a TTS row."""

    source: np.ndarray  # uint32
    src: np.ndarray  # int64, per span
    length: np.ndarray  # int64, per span
    row_spans: np.ndarray  # int64, rows + 1
    lengths: np.ndarray  # int64 tokens per row
    speech: np.ndarray  # int64 speech tokens per row
    ref: np.ndarray  # int64
    target: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.lengths)

    def ids(self, lo: int, hi: int) -> np.ndarray:
        """The ids of rows ``lo:hi``, one after the other."""
        k0, k1 = int(self.row_spans[lo]), int(self.row_spans[hi])
        src, length = self.src[k0:k1], self.length[k0:k1]
        out_start = np.cumsum(length) - length
        index = np.repeat(src - out_start, length) + np.arange(int(length.sum()), dtype=np.int64)
        return self.source[index]


def pack(lengths: np.ndarray, block_tokens: int) -> np.ndarray:
    """Greedy, order-preserving packing: the row boundaries of the blocks (``blocks + 1`` indices). A row that would
    overflow the open block starts the next one (an exact fit stays); a row longer than a block is a block of its own
    (the trainer skips such a block: ``build_rows`` leaves those rows out)."""
    cum = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    bounds = [0]
    i, n = 0, len(lengths)
    while i < n:
        j = int(np.searchsorted(cum, cum[i] + block_tokens, side="right")) - 1
        i = max(j, i + 1)
        bounds.append(i)
    return np.array(bounds, np.int64)


@dataclass
class Packed:
    """Rows packed into blocks: block ``b`` is rows ``bounds[b] : bounds[b + 1]``."""

    rows: Rows
    bounds: np.ndarray
    block_tokens: int

    def __len__(self) -> int:
        return len(self.bounds) - 1

    @property
    def tokens(self) -> int:
        return int(self.rows.lengths.sum())

    def block(self, b: int) -> dict[str, np.ndarray]:
        """One block as the trainer reads it: ``input_ids``, ``position_ids`` (restarting at 0 for every row) and
        ``attention_mask`` (the row lengths), all uint32."""
        lo, hi = int(self.bounds[b]), int(self.bounds[b + 1])
        lengths = self.rows.lengths[lo:hi]
        ids = self.rows.ids(lo, hi)
        return {"input_ids": ids, "position_ids": positions(lengths), "attention_mask": lengths.astype(np.uint32)}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return (self.block(b) for b in range(len(self)))


def positions(lengths: np.ndarray) -> np.ndarray:
    """0..n-1 for each row of ``lengths``, one after the other (uint32)."""
    lengths = lengths.astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    return (np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts, lengths)).astype(np.uint32)


@dataclass
class Built:
    """``build_rows``: the rows in order (TTS, then voice cloning), the segments left out, the pair counts."""

    rows: Rows
    rejects: list[Reject] = field(default_factory=list)
    tts: int = 0
    voice_cloning: int = 0
    pairs: dict[str, int] = field(default_factory=dict)


def _field(rows: pd.DataFrame, name: str) -> list[str | None]:
    """A speaker-name field as strings, null and empty as None."""
    if name not in rows:
        return [None] * len(rows)
    return [v if isinstance(v, str) and v else None for v in rows[name].astype("string").tolist()]


def speaker_names(rows: pd.DataFrame, speaker_format: str) -> tuple[np.ndarray, np.ndarray]:
    """Each row's speaker name (``speaker_format``; a null field renders as ``unknown``) and whether it has a
    speaker (rows without one make no voice-cloning pairs)."""
    speaker = _field(rows, "speaker")
    names: dict[tuple[str | None, ...], str] = {}
    out = np.empty(len(rows), dtype=np.object_)
    for i, key in enumerate(zip(_field(rows, "dataset"), speaker, _field(rows, "language"), strict=True)):
        name = names.get(key)
        if name is None:
            d, s, lang = (v if v is not None else UNKNOWN for v in key)
            name = names[key] = speaker_format.format(dataset=d, speaker=s, language=lang)
        out[i] = name
    return out, np.array([s is not None for s in speaker], dtype=bool)


def _speaker_rng(seed: int, shard: str, speaker: str) -> np.random.Generator:
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


def _utterances(
    out: np.ndarray,
    heads: np.ndarray,
    head_start: np.ndarray,
    head_len: np.ndarray,
    codes: list[np.ndarray],
    base: int,
    im_end: int,
) -> np.ndarray:
    """Fill ``out`` with head + speech ids + ``<|im_end|>`` for each row, one after the other (``head_start`` and
    ``head_len`` locate each row's head in ``heads``); returns the rows' starts in ``out``."""
    speech_len = np.fromiter(map(len, codes), np.int64, len(codes))
    row_len = head_len + speech_len + 1
    row_start = np.cumsum(row_len) - row_len
    for o, c in zip((row_start + head_len).tolist(), codes, strict=True):
        out[o : o + len(c)] = c
    out += np.uint32(base)  # the speech codes become ids; heads and ends are written over below
    within = np.arange(int(head_len.sum()), dtype=np.int64) - np.repeat(np.cumsum(head_len) - head_len, head_len)
    out[np.repeat(row_start, head_len) + within] = heads[np.repeat(head_start, head_len) + within]
    out[row_start + row_len - 1] = im_end
    return row_start


def build_rows(shard: str, rows: pd.DataFrame, tokenizer: SpeechTokenizer, settings: MttsSettings) -> Built:
    """The shard's TTS rows (in shard order) and voice-cloning rows (speaker by speaker, in order of first
    appearance), as spans; every segment or pair left out is a ``Reject`` with its reason (a text or speaker name
    the tokenizer reads as its own tokens: ``text_has_special_tokens``, found on the tokenized row)."""
    n = len(rows)
    texts = [str(t).strip() for t in rows["text"].tolist()]
    chars = np.fromiter(map(len, texts), np.int64, n)
    codes = [np.asarray(c) for c in rows["neucodec_tokens"].tolist()]
    n_codes = np.fromiter(map(len, codes), np.int64, n)
    token_count = rows["token_count"].to_numpy(np.int64) if n else np.zeros(0, np.int64)
    # words are counted only where they could outnumber the tokens: a text has at most (chars + 1) // 2 words
    words = (chars + 1) // 2
    for i in np.flatnonzero(words > token_count).tolist():
        words[i] = len(texts[i].split())
    duration = rows["duration"].to_numpy(np.float64) if n else np.zeros(0, np.float64)
    ids = rows["segment_id"].astype(str).tolist()
    block = settings.block_tokens
    for c in codes:
        if c.dtype != np.uint16 and len(c) and (int(c.min()) < 0 or int(c.max()) >= SPEECH_TOKENS):
            raise MttsError(f"shard {shard}: speech codes outside 0..{SPEECH_TOKENS - 1}")

    short = chars < settings.min_text_chars
    wordy = ~short & (words > token_count)
    long = ~short & ~wordy & (duration > settings.max_seconds)
    reasons = {
        Reason.TEXT_TOO_SHORT: (short, lambda i: f"{chars[i]} characters < {settings.min_text_chars}"),
        Reason.MORE_WORDS_THAN_TOKENS: (wordy, lambda i: f"{words[i]} words > {token_count[i]} speech tokens"),
        Reason.TOO_LONG: (long, lambda i: f"{duration[i]:.2f} s > {settings.max_seconds} s"),
    }
    dropped: list[tuple[int, Reject]] = []
    for reason, (mask, detail) in reasons.items():
        dropped += [(i, Reject(ids[i], reason, detail(i))) for i in np.flatnonzero(mask).tolist()]
    ok = np.flatnonzero(~(short | wordy | long))
    names, has_speaker = speaker_names(rows, settings.speaker_format)

    # TTS rows: <|im_start|>{speaker}: {text}<|speech_start|>{speech}<|im_end|>
    prefix, prefix_len = tokenizer.heads([f"{names[i]}: {texts[i]}" for i in ok.tolist()])
    prefix_start = np.cumsum(prefix_len) - prefix_len
    # a text or speaker name the tokenizer reads as its own tokens (<|im_end|>, <|s_12|>, ...): a corrupt row
    special = tokenizer.added_inside(prefix, prefix_start, prefix_len)
    for k in np.flatnonzero(special >= 0).tolist():
        i, token = int(ok[k]), tokenizer.token(int(special[k]))
        where = "the text" if token in texts[i] else f"the speaker name {names[i]!r}"
        dropped.append((i, Reject(ids[i], Reason.TEXT_HAS_SPECIAL_TOKENS, f"{where} holds the token {token}")))
    tts_len = prefix_len + n_codes[ok] + 1
    fits = tts_len <= block
    dropped += [
        (int(i), Reject(ids[i], Reason.LONGER_THAN_BLOCK, f"{tts_len[k]} tokens > block {block}"))
        for k, i in enumerate(ok.tolist())
        if not fits[k] and special[k] < 0
    ]
    fits &= special < 0
    tts, tts_len = ok[fits], tts_len[fits]

    # voice-cloning pairs among the written rows with a speaker and a long enough text
    refs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    pair_stats = {"speakers": 0, "possible": 0, "kept": 0}
    eligible = tts[has_speaker[tts] & (chars[tts] >= settings.min_ref_chars)] if settings.pairs_per_speaker else tts[:0]
    if len(eligible) > 1:
        speaker_code, speakers = pd.factorize(pd.Series(names[eligible]), sort=False)
        text_code, _ = pd.factorize(pd.Series([texts[i] for i in eligible.tolist()]), sort=False)
        order = np.argsort(speaker_code, kind="stable")
        bounds = np.flatnonzero(np.diff(speaker_code[order])) + 1
        for members in np.split(order, bounds):
            if len(members) < 2:
                continue
            speaker = str(speakers[speaker_code[members[0]]])
            rng = _speaker_rng(settings.seed, shard, speaker)
            r, t, possible = speaker_pairs(text_code[members], settings.pairs_per_speaker, rng)
            if possible:
                pair_stats["speakers"] += 1
                pair_stats["possible"] += possible
                pair_stats["kept"] += len(r)
                refs.append(eligible[members[r]])
                targets.append(eligible[members[t]])
    ref = np.concatenate(refs) if refs else np.zeros(0, np.int64)
    target = np.concatenate(targets) if targets else np.zeros(0, np.int64)

    # voice-cloning rows: two utterances <|im_start|>{text}<|speech_start|>{speech}<|im_end|>
    in_pairs = np.unique(np.concatenate([ref, target]))
    part, part_len = tokenizer.heads([texts[i] for i in in_pairs.tolist()])
    if (tokenizer.added_inside(part, np.cumsum(part_len) - part_len, part_len) >= 0).any():
        # cannot happen: each paired text passed the check above inside its TTS row ("{speaker}: {text}")
        raise MttsError(f"shard {shard}: a voice-cloning text holds one of the tokenizer's own tokens")
    utterance_len = np.zeros(n, np.int64)
    utterance_len[in_pairs] = part_len + n_codes[in_pairs] + 1
    vc_len = utterance_len[ref] + utterance_len[target]
    vc_fits = vc_len <= block
    for k in np.flatnonzero(~vc_fits).tolist():
        a, b = int(ref[k]), int(target[k])
        why = f"voice-cloning row {ids[a]} -> {ids[b]}: {vc_len[k]} tokens > block {block}"
        dropped.append((b, Reject(ids[b], Reason.LONGER_THAN_BLOCK, why)))
    ref, target, vc_len = ref[vc_fits], target[vc_fits], vc_len[vc_fits]

    # one id buffer: the TTS rows one after the other, then the utterances of the voice-cloning rows
    n_tts = int(tts_len.sum())
    source = np.empty(n_tts + int(utterance_len.sum()), np.uint32)
    base, im_end = tokenizer.speech_base, tokenizer.im_end
    tts_start = _utterances(
        source[:n_tts], prefix, prefix_start[fits], prefix_len[fits], [codes[i] for i in tts.tolist()], base, im_end
    )
    utterance_start = np.zeros(n, np.int64)
    utterance_start[in_pairs] = n_tts + _utterances(
        source[n_tts:],
        part,
        np.cumsum(part_len) - part_len,
        part_len,
        [codes[i] for i in in_pairs.tolist()],
        base,
        im_end,
    )
    built_rows = Rows(
        source=source,
        src=np.concatenate([tts_start, np.stack([utterance_start[ref], utterance_start[target]], 1).ravel()]),
        length=np.concatenate([tts_len, np.stack([utterance_len[ref], utterance_len[target]], 1).ravel()]),
        row_spans=np.concatenate([np.arange(len(tts)), len(tts) + np.arange(0, 2 * len(ref) + 1, 2)]),
        lengths=np.concatenate([tts_len, vc_len]).astype(np.int64),
        speech=np.concatenate([n_codes[tts], n_codes[ref] + n_codes[target]]).astype(np.int64),
        ref=np.concatenate([np.full(len(tts), -1, np.int64), ref]),
        target=np.concatenate([tts, target]).astype(np.int64),
    )
    dropped.sort(key=lambda d: d[0])
    return Built(
        rows=built_rows,
        rejects=[r for _, r in dropped],
        tts=len(tts),
        voice_cloning=len(ref),
        pairs=pair_stats,
    )


def mds_config() -> bytes:
    """The shard-writing configuration MDSWriter puts in each file and in the index entry."""
    return json.dumps(_config(), sort_keys=True).encode()


def _config() -> dict[str, Any]:
    names = sorted(MDS_COLUMNS)
    return {
        "version": 2,
        "format": "mds",
        "compression": None,
        "hashes": MDS_HASHES,
        "size_limit": MDS_SIZE_LIMIT,
        "column_names": names,
        "column_encodings": [MDS_COLUMNS[c] for c in names],
        "column_sizes": [None] * len(names),
    }


def write_mds(path: Path, blocks: Packed, basename: str) -> dict[str, Any]:
    """All ``blocks`` as one MDS shard file at ``path`` (atomically; zero blocks is a valid, empty file), the bytes
    ``streaming.MDSWriter`` writes for them with ``MDS_COLUMNS``, no compression, ``MDS_HASHES`` and ``size_limit``
    ``MDS_SIZE_LIMIT``; ``audio`` and ``text`` are empty. Returns the file's index.json entry, ``basename`` being its
    path relative to the index."""
    path = Path(path)
    config = mds_config()
    rows = blocks.rows
    bounds = blocks.bounds
    row_cum = np.concatenate([[0], np.cumsum(rows.lengths, dtype=np.int64)])
    n_rows = np.diff(bounds)
    n_tokens = np.diff(row_cum[bounds])
    sizes = 4 * (5 + n_rows + 2 * n_tokens)  # the five column sizes, attention_mask, input_ids, position_ids
    head = 4 + 4 * len(sizes) + 4 + len(config)
    total = head + int(sizes.sum())
    if total > MDS_SIZE_LIMIT:
        raise MttsError(
            f"{basename}: {total} bytes, over the {MDS_SIZE_LIMIT} an MDS file can address (uint32 offsets); "
            f"lower pairs_per_speaker or use smaller shards"
        )
    offsets = np.concatenate([[0], np.cumsum(sizes)]) + head
    header = np.uint32(len(sizes)).tobytes() + offsets.astype(np.uint32).tobytes() + config
    sha1, xxh64 = hashlib.sha1(), xxhash.xxh64()
    with publishing(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(header)
            sha1.update(header)
            xxh64.update(header)
            for piece in _samples(blocks, n_rows, n_tokens):
                sha1.update(piece)
                xxh64.update(piece)
                f.write(piece)
        if tmp.stat().st_size != total:
            raise MttsError(f"{basename}: wrote {tmp.stat().st_size} bytes, expected {total}")
    return {
        "samples": len(sizes),
        "raw_data": {
            "basename": basename,
            "bytes": total,
            "hashes": {"sha1": sha1.hexdigest(), "xxh64": xxh64.hexdigest()},
        },
        "zip_data": None,
        **_config(),
    }


def _samples(blocks: Packed, n_rows: np.ndarray, n_tokens: np.ndarray) -> Iterator[memoryview]:
    """The encoded samples, about ``CHUNK_TOKENS`` at a time in one reused buffer: per block the five column sizes,
    then attention_mask, (audio: empty), input_ids, position_ids, (text: empty)."""
    rows, bounds = blocks.rows, blocks.bounds.tolist()
    source, src, length = rows.source, rows.src.tolist(), rows.length.tolist()
    row_spans, lengths = rows.row_spans.tolist(), rows.lengths.tolist()
    ramp = np.arange(max(lengths, default=0), dtype=np.uint32)
    words = (5 + n_rows + 2 * n_tokens).tolist()
    out = np.empty(max([2 * CHUNK_TOKENS, *words]), np.uint32)
    o = 0
    for b, need in enumerate(words):
        if o + need > len(out):
            yield out[:o].data.cast("B")
            o = 0
        r0, r1 = bounds[b], bounds[b + 1]
        out[o : o + 5] = (4 * (r1 - r0), 0, 4 * int(n_tokens[b]), 4 * int(n_tokens[b]), 0)
        out[o + 5 : o + 5 + r1 - r0] = rows.lengths[r0:r1]
        o += 5 + r1 - r0
        k0, k1 = row_spans[r0], row_spans[r1]
        s, n = src[k0], length[k0]
        for k in range(k0 + 1, k1):  # spans that follow each other in the buffer are copied at once
            if src[k] == s + n:
                n += length[k]
            else:
                out[o : o + n] = source[s : s + n]
                o += n
                s, n = src[k], length[k]
        out[o : o + n] = source[s : s + n]
        o += n
        for n in lengths[r0:r1]:
            out[o : o + n] = ramp[:n]
            o += n
    if o:
        yield out[:o].data.cast("B")


def merge_index(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``index.json`` of a dataset root from its files' entries (``write_mds``), in the given order; files with
    no samples are left out. ``streaming.LocalDataset(local=root)`` opens it when each file is at
    ``root/<basename>``."""
    return {"version": 2, "shards": [e for e in entries if e["samples"]]}


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
