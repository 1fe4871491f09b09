"""Migrate outputs of the earlier layout (reports only in ``{output}/shards/``, one monolithic ``sft_dataset/``):

    python -m neucodec_workflow.commands.migrate --corpus CORPUS --output OUTPUT [--local-dir DIR] [--dry-run]

Each token file without a report inside gets its shard's report from ``{output}/shards/{shard}.json`` (the rows and
the provenance are kept byte for byte; the file is replaced atomically, an S3 object by one PUT). The old dataset
files (``data/{split}-XXXXX-of-YYYYY.parquet``, ``excluded.json``) are removed. Then ``snakemake`` re-derives the
reports and the per-shard dataset (no encode job). Without this step the old token files are still used: they are
adopted as ``workflow_without_report`` (rejects of those shards unknown). S3 settings come from
``SNAKEMAKE_STORAGE_S3_*`` (and boto3's chain for keys), as for the workflow.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
from pathlib import Path

import pyarrow.parquet as pq

from neucodec_workflow.record import layout
from neucodec_workflow.record.contract import REPORT_KEY, TOKENS, atomic_path, footer
from neucodec_workflow.storage.discovery import shard_list
from neucodec_workflow.storage.inventory import Inventory
from neucodec_workflow.storage.s3 import S3Settings, is_s3, split_url

log = logging.getLogger("neucodec_workflow.migrate")


def with_report(data: bytes, report: dict) -> bytes:
    """The token file's bytes with ``report`` added to its key-value metadata; rows and provenance unchanged."""
    pf = pq.ParquetFile(io.BytesIO(data))
    table = pf.read()
    meta = {**footer(io.BytesIO(data)), REPORT_KEY: json.dumps(report, sort_keys=True).encode()}
    meta.pop(b"ARROW:schema", None)
    out = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), out, compression="zstd", row_group_size=2048)
    return out.getvalue()


def migrate(corpus: str, output: str, local_dir: str | None, *, dry_run: bool = False) -> dict[str, int]:
    settings = S3Settings.from_env()
    roots = [p for p in (corpus, output) if is_s3(p)]
    inventory = Inventory(settings, roots) if roots else None
    client = settings.client() if roots else None

    def read(path: str) -> bytes | None:
        if is_s3(path):
            assert inventory is not None and client is not None
            if inventory.info(*split_url(path)) is None:
                return None
            bucket, key = split_url(path)
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return Path(path).read_bytes() if Path(path).exists() else None

    def write(path: str, data: bytes) -> None:
        if is_s3(path):
            assert client is not None
            bucket, key = split_url(path)
            client.put_object(Bucket=bucket, Key=key, Body=data)
            return
        tmp = atomic_path(Path(path))
        tmp.write_bytes(data)
        tmp.replace(path)

    done = {"shards": 0, "migrated": 0, "already": 0, "no_report": 0, "old_dataset_files": 0}
    for shard in shard_list(corpus, inventory=inventory):
        done["shards"] += 1
        tokens_path = f"{corpus}/{shard}/{TOKENS}"
        tokens = read(tokens_path)
        if tokens is None:
            continue
        if REPORT_KEY in footer(io.BytesIO(tokens)):
            done["already"] += 1
            continue
        report = read(f"{output}/{layout.report_path(shard)}")
        if report is None:
            done["no_report"] += 1
            log.warning("shard %s: token file without a report, and no old report: adopted as it is", shard)
            continue
        if not dry_run:
            write(tokens_path, with_report(tokens, json.loads(report)))
        done["migrated"] += 1
    dataset = Path(local_dir if is_s3(output) and local_dir else output) / "sft_dataset"
    old = [*dataset.glob("data/*-of-*.parquet"), *dataset.glob("excluded.json")]
    done["old_dataset_files"] = len(old)
    if not dry_run:
        for path in old:
            path.unlink()
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--local-dir", default="local_output", help="where the old layout kept sft_dataset/ for S3 output")
    ap.add_argument("--dry-run", action="store_true", help="count what would change, change nothing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    done = migrate(args.corpus.rstrip("/"), args.output.rstrip("/"), args.local_dir, dry_run=args.dry_run)
    print(json.dumps(done), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
