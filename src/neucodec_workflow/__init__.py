"""neucodec_workflow: turn speech corpora (tar of FLAC + metadata parquet) into neucodec tokens and training data.

The package is grouped by the systems it holds, lowest first (README: Layout); a package imports only those below it:

``record/``    what a run leaves and how it is read: ``contract`` (shard file names, 16 kHz / 320-sample frames, the
               token file: write, read, its provenance and report), ``records`` (typed records: ``Reason``,
               ``Reject``, ``ShardReport``, ``CorpusStats``, ...), ``layout`` (every output path and log line format
               that rules, jobs and commands share), ``progress`` (the jobs' progress lines)
``storage/``   S3-compatible storage: ``s3`` (URLs, settings, clients), ``inventory`` and ``plugin`` (one listing per
               run; patches the storage plugin at parse time), ``streams`` (what jobs read), ``uploads`` (what jobs
               send), ``digests`` (reports for summarize), ``discovery`` (the shard list)
``engine/``    the encode engine (torch; leans on upstream internals): ``codec`` (load the model; seeded random
               weights cached), ``reference`` (``encode_code``: the definition of correct tokens), ``engine``
               (batched), ``numerics``, ``fbank``, ``semantic`` (w2v-bert), ``acoustic``, ``kernels/``, ``device``
``shard/``     one shard inside its encode job: ``audio`` (decode, check), ``encode`` (every segment encoded or
               rejected, the report), ``audit`` (agreement with the reference on a sample)
``dataset/``   the training data, no torch: ``derive`` (a shard's report and parts), ``sft`` (the hf format),
               ``mtts*`` (Multilingual-TTS), ``neutts``, ``formats``, ``consistency`` (what one dataset must not
               mix), ``codecs``, ``stats``, ``hub``
``workflow/``  what Snakemake runs: ``encode_jobs`` and ``dataset_jobs`` (one entry point per rule), ``job_log``,
               ``plan`` (batches, job shards, --keep-going), ``recovery`` (after a kill: locks, temporary files)
``quality/``   measurement: ``codec_fit`` (reconstruction per language), ``report`` (the HTML report's figures)
``commands/``  what an operator runs: ``status`` (neucodec-workflow status), ``verify`` (snakemake verify; its
               checks and parquet footer reader), ``migrate``, over ``footers`` (the token files' footers, read once)
``demo/``      ``make demo``: the demo corpus and an offline tokenizer; the tests' rigs live in tests/support/

At the root: ``background`` (reading ahead on a thread; the parallel decode map) and ``upstream`` (the upstream
versions whose internals we rely on; a mismatch is an error, docs/upstream.md).
"""

__version__ = "0.1.0"
