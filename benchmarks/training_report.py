"""The training results of benchmarks/training.md: runs the drivers, then tabulates and plots them.

    python benchmarks/training_report.py --run            # all runs (CPU, one thread each: ~20 min)
    python benchmarks/training_report.py                  # tables + combined plots from runs/ only

Each run is one `python -m sdekernels train …` command (listed in RUNS, printed by --list); its
summary.json and plots are copied to benchmarks/results/training/<run>.* and the markdown tables
are printed.
"""
import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

SDE = ["--steps", "2000", "--batch-size", "128", "--width", "16", "--test-limit", "2000", "--ckpt-every", "500"]
FARL = ["--steps", "100", "--test-limit", "2000"]
ESM = ["--steps", "1000", "--batch-size", "16", "--width", "16", "--probe-steps", "300", "--ckpt-every", "500"]
RUNS = {
    "sde_sde": ["sde", "--loss", "sde", *SDE],
    "sde_infonce": ["sde", "--loss", "infonce", *SDE],
    "farl_coop": ["farl", "--init", "{runs}/sde_sde", "--method", "coop", *FARL],
    "farl_farl": ["farl", "--init", "{runs}/sde_sde", "--method", "farl", *FARL],
    "esm_plain": ["esm", *ESM],
    "esm_esm": ["esm", "--esm-weight", "0.1", *ESM],
    "esm_dsm": ["esm", "--dsm", *ESM],
    "esm_esm+dsm": ["esm", "--esm-weight", "0.1", "--dsm", *ESM],
}
PLOTS = ("curves.png", "accuracy.png", "energy.png", "spectra.png")


def command(name: str, runs: str) -> list:
    return ["python", "-m", "sdekernels", "train", *[a.format(runs=runs) for a in RUNS[name]], "--threads", "1",
            "--out", f"{runs}/{name}"]


def load(runs: Path) -> dict:
    files = {n: runs / n / "summary.json" for n in RUNS}
    return {n: json.loads(f.read_text()) for n, f in files.items() if f.exists()}


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def tables(s: dict) -> str:
    out = []
    sde = [n for n in ("sde_sde", "sde_infonce") if n in s]
    if sde:
        out += ["| loss | clean | noise | blur | contrast | strong energy % (before → after) | weak % | noise % |",
                "|---|---|---|---|---|---|---|---|"]
        for n in sde:
            b, a = s[n]["before"], s[n]["after"]
            out.append(f"| {s[n]['loss']} | {pct(a['acc_clean'])} | {pct(a['acc_noise'])} | {pct(a['acc_blur'])} | "
                       f"{pct(a['acc_contrast'])} | {pct(b['energy_strong'])} → {pct(a['energy_strong'])} | "
                       f"{pct(b['energy_weak'])} → {pct(a['energy_weak'])} | "
                       f"{pct(b['energy_noise'])} → {pct(a['energy_noise'])} |")
        out += ["", "| loss | centred: strong energy % (before → after) | weak % | noise % | n_strong | n_weak |",
                "|---|---|---|---|---|---|"]
        for n in sde:
            b, a = s[n]["before"], s[n]["after"]
            c = "centered_"
            out.append(f"| {s[n]['loss']} | {pct(b[c + 'energy_strong'])} → {pct(a[c + 'energy_strong'])} | "
                       f"{pct(b[c + 'energy_weak'])} → {pct(a[c + 'energy_weak'])} | "
                       f"{pct(b[c + 'energy_noise'])} → {pct(a[c + 'energy_noise'])} | "
                       f"{b[c + 'n_strong']} → {a[c + 'n_strong']} | {b[c + 'n_weak']} → {a[c + 'n_weak']} |")
        out.append("")
    farl = [n for n in ("farl_coop", "farl_farl") if n in s]
    if farl:
        out += ["| method | base | novel | HM | style base | style novel | style HM | trainable params |",
                "|---|---|---|---|---|---|---|---|"]
        zs = s[farl[0]]["zero_shot"]
        rows = [("zero-shot", zs, 0)] + [(s[n]["method"], s[n]["adapted"], s[n]["trainable_parameters"]) for n in farl]
        for name, r, npar in rows:
            out.append(f"| {name} | {pct(r['base'])} | {pct(r['novel'])} | {pct(r['hm'])} | {pct(r['style_base'])} | "
                       f"{pct(r['style_novel'])} | {pct(r['style_hm'])} | {npar} |")
        out.append("")
    esm = [n for n in RUNS if n.startswith("esm_") and n in s]
    if esm:
        sig = [k for k in s[esm[0]]["after"] if k.startswith("probe_mse_") and k != "probe_mse_mean"]
        out += ["| variant | PSNR dB | esm_loss (test) | latent high-freq. power % | " +
                " | ".join(f"probe MSE σ={k[10:]}" for k in sig) + " | probe MSE mean |",
                "|---|---|---|---|" + "---|" * (len(sig) + 1)]
        for n in esm:
            a = s[n]["after"]
            out.append(f"| {s[n]['variant']} | {a['psnr']:.2f} | {a['esm_test']:.3f} | "
                       f"{pct(a['latent_high_freq_fraction'])} | " +
                       " | ".join(f"{a[k]:.4f}" for k in sig) + f" | {a['probe_mse_mean']:.4f} |")
        img = s[esm[0]]["after"]["image_high_freq_fraction"]
        out.append(f"\n(image high-frequency power: {pct(img)} %)")
    return "\n".join(out)


def combined_spectra(s: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    esm = [n for n in RUNS if n.startswith("esm_") and n in s]
    if not esm:
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    img = s[esm[0]]["after"]["psd_image"]
    ax.semilogy(range(1, len(img) + 1), img, "k-o", ms=3, lw=2, label="image (64×64)")
    for n in esm:
        p = s[n]["after"]["psd_latent"]
        ax.semilogy(range(1, len(p) + 1), p, "-o", ms=2, lw=1, label=f"latent ({s[n]['variant']})")
    ax.set_xlabel("radial frequency bin (normalised radius)")
    ax.set_ylabel("normalised power")
    ax.set_title("radial spectra of test crops and their latents", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default="runs", help="directory of the run outputs")
    p.add_argument("--results", default=str(Path(__file__).parent / "results" / "training"))
    p.add_argument("--run", nargs="*", help="run these (all when no name is given) before reporting")
    p.add_argument("--list", action="store_true", help="print the commands and exit")
    args = p.parse_args()
    if args.list:
        print("\n".join(" ".join(command(n, args.runs)) for n in RUNS))
        return 0
    if args.run is not None:
        for n in args.run or RUNS:
            cmd = command(n, args.runs)
            print("$", " ".join(cmd), flush=True)
            subprocess.run([sys.executable, *cmd[1:]], check=True)
    runs, res = Path(args.runs), Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    s = load(runs)
    for n in s:
        shutil.copy(runs / n / "summary.json", res / f"{n}.summary.json")
        for f in PLOTS:
            if (runs / n / f).exists():
                shutil.copy(runs / n / f, res / f"{n}.{f}")
    combined_spectra(s, res / "esm_spectra.png")
    print(tables(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
