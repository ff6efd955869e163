# Stages of a GPU lease, sourced by gpu.sh and gpu_full.sh (not run on its own).
# A lease is one command with a hard limit, so every stage has a timeout and leaves its results in
# $out before the next starts: whatever the limit cuts off, the earlier stages are on disk.
#   out      results folder (at most 8 files come back from a lease: keep to that)
#   total    seconds for all stages; a stage gets min(its cap, what is left)
#   LEASE_DRY=1  each stage's command with tiny settings on CPU (CI: python_tests/test_lease.py)
set -uo pipefail
out=$(mkdir -p "$out" && cd "$out" && pwd) || exit 1
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
dry=${LEASE_DRY:-0}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export SDEKERNELS_COMMIT=${SDEKERNELS_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
py=python3
t_start=$SECONDS
status=0

log="$out/lease.log"
printf 'stage\tseconds\texit\n' > "$out/stages.tsv"

left() { echo $(( total - (SECONDS - t_start) )); }

# stage NAME CAP 'COMMANDS': run the bash COMMANDS (the functions below may be used) with a
# timeout of min(CAP, seconds left), their output into lease.log
stage() {
    local name=$1 cap=$2 cmd=$3 budget t0 rc
    # a dry run (CPU, Triton's interpreter, torch.compile on a cold cache, a loaded machine) is not
    # the lease: its caps are 4× the lease's, so that only a hang, not the CPU, times a stage out
    (( dry )) && cap=$(( cap * 4 ))
    budget=$(left)
    (( budget > cap )) && budget=$cap
    if (( budget < 5 )); then
        echo "== $name: skipped, no time left" | tee -a "$log"
        printf '%s\t0\tskipped\n' "$name" >> "$out/stages.tsv"
        status=1
        return 1
    fi
    echo "== $name (timeout ${budget} s): $cmd" | tee -a "$log"
    t0=$SECONDS
    timeout -k 10 "$budget" bash -c "set -o pipefail; $cmd" >> "$log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" $(( SECONDS - t0 )) "$rc" >> "$out/stages.tsv"
    echo "== $name: exit $rc after $(( SECONDS - t0 )) s" | tee -a "$log"
    (( rc == 0 )) || status=1
    return $rc
}

# The project on the image's own packages: no dependency may be fetched there. Not compiled here
# (minutes with CUDA): build_extension compiles it just in time in the background.
install() {
    if (( dry )); then echo "dry run: no install, PYTHONPATH=$PWD"; return 0; fi
    SDEKERNELS_BUILD_EXT=0 $py -m pip install -q --no-deps --no-build-isolation -e . || echo "install failed: PYTHONPATH=$PWD is used"
}

# The C++/CUDA extension builds in the background (its own log) while the next stages start.
build_extension() {
    if (( dry )); then export SDEKERNELS_NO_EXT=1; fi
    MAX_JOBS=${MAX_JOBS:-12} $py -c "from sdekernels import _ext; print('extension', _ext.status()); \
print('CUDA kernels', _ext.has_cuda_kernels())" > "$out/extension.log" 2>&1 &
    export ext_pid=$!
}

# wait_extension SECONDS: wait for the background build, then move its log into lease.log
wait_extension() {
    local i
    for (( i = 0; i < $1; i++ )); do kill -0 "$ext_pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$ext_pid" 2>/dev/null && echo "extension build still running after $1 s"
    cat "$out/extension.log" && rm -f "$out/extension.log"
}

# pytest with xdist (-n N) where it is installed (the GPU image); plain pytest in a dry run
xdist() { if (( dry )); then :; else echo "-n $1"; fi; }

# gpu_tests XML SELECTION: the GPU-marked tests that match `-k SELECTION`, their report in $out/XML.
# Its exit is pytest's: 5 (no test collected) fails the stage like any other failure, so a
# selection that matches nothing cannot pass for a clean run.
gpu_tests() {
    $py -m pytest python_tests -m gpu $(xdist 8) -q -p no:cacheprovider -rfE --junitxml="$out/$1" -k "$2"
}

export py out dry
export -f install wait_extension xdist gpu_tests
