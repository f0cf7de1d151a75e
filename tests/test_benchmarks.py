"""Smoke test of the benchmark suite (`make bench`): a --quick run completes and writes its files."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_run(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--device", "cpu",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| derf" in proc.stdout and "pyops-cpu" in proc.stdout
    (result,) = tmp_path.glob("*-quick.json")
    rows = json.loads(result.read_text())["rows"]
    providers = {r["kernel_provider"] for r in rows}
    assert {"pyops-cpu", "eager", "torch.compile"} <= providers
    assert {r["kernel_operation_mode"] for r in rows} == {"forward", "backward", "full"}
    assert all(r["y_value_50"] > 0 for r in rows)
    assert list(tmp_path.glob("*-quick-derf.png")) and list(tmp_path.glob("*-quick.md"))
