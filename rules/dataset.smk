rule assemble_sft:
    """Join every shard's tokens with its metadata into the Hugging Face SFT dataset, one shard at a time."""
    input:
        tokens=all_of(TOKENS),
        metadata=all_of(METADATA),
    output:
        sft=directory(f"{OUTPUT}/sft_dataset"),
    log:
        f"{OUTPUT}/logs/assemble_sft.log",
    params:
        shards=SHARDS,
        columns=config["columns"],
        sft=config["sft"],
    resources:
        mem_mb=8000,
    conda:
        "../envs/dataset.yaml"
    script:
        "../scripts/assemble_sft.py"


rule corpus_stats:
    """Corpus totals, per-language and per-dataset numbers, rejects by reason."""
    input:
        reports=all_reports(),
        sft=f"{OUTPUT}/sft_dataset",
    output:
        stats=f"{OUTPUT}/stats.json",
    log:
        f"{OUTPUT}/logs/corpus_stats.log",
    conda:
        "../envs/dataset.yaml"
    script:
        "../scripts/corpus_stats.py"
