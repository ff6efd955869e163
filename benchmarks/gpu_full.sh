#!/usr/bin/env bash
# A later GPU lease (one command of up to 10 minutes): the full test suite on the GPU, then the
# full bench, each with a timeout, results in OUTDIR (lease.log, stages.tsv, versions.json,
# tests-full.xml, bench-full.json). Same image and rules as benchmarks/gpu.sh.
#   bash benchmarks/gpu_full.sh OUTDIR       # LEASE_SECONDS (default 560) bounds all stages
#   LEASE_DRY=1 bash benchmarks/gpu_full.sh DIR
out=${1:?usage: bash benchmarks/gpu_full.sh OUTDIR}
total=${LEASE_SECONDS:-560}
source "$(dirname "$0")/lease.sh"
if (( dry )); then sel_t="python_tests/test_cli.py -k info"; sel_op="--quick --op hellinger"
else sel_t="python_tests"; sel_op=""; fi

stage versions 60 "install; \$py benchmarks/lease.py versions '$out'"
build_extension
stage tests 300 "wait_extension 150;
  \$py -m pytest $sel_t \$(xdist 8) -q -p no:cacheprovider -rfE --durations=15 --junitxml='$out/tests-full.xml'"
stage bench 400 "\$py -m sdekernels bench $sel_op --no-progress --json '$out/bench-full.json'"
echo "lease done in $(( SECONDS - t_start )) s, status $status" | tee -a "$log"
exit $status
