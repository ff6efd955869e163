"""FARL in float32: how far two training runs part that differ only in round-off (benchmarks/training.md).

    python benchmarks/farl_drift.py --init runs/sde [--steps 20] [--until N] [--init-random]

Three runs of `train farl` at its defaults (--steps sets the LR schedule's length), step by step:
the reference, the fused backend, and the reference again with every pixel of the augmented images
moved one ulp up (a difference of round-off size; the backends' images differ by up to ≈ 6 ulp).
Per step it prints the relative loss difference of fused and of nudged from the reference, and
the largest |update difference| / lr over the parameters, with that parameter's name (AdamW
normalises each component's step: one whose gradient is round-off gets an update of O(lr) either way).
With --init-random the frozen model is `train sde`'s, untrained (torch seed 0), saved into --init.
"""
import argparse
import os
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from sdekernels import data  # noqa: E402
from sdekernels.train import common, farl  # noqa: E402
from sdekernels.train.sde import ClipModel  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--init", required=True)
    p.add_argument("--steps", type=int, default=20, help="the run's length (the LR schedule's)")
    p.add_argument("--until", type=int, help="compare this many steps (default: --steps)")
    p.add_argument("--init-random", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    init = Path(a.init)
    if a.init_random:
        init.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        clip = ClipModel()
        torch.save({"config": clip.config, "model": clip.state_dict(), "templates": list(data.TEMPLATES),
                    "classes": list(data.FASHION_CLASSES)}, init / "model.pt")
    args = farl.arguments().parse_args(["--init", str(init), "--out", str(init), "--steps", str(a.steps)])
    pool_x, pool_y = data.fashion_mnist("train", None, torch.float32, normalize=False)
    shots = farl.few_shot_indices(pool_y, farl.BASE, args.shots, args.seed)
    targets = torch.as_tensor([farl.BASE.index(int(c)) for c in pool_y[shots]])
    _, templates = farl.load_clip(init, "cpu")
    emb = data.embed_texts(data.captions(templates=templates), init / "captions.pt")
    emb = emb.view(len(data.FASHION_CLASSES), len(templates), -1).mean(1)
    needed = ("FourierAttentiveTokens", "amplitude_mix")
    ref = common.backend("reference", needed=needed)
    runs = {}
    for name, ops in (("reference", ref), ("fused", common.backend("fused", needed=needed)), ("nudged", ref)):
        common.seed_everything(args.seed)
        model = farl.Adapter(farl.load_clip(init, "cpu")[0], emb, "farl", ops).train()
        if name == "nudged":  # the augmented images moved one ulp up, every pixel
            model.logits = lambda x, classes, m=model: farl.Adapter.logits(m, torch.nextafter(x, x + 1), classes)
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=args.lr, weight_decay=0.01)
        runs[name] = (model, ops, opt, common.warmup_cosine(opt, args.steps))
    for step in range(a.until or a.steps):
        loss, upd, lr = {}, {}, runs["reference"][2].param_groups[0]["lr"]
        for name, (model, ops, opt, sched) in runs.items():
            before = {n: q.detach().clone() for n, q in model.named_parameters() if q.requires_grad}
            out = farl.batch_loss(model, ops, pool_x[shots], targets, step, args)[0]
            opt.zero_grad(set_to_none=True)
            out.backward()
            opt.step()
            sched.step()
            loss[name] = float(out)
            upd[name] = {n: q.detach() - before[n] for n, q in model.named_parameters() if q.requires_grad}
        line = [f"step {step:2d}"]
        for name in ("fused", "nudged"):
            worst = max(upd[name], key=lambda n: float((upd[name][n] - upd["reference"][n]).abs().max()))
            d = float((upd[name][worst] - upd["reference"][worst]).abs().max())
            line.append(f"{name}: loss {abs(loss[name] - loss['reference']) / loss['reference']:.1e}, "
                        f"update {d / lr:.2f}·lr ({worst})")
        print("  ".join(line), flush=True)


if __name__ == "__main__":
    main()
