"""``make demo``: a small corpus built here, offline, and the whole workflow run on it.

``corpus``     synthetic shards in the contract's layout (``write_shard``, ``flac_bytes``) and the demo corpus
               (``make_demo_corpus``: espeak-ng speech where installed, else a speech-like signal)
``tokenizer``  a small offline tokenizer of the Multilingual-TTS model's class (``build_test_tokenizer``), for the
               demo's ``multilingual_tts`` format when no Hub can be reached
``__main__``   ``python -m neucodec_workflow.demo``: builds both, runs Snakemake, says where everything is
"""
