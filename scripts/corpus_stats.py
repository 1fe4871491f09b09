"""Snakemake script for rule corpus_stats: thin; the logic is neucodec_workflow.jobs.stats_job (dataset.stats)."""

from neucodec_workflow.jobs import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (snakemake is injected)

from neucodec_workflow.jobs import stats_job  # noqa: E402

stats_job(
    reports=list(snakemake.input.reports),  # noqa: F821
    sft_dir=snakemake.input.sft,  # noqa: F821
    out=snakemake.output.stats,  # noqa: F821
)
