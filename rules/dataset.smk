rule assemble_sft:
    """Join every shard's tokens with its metadata into the Hugging Face SFT dataset, one shard at a time."""
    input:
        # The reports come from the same jobs as the tokens; with an S3 corpus the tokens and metadata are read
        # from the bucket one shard at a time instead of being downloaded (and kept) up front.
        reports=all_reports(retrieve=False),
        tokens=local_corpus_files(TOKENS),
        metadata=local_corpus_files(METADATA),
    output:
        sft=directory(SFT_DIR),
    log:
        f"{LOCAL}/logs/assemble_sft.log",
    conda:
        "../envs/dataset.yaml"
    resources:
        # one shard's tokens + metadata at a time plus the writer's buffers; reads every shard once (hours at scale)
        mem_mb=16000,
        runtime=720,
    params:
        shards=SHARDS,
        tokens=all_of(TOKENS),
        metadata=all_of(METADATA),
        columns=config["columns"],
        sft=config["sft"],
    script:
        "../scripts/assemble_sft.py"


rule corpus_stats:
    """Corpus totals, per-language and per-dataset numbers, rejects by reason."""
    input:
        reports=all_reports(),
        sft=SFT_DIR,
    output:
        stats=output_file("stats.json"),
    log:
        f"{LOCAL}/logs/corpus_stats.log",
    conda:
        "../envs/dataset.yaml"
    script:
        "../scripts/corpus_stats.py"
