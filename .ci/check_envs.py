"""make check-envs: resolve each env's pip section with pip against the package index, as `conda env create` would.

For each envs/*.yaml: `pip install --dry-run --ignore-installed --only-binary=:all: --report` of its pip list, on this
Python (3.11, Linux x86_64, like the envs). Passes when every pin exists as a wheel for this platform, the pins are
consistent with each other (pip's resolver, full dependency resolution), and pip would install exactly the pinned
distributions, nothing unpinned (pip/setuptools/wheel aside: conda's `pip` package brings them). Wheel metadata
comes from the index's PEP 658 metadata files, so the large wheels (torch, CUDA) are not downloaded.
Not covered: conda itself, the post-deploy script (tests/test_envs.py runs it against a stub), importing the code.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONDA_LEVEL = {"pip", "setuptools", "wheel"}


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check(env_file: Path) -> list[str]:
    pip = [
        e for dep in yaml.safe_load(env_file.read_text())["dependencies"] if isinstance(dep, dict) for e in dep["pip"]
    ]
    pinned = {canon(e.split("==")[0]): e.split("==")[1] for e in pip}
    with tempfile.TemporaryDirectory() as tmp:
        reqs, report = Path(tmp) / "requirements.txt", Path(tmp) / "report.json"
        reqs.write_text("\n".join(pip) + "\n")
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--only-binary=:all:"]
        cmd += ["--quiet", "--report", str(report), "-r", str(reqs)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return [f"pip cannot resolve the pip section:\n{proc.stderr[-3000:]}"]
        resolved = {
            canon(i["metadata"]["name"]): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]
        }
    errors = [
        f"unpinned, pip would add {n}=={v}" for n, v in resolved.items() if n not in pinned and n not in CONDA_LEVEL
    ]
    errors += [f"{n}: pinned {v}, pip resolved {resolved.get(n)}" for n, v in pinned.items() if resolved.get(n) != v]
    return errors


def main() -> int:
    failed = False
    for env_file in sorted((REPO / "envs").glob("*.yaml")):
        start = time.monotonic()
        errors = check(env_file)
        took = time.monotonic() - start
        status = "ok" if not errors else "FAILED"
        print(f"{env_file.relative_to(REPO)}: {status} ({took:.0f} s)", *errors, sep="\n  ")
        failed |= bool(errors)
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
