"""What the three training drivers share: the backend namespace, CLI options, the resumable loop
(checkpoints with model, optimizer, RNG states and data position), metrics.jsonl, plots.

Data order is a pure function of (seed, step) (``epoch_batch``), so the data position saved in
a checkpoint is the step itself and a resumed run sees exactly the batches of an uninterrupted one.
"""
import argparse
import functools
import json
import math
import os
import random
import sys
import types
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..files import CheckpointError, first_line, load_file  # noqa: F401  (the drivers' names for them)
from . import distributed
from .distributed import DistributedFailure, Group, collective_failure, launched, local_device, restarts, shutdown

# Every op or module a driver may use, by its public name (the same in both namespaces).
NAMES = ("info_nce", "SDELoss", "singular_values", "spectral_partition", "svd_topk", "spectral_enhance",
         "FourierAttentiveTokens", "fourier_split", "amplitude_mix", "esm_loss", "radial_psd",
         "block_dct_lowpass", "dog")


class FallbackWarning(UserWarning):
    """``--backend fused`` runs an op of the reference (the fused library has none): a fused-vs-reference
    comparison then compares that op with itself."""


def backend(name: str, needed=NAMES) -> types.SimpleNamespace:
    """The ops for ``--backend``: ``sdekernels`` (functional) + ``sdekernels.nn`` (modules), or
    ``sdekernels.reference``.

    A name the fused library does not provide yet falls back to the reference with a warning;
    the namespace's ``fallbacks`` lists those names (it is recorded in summary.json).
    """
    from .. import reference as ref

    if name not in ("fused", "reference"):
        raise ValueError(f"backend must be 'fused' or 'reference', got {name!r}")
    ops, fallbacks = {}, []
    if name == "reference":
        ops = {n: getattr(ref, n) for n in needed}
    else:
        import sdekernels
        import sdekernels.nn as fnn

        for n in needed:
            obj = getattr(fnn if n[0].isupper() else sdekernels, n, None)
            if obj is None:
                fallbacks.append(n)
                obj = getattr(ref, n)
            ops[n] = obj
        if fallbacks:
            warnings.warn(f"--backend fused: no fused {', '.join(fallbacks)} in sdekernels yet; "
                          "using sdekernels.reference for them", FallbackWarning, stacklevel=2)
    return types.SimpleNamespace(name=name, fallbacks=fallbacks, **ops)


def main_entry(fn: Callable) -> Callable:
    """Wrap a driver's ``main(argv)``: a CheckpointError becomes one line on stderr and exit code 2."""
    prog = f"python -m sdekernels train {fn.__module__.rsplit('.', 1)[-1]}"

    @functools.wraps(fn)
    def main(argv=None) -> int:
        try:
            return fn(argv)
        except CheckpointError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
        except DistributedFailure as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 1
        except RuntimeError as exc:
            if not (launched() and collective_failure(exc)):
                raise
            print(f"{prog}: error: rank {os.environ.get('RANK')}: a collective failed or waited longer than "
                  f"--dist-timeout (another rank died or stalled): {first_line(exc)}", file=sys.stderr)
            return 1
        finally:
            shutdown()

    return main


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage block) and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# -- argument types: a bad value is the parser's one-line error and exit code 2 ---------------
def int_range(lo: int, hi: Optional[int] = None) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be {f'in [{lo}, {hi}]' if hi is not None else f'>= {lo}'}, got {v}")
        return v

    return parse


def float_range(lo: float, hi: float = math.inf, *, lo_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float in [lo, hi] ((lo, hi] with lo_open)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
            if math.isfinite(hi):
                where = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
            else:
                where = f"{'>' if lo_open else '>='} {lo:g}"
            raise argparse.ArgumentTypeError(f"must be finite and {where}, got {text}")
        return v

    return parse


def device_arg(text: str) -> str:
    """An argparse type: a device that exists here (cpu, or an available accelerator and index)."""
    try:
        d = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a device: {text!r}") from None
    if d.type != "cpu":
        acc = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        if acc is None or d.type != acc.type:
            raise argparse.ArgumentTypeError(f"{text!r}: no {d.type} device here "
                                             f"(available: cpu{', ' + acc.type if acc is not None else ''})")
        if d.index is not None and d.index >= torch.accelerator.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: only {torch.accelerator.device_count()} {d.type} device(s)")
    return str(d)


POSITIVE = int_range(1)
DTYPES = ("float32", "float64")


def parser(prog: str, description: str, *, steps: int, batch_size: int, lr: float) -> argparse.ArgumentParser:
    p = Parser(prog=f"python -m sdekernels train {prog}", description=description)
    p.add_argument("--steps", type=POSITIVE, default=steps, help="total optimisation steps")
    p.add_argument("--out", required=True, help="output directory (metrics.jsonl, checkpoint.pt, summary.json, plots)")
    p.add_argument("--seed", type=int_range(0), default=0)
    p.add_argument("--backend", choices=("fused", "reference"), default="fused")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="dtype of the model, the data and every op call (see the README for fused-vs-reference parity)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    p.add_argument("--batch-size", type=POSITIVE, default=batch_size)
    p.add_argument("--lr", type=float_range(0.0, lo_open=True), default=lr)
    p.add_argument("--limit", type=POSITIVE, default=None,
                   help="use only this many training samples (tests, quick runs)")
    p.add_argument("--test-limit", type=POSITIVE, default=None, help="evaluate on only this many test samples")
    p.add_argument("--log-every", type=POSITIVE, default=1)
    p.add_argument("--ckpt-every", type=POSITIVE, default=100)
    p.add_argument("--stop-after", type=POSITIVE, default=None,
                   help="stop (with a checkpoint) after this many steps, as an interrupted run would")
    p.add_argument("--device", type=device_arg, default=None, help="default: cuda when available, else cpu")
    p.add_argument("--threads", type=POSITIVE, default=None,
                   help="CPU threads for torch (default: torch's; 1 is much faster on a busy machine with few cores)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--dist-timeout", type=float_range(0.0, lo_open=True), default=600.0, metavar="SECONDS",
                   help="under torchrun: how long a rank waits in a collective for the others (one that died or "
                        "stalled, or rank 0 evaluating before training) before it fails")
    return p


def check_limits(p: argparse.ArgumentParser, args, train_size: int, test_size: int) -> None:
    """--limit and --test-limit within the data (argparse's error otherwise)."""
    for opt, n in (("limit", train_size), ("test_limit", test_size)):
        v = getattr(args, opt)
        if v is not None and v > n:
            p.error(f"argument --{opt.replace('_', '-')}: the data has {n} samples, got {v}")


def device_of(args) -> torch.device:
    """The device of --device (under torchrun: an accelerator without an index is this rank's)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return local_device(torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")))


def join(args, device: torch.device) -> Group:
    """This process's place in the job: torchrun's process group (collectives time out after
    --dist-timeout), or one process without torchrun."""
    return distributed.init(args.dist_timeout, device)


def check_shards(p: argparse.ArgumentParser, args, group: Group) -> None:
    """A mean of per-sample losses over N ranks is the batch's mean only for equal shards."""
    if args.batch_size % group.size:
        p.error(f"argument --batch-size: must be a multiple of the {group.size} processes, got {args.batch_size}")


def dtype_of(args) -> torch.dtype:
    return getattr(torch, args.dtype)


def warmup_cosine(opt, steps: int, warmup: int = 0):
    """LR schedule: linear warm-up over `warmup` steps, then cosine decay to 0 at `steps`."""
    def factor(s):
        return min(1.0, (s + 1) / warmup if warmup else 1.0) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_batch(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
    """Indices of batch ``step``: consecutive slices of one shuffled permutation of range(n) per epoch."""
    idx, pos = [], step * batch_size
    while len(idx) < batch_size:
        epoch, offset = divmod(pos, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        take = perm[offset:offset + batch_size - len(idx)]
        idx.extend(take.tolist())
        pos += len(take)
    return np.asarray(idx, dtype=np.int64)


def rng_states(generators: dict) -> dict:
    """Every RNG state as tensors, numbers and strings (a checkpoint holds nothing else)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state(),
             "generators": {k: g.get_state() for k, g in generators.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict, generators: dict) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    for k, g in generators.items():
        g.set_state(state["generators"][k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_json(path, obj) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")
    os.replace(tmp, path)


def read_metrics(out) -> list:
    path = Path(out) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    try:
        return [json.loads(line) for line in lines]
    except json.JSONDecodeError:  # a process killed mid-write leaves a torn last line
        return [json.loads(line) for line in lines[:-1]]


class Run:
    """Output directory, checkpoints and the step loop of one training run.

    ``state`` maps names to objects with state_dict/load_state_dict (model, optimizer, …),
    ``generators`` to torch.Generators whose states are checkpointed with the global RNGs,
    ``extra`` is a dict saved with every checkpoint (e.g. the evaluation before training).
    ``fixed`` names the arguments that shape the model: a resume must have them as the checkpoint's.
    Under torchrun (``group``) rank 0 writes metrics.jsonl and the checkpoints, every rank resumes
    from the same checkpoint (the RNG states are alike on every rank: each draws the global batch's
    randomness), and a job restarted by torchrun resumes without --resume.
    """

    def __init__(self, args, state: dict, generators: Optional[dict] = None, group: Group = distributed.ONE, *,
                 fixed: Sequence[str] = ()):
        self.args, self.fixed = args, tuple(fixed)
        self.group = group
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.state = state
        self.generators = generators or {}
        self.ckpt = self.out / "checkpoint.pt"
        self.metrics_path = self.out / "metrics.jsonl"
        self.extra: dict = {}
        self.start = 0

    def restore(self) -> int:
        """Load DIR/checkpoint.pt under --resume or after a restart by torchrun (returns its step), else
        start a fresh metrics file at step 0."""
        resume = self.args.resume or restarts() > 0
        if resume and self.ckpt.exists():
            ck = load_file(self.ckpt)
            try:
                made_with = ck["args"].get("dtype", "float32")
                if made_with != self.args.dtype:
                    raise CheckpointError(f"{self.ckpt}: written with --dtype {made_with}; "
                                          "resume with the same --dtype")
                for k in self.fixed:  # a checkpoint older than an option does not record it
                    was = ck["args"].get(k, getattr(self.args, k))
                    if was != getattr(self.args, k):
                        flag = f"--{k.replace('_', '-')}"
                        raise CheckpointError(f"{self.ckpt}: written with {flag} {was}; resume with the same {flag}")
                for k, obj in self.state.items():
                    obj.load_state_dict(ck["state"][k])
                set_rng_states(ck["rng"], self.generators)
                self.extra = dict(ck["extra"])
                self.start = int(ck["step"])
            except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
                raise CheckpointError(f"{self.ckpt}: not a checkpoint of this run ({first_line(exc)})") from None
            if self.group.main:
                if restarts():
                    print(f"restart {restarts()}: resuming from step {self.start} ({self.ckpt})", file=sys.stderr)
                # metrics logged after the checkpoint belong to the lost part of the interrupted run
                kept = [m for m in read_metrics(self.out) if m["step"] < self.start]
                self.metrics_path.write_text("".join(json.dumps(m, sort_keys=True) + "\n" for m in kept))
        else:
            if self.args.resume and self.group.main:
                warnings.warn(f"--resume: no checkpoint in {self.out}; starting from step 0", stacklevel=2)
            if self.group.main:
                self.metrics_path.write_text("")
            self.start = 0
        return self.start

    def save(self, step: int) -> None:
        """Rank 0 writes the checkpoint of ``step`` atomically (a temporary file, then a rename)."""
        if not self.group.main:
            return
        ck = {"step": step, "data_position": step * self.args.batch_size, "args": vars(self.args),
              "world_size": self.group.size,
              "state": {k: obj.state_dict() for k, obj in self.state.items()},
              "rng": rng_states(self.generators), "extra": self.extra}
        tmp = self.out / "checkpoint.pt.tmp"
        with open(tmp, "wb") as f:
            torch.save(ck, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.ckpt)

    def loop(self, step_fn: Callable[[int], dict]) -> bool:
        """Run steps start..steps-1; returns False when --stop-after interrupted the run."""
        from tqdm.auto import tqdm

        a = self.args
        end = a.steps if a.stop_after is None else min(a.steps, a.stop_after)
        bar = tqdm(range(self.start, end), initial=self.start, total=a.steps,
                   disable=a.no_progress or not self.group.main, desc=f"train {Path(a.out).name}", dynamic_ncols=True)
        with open(self.metrics_path, "a") if self.group.main else open(os.devnull, "w") as log:
            for step in bar:
                try:
                    m = step_fn(step)
                except RuntimeError as exc:
                    if self.group.size > 1 and collective_failure(exc):
                        raise DistributedFailure(
                            f"rank {self.group.rank} of {self.group.size}, step {step}: a collective failed or waited "
                            f"longer than --dist-timeout {a.dist_timeout:g} s (another rank died or stalled): "
                            f"{first_line(exc)}") from None
                    raise
                if step % a.log_every == 0 or step == a.steps - 1:
                    log.write(json.dumps({"step": step, **m}, sort_keys=True) + "\n")
                    log.flush()
                bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)
                if (step + 1) % a.ckpt_every == 0 or step + 1 == end:
                    self.save(step + 1)
        return end == a.steps


def plot_curves(metrics: list, keys, path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(k in m for m in metrics)]
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, k in zip(axes.flat, keys):
        pts = [(m["step"], m[k]) for m in metrics if k in m]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1)
        ax.set_xlabel("step")
        ax.set_title(k)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_bars(groups: dict, path, title: str = "", ylabel: str = "") -> None:
    """groups: {series name: {category: value}} as grouped bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = list(next(iter(groups.values())).keys())
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(cats) * max(1, len(groups) / 2), 3.4))
    for i, (name, vals) in enumerate(groups.items()):
        ax.bar([j + i * width for j in range(len(cats))], [vals[c] for c in cats], width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cats))], cats, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
