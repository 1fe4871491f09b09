"""neucodec_workflow: turn speech corpora (tar of FLAC + metadata parquet) into neucodec tokens.

Modules, in the order data flows: ``shards`` (find shards) -> ``audio`` (stream, decode, check) ->
``codec`` (load the model) -> ``encode`` (clips to tokens) -> ``shard`` (one shard, its report) ->
``tokens_io`` (the output contract) -> ``sft`` (the dataset) -> ``stats``. ``jobs`` holds what the
Snakemake scripts call; ``synth`` makes test, demo and benchmark data.
"""

__version__ = "0.1.0"
