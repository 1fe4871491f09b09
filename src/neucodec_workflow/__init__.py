"""neucodec_workflow: turn speech corpora (tar of FLAC + metadata parquet) into neucodec tokens and training data.

The package is grouped by the systems it holds, whose risks differ (README: Layout):

``contract``  the data contracts: shard file names, 16 kHz / 320-sample frames, the tokens parquet (write, read)
``records``   typed records: reject ``Reason``, ``Reject``, ``ShardReport``, ``Audit``, ``CorpusStats``, ``Mode``
``upstream``  the upstream versions whose internals we rely on; a mismatch is an error (docs/upstream.md)
``jobs``      what the Snakemake scripts call, one function per rule

``engine/``   the encode engine; leans on upstream internals (neucodec, transformers, torch), needs torch:
              ``codec`` (load the model), ``reference`` (``encode_code``: the definition of correct tokens),
              ``numerics`` (scoped fp32/TF32), ``engine`` (batched), ``fbank``, ``semantic`` (w2v-bert),
              ``acoustic`` (CodecEnc), ``kernels/`` (C, CPU), ``device`` (which GPU), ``probe`` (test signal)
``shard/``    one shard inside its encode job: ``audio`` (stream the tar, decode, check), ``encode`` (every segment
              encoded or rejected, the report), ``audit`` (agreement with the reference on a sample)
``storage/``  S3-compatible storage: ``s3`` (URLs, settings, clients), ``inventory`` and ``plugin`` (one listing per
              run; patches the storage plugin inside Snakemake at parse time), ``streams`` (what jobs read),
              ``discovery`` (the shard list)
``dataset/``  the training data, no torch: ``sft`` (the Hugging Face dataset), ``stats`` (``stats.json``)
``demo/``     ``make demo`` (``python -m neucodec_workflow.demo``): the demo corpus (``corpus``: synthetic shards in
              the contract's layout), an offline tokenizer for the demo's formats (``tokenizer``); the tests' rigs
              (loopback servers, probes) live in tests/support/, outside the package
"""

__version__ = "0.1.0"
