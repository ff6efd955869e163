"""info_nce and siglip_loss against open_clip's ClipLoss and SigLipLoss (explicit B×B logits):
forward + backward time and peak memory, float32, d = 512 by default.

open_clip's losses are loaded from the installed open-clip-torch (open_clip/loss.py by path); the
features are unit rows, as open_clip's models give them, and logit_scale (and logit_bias) are
learnable tensors. Peak memory is read from the profiler's raw allocation events (CPU) or the
allocator's peak (CUDA). Times come from the bench's own loop (sdekernels.bench.compare: the first
call apart, warm-up, rounds sized to --budget seconds per loss); the table gives the median and
the quartiles, and the speed-up as the ratio of the medians. An explicit loss is skipped where its
logits would not fit in --max-logits-gb. The memory of each loss up to the largest batch a budget
allows: benchmarks/maxbatch.py.

    python benchmarks/contrastive.py [--B 4096 8192 16384] [--d 512] [--budget 3] [--threads N] [--json FILE]
"""
import argparse
import json

import torch
import torch.nn.functional as Fn

import sdekernels
from sdekernels.bench import compare, fwd_bwd, load_open_clip_loss, peak_memory


def _span(t):
    return f"{t['ms']:.0f} [{t['ms_q1']:.0f}–{t['ms_q3']:.0f}]"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--B", type=int, nargs="+", default=[4096, 8192, 16384])
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--budget", type=float, default=3.0, help="seconds of timed rounds per loss (5 to 31 rounds)")
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
    clip, sig = oc.ClipLoss(), oc.SigLipLoss()
    pairs = {"info_nce": (lambda a, b, s, t: clip(a, b, s),
                          lambda a, b, s, t: sdekernels.info_nce(a, b, logit_scale=s)),
             "siglip_loss": (lambda a, b, s, t: sig(a, b, s, t),
                             lambda a, b, s, t: sdekernels.siglip_loss(a, b, s, t))}
    pairs = {k: v for k, v in pairs.items() if not args.loss or k in args.loss}
    print(f"forward+backward, float32, d={args.d}, {dev}, {torch.get_num_threads()} threads, "
          f"{'CPU' if args.cpu_time else 'wall'} time, torch {torch.__version__}, "
          f"the bench's loop: median [quartiles]")
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
        mem = {k: peak_memory(f, dev) for k, f in fns.items()}
        ms = compare({f"{n} {who} B={B}": f for (n, who), f in fns.items()}, device=dev, cpu_time=args.cpu_time,
                     budget_s=args.budget)
        ms = {k: ms[f"{k[0]} {k[1]} B={B}"] for k in fns}
        for name in pairs:
            ours = ms[name, "ours"]
            row = {"loss": name, "B": B, "d": args.d, "device": str(dev), "threads": torch.get_num_threads(),
                   "clock": "cpu" if args.cpu_time else "wall", "ours_ms": ours, "ours_MB": mem[name, "ours"] / 2**20}
            if fits:
                ratio = ms[name, "open_clip"]["ms"] / ours["ms"]
                row.update(open_clip_ms=ms[name, "open_clip"], open_clip_MB=mem[name, "open_clip"] / 2**20,
                           speedup=ratio)
                print(f"{name:<12} {B:>6} | {_span(row['open_clip_ms']):>18} {_span(ours):>18} "
                      f"{ratio:>17.2f}x | {row['open_clip_MB']:>12.0f} {row['ours_MB']:>8.0f}")
            else:
                print(f"{name:<12} {B:>6} | {'(does not fit)':>18} {_span(ours):>18} {'':>18} | {'':>12} "
                      f"{row['ours_MB']:>8.0f}")
            rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
