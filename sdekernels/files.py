"""Loading the files the library and its drivers write (checkpoints, model files, caches): tensors and
containers only, never code; a file that cannot be used is a CheckpointError naming it."""
import pickle

import torch


class CheckpointError(Exception):
    """A checkpoint or model file that cannot be used; the command line prints it in one line and exits with 2."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}".rstrip(": ")


def load_file(path, what: str = "checkpoint"):
    """torch.load with weights_only=True: tensors, numbers, strings and containers only, never code.

    A corrupt, truncated, empty, foreign or unsafe file is a CheckpointError naming it.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise CheckpointError(f"{path}: refused to load this {what}: it holds Python objects other than tensors, "
                                  "numbers, strings and containers (nothing in it was run)") from None
        raise CheckpointError(f"{path}: not a readable {what} ({first_line(exc)})") from None
    except Exception as exc:  # truncated or empty zip, a foreign format, an unreadable file
        raise CheckpointError(f"{path}: not a readable {what} ({first_line(exc)})") from None
