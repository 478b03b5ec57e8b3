#!/usr/bin/env bash
# Everything issue 6 needs a GPU for, in one call of the lent GPU machine (bench/RESULTS.md):
# correctness at real sizes, then the 8B decode step with CUDA graphs on and off, then the
# quantized variants. Logs and JSON go to $OUT (default: /tmp/ferrite-gpu).
#   bash bench/gpu_session.sh [checks] [decode] [quantized] [profile]   (default: the first three)
set -uo pipefail
OUT=${OUT:-/tmp/ferrite-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
sections=${*:-checks decode quantized}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import sys, torch, triton, transformers; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/device.txt"
status=0
for section in $sections; do
  case $section in
    checks)
      timeout 150 python3 bench/gpu_checks.py --output "$OUT/gpu_checks.json" 2>&1 | tee "$OUT/gpu_checks.log" || status=1 ;;
    decode)
      timeout 330 python3 bench/decode_steps.py --backends triton --cuda-graphs on,off \
        --batch-sizes 1,8,32,128 --context 512 --steps 32 --output "$OUT/decode_graphs.json" 2>&1 \
        | grep -v Warning | tee "$OUT/decode_steps.log" || status=1 ;;
    quantized)
      timeout 300 python3 bench/quantized_decode.py --variants "${QUANT_VARIANTS:-bf16,fp8,fp8+kv-fp8,gptq-4bit,awq-4bit}" \
        --batch-sizes 1,8 --output "$OUT/quantized.json" 2>&1 | grep -v Warning | tee "$OUT/quantized.log" || status=1 ;;
    profile)
      (cd bench && timeout 200 python3 decode_profile.py --backend triton --batch-size 1) 2>&1 \
        | grep -v Warning | tee "$OUT/decode_profile.log" || status=1 ;;
  esac
done
exit $status
