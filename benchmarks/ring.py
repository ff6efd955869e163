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


CHUNK = 1 << 21  # logits entries of the CPU path's row chunk (sdekernels.ops.contrastive.CHUNK_ELEMS)
KEEP = 1 << 24  # the CPU forward keeps up to this many logits (KEEP_ELEMS)


def model(path: str, P: int, B: int, d: int, e: int = 4, cpu: bool = False, local: bool = True) -> tuple[float, float]:
    """(bytes sent, peak bytes) per rank and step (forward + backward) of the symmetric info_nce, P ranks
    of n = B/P rows, features of e bytes. Counted from the code, in blocks of F = n·d·e:
    gather (local_loss): the gathered a and b (2·B·d·e), the normalised gathered columns and their
    gradient in the backward (2·B·d·e more); sent: all-gather and reduce-scatter of both, 4(P−1)·F.
    ring: a, b, da, the held and the next block, the accumulator arriving, the tile's db and its
    contribution, their sum and the previous sum still in flight (10·F; the measured peaks fit 11·F,
    which the model takes); sent: (P−1) blocks forward, (P−1) blocks and P gradient
    blocks backward, (3P−2)·F. gram: the d×d Gram of each modality all-reduced (ring algorithm:
    2(P−1)/P of it sent), what a global spectrum needs instead of the gathered features.
    openclip: ClipLoss(local_loss=True, gather_with_grad=True): the gathered features, the two n×B
    logits and their softmax gradients (4·n·B·e). cpu: plus the CPU path's logits (4 row chunks of
    the ring's tile; the gather's kept n×B logits per direction, or a chunk where they are not kept,
    and the backward's two chunk buffers)."""
    n = B // P
    F = n * d * e
    if path == "gram":
        return 2 * 2 * (P - 1) / P * d * d * e, 2 * d * d * e
    if path == "openclip":
        return 2 * (P - 1) * F, 2 * B * d * e + 4 * n * B * e
    if path == "ring":
        extra = 4 * min(n * n, CHUNK) * e if cpu else 0
        return (3 * P - 2) * F, 11 * F + extra
    if not local:  # gather without local_loss: the whole B×B loss on every rank, a and b normalised too
        extra = ((B * B if B * B <= KEEP else CHUNK) + 2 * min(B * B, CHUNK)) * e if cpu else 0
        return 4 * (P - 1) * F, 6 * B * d * e + extra
    # CPU: the kept logits of each direction (else a chunk), and the backward's two chunk buffers
    extra = ((2 * n * B if n * B <= KEEP else 2 * CHUNK) + 2 * min(n * B, CHUNK)) * e if cpu else 0
    return 4 * (P - 1) * F, 4 * B * d * e + 2 * F + extra


def table(d: int = 512) -> str:
    """The modelled table of benchmarks/NOTES.md (GPU path: no logits chunk in memory)."""
    gb = 2.0 ** 30
    lines = ["| ranks | B_global | sent: gather | ring | Gram | peak: gather | ring | Gram | open_clip |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for P in (8, 64, 1024):
        for B in (1 << 15, 1 << 17, 1 << 20, 1 << 24):
            if B < P:
                continue
            sent = [model(k, P, B, d)[0] / gb for k in ("gather", "ring", "gram")]
            peak = [model(k, P, B, d)[1] / gb for k in ("gather", "ring", "gram", "openclip")]
            lines.append(f"| {P} | {B // 1024}k | " + " | ".join(f"{x:.3g} GB" for x in sent + peak) + " |")
    return "\n".join(lines)


def _step(kind, gather, local, a, b, s, t):
    import sdekernels

    if kind == "info_nce":
        loss = sdekernels.info_nce(a, b, logit_scale=s, gather=gather, local_loss=local)
    else:
        loss = sdekernels.siglip_loss(a, b, s, t, gather=gather, local_loss=local)
    loss.backward()


def _worker(rank, world, init, args, path):
    from sdekernels.bench import lockstep, peak_memory

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
            times = lockstep(_step, lambda: setup()[0], args.steps, dist.barrier)
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
    p.add_argument("--table", action="store_true", help="print the modelled table and exit")
    p.add_argument("--check", nargs="+", default=None, metavar="JSON", help="measured against modelled peaks")
    args = p.parse_args()
    if args.table:
        print(table(args.d))
        return
    if args.check:
        print("| ranks | rows per rank | d | case | s/step | peak MB | model MB |\n|---:|---:|---:|---|---:|---:|---:|")
        for path in args.check:
            for r in json.load(open(path))["rows"]:
                kind = "ring" if " ring " in r["case"] else "gather"
                m = model(kind, r["world"], r["world"] * r["b_local"], r["d"], cpu=True,
                          local=r["case"].endswith("True"))[1] / 2**20
                m = f"{m:.0f}" if r["case"].startswith("info_nce") else "—"  # the model is info_nce's
                print(f"| {r['world']} | {r['b_local']} | {r['d']} | {r['case']} | {r['step_s']:.2f} | "
                      f"{r['peak_mb']:.0f} | {m} |")
        return
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
            path = "ring" if " ring " in case else "gather"
            modelled = model(path, world, world * args.b_local, args.d, cpu=True,
                             local=case.endswith("True"))[1] / 2**20
            rows.append({"world": world, "case": case, "b_local": args.b_local, "d": args.d,
                         "step_s": med, "peak_mb": peak / 2**20, "model_mb": modelled,
                         "times_s": [res[case]["times_s"] for res in ranks]})
            print(f"world {world}  B_global {world * args.b_local:6d}  d {args.d}  {case:22s}  "
                  f"{med:7.3f} s/step  peak {peak / 2**20:8.1f} MB per rank (model {modelled:.1f})", flush=True)
    if args.json:
        meta = {"commit": commit(("sdekernels/ops/_ring.py", "sdekernels/dist.py", "sdekernels/ops/contrastive.py")),
                "torch": torch.__version__, "cpus": os.cpu_count(), "threads_per_rank": 1,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args)}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
