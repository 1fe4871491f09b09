rule encode_shard:
    """Encode one shard's audio.tar into neucodec_tokens.parquet, with the report of every segment inside it."""
    input:
        # In S3: tracked (existence, mtime) but not downloaded; the job streams them (bounded disk).
        tar=shard_file("{shard}", TAR, retrieve=False),
        metadata=shard_file("{shard}", METADATA, retrieve=False),
    output:
        # In S3: the job writes it on its node's disk, sends it (one PUT, or one multipart upload) and removes it;
        # Snakemake checks the object after the job (retrieve=False: it never uploads nor downloads it itself).
        tokens=shard_file("{shard}", TOKENS, retrieve=False),
    log:
        f"{LOCAL}/{layout.encode_log('{shard}')}",
    benchmark:
        f"{LOCAL}/benchmarks/encode/{{shard}}.tsv"
    wildcard_constraints:
        shard=encode_candidates(),
    conda:
        "../envs/encode.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=encode_mem_mb,
        runtime=encode_runtime,
    params:
        # what the job opens: a local path, or an s3:// URL it streams
        tar=lambda wildcards: shard_path(wildcards.shard, TAR),
        metadata=lambda wildcards: shard_path(wildcards.shard, METADATA),
        # where the token file goes (a path or an s3:// URL) and where it is written first (the same local path, or
        # for S3 the plugin's local copy path in this job's process: node-local scratch on a cluster)
        tokens=lambda wildcards: shard_path(wildcards.shard, TOKENS),
        staging=lambda wildcards: local_copy(shard_path(wildcards.shard, TOKENS)),
        receipts=UPLOAD_RECEIPTS,
        # a failed job notes its error here, for the next --keep-going run's final steps (plan.failure_note)
        failure_note=lambda wildcards: failure_note_path(wildcards.shard),
        codec=config["codec"],
        encode=config["encode"],
        columns=config["columns"],
    script:
        "../scripts/encode_shard.py"


rule audit_shard:
    """Re-encode a sample of a shard's stored segments with the reference path; report token agreement."""
    input:
        tar=shard_file("{shard}", TAR, retrieve=False),
        tokens=shard_file("{shard}", TOKENS, retrieve=False),
    output:
        # sent by the job (in S3), like the token file
        audit=output_file("audit/{shard}.json", retrieve=False),
    log:
        f"{LOCAL}/{layout.job_log('audit', '{shard}')}",
    conda:
        "../envs/encode.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=encode_mem_mb,
    params:
        # what the job opens: a local path, or an s3:// URL (tar streamed, tokens fetched)
        tar=lambda wildcards: shard_path(wildcards.shard, TAR),
        tokens=lambda wildcards: shard_path(wildcards.shard, TOKENS),
        audit=lambda wildcards: f"{OUTPUT}/audit/{wildcards.shard}.json",
        staging=lambda wildcards: local_copy(f"{OUTPUT}/audit/{wildcards.shard}.json"),
        receipts=UPLOAD_RECEIPTS,
        codec=config["codec"],
        segments=config["audit"]["segments"],
        max_seconds=config["encode"]["max_seconds"],
        keep_loaded_seconds=config["encode"]["keep_loaded_seconds"],
    script:
        "../scripts/audit_shard.py"


rule audit:
    """Target: the fidelity audit over audit.shards (all shards when empty): snakemake audit."""
    input:
        audits=audit_targets(),
