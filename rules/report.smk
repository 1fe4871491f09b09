rule report_figures:
    """The HTML report's figures, from the summary alone (stats.json, shards.parquet): snakemake --report report.html
    collects them with their captions (report/*.rst) under the workflow's description (report/workflow.rst)."""
    input:
        stats=rules.summarize.output.stats,
        shards=rules.summarize.output.shards,
    output:
        corpus=report(
            output_file("report/corpus.html"),
            caption="../report/corpus.rst",
            category="Corpus",
        ),
        hours_per_language=report(
            output_file("report/hours_per_language.svg"),
            caption="../report/hours.rst",
            category="Audio",
            labels={"figure": "hours per language"},
        ),
        hours_per_dataset=report(
            output_file("report/hours_per_dataset.svg"),
            caption="../report/hours.rst",
            category="Audio",
            labels={"figure": "hours per dataset"},
        ),
        durations=report(
            output_file("report/durations.svg"),
            caption="../report/durations.rst",
            category="Audio",
            labels={"figure": "segment durations"},
        ),
        throughput=report(
            output_file("report/throughput.svg"),
            caption="../report/throughput.rst",
            category="Encoding",
            labels={"figure": "throughput per shard"},
        ),
        rejects=report(
            output_file("report/rejects.svg"),
            caption="../report/rejects.rst",
            category="Encoding",
            labels={"figure": "rejects by reason"},
        ),
        audit=report(
            output_file("report/audit.svg"),
            caption="../report/audit.rst",
            category="Encoding",
            labels={"figure": "audit per shard"},
        ),
    log:
        f"{LOCAL}/logs/report_figures.log",
    localrule: True
    conda:
        "../envs/dataset.yaml"
    script:
        "../scripts/report_figures.py"
