"""A moto S3 server on 127.0.0.1 that counts the requests it serves (tests and benchmarks only).

``GET /_requests`` returns ``{"total": n, "by_method": {...}}`` and ``POST /_requests/reset`` zeroes the counts,
so a test can count what a Snakemake subprocess sent. Needs ``moto[server]`` (a test dependency).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

COUNTER_PATH = "/_requests"


class _Counting:
    """WSGI middleware: count every S3 request, answer the counter endpoints itself."""

    def __init__(self, app: Callable[..., Iterable[bytes]]):
        self.app = app
        self.lock = threading.Lock()
        self.by_method: Counter[str] = Counter()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(COUNTER_PATH):
            with self.lock:
                if path.endswith("/reset"):
                    self.by_method.clear()
                body = json.dumps({"total": sum(self.by_method.values()), "by_method": dict(self.by_method)}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if not path.startswith("/moto-api"):
            query = environ.get("QUERY_STRING", "")
            kind = environ["REQUEST_METHOD"]
            if kind == "GET" and ("list-type" in query or "prefix=" in query or path.strip("/").count("/") == 0):
                kind = "LIST"
            with self.lock:
                self.by_method[kind] += 1
        return self.app(environ, start_response)


class LoopbackS3:
    """``with LoopbackS3() as s3: s3.endpoint, s3.counts(), s3.reset()``: a counting moto server on a free port."""

    def __init__(self, port: int = 0):
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on stderr
        self.app = _Counting(DomainDispatcherApplication(create_backend_app))
        self.server = make_server("127.0.0.1", port, self.app, threaded=True, request_handler=MotoRequestHandler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        # werkzeug keeps the host as given (str) and the bound port (int); server_address types the host str | bytes
        return f"http://{self.server.host}:{self.server.port}"

    def counts(self) -> dict[str, Any]:
        with self.app.lock:
            return {"total": sum(self.app.by_method.values()), "by_method": dict(self.app.by_method)}

    def reset(self) -> None:
        with self.app.lock:
            self.app.by_method.clear()

    def __enter__(self) -> LoopbackS3:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join()


def shard_bytes(
    n_segments: int = 2, seconds: float = 1.0, *, seed: int = 0, sample_rate: int = 16000, corrupt: bool = False
) -> tuple[bytes, bytes]:
    """``(audio.tar, metadata.parquet)`` bytes of one tiny synthetic shard; ``corrupt``: a tar that cannot be read."""
    import io
    import tempfile
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from neucodec_workflow.demo.corpus import Member, flac_bytes, write_shard
    from neucodec_workflow.engine.probe import speech_like

    rng = np.random.default_rng(seed)
    ids = [f"seg{seed:05d}_{i:02d}" for i in range(n_segments)]
    members = [Member(f"{i}.flac", flac_bytes(speech_like(seconds, sample_rate, rng), sample_rate)) for i in ids]
    meta = pd.DataFrame(
        {
            "segment_id": ids,
            "text": [f"text {i}" for i in ids],
            "language": "en",
            "speaker": [f"spk{seed % 3}"] * n_segments,
            "duration": seconds,
            "dataset": "synthetic",
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        d = write_shard(Path(tmp) / "s", members, meta)
        tar, parquet = (d / "audio.tar").read_bytes(), (d / "metadata.parquet").read_bytes()
    if corrupt:
        tar = b"this is not a tar file" + bytes(io.BytesIO(tar).read(600))[600:]
    return tar, parquet


def snakemake_s3_command(
    repo: Path,
    workdir: Path,
    corpus: str,
    weights: str,
    *extra: str,
    probe: Path | None = None,
    output: str | None = None,
) -> list[str]:
    """The real Snakemake CLI on ``repo``'s workflow for an S3 ``corpus``, run in ``workdir`` (output there, or at
    ``output``: a path or an s3:// URL), on the CPU, with this interpreter. With ``probe``, its storage transfers are
    recorded there (``storage_probe``, run as a file: it needs no ``PYTHONPATH``)."""
    cli = ["-m", "snakemake"] if probe is None else [str(Path(__file__).with_name("storage_probe.py")), str(probe)]
    return [
        sys.executable,
        *cli,
        "--snakefile",
        str(repo / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(repo / "config/config.yaml"),
        "--cores",
        "2",
        "--config",
        f"corpus={corpus}",
        f"output={output or workdir / 'out'}",
        f"codec={{'weights': '{weights}', 'device': 'cpu'}}",
        *extra,
    ]
