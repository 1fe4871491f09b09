"""Snakemake script for rule codec_fit: thin; the logic is neucodec_workflow.quality.codec_fit.codec_fit_job, run by
the node's resident process, which keeps torch loaded between jobs (workflow/resident.py)."""

from neucodec_workflow.workflow.job_log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (snakemake is injected)

from neucodec_workflow.storage.uploads import publish  # noqa: E402
from neucodec_workflow.workflow.resident import run_job  # noqa: E402

written = dict(snakemake.params.written)  # noqa: F821 (destination -> where it is written first)
fit, plot = snakemake.params.fit, snakemake.params.plot  # noqa: F821 (paths, or s3:// URLs the job sends them to)
run_job(
    "codec_fit",
    dict(
        shards=list(snakemake.params.shards),  # noqa: F821
        tars=list(snakemake.params.tars),  # noqa: F821 (paths, or s3:// URLs: streamed)
        metadata=list(snakemake.params.metadata),  # noqa: F821 (paths, or s3:// URLs: read whole, they are small)
        tokens=list(snakemake.params.tokens),  # noqa: F821
        out_json=written[fit],
        out_plot=written[plot],
        codec=dict(snakemake.params.codec),  # noqa: F821
        fit=dict(snakemake.params.codec_fit),  # noqa: F821
        columns=dict(snakemake.params.columns),  # noqa: F821
        max_seconds=float(snakemake.params.max_seconds),  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    ),
    idle_seconds=float(snakemake.params.keep_loaded_seconds),  # noqa: F821
    log_file=snakemake.log[0],  # noqa: F821
)
publish(written, snakemake.params.receipts)  # noqa: F821
