rule encode_shard:
    """Encode one shard's audio.tar into neucodec_tokens.parquet and a report of every segment."""
    input:
        tar=shard_path("{shard}", TAR),
        metadata=shard_path("{shard}", METADATA),
    output:
        tokens=shard_path("{shard}", TOKENS),
        report=f"{OUTPUT}/shards/{{shard}}.json",
    log:
        f"{OUTPUT}/logs/encode/{{shard}}.log",
    benchmark:
        f"{OUTPUT}/benchmarks/encode/{{shard}}.tsv"
    params:
        codec=config["codec"],
        encode=config["encode"],
        columns=config["columns"],
    threads: 2
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: 16000 * attempt,
        runtime=encode_runtime,
    conda:
        "../envs/encode.yaml"
    script:
        "../scripts/encode_shard.py"
