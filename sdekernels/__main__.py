"""Command line: python -m sdekernels info | check | bench | aot | constants | train sde|farl|esm|retrieval."""
import argparse
import sys

import torch

from .train.common import Parser, device_arg


def _info(args) -> int:
    from . import _core, _ext
    from .registry import all_ops

    cuda = torch.cuda.is_available()
    print(f"sdekernels  {__import__('sdekernels').__version__}")
    print(f"python      {sys.version.split()[0]}")
    print(f"torch       {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    print(f"device      {torch.cuda.get_device_name() if cuda else 'cpu'} ({torch.get_num_threads()} CPU threads)")
    if _core.HAS_TRITON:
        import triton
        cpu_mode = "interpreter (TRITON_INTERPRET=1)" if _core.INTERPRET else "not used (no GPU): CPU ops run on ATen"
        mode = "compiled (CUDA)" if cuda else cpu_mode
        print(f"triton      {triton.__version__}: {mode}")
    else:
        print("triton      not installed: CPU ops run on ATen")
    print(f"extension   {_ext.status()}; CUDA kernels {'built' if _ext.has_cuda_kernels() else 'not built'}"
          + (f" ({_ext.prebuilt_path()})" if _ext.status() == "prebuilt" else ""))
    if not _ext.available():
        print(f"            without it these ops lose their fused backward: {', '.join(_ext.FUSED_BACKWARD)}; "
              f"and these their fused CPU forward: {', '.join(_ext.FUSED_CPU_FORWARD)} (the reference or ATen ops "
              "run instead)")
    print(f"debug       {'on' if _core.DEBUG else 'off'} (SDEKERNELS_DEBUG=1 checks inputs for NaN/Inf)")
    print(f"ops         {', '.join(sorted(all_ops()))}")
    return 0


def _check(args) -> int:
    from .registry import F64, all_ops, parity

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ops = all_ops()
    failed = 0
    print(f"{'op':22} {'dtype':9} {'max error':>10} {'error/allowed':>14}  result   ({device})")
    for name in sorted(ops):
        if args.op and name not in args.op:
            continue
        info = ops[name]
        for dtype in (torch.float32, F64, torch.bfloat16, torch.float16):
            err, ratio = 0.0, 0.0
            try:
                for shape in info.shapes:
                    e, r, _ = parity(info, shape, dtype, device)
                    err, ratio = max(err, e), max(ratio, r)
                ok = ratio <= 1.0
            except Exception as exc:  # an op that raises is a failure, and the table goes on
                ok, err, ratio = False, float("nan"), float("nan")
                print(f"  {name} {dtype}: {type(exc).__name__}: {exc}")
            failed += not ok
            print(f"{name:22} {str(dtype).replace('torch.', ''):9} {err:10.2e} {ratio:14.3f}  {'ok' if ok else 'FAIL'}")
    print(f"{'all ops agree with the reference' if not failed else f'{failed} failure(s)'}")
    return 1 if failed else 0


def _bench(args) -> int:
    import importlib.util

    if importlib.util.find_spec("pytest_benchmark") is None:
        print("the bench runs on pytest-benchmark, which is not installed: pip install pytest-benchmark",
              file=sys.stderr)
        return 2
    from . import bench

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size = "quick" if args.quick else "bench" if args.full or device.type == "cuda" else "quick"
    if size == "quick" and not args.quick and device.type == "cpu":
        print("on CPU the quick shapes are the default (the field's full sizes take hours and up to ~40 GB here); "
              "--full runs every shape")
    if args.cpu_time and (device.type != "cpu" or (args.threads or torch.get_num_threads()) != 1):
        raise ValueError("--cpu-time needs the CPU and one thread (--threads 1): it sums the CPU time of all threads")
    data = bench.run(args.op, size="tiny" if args.tiny else size, device=device, dtype=args.dtype,
                     compile_ref=not args.no_compile_ref, cpu_time=args.cpu_time, threads=args.threads,
                     shapes=args.shape, modes=args.mode, json_path=args.json, quiet=args.no_progress)
    rows = bench.rows(data)
    print(f"timed by {rows[0]['timer'] if rows else '-'} (pytest-benchmark), {args.threads or torch.get_num_threads()} "
          f"thread(s), on {bench.device_name(device)}")
    print(bench.table(rows))
    if args.json:
        print(f"wrote {args.json} (pytest-benchmark JSON: --benchmark-compare reads it)")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(bench.markdown(rows) + "\n")
        print(f"wrote {args.markdown}")
    if args.csv:
        bench.write_csv(args.csv, rows)
        print(f"wrote {args.csv}")
    if args.plot:
        bench.plot(rows, args.plot, f"sdekernels on {bench.device_name(device)}")
        print(f"wrote {args.plot}")
    return 0


def main(argv=None) -> int:
    p = Parser(prog="python -m sdekernels", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="versions, device, and which kernel paths are live")
    c = sub.add_parser("check", help="every registered op against the reference on this device (exit 1 on failure)")
    c.add_argument("--op", action="append", help="only this op (repeatable)")
    c.add_argument("--device", type=device_arg)
    b = sub.add_parser("bench", help="the bench table: reference, ours and baselines per op and shape")
    b.add_argument("--op", action="append", help="only this op (repeatable)")
    b.add_argument("--quick", action="store_true", help="only the small shapes (the default on CPU)")
    b.add_argument("--full", action="store_true", help="every shape, also on CPU")
    b.add_argument("--shape", action="append", help="only the shapes whose label (e.g. B=4096,d=256) starts with this")
    b.add_argument("--tiny", action="store_true", help="each op at its small test shape (a smoke run)")
    b.add_argument("--mode", action="append", choices=["fwd", "bwd", "full"], help="only this mode (repeatable)")
    b.add_argument("--json", help="write pytest-benchmark's JSON (extra_info: op, shape, provider, mode, ...) here")
    b.add_argument("--markdown", help="write the per-case table with the ratios as Markdown to this file")
    b.add_argument("--csv", help="write Liger-Kernel's benchmark columns (speed and memory, p20/p50/p80) here")
    b.add_argument("--plot", help="write a speedup bar chart (PNG) to this file")
    b.add_argument("--device", type=device_arg)
    b.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    b.add_argument("--no-compile-ref", action="store_true", help="leave out torch.compile of the reference")
    b.add_argument("--threads", type=int, help="torch.set_num_threads first")
    b.add_argument("--cpu-time", action="store_true",
                   help="time by the process's CPU time, not the wall clock "
                        "(CPU, one thread: for a shared, loaded machine)")
    b.add_argument("--no-progress", action="store_true")
    a = sub.add_parser("aot", help="compile every Triton kernel at the specialisations the ops launch, for a GPU "
                       "target, and report registers, spills, shared memory and tensor-core use (no GPU needed)")
    a.add_argument("--arch", default="sm_90")
    a.add_argument("--shapes", default="bench", choices=["bench", "test"])
    a.add_argument("--op", action="append", help="only this op (repeatable)")
    a.add_argument("--json", help="write the rows to this file")
    a.add_argument("--no-progress", action="store_true")
    k = sub.add_parser("constants", help="write csrc/constants.h from the table sdekernels/constants.py")
    k.add_argument("--check", action="store_true", help="write nothing; exit 1 where the header differs from the table")
    t = sub.add_parser("train", help="training drivers: train sde|farl|esm|retrieval --help", add_help=False)
    t.add_argument("which", choices=("sde", "farl", "esm", "retrieval"))
    t.add_argument("rest", nargs=argparse.REMAINDER, help="the driver's own arguments")
    args = p.parse_args(argv)
    if args.cmd in ("check", "bench") and args.op:
        from .registry import all_ops

        unknown = sorted(set(args.op) - set(all_ops()))
        if unknown:
            (c if args.cmd == "check" else b).error(
                f"argument --op: unknown op(s) {', '.join(unknown)} (known: {', '.join(sorted(all_ops()))})")
    if args.cmd == "train":
        from .train import main as train_main

        return train_main(args.which, args.rest)
    if args.cmd == "aot":
        from .aot import main as aot_main

        return aot_main(args)
    if args.cmd == "constants":
        from .constants import write_header

        return write_header(check=args.check)
    return {"info": _info, "check": _check, "bench": _bench}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
