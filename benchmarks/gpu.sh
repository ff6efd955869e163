#!/usr/bin/env bash
# The whole GPU side in one lease (about 25 minutes): build the CUDA extension, run the test suite
# on the GPU (compiled Triton, CUDA backward kernels), check every op against the reference,
# bench every op, and write the record (device, versions, commit) beside the log.
#   SDEKERNELS_COMMIT=$(git rev-parse HEAD) bash benchmarks/gpu.sh [OUTDIR]   # default benchmarks/results
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-benchmarks/results}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 SDEKERNELS_COMMIT=${SDEKERNELS_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
py=python3
$py -m pip install -q --no-build-isolation --no-deps -e . || exit 1
dev=$($py -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))") || exit 1
tag="$dev-${SDEKERNELS_COMMIT:0:8}"
log="$out/gpu-$tag.log"
exec > >(tee -a "$log") 2>&1
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
$py -m sdekernels info
$py -m sdekernels check || status=1
timeout 420 $py -m pytest python_tests -q -p no:cacheprovider --durations=15 || status=1
timeout 600 $py -m sdekernels bench --no-progress --compile-ref --json "$out/bench-$tag.json" --plot "$out/speedup-$tag.png" || status=1
exit $status
