"""Spectrum matching in a small autoencoder: which setting gives a latent that is easier to model
and reconstructs as well.

Each cell trains `python -m sdekernels train esm` (64×64 crops of scikit-image's photos → latent
4×16×16) with 3 seeds and records its reconstruction PSNR, its test esm_loss, the latent's
high-frequency power and the diffusability probe's held-out MSE at two probe sizes (a denoiser of
width 32 and of width 128, trained on the latents). One cell per (variant, seed) lands in
benchmarks/results/training/esm_study.json with its exact command; `--verify VARIANT:SEED` reruns
one bit for bit (same CPU capability and torch), and python_tests/test_ablation.py does so for one
cell at HEAD.

    python benchmarks/esm_study.py --run             # train every missing cell (2 at a time), then report
    python benchmarks/esm_study.py --report          # tables (training.md), Pareto plot from the JSON
    python benchmarks/esm_study.py --verify esm:1    # rerun one cell, compare with the record
"""
from sdekernels.train.cells import RESULTS, Study, mean_std, pyplot, save_figure

ESM = ["--esm-weight", "0.1"]
VARIANTS = {
    "plain": [],
    "esm": ESM,                                       # δ = 1, weight 0.1, library variant, DC dropped
    "dsm": ["--dsm"],
    "esm+dsm": [*ESM, "--dsm"],
    "esm_delta0": [*ESM, "--esm-delta", "0"],         # the image's own spectrum, unflattened
    "esm_delta0.5": [*ESM, "--esm-delta", "0.5"],
    "esm_delta2": [*ESM, "--esm-delta", "2"],
    "esm_w0.01": ["--esm-weight", "0.01"],
    "esm_w1": ["--esm-weight", "1"],
    "esm_official": [*ESM, "--esm-variant", "official"],
    "esm_keep_dc": [*ESM, "--esm-keep-dc"],
}
PROBES = (32, 128)
STUDY = Study(
    "esm_study", "esm", VARIANTS, steps=1000,
    shared=["--batch-size", "16", "--width", "16", "--probe-steps", "300", "--probe-widths", *map(str, PROBES),
            "--ckpt-every", "100000", "--threads", "1", "--no-progress"],
    metric="after.psnr",
    extra={"esm_test": "after.esm_test", "high_freq": "after.latent_high_freq_fraction",
           "probe": "after.probe_mse_mean", f"probe_w{PROBES[1]}": f"after.probe_mse_mean_w{PROBES[1]}",
           **{f"probe_{s}": f"after.probe_mse_{s}" for s in ("0.1", "0.25", "0.5", "1")},
           "psd_latent": "after.psd_latent", "psd_image": "after.psd_image", "final_loss": "final_loss"})
PLOT, SPECTRA = RESULTS / "esm_study.png", RESULTS / "esm_spectra.png"
COLS = (("PSNR dB", "value", 1, ".2f"), ("esm_loss (test)", "esm_test", 1, ".3f"),
        ("latent high-freq. power %", "high_freq", 100, ".1f"),
        (f"probe MSE (w{PROBES[0]})", "probe", 1, ".4f"),
        (f"probe MSE (w{PROBES[1]})", f"probe_w{PROBES[1]}", 1, ".4f"))


def stats(cells: list) -> dict:
    return {v: {k: mean_std(f * c[k] for c in cs) for _, k, f, _ in COLS} for v, cs in STUDY.by_variant(cells).items()}


def pareto(points: dict) -> list:
    """The variants no other variant beats on both PSNR (higher) and probe MSE (lower)."""
    return [v for v, (p, m) in points.items()
            if not any(p2 >= p and m2 <= m and (p2, m2) != (p, m) for p2, m2 in points.values())]


def table(cells: list) -> str:
    st, n = stats(cells), {v: len(cs) for v, cs in STUDY.by_variant(cells).items()}
    front = {w: pareto({v: (s["value"][0], s[k][0]) for v, s in st.items()})
             for w, k in zip(PROBES, ("probe", f"probe_w{PROBES[1]}"))}
    lines = ["| variant | seeds | " + " | ".join(name for name, *_ in COLS) + " | Pareto front |",
             "|---|---|" + "---|" * (len(COLS) + 1)]
    for v, s in st.items():
        on = [f"w{w}" for w in PROBES if v in front[w]]
        lines.append(f"| {v} | {n[v]} | " + " | ".join(f"{s[k][0]:{fmt}} ± {s[k][1]:{fmt}}" for _, k, _, fmt in COLS)
                     + f" | {', '.join(on) or '–'} |")
    return "\n".join(lines)


def plot(cells: list) -> None:
    plt = pyplot()

    st = stats(cells)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, w, k in zip(axes, PROBES, ("probe", f"probe_w{PROBES[1]}")):
        points = {v: (s["value"][0], s[k][0]) for v, s in st.items()}
        front = sorted((points[v] for v in pareto(points)), key=lambda p: p[0])
        ax.plot([p for p, _ in front], [m for _, m in front], "-", color="tab:red", lw=1, label="Pareto front")
        for v, s in st.items():
            ax.errorbar(s["value"][0], s[k][0], xerr=s["value"][1], yerr=s[k][1], fmt="o", ms=4, capsize=2)
            ax.annotate(v, (s["value"][0], s[k][0]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("reconstruction PSNR (dB), higher is better")
        ax.set_ylabel(f"probe MSE, width-{w} denoiser (lower is easier)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("ESM / DSM study: reconstruction against diffusability (mean ± std over seeds)")
    save_figure(fig, PLOT, 110)


def spectra(cells: list) -> None:
    """The latents' radial spectra (mean over seeds) against the test crops'."""
    plt = pyplot()

    by = STUDY.by_variant(cells)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    img = [sum(x) / len(cells) for x in zip(*(c["psd_image"] for c in cells))]
    bins = range(1, len(img) + 1)
    ax.semilogy(bins, img, "k-o", ms=3, lw=2, label="image (64×64)")
    for v, cs in by.items():
        psd = [sum(x) / len(cs) for x in zip(*(c["psd_latent"] for c in cs))]
        ax.semilogy(bins, psd, "-o", ms=2, lw=1, label=f"latent ({v})")
    ax.set_xlabel("radial frequency bin (normalised radius)")
    ax.set_ylabel("normalised power")
    ax.set_title("radial spectra of the test crops and their latents (mean over seeds)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    save_figure(fig, SPECTRA, 100)


if __name__ == "__main__":
    raise SystemExit(STUDY.main(table, plot, spectra))
