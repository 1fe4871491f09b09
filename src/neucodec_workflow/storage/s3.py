"""S3-compatible storage (AWS S3, Cloudflare R2, MinIO, NAS endpoints): URLs, settings and our own boto3 clients.

The storage package (design note: docs/s3.md):

* ``s3`` (here): ``s3://`` URLs, the plugin's settings (endpoint, region, keys from the environment), a client with
  the checksum settings the plugin forces process-wide (``when_required``) and standard retries.
* ``inventory``: one paginated listing of the workflow's S3 prefixes per run, answering exists / mtime / size.
* ``plugin``: patches ``snakemake-storage-plugin-s3`` to answer from the inventory (runs inside Snakemake at parse
  time).
* ``streams``: what jobs read: a bounded read-ahead stream of ``audio.tar``, whole small objects.
* ``discovery``: the shard list (a directory walk, the inventory, or an explicit list).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: Settings of the plugin that also configure our own clients (``SNAKEMAKE_STORAGE_S3_<NAME>``).
SETTING_NAMES = ("endpoint_url", "region", "access_key", "secret_key", "token")
ENV_PREFIX = "SNAKEMAKE_STORAGE_S3_"
#: Set to 1 (the tests do) to make a missing endpoint an error instead of a fallback to AWS.
REQUIRE_ENDPOINT_ENV = "NEUCODEC_S3_REQUIRE_ENDPOINT"
#: botocore's retries of our own clients (docs/reliability.md): attempts per request (first try included) and mode
#: (``standard``: exponential backoff with full jitter on throttling, 5xx and connection errors; ``adaptive`` adds a
#: client-side rate limiter that slows down after throttling answers).
MAX_ATTEMPTS_ENV, RETRY_MODE_ENV = "NEUCODEC_S3_MAX_ATTEMPTS", "NEUCODEC_S3_RETRY_MODE"
DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_MODE = 8, "standard"


class S3Error(RuntimeError):
    pass


def is_s3(path: str) -> bool:
    return path.startswith("s3://")


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")`` (no leading or trailing slash on the key)."""
    if not is_s3(url):
        raise S3Error(f"not an s3:// URL: {url}")
    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket:
        raise S3Error(f"no bucket in {url}")
    return bucket, key.strip("/")


@dataclass(frozen=True)
class S3Settings:
    """Endpoint, region and credentials, as the plugin sees them. Secrets never appear in ``repr``."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls) -> S3Settings:
        return cls(**{name: os.environ.get(ENV_PREFIX + name.upper()) or None for name in SETTING_NAMES})

    @classmethod
    def from_plugin(cls, settings: Any) -> S3Settings:
        """From the plugin's ``StorageProviderSettings`` (CLI ``--storage-s3-*``, profile or env vars)."""
        return cls(**{name: getattr(settings, name, None) or None for name in SETTING_NAMES})

    def export_to_env(self) -> None:
        """Make these settings visible to job processes (the encode/assemble scripts) without writing them anywhere."""
        for name in SETTING_NAMES:
            value = getattr(self, name)
            if value is not None:
                os.environ.setdefault(ENV_PREFIX + name.upper(), value)

    def client(self, raw_timestamps: bool = False) -> Any:
        """A boto3 S3 client with the plugin's checksum settings and botocore's retries (``retry_config``).

        botocore retries a request (throttling, 5xx, connection errors) but not a response body that breaks while
        it is read: ``streams.iter_object`` resumes those by byte range. ``raw_timestamps``: timestamps stay the
        strings the server sent (botocore's dateutil parser takes a quarter of a 15,000-key listing; the AWS CLI
        does the same): ``timestamp()`` reads them."""
        import boto3
        import botocore.session
        from botocore.config import Config

        if os.environ.get(REQUIRE_ENDPOINT_ENV) == "1" and not self.endpoint_url:
            raise S3Error(
                f"{REQUIRE_ENDPOINT_ENV}=1 but no endpoint is set ({ENV_PREFIX}ENDPOINT_URL): refusing to use AWS"
            )
        config = Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries=retry_config(),
            connect_timeout=20,
            read_timeout=60,
        )
        make = boto3.client  # the default session's (its service model loaded once per process)
        if raw_timestamps:  # a session of its own: the parser setting is per session
            session = botocore.session.get_session()
            session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
            make = boto3.session.Session(botocore_session=session).client
        return make(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region or "us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            aws_session_token=self.token,
            config=config,
        )


def timestamp(value: Any) -> float:
    """Seconds since the epoch of a timestamp from a client: a datetime, or the server's ISO 8601 string."""
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:  # not ISO 8601 (an RFC 1123 date from an odd server): botocore's own parser
        from botocore.utils import parse_timestamp

        return float(parse_timestamp(value).timestamp())


def retry_config() -> dict[str, Any]:
    """botocore's ``retries`` setting of our clients: ``NEUCODEC_S3_MAX_ATTEMPTS`` (default 8) attempts in
    ``NEUCODEC_S3_RETRY_MODE`` (default ``standard``; ``adaptive`` for a store that throttles hard)."""
    mode = os.environ.get(RETRY_MODE_ENV) or DEFAULT_RETRY_MODE
    if mode not in ("standard", "adaptive", "legacy"):
        raise S3Error(f"{RETRY_MODE_ENV}={mode!r}: expected standard, adaptive or legacy")
    raw = os.environ.get(MAX_ATTEMPTS_ENV) or str(DEFAULT_MAX_ATTEMPTS)
    if not raw.isdigit() or int(raw) < 1:
        raise S3Error(f"{MAX_ATTEMPTS_ENV}={raw!r}: expected a whole number >= 1")
    return {"max_attempts": int(raw), "mode": mode}
