# neucodec tokens for speech corpora: audio.tar + metadata.parquet per shard -> neucodec tokens -> SFT dataset.
#
# Outputs
#   {corpus}/{shard}/neucodec_tokens.parquet    tokens per segment (contract: ../shared/docs/contracts.md)
#   {output}/shards/{shard}.json                per-shard report: encoded, rejected (id + reason), speed
#   {output}/sft_dataset/                       Hugging Face dataset (data/*.parquet, README.md card, excluded.json)
#   {output}/stats.json                         corpus totals, per language / dataset, rejects by reason
#   {output}/logs/, {output}/benchmarks/        one log and one benchmark TSV per job
#
# Run: snakemake (the default profile in profiles/default applies); see README.md.


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/encode.smk"
include: "rules/dataset.smk"


rule all:
    """Every shard encoded, the SFT dataset assembled and the stats written."""
    default_target: True
    input:
        # listed explicitly so that a deleted shard output is re-made even when the dataset is newer
        tokens=tokens_targets(),
        reports=all_reports(),
        sft=SFT_DIR,
        stats=output_file("stats.json"),
