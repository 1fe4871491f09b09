"""The Multilingual-TTS model's tokenizer, checked, for the ``multilingual_tts`` format (``mtts.py``).

The row template's tokens (``<|im_start|>``, ``<|im_end|>``, ``<|speech_start|>``) and the 65,536 speech tokens
``<|s_0|>`` … ``<|s_65535|>`` must be in the tokenizer, the speech tokens with contiguous ids: a speech code ``c`` is
then the id ``speech_base + c``, and speech is never rendered as strings. Text is tokenized by the tokenizer's own
``tokenizers`` backend, in batches: the text part of a row is tokenized as the string
``<|im_start|>{text}<|speech_start|>``, which gives the ids the fully rendered row has there (the template's tokens
are added tokens, matched before the text is split).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np

IM_START, IM_END, SPEECH_START = "<|im_start|>", "<|im_end|>", "<|speech_start|>"
SPEECH_TOKENS = 65_536  # <|s_0|> … <|s_65535|>: the neucodec FSQ codes
BATCH_TEXTS = 4096  # texts per call of the backend


class MttsError(RuntimeError):
    pass


def _plain_backend(tokenizer: Any, name: str) -> Any:
    """The tokenizer's ``tokenizers`` backend, without truncation or padding (a copy where it had them)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise MttsError(f"tokenizer {name}: no fast (tokenizers) backend ({type(tokenizer).__name__})")
    if backend.truncation is not None or backend.padding is not None:
        backend = type(backend).from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
    return backend


class SpeechTokenizer:
    """The model's tokenizer (``tokenizer``: as ``AutoTokenizer`` loads it), checked: the ids of ``<|im_start|>``,
    ``<|im_end|>``, ``<|speech_start|>`` and the contiguous ``<|s_N|>`` (``speech_base + N``), each of which, rendered
    in a string, tokenizes to its own id. Text goes through the fast backend in batches."""

    def __init__(self, tokenizer: Any, name: str) -> None:
        self.name = name
        self.tokenizer = tokenizer
        self.backend = _plain_backend(tokenizer, name)
        vocab = self.backend.get_vocab(with_added_tokens=True)
        self.im_start = self._token_id(vocab, IM_START)
        self.im_end = self._token_id(vocab, IM_END)
        self.speech_start = self._token_id(vocab, SPEECH_START)
        self.speech_base = self._token_id(vocab, "<|s_0|>")
        self._check_speech_tokens(vocab)

    def _token_id(self, vocab: dict[str, int], token: str) -> int:
        if token not in vocab:
            raise MttsError(f"tokenizer {self.name}: has no token {token} (not the Multilingual-TTS tokenizer?)")
        return int(vocab[token])

    def _check_speech_tokens(self, vocab: dict[str, int]) -> None:
        """Every speech token present, their ids contiguous, and each special and speech token, rendered in a string,
        tokenized as exactly its own id."""
        name, base = self.name, self.speech_base
        speech = np.array([vocab.get(f"<|s_{i}|>", -1) for i in range(SPEECH_TOKENS)], np.int64)
        missing = np.flatnonzero(speech < 0)
        if len(missing):
            raise MttsError(
                f"tokenizer {name}: {len(missing)} of the {SPEECH_TOKENS} speech tokens are missing, "
                f"e.g. <|s_{missing[0]}|>"
            )
        off = np.flatnonzero(speech != base + np.arange(SPEECH_TOKENS))
        if len(off):
            i = int(off[0])
            raise MttsError(
                f"tokenizer {name}: the speech token ids are not contiguous: <|s_{i}|> is {speech[i]}, "
                f"not {base + i} (<|s_0|> is {base})"
            )
        rendered = IM_START + SPEECH_START + "".join(f"<|s_{i}|>" for i in range(SPEECH_TOKENS)) + IM_END
        expected = [self.im_start, self.speech_start, *range(base, base + SPEECH_TOKENS), self.im_end]
        if self.backend.encode(rendered, add_special_tokens=False).ids != expected:
            raise MttsError(f"tokenizer {name}: rendered speech tokens do not tokenize to their own ids")

    def encode(self, texts: Sequence[str], batch: int = BATCH_TEXTS) -> tuple[np.ndarray, np.ndarray]:
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
        and the number of ids of each (int64)."""
        return self.encode([f"{IM_START}{t}{SPEECH_START}" for t in texts])

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
