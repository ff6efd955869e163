"""gather=True against gather="ring" in N gloo processes on this CPU: time per step (forward +
backward) and peak memory per rank, float32.

Every rank holds --b-local unit rows of dimension --d per modality (B_global = N·b_local). Per
world size one launch runs every case on every rank: a barrier before each step, the step's wall
time on each rank (the table gives the slowest rank's median over --steps steps, after one
warm-up), and the peak bytes allocated above what was allocated before the step (the profiler's
raw allocation events, sdekernels.bench.peak_memory), the largest over the ranks. All ranks share
this machine's cores, so times include the oversubscription (N processes, one thread each).

    python benchmarks/ring.py [--world 2 4] [--b-local 2048] [--d 512] [--steps 3] [--cases ...] [--json FILE]
"""
import argparse
import json
import os
import socket
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

CASES = [("info_nce", True, False), ("info_nce", "ring", False), ("info_nce", True, True),
         ("info_nce", "ring", True), ("siglip", True, True), ("siglip", "ring", True)]


def _step(kind, gather, local, a, b, s, t):
    import sdekernels

    if kind == "info_nce":
        loss = sdekernels.info_nce(a, b, logit_scale=s, gather=gather, local_loss=local)
    else:
        loss = sdekernels.siglip_loss(a, b, s, t, gather=gather, local_loss=local)
    loss.backward()


def _worker(rank, world, init, args, path):
    from sdekernels.bench import peak_memory

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(rank)
        a = torch.nn.functional.normalize(torch.randn(args.b_local, args.d, generator=g), dim=-1)
        b = torch.nn.functional.normalize(a + torch.randn(args.b_local, args.d, generator=g), dim=-1)
        out = {}
        for case in [c for c in CASES if " ".join(map(str, c)) in args.cases]:
            def setup(case=case):
                leaves = [a.clone().requires_grad_(), b.clone().requires_grad_(),
                          torch.tensor(10.0, requires_grad=True), torch.tensor(-5.0, requires_grad=True)]
                return (*case, *leaves), {}

            dist.barrier()
            peak = peak_memory(_step, torch.device("cpu"), setup)  # also the warm-up
            times = []
            for _ in range(args.steps):
                (call, kw) = setup()
                dist.barrier()
                t0 = time.perf_counter()
                _step(*call)
                times.append(time.perf_counter() - t0)
            out[" ".join(map(str, case))] = {"peak_bytes": peak, "times_s": times}
        torch.save(out, os.path.join(path, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=int, nargs="+", default=[2, 4])
    p.add_argument("--b-local", type=int, default=2048)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--cases", nargs="+", default=[" ".join(map(str, c)) for c in CASES],
                   help="which of: " + ", ".join(repr(" ".join(map(str, c))) for c in CASES))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    from sdekernels.bench import commit

    rows = []
    for world in args.world:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        with tempfile.TemporaryDirectory() as path:
            mp.spawn(_worker, args=(world, f"tcp://127.0.0.1:{port}", args, path), nprocs=world, join=True)
            ranks = [torch.load(os.path.join(path, f"rank{r}.pt")) for r in range(world)]
        for case in ranks[0]:
            med = max(statistics.median(res[case]["times_s"]) for res in ranks)
            peak = max(res[case]["peak_bytes"] for res in ranks)
            rows.append({"world": world, "case": case, "b_local": args.b_local, "d": args.d,
                         "step_s": med, "peak_mb": peak / 2**20,
                         "times_s": [res[case]["times_s"] for res in ranks]})
            print(f"world {world}  B_global {world * args.b_local:6d}  d {args.d}  {case:22s}  "
                  f"{med:7.3f} s/step  peak {peak / 2**20:8.1f} MB per rank", flush=True)
    if args.json:
        meta = {"commit": commit(("sdekernels/ops/ring.py", "sdekernels/dist.py", "sdekernels/ops/contrastive.py")),
                "torch": torch.__version__, "cpus": os.cpu_count(), "threads_per_rank": 1,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args)}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
