"""Download the wheels a bare GPU machine lacks (benchmarks/gpu-wheels.txt) for CPython 3.12 on manylinux x86_64.

    python benchmarks/gpu_wheels.py [--dest .whl]      (what `make gpu-wheels` runs)

Versions come from requirements.txt, so the GPU machine runs what the tests here ran. A package published only
as a source archive is built here into a pure-Python wheel. The folder must stay under the device tool's 64 MiB
for everything that travels with a call.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (5, 17, 24, 27, 28, 31, 34, 35)] + ["manylinux2014_x86_64"]
TARGET = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"]
LIMIT_MIB = 60


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            out[norm(name)] = version.strip()
    return out


def wanted() -> list[str]:
    lines = (ROOT / "benchmarks" / "gpu-wheels.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args, "--quiet", "--no-deps"], capture_output=True, text=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", default=str(ROOT / ".whl"))
    dest = Path(ap.parse_args().dest)
    dest.mkdir(parents=True, exist_ok=True)
    versions = pins()
    for name in wanted():
        spec = f"{name}=={versions[norm(name)]}"
        have = [p for p in dest.glob("*.whl") if norm(p.name.split("-")[0]) == norm(name)]
        if any(f"-{versions[norm(name)]}-" in p.name for p in have):
            continue
        for stale in have:
            stale.unlink()
        platforms = [a for p in PLATFORMS for a in ("--platform", p)]
        done = pip("download", *TARGET, *platforms, "-d", str(dest), spec)
        if done.returncode != 0:  # only a source archive: build a pure-Python wheel here
            with tempfile.TemporaryDirectory() as tmp:
                built = pip("wheel", "-w", tmp, spec)
                wheels = list(Path(tmp).glob("*.whl"))
                if built.returncode != 0 or not wheels or not wheels[0].name.endswith("-none-any.whl"):
                    print(f"{spec}: no wheel for the GPU machine\n{done.stderr}\n{built.stderr}", file=sys.stderr)
                    return 1
                wheels[0].rename(dest / wheels[0].name)
        print(f"{spec}: ok")
    size = sum(p.stat().st_size for p in dest.glob("*.whl")) / 2**20
    print(f"{len(list(dest.glob('*.whl')))} wheels, {size:.1f} MiB in {dest.name}/")
    if size > LIMIT_MIB:
        print(f"more than {LIMIT_MIB} MiB: the device call would not carry them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
