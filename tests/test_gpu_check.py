"""bench/gpu_check.sh in its CPU dry-run mode (1 + 1 blocks, 128 image tokens): every step runs and
the comparison table comes out, so the script is ready the day a GPU is lent."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run(tmp_path):
    # step 4 only collects the dtype-path tests: this suite runs them itself (test_trainer_cuda_dtypes.py,
    # test_trainer_run.py::test_mixed_precision_and_fp8_base), the dry run need not run them twice
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_OUT": str(tmp_path), "PYTHONPATH": str(ROOT),
           "GPU_CHECK_DTYPE_COLLECT_ONLY": "1"}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1500)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    for step in ("train fp8_e4m3fn: exit 0", "train bf16: exit 0", "inference: exit 0", "dtype paths: exit 0",
                 "simulation: exit 0"):
        assert step in out, (step, out[-3000:])
    table = [ln for ln in out.splitlines() if ln.startswith("| ")]  # header and rows (not the |---| line)
    assert table[0].startswith("| check | s/step or result | measured peak GiB | simulated live peak GiB")
    rows = {ln.split(" | ")[0][2:]: ln for ln in table[1:]}
    assert "train fp8_e4m3fn r64 128+16" in rows and "train bf16 r64 128+16" in rows, rows
    # the offloaded step of the same fp8 run (trainer.offload, streamed on the CPU as it would be on a GPU)
    offloaded = rows["train fp8_e4m3fn r64 128+16 offloaded"].split(" | ")
    assert re.match(r"[\d.]+ \([\d.]+x resident; 2/2 blocks streamed, block inputs host, ",
                    offloaded[1]), offloaded
    assert "FAILED" not in out, out[-3000:]
    # the simulated rows for the same shapes came out
    assert "lora_r64_fp8_adamw32_128" in out and "lora_r64_bf16_adamw32_128" in out
    inference = rows["inference nodes/stock"].split(" | ")[1]
    assert float(inference) > 0
    # the dtype-path tests are all still there: 3 cases of test_mixed_precision_and_fp8_base (bf16, fp8,
    # fp8 + bf16) + 5 of test_trainer_cuda_dtypes.py (4 base x mixed cases, the bare bf16 sample render);
    # a renamed or removed node id makes pytest exit 4 with "ERROR: not found" instead of this summary
    dtype_row = rows["trainer dtype paths (pytest)"].split(" | ")[1]
    assert re.match(r"8 tests collected in ", dtype_row), rows
