"""Snakemake script for rule push_to_hub: thin; the logic is neucodec_workflow.workflow.dataset_jobs.push_job (dataset.hub)."""

from neucodec_workflow.workflow.job_log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (snakemake is injected)

from neucodec_workflow.workflow.dataset_jobs import push_job  # noqa: E402

push_job(
    repo_id=snakemake.params.repo,  # noqa: F821
    dataset=snakemake.params.dataset,  # noqa: F821 (a path or an s3:// URL: parts are read from there, one batch at a time)
    local_index=snakemake.input.index,  # noqa: F821
    local_card=snakemake.input.card,  # noqa: F821
    receipt=snakemake.output.receipt,  # noqa: F821
)
