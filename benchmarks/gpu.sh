#!/usr/bin/env bash
# The first GPU lease in one command of about 8 minutes, in five stages with a timeout each; each
# stage leaves its results in OUTDIR before the next starts (8 files, a lease's limit):
#   1. versions.json (software, device, nvidia-smi), the extension building in the background
#   2. the GPU tests with pytest -n 8, float32 and bfloat16 first (tests-1.xml, tests-2.xml)
#   3. bench --quick (bench-quick.json)
#   4. the largest batch of each contrastive loss in the device's memory (maxbatch-gpu.json)
#   5. the other bench shapes of NOTES.md's predictions, case by case (bench-notes.json)
# lease.log holds every stage's output, stages.tsv their times and exit codes.
# It runs on the GPU image's own packages (Python 3.12, torch 2.11, Triton 3.6, no network): the
# only install is this project, --no-deps --no-build-isolation. Nothing is compiled ahead: each
# kernel compiles when a test or the bench first launches it.
#   bash benchmarks/gpu.sh OUTDIR            # LEASE_SECONDS (default 470) bounds all stages
#   LEASE_DRY=1 bash benchmarks/gpu.sh DIR   # every stage with tiny settings on CPU (CI)
out=${1:?usage: bash benchmarks/gpu.sh OUTDIR}
total=${LEASE_SECONDS:-470}
source "$(dirname "$0")/lease.sh"
if (( dry )); then sel_op="--op hellinger"; sel_k=" and hellinger"; else sel_op=""; sel_k=""; fi

stage versions 60 "install; \$py benchmarks/lease.py versions '$out'"
build_extension
stage tests 230 "wait_extension 150;
  gpu_tests tests-1.xml '(float32 or bfloat16)$sel_k'; a=\$?;
  gpu_tests tests-2.xml 'not (float32 or bfloat16)$sel_k'; b=\$?;
  (( a == 0 && b == 0 ))"
stage bench-quick 110 "\$py -m sdekernels bench --quick $sel_op --no-progress --json '$out/bench-quick.json'"
stage maxbatch 90 "\$py benchmarks/maxbatch.py --gpu '$out' $( (( dry )) && echo --dry)"
stage bench-notes 200 "\$py benchmarks/lease.py notes '$out' $( (( dry )) && echo --dry)"
echo "lease done in $(( SECONDS - t_start )) s, status $status" | tee -a "$log"
exit $status
