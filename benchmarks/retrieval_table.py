"""The retrieval table of benchmarks/training.md from the runs' summary.json files.

    python benchmarks/retrieval_table.py RUN_DIR ...   (each the --out of a `train retrieval` run)

Per loss: recall@1, recall@10 and MRR on the held-out synsets (mean ± sample standard deviation
over the seeds found, in percent), and the strong / noise energy fractions of the held-out
document embeddings (SPEC §2, raw and centred) after training.
"""
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def main(dirs) -> None:
    runs = defaultdict(list)
    for d in dirs:
        s = json.loads((Path(d) / "summary.json").read_text())
        runs[s["args"]["loss"]].append(s)

    def cell(values):
        values = [100 * v for v in values]
        if len(values) == 1:
            return f"{values[0]:.1f}"
        return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"

    print("| loss | seeds | recall@1 | recall@10 | MRR | doc energy strong / noise | centred strong / noise |")
    print("|---|---|---|---|---|---|---|")
    for loss, ss in runs.items():
        a = [s["after"] for s in ss]
        e = [x["energy_doc"] for x in a]
        c = [x["energy_doc_centered"] for x in a]
        seeds = ", ".join(str(s["args"]["seed"]) for s in ss) if loss != "zero-shot" else "–"
        print(f"| {loss} | {seeds} | {cell([x['recall@1'] for x in a])} | {cell([x['recall@10'] for x in a])} | "
              f"{cell([x['mrr'] for x in a])} | {cell([x['strong'] for x in e])} / {cell([x['noise'] for x in e])} | "
              f"{cell([x['strong'] for x in c])} / {cell([x['noise'] for x in c])} |")


if __name__ == "__main__":
    main(sys.argv[1:])
