"""Snakemake script for rule summarize: thin; the logic is neucodec_workflow.workflow.dataset_jobs.summarize_job (dataset.stats, dataset.formats)."""

from neucodec_workflow.workflow.job_log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (snakemake is injected)

from neucodec_workflow.workflow.dataset_jobs import summarize_job  # noqa: E402

summarize_job(
    reports=list(snakemake.params.reports),  # noqa: F821 (paths or s3:// URLs)
    digests=snakemake.params.digests,  # noqa: F821 (S3: the derive jobs' report digests)
    outputs=dict(snakemake.output.items()),  # noqa: F821 (stats, and {format}_{name} per format)
    sft=dict(snakemake.params.sft),  # noqa: F821 (sft.formats: which formats, and what shapes their parts)
    columns=dict(snakemake.params.columns),  # noqa: F821 (the metadata columns: they shape the parts too)
    stale_list=snakemake.params.stale_list,  # noqa: F821 (the reports of parts made otherwise, if any)
    keep_going=snakemake.params.keep_going,  # noqa: F821 (list the shards that failed, rather than refuse)
    failed_encodes=list(snakemake.params.failed_encodes),  # noqa: F821 (--keep-going: shards left out, and why)
)
