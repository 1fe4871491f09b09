"""A small real tokenizer shaped like the Multilingual-TTS one (Qwen3's byte-level BPE, then ``<|speech_start|>`` and
``<|s_0|>`` … ``<|s_65535|>`` added in that order), and multilingual sample text: the demo's default
``multilingual_tts`` tokenizer (``--tokenizer test``), also used by the tests and benchmarks, none of which reach
the Hub. The BPE is trained in a second on text from ``sample_text``, so ids and merges are realistic;
it is saved as a transformers directory whose ``tokenizer_config.json`` names ``Qwen2Tokenizer``, the class
``AutoTokenizer`` loads for Qwen3-1.7B-Base."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

SPEECH_TOKENS = 65_536

# words by language; scripts without spaces between words are joined without them
WORDS: dict[str, list[str]] = {
    "en": "the quick brown fox jumps over lazy dog she said that we would meet again tomorrow morning at "
    "station because train was late and everyone waited in cold rain for hours".split(),
    "ms": "saya suka makan nasi lemak di kuala lumpur setiap pagi sebelum pergi ke pejabat bersama kawan "
    "kami akan berjumpa lagi esok hari kerana hujan lebat sejak semalam".split(),
    "fr": "le petit garçon a mangé une pomme rouge près de la fenêtre pendant que sa sœur écoutait "
    "musique très forte déjà où êtes-vous allés l'été dernier".split(),
    "de": "der schnelle braune fuchs springt über den faulen hund während die kinder draußen spielen "
    "und großmutter kuchen backt für alle gäste heute abend".split(),
    "vi": "xin chào các bạn hôm nay trời đẹp quá chúng ta đi dạo công viên nhé tôi rất vui được gặp "
    "mọi người ở đây cảm ơn nhiều".split(),
    "ru": "привет как дела сегодня хорошая погода мы пойдём гулять в парк после работы вместе с "
    "друзьями и будем пить чай до самого вечера".split(),
    "ar": "مرحبا بالعالم كيف حالك اليوم الطقس جميل جدا سنذهب إلى الحديقة بعد العمل مع الأصدقاء".split(),
    "hi": "नमस्ते दुनिया आज मौसम बहुत अच्छा है हम काम के बाद दोस्तों के साथ पार्क में घूमने जाएंगे".split(),
    "ta": "வணக்கம் உலகம் இன்று வானிலை மிகவும் நன்றாக உள்ளது நாங்கள் பூங்காவிற்கு செல்வோம்".split(),
    "zh": list("我们今天去公园散步天气很好朋友们都很开心晚上一起吃饭喝茶聊天到很晚才回家"),
    "ja": list("こんにちは世界今日はいい天気ですね公園を散歩しましょう友達と一緒に晩ご飯を食べます"),
    "th": list("สวัสดีชาวโลกวันนี้อากาศดีมากเราจะไปเดินเล่นในสวนสาธารณะกับเพื่อน"),
}
UNSPACED = {"zh", "ja", "th"}
PUNCTUATION = [".", ",", "?", "!", "…", "。", "、", "؟", "—", ";", ":"]


def sample_text(rng: np.random.Generator, n_words: int, language: str | None = None) -> str:
    """``n_words`` words (characters for scripts without spaces, 1.5 per word) of one language, with punctuation,
    a capital and now and then a number."""
    language = language or str(rng.choice(list(WORDS)))
    pool = WORDS[language]
    if language in UNSPACED:
        n = max(2, int(n_words * 1.5))
        return "".join(rng.choice(pool, n)) + str(rng.choice(["。", "！", "？", ""]))
    words = [str(w) for w in rng.choice(pool, max(1, n_words))]
    for i in range(len(words)):
        r = rng.random()
        if r < 0.08:
            words[i] += str(rng.choice(PUNCTUATION))
        elif r < 0.1:
            words[i] = str(rng.integers(0, 2000))
    words[0] = words[0][:1].upper() + words[0][1:]
    return " ".join(words) + str(rng.choice([".", "?", "!", ""]))


def build_test_tokenizer(directory: Path, vocab_size: int = 8000, seed: int = 0) -> Path:
    """Train a byte-level BPE on ``sample_text`` (Qwen2's normalizer, pre-tokenizer and decoder), add the special and
    speech tokens in the real order and save it with ``save_pretrained`` into ``directory`` (returned)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    bpe = Tokenizer(BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    rng = np.random.default_rng(seed)
    corpus = [sample_text(rng, int(rng.integers(3, 40)), lang) for lang in WORDS for _ in range(300)]
    trainer = BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(corpus, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges: Any = [tuple(m) for m in model["merges"]]  # the BPE model takes pairs
    # the Qwen2 class builds the real pipeline around the trained vocabulary; its special tokens come after it
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,
        extra_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    # as the upstream notebook does: plain (non-special) added tokens, speech_start first
    tokenizer.add_tokens([AddedToken("<|speech_start|>")] + [AddedToken(f"<|s_{i}|>") for i in range(SPEECH_TOKENS)])
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    return directory
