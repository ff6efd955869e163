"""Why FARL trails its starting point: CoOp, FARL and FARL's parts, few-shot on Fashion-MNIST.

Every cell adapts the same frozen CLIP-style model (`train sde`, 2000 steps, seed 0: the prerequisite
`init`, trained once per study folder; the record keeps its command and its model file's SHA-256)
with `python -m sdekernels train farl`, 3 seeds (the seed draws the shots, the adapter's
initialisation and the augmentation). One cell per (variant, seed) lands in
benchmarks/results/training/farl_study.json with its exact command; `--verify VARIANT:SEED`
reruns one bit for bit (same CPU capability and torch; the prerequisite is retrained if missing).

    python benchmarks/farl_study.py --run            # train every missing cell (2 at a time), then report
    python benchmarks/farl_study.py --report         # tables (training.md) and plot from the JSON
    python benchmarks/farl_study.py --verify farl:1  # rerun one cell, compare with the record
"""
from sdekernels.train.cells import RESULTS, Study, mean_std, pyplot, save_figure

COOP, FARL = ["--method", "coop"], ["--method", "farl"]
VARIANTS = {
    "coop": COOP,
    "farl": FARL,
    "farl_amplitude": [*FARL, "--branches", "amplitude"],        # the style branch alone
    "farl_phase": [*FARL, "--branches", "phase"],                # the structure branch alone
    "farl_angle": [*FARL, "--phase", "angle"],                   # phase as an angle, not (cos, sin)
    "farl_no_inject": [*FARL, "--no-image-injection"],           # text-side prompts only
    "coop_depth1": [*COOP, "--prompt-depth", "1"],
    "farl_depth1": [*FARL, "--prompt-depth", "1"],
    "coop_no_fact": [*COOP, "--amp-mix", "0"],
    "farl_no_fact": [*FARL, "--amp-mix", "0"],
    "coop_lr1e-4": [*COOP, "--lr", "1e-4"],
    "farl_lr1e-4": [*FARL, "--lr", "1e-4"],
    "coop_300": COOP,
    "farl_300": FARL,
    # the amplitude branch alone (no phase branch to overfit) with the other switches
    "farl_amplitude_lr1e-4": [*FARL, "--branches", "amplitude", "--lr", "1e-4"],
    "farl_amplitude_no_inject": [*FARL, "--branches", "amplitude", "--no-image-injection"],
    "coop_mix1": [*COOP, "--amp-mix", "1"],                       # every shot amplitude-mixed
    "farl_amplitude_mix1": [*FARL, "--branches", "amplitude", "--amp-mix", "1"],
}
STUDY = Study(
    "farl_study", "farl", VARIANTS, steps=100,
    shared=["--init", "{runs}/init", "--test-limit", "2000", "--ckpt-every", "100000", "--threads", "1",
            "--no-progress"],
    own_steps={"coop_300": 300, "farl_300": 300},
    needs={"init": (["sde", "--loss", "sde", "--steps", "2000", "--batch-size", "128", "--width", "16",
                     "--test-limit", "2000", "--ckpt-every", "500", "--threads", "1", "--no-progress", "--seed", "0"],
                    "model.pt")},
    metric="adapted.hm",
    extra={**{k: f"adapted.{k}" for k in ("base", "novel", "style_base", "style_novel", "style_hm")},
           **{f"zero_shot_{k}": f"zero_shot.{k}" for k in ("base", "novel", "hm", "style_base", "style_novel",
                                                            "style_hm")},
           "final_loss": "final_loss", "trainable_parameters": "trainable_parameters"})
PLOT = RESULTS / "farl_study.png"
COLS = (("base", "base"), ("novel", "novel"), ("HM", "value"), ("style base", "style_base"),
        ("style novel", "style_novel"), ("style HM", "style_hm"))


def zero_shot(cells: list) -> dict:
    """The frozen model's accuracies: every cell starts from it (the adapters begin as the identity)."""
    values = {k: {c[f"zero_shot_{k}"] for c in cells} for k in ("base", "novel", "hm", "style_base", "style_novel",
                                                                   "style_hm")}
    assert all(len(v) == 1 for v in values.values()), "cells from different starting models"
    return {("value" if k == "hm" else k): v.pop() for k, v in values.items()}


def table(cells: list) -> str:
    zs = zero_shot(cells)
    lines = ["| variant | seeds | " + " | ".join(f"{n} %" for n, _ in COLS) + " | final loss | trainable params |",
             "|---|---|" + "---|" * (len(COLS) + 2),
             "| zero-shot | – | " + " | ".join(f"{100 * zs[k]:.1f}" for _, k in COLS) + " | – | 0 |"]
    for v, cs in STUDY.by_variant(cells).items():
        stats = [mean_std(100 * c[k] for c in cs) for _, k in COLS]
        loss = mean_std(c["final_loss"] for c in cs)
        lines.append(f"| {v} | {len(cs)} | " + " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in stats)
                     + f" | {loss[0]:.2f} ± {loss[1]:.2f} | {cs[0]['trainable_parameters']} |")
    return "\n".join(lines)


def plot(cells: list) -> None:
    plt = pyplot()

    zs, by = zero_shot(cells), STUDY.by_variant(cells)
    names = list(by)
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.32 * len(names) + 1.6), sharey=True)
    for ax, (label, k) in zip(axes, (("HM", "value"), ("style HM", "style_hm"))):
        stats = [mean_std(100 * c[k] for c in by[v]) for v in names]
        ax.barh(range(len(names)), [m for m, _ in stats], xerr=[s for _, s in stats],
                color=["tab:orange" if v.startswith("farl") else "tab:grey" for v in names])
        for i, v in enumerate(names):
            ax.plot([100 * c[k] for c in by[v]], [i] * len(by[v]), "k.", ms=3)
        ax.axvline(100 * zs[k], color="k", ls="--", lw=1, label="zero-shot")
        ax.set_yticks(range(len(names)), names)
        ax.set_title(f"{label} % (base/novel harmonic mean)")
        ax.set_xlim(max(0, min(100 * c[k] for c in cells) - 3), None)
        ax.legend(fontsize=7, loc="lower right")
        ax.invert_yaxis()  # the first variant on top
    fig.suptitle("FARL study, Fashion-MNIST base-to-novel (mean ± std over seeds; dots: seeds)")
    save_figure(fig, PLOT, 110)


if __name__ == "__main__":
    raise SystemExit(STUDY.main(table, plot))
