"""Training drivers: ``python -m sdekernels train sde|farl|esm|retrieval`` (see each module's docstring)."""
DRIVERS = ("sde", "farl", "esm", "retrieval")


def main(which: str, argv=None) -> int:
    """Run driver ``which`` with its command-line arguments ``argv``."""
    import importlib

    if which not in DRIVERS:
        raise ValueError(f"which must be one of {DRIVERS}, got {which!r}")
    return importlib.import_module(f"{__name__}.{which}").main(argv)
