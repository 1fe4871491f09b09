# neucodec tokens for speech corpora: audio.tar + metadata.parquet per shard -> neucodec tokens -> training data.
#
# The record: a shard is done when its token file exists. Everything in {output} is derived from the token files
# (and the metadata), cheaply, and re-made when missing: deleting {output} never re-encodes.
#   {corpus}/{shard}/neucodec_tokens.parquet    tokens per segment (schema: README "Outputs"), with the
#                                               encode job's report (every segment, rejects with reason, speed,
#                                               device, audit) and provenance in its parquet key-value metadata
#   {output}/shards/{shard}.json                per-shard report (foreign token files: what can be known)
#   {output}/.report_digests/                   S3 output: the reports of each derive job in one object, for summarize
#   {output}/sft_dataset/data/{split}/{shard}.parquet   the shard's rows of the Hugging Face dataset
#   {output}/sft_dataset/README.md, index.json  dataset card (features, splits, stats) and the list of parts
#   {output}/multilingual_tts/{split}/{shard}.mds, index.json   sft.formats multilingual_tts: packed MDS blocks
#   {output}/neutts/data/{split}/{shard}.parquet, README.md     sft.formats neutts: rows with espeak-ng phonemes
#   {output}/stats.json                         corpus totals, per language / dataset, rejects by reason
#   {output}/shards.parquet                     one row per shard: its report's numbers (audio, speed, device, audit)
#   {output}/report/                            the HTML report's figures: snakemake --report report.html
#   {output}/codec_fit/                         snakemake codec_fit: reconstruction per language (opt-in)
#   {output}/verify.json                        snakemake verify: each token file checked from its footer, bad shards
#   {local_dir or output}/logs/, benchmarks/    one log and one benchmark TSV per job
#
# Run: snakemake (the default profile in profiles/default applies); see README.md.


from neucodec_workflow.workflow import recovery


configfile: "config/config.yaml"


# snakemake --report report.html: this page on top, then the figures of rules/report.smk with their captions.
report: "report/workflow.rst"


# After a kill: locks of Snakemake processes that are gone, temporary files of killed jobs (docs/reliability.md).
recovery.at_parse(workflow)


onstart:
    recovery.on_start(workflow)
    storage_at_start()


include: "rules/common.smk"
include: "rules/encode.smk"
include: "rules/dataset.smk"
include: "rules/verify.smk"
include: "rules/report.smk"
include: "rules/codec_fit.smk"


rule all:
    """Every shard encoded, its report and dataset parts derived, the card, index, stats and report figures written."""
    default_target: True
    input:
        rules.summarize.output,
        rules.report_figures.output,
        rerun_targets(),
        rules.push_to_hub.output if config["sft"]["push_to_hub"] else [],
        rules.codec_fit.output if str(config["codec_fit"]["enabled"]).lower() == "true" else [],
