"""Snakemake script for rule verify: thin; the logic is neucodec_workflow.commands.verify.verify_job."""

from neucodec_workflow.workflow.job_log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (snakemake is injected)

from neucodec_workflow.commands.verify import verify_job  # noqa: E402

verify_job(
    shards=list(snakemake.params.shards),  # noqa: F821
    tokens=list(snakemake.params.tokens),  # noqa: F821 (paths or s3:// URLs)
    report=snakemake.params.report,  # noqa: F821 ({output}/verify.json: a path or an s3:// URL)
    full=bool(snakemake.params.full),  # noqa: F821
)
