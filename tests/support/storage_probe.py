"""Run the real Snakemake CLI with every transfer of the S3 storage plugin recorded (tests and benchmarks only).

    python tests/support/storage_probe.py RECORD.jsonl SNAKEMAKE_ARGS...

Wraps, in the main Snakemake process (the only one that downloads storage inputs and uploads storage outputs of local
jobs), ``StorageObject.retrieve_object`` (a download), ``StorageObject.store_object`` (an upload) and
``snakemake.io._IOFile.remove`` (Snakemake removing a file, e.g. the local copy of an uploaded output). Each call
appends one JSON line: ``op``, ``query`` (the s3:// URL or the file), ``local`` (the local copy, relative to the
local storage prefix), ``bytes`` (the size of the local copy: after a
download, before an upload or a removal) and ``storage_bytes`` / ``storage_files`` (everything under the local storage
prefix at that moment). Every byte that lands in the local storage prefix arrives by a download or is an output a
job wrote, so these records bound local disk use exactly, which a directory poll cannot (it can miss a peak).

A derive job uploads its dataset parts itself (storage/uploads.py) from staging files in the same prefix. The probe
passes its record file to job processes in ``NEUCODEC_STORAGE_PROBE`` and puts the tests' ``sitecustomize`` on their
``PYTHONPATH`` (``hooks.environ``), whose wrapper of ``uploads.Uploader.send`` calls ``job_upload`` before each
upload: one ``job_store`` line, with the staging file at its full size.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

_LOCK = threading.Lock()
PROBE_ENV = "NEUCODEC_STORAGE_PROBE"  # the record file, for job processes


def _tree(root: Path | None) -> tuple[int, dict[str, int]]:
    files: dict[str, int] = {}
    if root is not None and root.is_dir():
        for dirpath, _, names in os.walk(root):
            for name in names:
                p = Path(dirpath, name)
                try:
                    files[p.relative_to(root).as_posix()] = p.stat().st_size
                except FileNotFoundError:
                    pass
    return sum(files.values()), files


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return _tree(path)[0]
    return 0


def install(record: str | Path) -> None:
    """Wrap the plugin's transfers and Snakemake's file removal; append one JSON line per call to ``record``."""
    import snakemake.api  # noqa: F401 (the import order snakemake itself uses; avoids a circular import)
    from snakemake.io import _IOFile
    from snakemake_storage_plugin_s3 import StorageObject

    record = Path(record).resolve()  # Snakemake changes into --directory later
    from support.hooks import environ

    # job processes call job_upload before each upload they make (support/hooks.py wraps Uploader.send)
    os.environ.update(environ(os.environ, **{PROBE_ENV: str(record)}))
    prefixes: list[Path] = []

    def write(op: str, query: str, local: Path, prefix: Path | None) -> None:
        _write(record, op, query, local, prefix)

    def prefix_of(obj: Any) -> Path:
        prefix = Path(obj.provider.local_prefix).resolve()
        if prefix not in prefixes:
            prefixes.append(prefix)
        return prefix

    retrieve, store, remove = StorageObject.retrieve_object, StorageObject.store_object, _IOFile.remove

    def retrieve_object(self: Any) -> None:
        retrieve(self)
        write("retrieve", self.query, Path(self.local_path()), prefix_of(self))

    def store_object(self: Any) -> None:
        write("store", self.query, Path(self.local_path()), prefix_of(self))
        store(self)

    async def remove_file(self: Any, *args: Any, **kwargs: Any) -> None:
        local = Path(self.file).resolve() if not self.is_storage else Path(self.storage_object.local_path()).resolve()
        prefix = next((p for p in prefixes if local.is_relative_to(p)), None)
        if prefix is not None:  # only files in the local storage prefix
            write("remove_local" if kwargs.get("only_local") else "remove", str(self), local, prefix)
        await remove(self, *args, **kwargs)

    StorageObject.retrieve_object = retrieve_object
    StorageObject.store_object = store_object
    _IOFile.remove = remove_file


def _write(record: Path, op: str, query: str, local: Path, prefix: Path | None) -> None:
    total, files = _tree(prefix)
    line = {
        "op": op,
        "query": query,
        "local": local.resolve().relative_to(prefix).as_posix()
        if prefix and local.resolve().is_relative_to(prefix)
        else str(local),
        "bytes": _size(local),
        "storage_bytes": total,
        "storage_files": files,
        "t": time.time(),
    }
    with _LOCK, open(record, "a") as f:  # one append per line: lines of several processes do not mix
        f.write(json.dumps(line) + "\n")


def job_upload(staging: Path, url: str) -> None:
    """In a job process under the probe: record the staging file ``staging`` about to be uploaded to ``url``."""
    record = os.environ.get(PROBE_ENV)
    if not record:
        return
    staging = staging.resolve()
    prefix = next((p for p in staging.parents if p.name == "storage" and p.parent.name == ".snakemake"), None)
    _write(Path(record), "job_store", url, staging, prefix)


def read(record: str | Path) -> list[dict[str, Any]]:
    path = Path(record)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: ``support`` from tests/
    install(sys.argv[1])
    from snakemake.cli import main as snakemake_main

    sys.argv = ["snakemake", *sys.argv[2:]]
    snakemake_main()


if __name__ == "__main__":
    main()
