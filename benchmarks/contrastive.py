"""info_nce and siglip_loss against open_clip's ClipLoss and SigLipLoss (explicit B×B logits):
forward + backward time and peak memory, float32, d = 512 by default.

open_clip's losses are loaded from the installed open-clip-torch (open_clip/loss.py by path); the
features are unit rows, as open_clip's models give them, and logit_scale (and logit_bias) are
learnable tensors. Peak memory is read from the profiler's raw allocation events (CPU) or the
allocator's peak (CUDA). Times are interleaved (one call of each loss per round, so the
machine's load hits all alike); the table gives the median and the range over the rounds, and
the speed-up as the median and range of the per-round ratios. An explicit loss is skipped
where its logits would not fit in --max-logits-gb.

    python benchmarks/contrastive.py [--B 4096 8192 16384] [--d 512] [--runs 5] [--threads N] [--json FILE]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as Fn

import sdekernels
from sdekernels.bench import fwd_bwd, interleaved_times, load_open_clip_loss, peak_memory


def _span(xs):
    return f"{statistics.median(xs):.0f} [{min(xs):.0f}–{max(xs):.0f}]"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--B", type=int, nargs="+", default=[4096, 8192, 16384])
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max-logits-gb", type=float, default=4.0,
                   help="skip an explicit loss whose B×B logits exceed this")
    p.add_argument("--cpu-time", action="store_true",
                   help="time with the process's CPU time instead of wall time (steadier on a shared machine; "
                        "use 1 thread)")
    p.add_argument("--loss", action="append", choices=["info_nce", "siglip_loss"], help="only this loss (repeatable)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    oc = load_open_clip_loss()
    if oc is None:
        raise SystemExit("open-clip-torch is not installed (pip install --no-deps open-clip-torch ftfy)")
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    clip, sig = oc.ClipLoss(), oc.SigLipLoss()
    pairs = {"info_nce": (lambda a, b, s, t: clip(a, b, s),
                          lambda a, b, s, t: sdekernels.info_nce(a, b, logit_scale=s)),
             "siglip_loss": (lambda a, b, s, t: sig(a, b, s, t),
                             lambda a, b, s, t: sdekernels.siglip_loss(a, b, s, t))}
    pairs = {k: v for k, v in pairs.items() if not args.loss or k in args.loss}
    print(f"forward+backward, float32, d={args.d}, {dev}, {torch.get_num_threads()} threads, "
          f"{'CPU' if args.cpu_time else 'wall'} time, torch {torch.__version__}, "
          f"{args.runs} interleaved rounds: median [min–max]")
    print(f"{'loss':<12} {'B':>6} | {'open_clip ms':>18} {'ours ms':>18} {'speed-up':>18} | "
          f"{'open_clip MB':>12} {'ours MB':>8}")
    rows = []
    for B in args.B:
        g = torch.Generator().manual_seed(0)
        a = Fn.normalize(torch.randn(B, args.d, generator=g), dim=-1)
        b = Fn.normalize(0.5 * a + torch.randn(B, args.d, generator=g), dim=-1)
        a, b = a.to(dev), b.to(dev)
        s, t = torch.tensor(10.0, device=dev), torch.tensor(-10.0, device=dev)
        fits = B * B * 4 / 2**30 <= args.max_logits_gb
        fns = {}
        for name, (theirs, ours) in pairs.items():
            if fits:
                fns[name, "open_clip"] = fwd_bwd(theirs, a, b, s, t)
            fns[name, "ours"] = fwd_bwd(ours, a, b, s, t)
        timed = {k: (lambda f=f: (f(), sync())) for k, f in fns.items()}
        mem = {k: peak_memory(f, dev) for k, f in fns.items()}  # also the warm-up run
        clock = time.process_time if args.cpu_time else time.perf_counter
        ms = {k: [1e3 * x for x in t] for k, t in interleaved_times(timed, args.runs, clock=clock, warmup=0).items()}
        for name in pairs:
            ours = ms[name, "ours"]
            row = {"loss": name, "B": B, "d": args.d, "device": str(dev), "threads": torch.get_num_threads(),
                   "clock": "cpu" if args.cpu_time else "wall", "ours_ms": ours, "ours_MB": mem[name, "ours"] / 2**20}
            if fits:
                ratio = [x / y for x, y in zip(ms[name, "open_clip"], ours)]
                row.update(open_clip_ms=ms[name, "open_clip"], open_clip_MB=mem[name, "open_clip"] / 2**20,
                           speedup=ratio)
                print(f"{name:<12} {B:>6} | {_span(row['open_clip_ms']):>18} {_span(ours):>18} "
                      f"{statistics.median(ratio):>5.2f}x [{min(ratio):.2f}–{max(ratio):.2f}] | "
                      f"{row['open_clip_MB']:>12.0f} {row['ours_MB']:>8.0f}")
            else:
                print(f"{name:<12} {B:>6} | {'(does not fit)':>18} {_span(ours):>18} {'':>18} | {'':>12} "
                      f"{row['ours_MB']:>8.0f}")
            rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
