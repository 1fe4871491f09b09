"""The HTML report: the figures rule (from stats.json and shards.parquet), `snakemake --report`, and the report
opened in a real headless Chromium (screenshots not blank, no JavaScript errors)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pandas as pd
import pytest
import yaml
from conftest import run_snakemake
from support import browser

from neucodec_workflow.dataset.derive import duration_histogram
from neucodec_workflow.dataset.stats import corpus_stats, duration_totals, shard_table
from neucodec_workflow.demo.corpus import make_demo_corpus
from neucodec_workflow.quality.report import FIGURES, make_report

SHARDS = ("de/shard-00000", "en/shard-00001")  # of the demo corpus


def _report(shard: str, *, record: str = "workflow", language: str = "en", seconds: list[float]) -> dict:
    """A derived shard report with the fields the summary reads (as dataset/derive.py writes them)."""
    tokens = [round(s * 50) for s in seconds]
    timed = record == "workflow"
    return {
        "shard": shard,
        "record": record,
        "segments": len(seconds) + 1,
        "encoded": len(seconds),
        "rejected_count": 1,
        "rejects_by_reason": {"decode_error": 1},
        "audio_seconds": sum(seconds),
        "tokens": sum(tokens),
        "wall_seconds": sum(seconds) / 40 if timed else None,
        "device": "cuda:0 (NVIDIA H200)" if timed else None,
        "host": "node7" if timed else None,
        "started_at": "2026-11-30T01:00:00+00:00" if timed else None,
        "finished_at": "2026-11-30T01:05:00+00:00" if timed else None,
        "provenance": {"codec_id": "random", "random_weights": True, "mode": "exact"} if timed else {},
        "audit": {"segments": 2, "tokens": 100, "matching_tokens": 99, "token_agreement": 0.99} if timed else None,
        "token_file": {"rows": len(seconds), "tokens": sum(tokens), "bytes": 1000, "token_count_mismatches": 0},
        "sft": {
            "rows_per_split": {"train": len(seconds)},
            "excluded_by_reason": {},
            "per_language": {language: {"segments": len(seconds), "tokens": sum(tokens), "hours": sum(seconds) / 3600}},
            "per_dataset": {"unit": {"segments": len(seconds), "tokens": sum(tokens), "hours": sum(seconds) / 3600}},
            "duration_histogram": {"bin_seconds": 1.0, "counts": duration_histogram(pd.Series(tokens))},
        },
    }


def test_duration_histogram_adds_up_over_shards():
    assert duration_histogram(pd.Series([10, 49, 50, 120], dtype="int64")) == [2, 1, 1]  # 0.2 0.98 1.0 2.4 s
    reports = [_report("a", seconds=[0.5, 2.5]), _report("b", seconds=[4.2]), _report("c", seconds=[])]
    del reports[2]["sft"]["duration_histogram"]  # derived before histograms existed
    assert duration_totals(reports) == {"bin_seconds": 1.0, "counts": [1, 0, 1, 0, 1], "shards_without": 1}


def test_shard_table_has_a_row_per_shard_with_timing_and_audit():
    table = shard_table([_report("a", seconds=[1.0]), _report("b", record="foreign", seconds=[2.0, 3.0])])
    df = table.to_pandas()
    assert list(df["shard"]) == ["a", "b"] and list(df["record"]) == ["workflow", "foreign"]
    assert df.loc[0, "finished_at"] == pd.Timestamp("2026-11-30T01:05:00Z") and pd.isna(df.loc[1, "finished_at"])
    assert df.loc[0, "audit_token_agreement"] == 0.99 and pd.isna(df.loc[1, "audit_token_agreement"])
    assert list(df["dataset_rows"]) == [1, 2] and df.loc[0, "host"] == "node7"


def test_figures_are_svg_and_the_corpus_page_shows_random_weights(tmp_path):
    reports = [
        _report("en/a", seconds=[1.0, 3.0]),
        _report("de/b", language="de", seconds=[2.0]),
        _report("fr/c", record="foreign", language="fr", seconds=[5.0]),
    ]
    stats = corpus_stats(reports)
    outputs = {name: tmp_path / f"{name}.svg" for name in FIGURES} | {"corpus": tmp_path / "corpus.html"}
    make_report(stats, shard_table(reports).to_pandas(), outputs)
    for name in FIGURES:
        svg = ET.parse(outputs[name]).getroot()
        assert svg.tag.endswith("svg"), name
        assert "random weights" in outputs[name].read_text(), name  # the note in every title
    page = outputs["corpus"].read_text()
    assert "RANDOM WEIGHTS: 2 shards" in page
    assert "<td>foreign</td>" in page and "<td>exact</td>" in page

    real = [{**r, "provenance": {**r["provenance"], "random_weights": False}} for r in reports]
    make_report(corpus_stats(real), shard_table(real).to_pandas(), outputs)
    assert "RANDOM WEIGHTS" not in outputs["corpus"].read_text()
    assert "random weights" not in outputs["throughput"].read_text()


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """Two shards of the demo corpus (two languages, 44.1 kHz stereo with a corrupt member and 24 kHz mono; the
    synthetic signal), random weights, codec fit on: a run, then `snakemake --report report.html`."""
    root = tmp_path_factory.mktemp("report")
    corpus = root / "corpus"
    make_demo_corpus(corpus, use_espeak=False)
    settings = root / "settings.yaml"  # numbers nested in --config would arrive as strings
    settings.write_text(
        yaml.safe_dump(
            {
                "shards": list(SHARDS),
                "codec_fit": {"enabled": True, "segments_per_language": 1},
                "encode": {"audit_segments": 1},
            }
        )
    )
    config = {"corpus": str(corpus), "output": str(root / "out"), "codec": json.dumps({"weights": "random"})}
    run_snakemake(root, config=config, configfiles=(settings,))
    run_snakemake(root, "--report", "report.html", config=config, configfiles=(settings,))
    return root, root / "out"


@pytest.mark.workflow
@pytest.mark.watching
def test_a_run_makes_the_figures_and_the_report(reported):
    root, out = reported
    shards = pd.read_parquet(out / "shards.parquet").set_index("shard")
    assert sorted(shards.index) == sorted(SHARDS)
    assert (shards["finished_at"] >= shards["started_at"]).all() and shards["host"].str.len().gt(0).all()
    assert (shards["device"] == "cpu").all() and shards["random_weights"].all()
    audited = shards["audit_token_agreement"].dropna()  # audit_segments 1: a seeded pick, not every shard
    assert len(audited) and audited.eq(1.0).all()  # exact mode on the CPU
    stats = json.loads((out / "stats.json").read_text())
    assert sorted(stats["per_language"]) == ["de", "en"]
    assert stats["rejects_by_reason"] == {"decode_error": 1}
    # every dataset row in one bin of the histogram; the synthetic clips are 1.5-3 s long
    counts = stats["duration_histogram"]["counts"]
    assert sum(counts) == stats["sft_rows_per_split"]["train"] and counts[0] == 0 and len(counts) in (2, 3)
    for name in FIGURES:
        assert (out / "report" / f"{name}.svg").stat().st_size > 1000
    # codec fit ran on the demo corpus: one segment per language, its figure in the report
    fit = json.loads((out / "codec_fit" / "codec_fit.json").read_text())
    assert {lang: v["n"] for lang, v in fit["languages"].items()} == {"de": 1, "en": 1}
    assert "mean nothing" in fit["note"]
    # done: nothing to do again; without its JSON, only codec_fit runs again (never an encode job)
    config = {"corpus": str(root / "corpus"), "output": str(out), "codec": json.dumps({"weights": "random"})}
    assert (
        "Nothing to be done" in run_snakemake(root, "-n", config=config, configfiles=(root / "settings.yaml",)).stdout
    )
    (out / "codec_fit" / "codec_fit.json").rename(root / "codec_fit.json")
    try:
        dry = run_snakemake(root, "-n", config=config, configfiles=(root / "settings.yaml",)).stdout
        assert re.search(r"^codec_fit\s+1$", dry, re.M) and not re.search(r"^encode_shard\s", dry, re.M), dry[-3000:]
    finally:
        (root / "codec_fit.json").rename(out / "codec_fit" / "codec_fit.json")
    # the dataset steps' progress lines (the last one at the end of each step)
    derive_log = (out / "logs" / "derive" / "de" / "shard-00000.log").read_text()
    assert re.search(r"progress derive 1 shards: 1/1 shards, [0-9.]+ s audio", derive_log)
    summarize_log = (out / "logs" / "summarize.log").read_text()
    assert "progress summarize: read 2 shard reports: 2/2 shards" in summarize_log
    html = (root / "report.html").read_text()
    for text in ("RANDOM WEIGHTS: 2 shards", "hours_per_language.svg", "throughput.svg", "audit.svg", "codec_fit.svg"):
        assert text in html, text


@pytest.mark.workflow
@pytest.mark.watching
def test_the_report_opens_in_chromium_without_errors(reported, tmp_path):
    if browser.chromium() is None:
        pytest.skip("chromium and chromium-driver are not installed (make chromium: Debian's packages, root + apt)")
    root, _ = reported
    views = {name: browser.show_result(f"{name}.svg") for name in (*FIGURES, "codec_fit")} | {
        "corpus": browser.show_result("corpus.html")
    }
    look = browser.look_at_report(root / "report.html", views)
    assert look.errors == []
    assert "RANDOM WEIGHTS: 2 shards" in look.texts["main"]
    assert set(look.screenshots) == {"main", "corpus", "codec_fit", *FIGURES}
    for name, png in look.screenshots.items():
        (tmp_path / f"{name}.png").write_bytes(png)
        # right of the menu: a blank page (or an empty frame) is one or two colours; a figure has hundreds
        assert browser.distinct_colours(png, left=browser.MENU_WIDTH) > 100, name
    # each figure view differs from the first page: the figure was shown, not the same page again
    assert all(look.screenshots[name] != look.screenshots["main"] for name in FIGURES)
