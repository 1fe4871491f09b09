"""The upstream packages whose internals this project relies on, and the versions it was tested with.

Each internal, and the test that guards it, is listed in docs/upstream.md. An installed version other than the
tested one is an error (the patches or re-implementations could silently compute something else), unless the user
sets ``NEUCODEC_ALLOW_UNTESTED_VERSIONS=1``, which turns it into a warning.
"""

from __future__ import annotations

import logging
import os
from importlib.metadata import PackageNotFoundError, version

log = logging.getLogger(__name__)

#: package -> tested version; a version ``X.Y`` admits any ``X.Y.*`` release (local tags such as ``+cu128`` too).
TESTED = {
    "snakemake": "9.27.1",  # IO internals in rules/common.smk, the DAG's storage handling
    "snakemake-storage-plugin-s3": "0.3.6",  # StorageObject methods patched by storage/plugin.py
    "neucodec": "0.0.6",  # NeuCodec.__init__ rebuilt by engine/codec.py; module attribute names used by the engine
    "transformers": "5.23.0",  # the w2v-bert layer re-implemented by engine/semantic.py
    "torch": "2.11",  # torch._weight_norm in engine/acoustic.py
}
OVERRIDE_ENV = "NEUCODEC_ALLOW_UNTESTED_VERSIONS"


class UntestedVersionError(RuntimeError):
    pass


def installed(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def matches(installed_version: str, tested: str) -> bool:
    base = installed_version.split("+", 1)[0]
    return base == tested or base.startswith(tested + ".")


def require(*packages: str) -> None:
    """Raise ``UntestedVersionError`` (a warning with ``NEUCODEC_ALLOW_UNTESTED_VERSIONS=1``) for each package whose
    installed version is not the tested one."""
    wrong = {p: installed(p) for p in packages if not matches(installed(p), TESTED[p])}
    if not wrong:
        return
    found = ", ".join(f"{p} {v} (tested: {TESTED[p]})" for p, v in wrong.items())
    message = f"untested upstream versions: {found}; this project relies on their internals (docs/upstream.md)"
    if os.environ.get(OVERRIDE_ENV) == "1":
        log.warning("%s; continuing because %s=1", message, OVERRIDE_ENV)
        return
    raise UntestedVersionError(
        f"{message}. Install the tested versions (requirements.txt), or set {OVERRIDE_ENV}=1 "
        "to run anyway after checking the guarding tests pass"
    )
