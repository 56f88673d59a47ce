#!/usr/bin/env bash
# One prepared check for the day a GPU is lent (target: under 8 minutes on one H100 / H200).
#
#   bench/gpu_check.sh             # CUDA: full size (19 + 38 blocks, hidden 3072, 8192 + 512 tokens)
#   bench/gpu_check.sh --dry-run   # CPU, 1 + 1 blocks of hidden 256, 128 image + 16 text tokens: the same
#                                  # steps and table, so the script does not rot (tests/test_gpu_check.py)
#
# Steps (each under its own time limit; a failed step is reported in the table, the others still run):
#   1. simulation of the same rows on the CPU (bench/simulate_full_size.py, in the background);
#   2. one full-size LoRA step at 8192 image tokens, rank 64, fp32 AdamW, fp8 base and bf16 base
#      (bench/bench_train.py --full-size-cuda): s/step, max_memory_allocated, MFU on the measured bf16 rate;
#      in the fp8 run, then the same step offloaded (trainer.offload, offload.auto's plan for a card capped at
#      12 GiB with torch.cuda.set_per_process_memory_fraction): s/step against the resident step of the same
#      run (goal <= 1.15x on an H100), max_memory_allocated, host RSS;
#   3. the full-size inference ratio, ACE++ nodes / stock Fill graph (bench/bench_inference.py --full-size-cuda);
#   4. the trainer's dtype paths, sample rendering included, run (not only collected) in both modes:
#      tests/test_trainer_run.py::test_mixed_precision_and_fp8_base (bf16 autocast, fp8 base, both) and
#      tests/test_trainer_cuda_dtypes.py (the ops ComfyUI builds on CUDA: bf16 without manual cast, fp8
#      manual-cast to bf16; on the CPU forced through unet_manual_cast). Named by node id, so a renamed
#      or removed test fails the step instead of silently selecting fewer; the row is pytest's summary.
# Then one table: measured peak next to the simulated live-tensor peak (margin excluded) and their ratio.
#
# Environment: PYTHON (default: python), GPU_CHECK_OUT (folder for the logs; default: a new temp folder),
# GPU_CHECK_DTYPE_COLLECT_ONLY=1 (step 4 only collects its tests; for the test suite, which runs them itself).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${GPU_CHECK_OUT:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

if [[ $DRY == 1 ]]; then
  TOKENS=128 TEXT=16
  # hidden 256 (2 heads): the same code path as hidden 3072, and the simulation gets the same shape
  SIM_ARGS=(--depth 1 1 --hidden 256 --img-tokens $TOKENS --txt-tokens $TEXT)
  TRAIN_ARGS=(--device cpu --depth 1 --depth-single 1 --hidden 256 --height 128 --width 256 --text-tokens $TEXT
              --steps 1)
  INFER_CMD=("$PY" bench/bench_inference.py --steps 1 --repeats 1)
  LIMIT=600 DTYPE_LIMIT=600
else
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is False); use --dry-run on a CPU machine" >&2
    exit 2
  fi
  TOKENS=8192 TEXT=512
  SIM_ARGS=()
  TRAIN_ARGS=(--steps 3)
  INFER_CMD=("$PY" bench/bench_inference.py --full-size-cuda --steps 4 --repeats 1)
  LIMIT=150 DTYPE_LIMIT=240
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fi
echo "gpu_check: logs in $OUT (dry run: $DRY)"
START=$(date +%s)

SIM_ROWS="lora_r64_fp8_adamw32_${TOKENS},lora_r64_bf16_adamw32_${TOKENS}"
"$PY" bench/simulate_full_size.py "${SIM_ARGS[@]}" --rows "$SIM_ROWS" >"$OUT/sim.json" 2>"$OUT/sim.log" &
SIM_PID=$!

for base in fp8_e4m3fn bf16; do
  OFFLOAD=()
  [[ $base == fp8_e4m3fn ]] && OFFLOAD=(--offload --cap-gib 12)
  timeout $LIMIT "$PY" bench/bench_train.py --full-size-cuda --rank 64 --base-dtype $base "${TRAIN_ARGS[@]}" \
    "${OFFLOAD[@]}" >"$OUT/train_$base.log" 2>&1
  echo "train $base: exit $? ($(( $(date +%s) - START )) s)"
done
timeout $LIMIT "${INFER_CMD[@]}" >"$OUT/inference.log" 2>&1
echo "inference: exit $? ($(( $(date +%s) - START )) s)"
DTYPE_TESTS=(tests/test_trainer_run.py::test_mixed_precision_and_fp8_base tests/test_trainer_cuda_dtypes.py)
# GPU_CHECK_DTYPE_COLLECT_ONLY=1: only collect them (every node id must still exist). tests/test_gpu_check.py
# sets it: the suite it belongs to runs these tests itself, so the dry run would run them twice.
DTYPE_MODE=()
[[ ${GPU_CHECK_DTYPE_COLLECT_ONLY:-0} == 1 ]] && DTYPE_MODE=(--collect-only)
timeout $DTYPE_LIMIT "$PY" -m pytest -q -p no:cacheprovider "${DTYPE_MODE[@]}" "${DTYPE_TESTS[@]}" \
  >"$OUT/dtype_paths.log" 2>&1
echo "dtype paths: exit $? ($(( $(date +%s) - START )) s)"
wait $SIM_PID
echo "simulation: exit $? ($(( $(date +%s) - START )) s)"

"$PY" - "$OUT" "$TOKENS" "$DRY" <<'EOF'
import ast, json, re, sys
from pathlib import Path

out, tokens, dry = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"


def last_json(path):
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.lstrip().startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


sim = last_json(out / "sim.json") or {}
sim_live = {}
for line in (out / "sim.log").read_text().splitlines() if (out / "sim.log").exists() else []:
    m = re.match(r"(\S+): peak ([\d.]+) GiB \(([\d.]+) with margin\)", line)
    if m:
        sim_live[m.group(1)] = float(m.group(2))
rows = []
for base, short in (("fp8_e4m3fn", "fp8"), ("bf16", "bf16")):
    r = last_json(out / f"train_{base}.log")
    name = f"lora_r64_{short}_adamw32_{tokens}"
    s_live = sim_live.get(name)
    if r is None:
        rows.append((f"train {base}", "FAILED (see train_%s.log)" % base, "", "", "", ""))
        continue
    meas = r.get("peak_mem_gib")
    ratio = f"{s_live / meas:.3f}" if meas and s_live else "-"
    mfu = f"{r['mfu']:.2f}" if "mfu" in r else "-"
    rows.append((f"train {base} r64 {r['tokens_image']}+{r['tokens_text']}", f"{r['s_per_step']:.2f}",
                 f"{meas:.2f}" if meas else f"RSS {r.get('peak_rss_mb', 0) / 1024:.2f}",
                 f"{s_live:.2f}" if s_live else "-", ratio, mfu))
    o = r.get("offload")
    if o is not None and "s_per_step" in o:
        cap = f" cap {o['cap_gib']:.0f} GiB" if "cap_gib" in o else ""
        rows.append((f"train {base} r64 {r['tokens_image']}+{r['tokens_text']} offloaded{cap}",
                     f"{o['s_per_step']:.2f} ({o['vs_resident']:.2f}x resident; {o['blocks_streamed']}/{o['blocks']} "
                     f"blocks streamed, block inputs {'host' if o['activations_on_host'] else 'device'}, "
                     f"{o['h2d_gib_per_step']:.2f} GiB/step to the device)",
                     f"{o['peak_mem_gib']:.2f}" if "peak_mem_gib" in o else f"RSS {o['peak_rss_mb'] / 1024:.2f}",
                     f"model {o['predicted_peak_gib_margin']:.2f} (+ margin)",
                     f"host RSS {o['peak_rss_mb'] / 1024:.1f} GiB", "-"))
    elif o is not None:
        rows.append((f"train {base} offloaded", "FAILED: " + o.get("error", "?"), "", "", "", ""))
inf = {}
for line in (out / "inference.log").read_text().splitlines() if (out / "inference.log").exists() else []:
    if line.startswith("ratio: "):
        try:
            inf = ast.literal_eval(line[len("ratio: "):])
        except (ValueError, SyntaxError):
            pass
rows.append(("inference nodes/stock", f"{inf.get('ratio', float('nan')):.3f}" if inf else "FAILED", "", "", "", ""))
dtype_log = (out / "dtype_paths.log").read_text() if (out / "dtype_paths.log").exists() else ""
tail = [ln for ln in dtype_log.splitlines() if ln.strip()][-1:] or ["no output"]
rows.append(("trainer dtype paths (pytest)", tail[0], "", "", "", ""))
print()
print("| check | s/step or result | measured peak GiB | simulated live peak GiB | sim / measured | MFU |")
print("|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
if dry:
    print("(dry run: CPU, 1 + 1 blocks of hidden 256; measured = process peak RSS, not comparable with the simulation)")
print("simulated (with margin):", json.dumps(sim))
EOF
echo "gpu_check: done in $(( $(date +%s) - START )) s; logs in $OUT"
