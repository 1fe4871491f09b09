"""The one-call GPU check, dry-run on the CPU with a few short segments, so that it cannot rot between GPU runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STEPS = ["env", "gpu_tests", "variants", "bench_exact", "bench_fast", "shard_job", "shard_job_result"]
STEPS += ["profile_exact", "profile_fast"]


@pytest.mark.gpu_check
def test_gpu_check_dry_run_on_cpu(tmp_path):
    args = ["--device", "cpu", "--segments", "1", "--profile-segments", "1", "--shard-segments", "2"]
    args += ["--longest", "2", "--out", str(tmp_path), "--budget", "1500"]
    env = {**os.environ, "GPU_CHECK_INSTALL": "0", "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), *args], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    steps = {line["step"]: line for line in lines}
    assert [line["step"] for line in lines] == STEPS
    log = (tmp_path / "gpu_check.log").read_text()
    for name in STEPS[1:]:
        if name == "shard_job_result":
            continue
        assert steps[name]["rc"] == 0, f"{name}: {steps[name].get('error_tail')}\n{log[-3000:]}"
    assert steps["env"]["device"] == "cpu" and steps["env"]["torch"].startswith("2.11")
    assert steps["bench_exact"]["token_agreement"] == 1.0 and steps["bench_exact"]["segments"] == 1
    assert 0 < steps["bench_fast"]["token_agreement"] <= 1 and steps["bench_fast"]["mode"] == "fast"
    variants = steps["variants"]
    assert variants["exact:torch"]["token_agreement"] == variants["exact:auto"]["token_agreement"] == 1.0
    assert variants["exact:auto"]["kernels"] == "native-cpu" and variants["fast:torch"]["kernels"] == "torch"
    for name in ("profile_exact", "profile_fast"):
        assert steps[name]["top"] and 0 < steps[name]["busy_fraction"] <= 1.01, steps[name]
    result = steps["shard_job_result"]
    assert result["segments"] == 2 and result["rejected"] == 0 and result["mode"] == "exact"
    assert result["device"] == "cpu" and result["x_realtime_in_job"] > 0 and result["audit_agreement"] == 1.0
