# The shards codec_fit samples from: codec_fit.shards, or every shard.
CODEC_FIT_SHARDS = config["codec_fit"]["shards"] or SHARDS


rule codec_fit:
    """Target: decode a seeded sample of each language's stored tokens with neucodec's decoder and measure the
    reconstruction against the 16 kHz input (log-mel distance, SI-SDR): snakemake codec_fit. Reads every candidate
    shard's metadata, and the token files and tars of only as many shards as the sample needs."""
    input:
        # tracked (so that it runs after the encode jobs), never downloaded: the job reads what the sample needs
        tokens=[shard_file(s, TOKENS, retrieve=False) for s in CODEC_FIT_SHARDS],
    output:
        # sent by the job (in S3), like the token files
        fit=output_file("codec_fit/codec_fit.json", retrieve=False),
        plot=report(
            output_file("codec_fit/codec_fit.svg", retrieve=False),
            caption="../report/codec_fit.rst",
            category="Codec fit",
        ),
    log:
        f"{LOCAL}/logs/codec_fit.log",
    benchmark:
        f"{LOCAL}/benchmarks/codec_fit.tsv"
    conda:
        "../envs/encode.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=encode_mem_mb,
    params:
        # what the job opens: local paths, or s3:// URLs (tars streamed, metadata and token files read whole)
        shards=CODEC_FIT_SHARDS,
        tars=[shard_path(s, TAR) for s in CODEC_FIT_SHARDS],
        metadata=[shard_path(s, METADATA) for s in CODEC_FIT_SHARDS],
        tokens=[shard_path(s, TOKENS) for s in CODEC_FIT_SHARDS],
        codec=config["codec"],
        codec_fit=config["codec_fit"],
        columns=config["columns"],
        max_seconds=config["encode"]["max_seconds"],
        keep_loaded_seconds=config["encode"]["keep_loaded_seconds"],
        # where its two files go (paths or s3:// URLs) and where each is written first
        fit=lambda wildcards: f"{OUTPUT}/codec_fit/codec_fit.json",
        plot=lambda wildcards: f"{OUTPUT}/codec_fit/codec_fit.svg",
        written=lambda wildcards: {
            f"{OUTPUT}/codec_fit/{name}": local_copy(f"{OUTPUT}/codec_fit/{name}")
            for name in ("codec_fit.json", "codec_fit.svg")
        },
        receipts=UPLOAD_RECEIPTS,
    script:
        "../scripts/codec_fit.py"
