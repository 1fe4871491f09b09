"""Snakemake script for rule report_figures: thin; the logic is neucodec_workflow.quality.report."""

from neucodec_workflow.workflow.job_log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (snakemake is injected)

import json  # noqa: E402

import pandas as pd  # noqa: E402

from neucodec_workflow.quality.report import make_report  # noqa: E402

make_report(
    json.loads(open(snakemake.input.stats).read()),  # noqa: F821
    pd.read_parquet(snakemake.input.shards),  # noqa: F821
    dict(snakemake.output.items()),  # noqa: F821 (corpus and each figure of report.FIGURES)
)
