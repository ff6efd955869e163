"""Which part of SDE helps and which hurts: an ablation of SDELoss on the Fashion-MNIST CLIP driver.

Each variant trains the same model (`python -m sdekernels train sde`) with 3 seeds; one cell per
(variant, seed) lands in benchmarks/results/training/sde_ablation.json with the exact command that
reproduces it, the name of its clean-accuracy key in that run's summary.json, the corruption
accuracies and the energy fractions. The record names the commit its cells were measured at and the
CPU and torch they ran on: on the same CPU capability and torch, `--threads 1` reproduces a cell bit for
bit at that commit, and python_tests/test_ablation.py re-verifies one cell at HEAD, so a change of
the numerics fails there until the record is measured again (`--run --fresh`).

    python benchmarks/sde_ablation.py --run            # train every missing cell (2 at a time), then report
    python benchmarks/sde_ablation.py --run --fresh    # measure every cell again at HEAD (a clean tree)
    python benchmarks/sde_ablation.py --report         # table (training.md) and plot from the JSON
    python benchmarks/sde_ablation.py --verify infonce:0   # rerun one cell, compare with the record
"""
from sdekernels.train.cells import RESULTS, Study, mean_std, pyplot, save_figure

# variant -> its arguments of `train sde` (everything else is shared, below)
VARIANTS = {
    "infonce": ["--loss", "infonce"],
    "sde": ["--loss", "sde"],
    "no_enhance": ["--loss", "sde", "--no-enhance"],
    "no_hellinger": ["--loss", "sde", "--spectral-terms", "subspace"],
    "no_subspace": ["--loss", "sde", "--spectral-terms", "hellinger"],
    "const_lambda": ["--loss", "sde", "--lambda-start", "0.275", "--lambda-end", "0.275"],
    "augment": ["--loss", "sde", "--mode", "augment"],
    "center": ["--loss", "sde", "--center"],
    # the setting of the earlier runs: 128-d features from a width-16 encoder, rank <= 65 of 128
    "infonce_dim128": ["--loss", "infonce"],
    "sde_dim128": ["--loss", "sde"],
    "no_hellinger_dim128": ["--loss", "sde", "--spectral-terms", "subspace"],
}
METRIC = "after.acc_clean"  # the clean zero-shot accuracy in summary.json
EXTRA = ("acc_noise", "acc_blur", "acc_contrast", "energy_strong", "energy_weak", "energy_noise",
         "centered_energy_strong", "centered_energy_weak", "centered_energy_noise")
# --dim 64: the width-16 CNN's image features have rank <= 4·16 + 1 = 65, so a wider projection would
# make the spectrum (and the reference SVD gradient) degenerate.
STUDY = Study(
    "sde_ablation", "sde", VARIANTS, folder="runs/ablation", steps=300,
    shared=["--batch-size", "128", "--width", "16", "--dim", "64", "--test-limit", "2000", "--ckpt-every", "100000",
            "--threads", "1", "--no-progress"],
    late={v: ["--dim", "128"] for v in VARIANTS if v.endswith("_dim128")},  # the last --dim wins
    metric=METRIC, extra={k: f"after.{k}" for k in EXTRA})
PLOT = RESULTS / "sde_ablation.png"
SEEDS, command, run_cell, load_record, differences = STUDY.seeds, STUDY.command, STUDY.run_cell, STUDY.load_record, \
    STUDY.differences


def table(cells: list) -> str:
    by = STUDY.by_variant(cells)
    cols = [("clean", "value"), ("noise", "acc_noise"), ("blur", "acc_blur"), ("contrast", "acc_contrast")]
    lines = ["| variant | seeds | " + " | ".join(f"{n} %" for n, _ in cols)
             + " | strong / weak / noise energy % | centred strong / weak / noise % |",
             "|---|---|" + "---|" * (len(cols) + 2)]
    for v in VARIANTS:
        cs = by.get(v)
        if not cs:
            continue
        acc = [mean_std([100 * c[k] for c in cs]) for _, k in cols]
        en = [mean_std([100 * c[k] for c in cs])[0] for k in ("energy_strong", "energy_weak", "energy_noise")]
        cen = [mean_std([100 * c[f"centered_{k}"] for c in cs])[0]
               for k in ("energy_strong", "energy_weak", "energy_noise")]
        lines.append(f"| {v} | {len(cs)} | " + " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in acc)
                     + " | " + " / ".join(f"{e:.1f}" for e in en) + " | " + " / ".join(f"{e:.1f}" for e in cen) + " |")
    return "\n".join(lines)


def plot(cells: list) -> None:
    plt = pyplot()

    names = [v for v in VARIANTS if any(c["variant"] == v for c in cells)]
    keys = [("clean", "value"), ("noise", "acc_noise"), ("blur", "acc_blur"), ("contrast", "acc_contrast")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.6), sharey=False)
    for ax, (label, k) in zip(axes, keys):
        stats = [mean_std([100 * c[k] for c in cells if c["variant"] == v]) for v in names]
        ax.barh(range(len(names)), [m for m, _ in stats], xerr=[s for _, s in stats],
                color=["tab:grey" if v == "infonce" else "tab:blue" for v in names])
        for i, v in enumerate(names):
            seeds = [100 * c[k] for c in cells if c["variant"] == v]
            ax.plot(seeds, [i] * len(seeds), "k.", ms=3)
        ax.set_yticks(range(len(names)), names if ax is axes[0] else [""] * len(names))
        ax.set_title(f"{label} zero-shot accuracy %")
        ax.set_xlim(max(0, min(100 * c[k] for c in cells) - 5), None)
    fig.suptitle("SDELoss ablation, Fashion-MNIST CLIP (mean ± std over seeds; dots: seeds)")
    save_figure(fig, PLOT, 110)


if __name__ == "__main__":
    raise SystemExit(STUDY.main(table, plot))
