"""Snakemake script for rule assemble_sft: thin; the logic is neucodec_workflow.jobs.assemble_job (dataset.sft)."""

from neucodec_workflow.jobs import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (snakemake is injected)

from neucodec_workflow.jobs import assemble_job  # noqa: E402

assemble_job(
    shards=list(snakemake.params.shards),  # noqa: F821
    tokens=list(snakemake.params.tokens),  # noqa: F821 (paths, or s3:// URLs read one at a time)
    metadata=list(snakemake.params.metadata),  # noqa: F821
    out_dir=snakemake.output.sft,  # noqa: F821
    columns=dict(snakemake.params.columns),  # noqa: F821
    sft=dict(snakemake.params.sft),  # noqa: F821
)
