rule verify:
    """Target: check every token file from its footer (schema, rows and tokens against its record, size): snakemake
    verify. Writes {output}/verify.json, then fails naming the bad shards. No file inputs: a missing or stale token
    file is never encoded for it (a missing one is listed as missing). No declared output either: it runs each time
    it is asked, and its report survives the failure (Snakemake deletes, and never uploads, a failed job's outputs)."""
    log:
        f"{LOCAL}/logs/verify.log",
    localrule: True
    conda:
        "../envs/dataset.yaml"
    params:
        shards=SHARDS,
        # what the job reads: local paths, or s3:// URLs (footers by ranged GETs)
        tokens=all_of(TOKENS),
        report=f"{OUTPUT}/{layout.VERIFY}",
        full=str(config["verify"]["full"]).lower() == "true",
    script:
        "../scripts/verify.py"
