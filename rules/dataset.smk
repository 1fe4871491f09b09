rule derive_shard:
    """A shard's report and its parts of the SFT dataset, from its token file (the record) and its metadata."""
    input:
        # In S3: tracked, not downloaded; the job reads each object once. Lists, as in derive_batch_N.
        tokens=[shard_file("{shard}", TOKENS, retrieve=False)],
        metadata=[shard_file("{shard}", METADATA, retrieve=False)],
    output:
        **derived_files("{shard}"),
    log:
        f"{LOCAL}/{layout.job_log('derive', '{shard}')}",
    wildcard_constraints:
        shard=unbatched_shards(),
    localrule: True
    conda:
        "../envs/dataset.yaml"
    params:
        shards=lambda wildcards: [wildcards.shard],
        reports=lambda wildcards: [f"{OUTPUT}/{layout.report_path(wildcards.shard)}"],
        report_staging=lambda wildcards: [local_copy(f"{OUTPUT}/{layout.report_path(wildcards.shard)}")],
        tokens=lambda wildcards: [shard_path(wildcards.shard, TOKENS)],
        local_tokens=lambda wildcards: [local_copy(shard_path(wildcards.shard, TOKENS))],
        metadata=lambda wildcards: [shard_path(wildcards.shard, METADATA)],
        parts=lambda wildcards: [f"{OUTPUT}/{p}" for p in part_paths(wildcards.shard)],
        staging=lambda wildcards: [local_copy(f"{OUTPUT}/{p}") for p in part_paths(wildcards.shard)],
        receipts=UPLOAD_RECEIPTS,
        digests=REPORT_DIGESTS,
        part_keys=PART_KEYS,
        columns=config["columns"],
        sft=config["sft"],
    script:
        "../scripts/derive_shards.py"


# Token files already there whose derived outputs are missing or stale (a corpus encoded elsewhere, a new output
# directory): one job per batch of shards. Rules without wildcards take precedence over derive_shard.
for i, batch in enumerate(DERIVE_BATCHES):

    rule:
        name:
            f"derive_batch_{i}"
        input:
            tokens=[shard_file(s, TOKENS, retrieve=False) for s in batch],
            metadata=[shard_file(s, METADATA, retrieve=False) for s in batch],
        output:
            reports=[r for s in batch for r in derived_files(s)["reports"]],
            parts=[p for s in batch for p in derived_files(s)["parts"]],
        log:
            f"{LOCAL}/{layout.job_log('derive', f'batch_{i}')}",
        localrule: True
        conda:
            "../envs/dataset.yaml"
        params:
            shards=batch,
            reports=[f"{OUTPUT}/{layout.report_path(s)}" for s in batch],
            report_staging=[local_copy(f"{OUTPUT}/{layout.report_path(s)}") for s in batch],
            tokens=[shard_path(s, TOKENS) for s in batch],
            local_tokens=[local_copy(shard_path(s, TOKENS)) for s in batch],
            metadata=[shard_path(s, METADATA) for s in batch],
            parts=[f"{OUTPUT}/{p}" for s in batch for p in part_paths(s)],
            staging=[local_copy(f"{OUTPUT}/{p}") for s in batch for p in part_paths(s)],
            receipts=UPLOAD_RECEIPTS,
            digests=REPORT_DIGESTS,
            part_keys=PART_KEYS,
            columns=config["columns"],
            sft=config["sft"],
        script:
            "../scripts/derive_shards.py"


rule summarize:
    """Corpus stats and each format's small files (card, index), from the shard reports alone."""
    input:
        # read by the job itself: local files, or in S3 through the derive jobs' digests (storage/digests.py)
        # (--keep-going: without the shards whose encode job failed; common.smk failed_encodes)
        reports=[r for s in SHARDS if s not in FAILED_ENCODES for r in derived_files(s)["reports"]],
    output:
        **summary_files(),
    log:
        f"{LOCAL}/logs/summarize.log",
    localrule: True
    conda:
        "../envs/dataset.yaml"
    params:
        reports=[f"{OUTPUT}/{layout.report_path(s)}" for s in SHARDS if s not in FAILED_ENCODES],
        # --keep-going: shards that failed are listed in stats and on the cards, not refused
        keep_going=KEEP_GOING,
        failed_encodes=list(FAILED_ENCODES.values()),
        digests=REPORT_DIGESTS,
        sft=config["sft"],
        columns=config["columns"],
        # where summarize lists the reports of parts made with other settings, if any (neucodec-workflow rederive)
        stale_list=f"{LOCAL}/logs/summarize_stale_reports.txt",
    script:
        "../scripts/summarize.py"


if config["sft"]["push_to_hub"]:

    rule push_to_hub:
        """Push the dataset to the Hugging Face Hub (sft.push_to_hub): changed parts only, batched commits."""
        input:
            index=rules.summarize.output.hf_index,
            card=rules.summarize.output.hf_card,
        output:
            receipt=output_file(f"hub/{config['sft']['push_to_hub']}.json"),
        log:
            f"{LOCAL}/logs/push_to_hub.log",
        localrule: True
        conda:
            "../envs/dataset.yaml"
        params:
            repo=config["sft"]["push_to_hub"],
            dataset=f"{OUTPUT}/{SFT}",
        script:
            "../scripts/push_to_hub.py"
