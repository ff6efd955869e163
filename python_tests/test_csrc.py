"""The CPU and CUDA kernel twins of csrc/ held to each other, without a GPU.

- The CUDA twins run on the host and must agree with the CPU twins, the extension's CPU ops, to
  within rounding in float32 and float64: g++ builds the .cu files on cuda_host/emulation.h and
  cuda_bridge.cpp itself (its tensor-to-launcher argument marshalling included), and each twin runs
  under three schedules (block and thread orders) that must agree bit for bit, with a block's threads
  run one at a time between barriers and warps synchronised only at their shuffles: a missing
  __syncthreads or a swapped launcher argument fails here.
- Compiled for sm_90 with the shared functions kept out of line, every CUDA kernel calls the
  functions of spectral_math.h that its CPU twin calls, and the distance kernels accumulate their
  float rows in double (acc_t).
- A launcher definition that drifts from its declaration in cuda/launch.h does not compile, and the
  host side of a CUDA build (cuda_bridge.cpp, the twins' callers) compiles against the real CUDA headers.
"""
import ctypes
import glob
import os
import re
import shutil
import subprocess

import pytest
import torch

from helpers import require

from sdekernels import _ext

CSRC = _ext.csrc_dir()
HOST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_host")
CUDA_SOURCES = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
DTYPES = [torch.float32, torch.float64]


def _nvcc():
    return shutil.which("nvcc") or next(iter(glob.glob("/usr/local/cuda*/bin/nvcc")), None)


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


ORDERS = {"forward": 0, "reversed": 1, "interleaved": 2}  # the emulation's schedules (cuda_host/emulation.h)


def _torch_flags() -> list:
    from torch.utils import cpp_extension

    return [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", "-DSDEKERNELS_CUDA", f"-I{HOST}",
            *(f"-I{p}" for p in cpp_extension.include_paths())]


def build_emulation(directory, csrc=CSRC) -> str:
    """The host build of csrc's CUDA side in `directory`: the .cu kernels on the emulation, and
    cuda_bridge.cpp (with the stand-in guard and stream of cuda_host/c10) registering its twins as
    sdekernels_emulated::<twin> (cuda_host/bridge.cpp). Returns the library's path."""
    from torch.utils import cpp_extension

    flags = ["g++", "-std=c++20", "-O1", "-fPIC"]
    emulated = ["-x", "c++", "-include", os.path.join(HOST, "emulation.h")]
    units = [(emulated, src) for src in sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))]
    units += [([], os.path.join(HOST, "exports.cpp"))]
    bridge = (os.path.join(csrc, "cuda_bridge.cpp"), os.path.join(HOST, "bridge.cpp"))
    units += [(_torch_flags(), src) for src in bridge]
    objects = [os.path.join(directory, os.path.basename(src) + ".o") for _, src in units]
    jobs = [subprocess.Popen(flags + extra + ["-c", src, "-o", obj], stderr=subprocess.PIPE, text=True)
            for (extra, src), obj in zip(units, objects)]
    for j in jobs:
        assert j.wait() == 0, j.stderr.read()[-4000:]
    so = os.path.join(directory, "emulated.so")
    libs = [f"-L{p}" for p in cpp_extension.library_paths()] + ["-lc10", "-ltorch_cpu", "-ltorch"]
    out = _run(["g++", "-shared", *objects, *libs, "-o", so])
    assert out.returncode == 0, out.stderr[-4000:]
    return so


class Emulated:
    """The CUDA twins of a host build (build_emulation), called like the CPU twins: emulated(twin, *args).
    Each call runs in every schedule of the emulation, whose results must agree bit for bit (a race
    or a dependence on block order shows as a difference); it returns the forward schedule's."""

    def __init__(self, so: str):
        torch.ops.load_library(so)
        self.set_order = ctypes.CDLL(so).sdk_set_order

    def __call__(self, twin, *args):
        results = {}
        for name, order in ORDERS.items():
            self.set_order(order)
            out = getattr(torch.ops.sdekernels_emulated, twin)(*args)
            results[name] = out if isinstance(out, (tuple, list)) else (out,)
        self.set_order(0)
        for name, out in results.items():
            for a, b in zip(out, results["forward"], strict=True):
                same = torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
                assert same, f"{twin}: the {name} schedule differs from the forward one"
        return results["forward"]


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    require(shutil.which("g++") is not None, "g++ (the host emulation of the CUDA kernels)")
    return Emulated(build_emulation(str(tmp_path_factory.mktemp("emulated"))))


def test_every_cuda_twin_runs_in_the_emulation():
    declared = set(re.findall(r"\b(\w+)_cuda\(const", open(os.path.join(CSRC, "ops.h")).read()))
    bridge = open(os.path.join(HOST, "bridge.cpp")).read()
    registered = set(re.findall(r'm\.def\("(\w+)", &sdekernels::\1_cuda\)', bridge))
    assert declared and declared == registered


def _twin(op):
    require(_ext.available(), f"the C++ extension ({_ext.status()})")
    return getattr(torch.ops.sdekernels_C, op)


def _close(cuda, cpu, dtype):
    """Twins agree to within rounding: a few ulp of the result's scale (sums differ only in order)."""
    for a, b in zip(cuda, cpu, strict=True):
        scale = float(b.abs().max()) if b.numel() else 0.0
        tol = 4e-6 if dtype == torch.float32 else 1e-13
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("power,squared", [(1.0, True), (2.0, False), (0.5, True)])
def test_hellinger_bwd_twins_agree(emulated, dtype, power, squared):
    g = _gen(0)
    a = torch.rand(3, 700, generator=g, dtype=dtype)
    b = torch.rand(3, 700, generator=g, dtype=dtype)
    a[0, :5] = 0  # clamped entries
    b[1] = a[1] * 1.001  # H² near 0: the gradient's 1/(2H) amplifies the sums' rounding
    grad = torch.randn(3, generator=g, dtype=dtype)
    _close(emulated("hellinger_bwd", a, b, grad, power, squared), _twin("hellinger_bwd")(a, b, grad, power, squared),
           dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("power", [1.0, 2.0])
def test_hellinger_bwd_twins_take_any_scale(emulated, dtype, power):
    """Both twins divide each row by hellinger_row_scale's power of two themselves (so a row at any
    scale has the gradient of its unscaled self, divided by the scale: bit for bit) and give a row
    with a negative entry NaN gradients."""
    g = _gen(1)
    a0, b0 = (torch.rand(4, 300, generator=g, dtype=dtype) + 0.1 for _ in range(2))
    grad = torch.randn(4, generator=g, dtype=dtype)
    f = torch.tensor([[2.0 ** 100, 2.0 ** -110], [2.0 ** 60, 2.0 ** -60], [1, 1], [1, 1]], dtype=dtype)
    a, b = a0 * f[:, :1], b0 * f[:, 1:]
    a[3, 7] = -1.0
    da, db = emulated("hellinger_bwd", a, b, grad, power, squared := True)
    cpu = _twin("hellinger_bwd")(a, b, grad, power, squared)
    for cuda_g, cpu_g in zip((da, db), cpu):
        assert cuda_g[3].isnan().all() and cpu_g[3].isnan().all()
    _close((da[:3], db[:3]), (cpu[0][:3], cpu[1][:3]), dtype)
    unscaled = _twin("hellinger_bwd")(a0[:3], b0[:3], grad[:3], power, squared)
    torch.testing.assert_close(cpu[0][:3] * f[:3, :1], unscaled[0], rtol=0, atol=0)
    torch.testing.assert_close(cpu[1][:3] * f[:3, 1:], unscaled[1], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("weighted", [False, True])
def test_subspace_coef_twins_agree(emulated, dtype, weighted):
    g = _gen(1)
    rows, k = 3, 40
    M = torch.randn(rows, k, k, generator=g, dtype=dtype) / k**0.5
    grad = torch.randn(rows, generator=g, dtype=dtype)
    Sa = torch.rand(rows, k, generator=g, dtype=dtype) if weighted else None
    Sb = torch.rand(rows, k, generator=g, dtype=dtype) if weighted else None
    _close(emulated("subspace_coef", M, grad, Sa, Sb), _twin("subspace_coef")(M, grad, Sa, Sb), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("comp,channel_mean", [(1, True), (2, False), (2, True)])
def test_radial_bin_bwd_twins_agree(emulated, dtype, comp, channel_mean):
    g = _gen(2)
    B, C, H, W, bins = 2, 3, 6, 5, 4
    Y = torch.randn(B, C, H * W * comp, generator=g, dtype=dtype)
    Y[..., comp:2 * comp] *= 1e-8  # an entry under the power floor
    index = torch.randint(0, bins, (H * W,), generator=g)
    inv_count = torch.rand(bins, generator=g, dtype=dtype)
    groups, nc = (B, C) if channel_mean else (B * C, 1)
    grad = torch.randn(groups * bins, generator=g, dtype=dtype)
    scale = 1.0 / (H * W) if comp == 2 else 1.0
    args = (Y, grad.view(B, -1, bins), index, inv_count, comp, scale, channel_mean)
    _close(emulated("radial_bin_bwd", *args), (_twin("radial_bin_bwd")(*args),), dtype)


_LAYOUTS = [(True, False), (False, True), (True, True), (False, False)]


def _fourier_cases(test):
    """Every dtype, spectrum layout and an even and an odd size."""
    for mark in (pytest.mark.parametrize("H,W", [(6, 8), (5, 7)]),
                 pytest.mark.parametrize("onesided,centered", _LAYOUTS),
                 pytest.mark.parametrize("dtype", DTYPES, ids=str)):
        test = mark(test)
    return test


@_fourier_cases
def test_fourier_split_grad_twins_agree(emulated, dtype, onesided, centered, H, W):
    g = _gen(3)
    R, Wo = 2, W // 2 + 1 if onesided else W
    Xh = torch.view_as_real(torch.fft.rfft2(torch.randn(R, H, W, generator=g, dtype=dtype))).contiguous()
    Xh[0, 1, 1] = 0  # |X| = 0: the gradient is 0 there
    gA = torch.randn(R, H, Wo, generator=g, dtype=dtype)
    gP = torch.randn(R, H, Wo, generator=g, dtype=dtype)
    for log_amp in (False, True):
        args = (Xh, gA, gP, W, onesided, centered, log_amp)
        _close(emulated("fourier_split_grad", *args), (_twin("fourier_split_grad")(*args),), dtype)


@_fourier_cases
def test_fourier_merge_grad_twins_agree(emulated, dtype, onesided, centered, H, W):
    g = _gen(4)
    R, Wo = 2, W // 2 + 1 if onesided else W
    G = torch.view_as_real(torch.fft.rfft2(torch.randn(R, H, W, generator=g, dtype=dtype))).contiguous()
    A = torch.rand(R, H, Wo, generator=g, dtype=dtype)
    P = (torch.rand(R, H, Wo, generator=g, dtype=dtype) - 0.5) * 6
    # cos and sin: ATen's vectorised ones on the CPU, libm's in the emulation (the device's on a GPU)
    _close(emulated("fourier_merge_grad", G, A, P, W, onesided, centered),
           _twin("fourier_merge_grad")(G, A, P, W, onesided, centered), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_svd_core_twins_agree(emulated, dtype):
    g = _gen(5)
    rows, k = 3, 12
    A = torch.randn(rows, k, k, generator=g, dtype=dtype)
    B = torch.randn(rows, k, k, generator=g, dtype=dtype)
    S = torch.rand(rows, k, generator=g, dtype=dtype).sort(-1, descending=True).values
    S[1, 5] = S[1, 4]  # a repeated value: the damped 1/(σ_l² − σ_j²)
    gS = torch.randn(rows, k, generator=g, dtype=dtype)
    _close(emulated("svd_core", A, B, S, gS), _twin("svd_core")(A, B, S, gS), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_svd_exact_core_twins_agree(emulated, dtype):
    g = _gen(6)
    rows, r, k = 2, 10, 4
    P = torch.randn(rows, r, k, generator=g, dtype=dtype)
    Q = torch.randn(rows, r, k, generator=g, dtype=dtype)
    sigma = torch.rand(rows, r, generator=g, dtype=dtype).sort(-1, descending=True).values
    gS = torch.randn(rows, k, generator=g, dtype=dtype)
    _close(emulated("svd_exact_core", P, Q, sigma, gS), _twin("svd_exact_core")(P, Q, sigma, gS), dtype)


# ---- the compiled CUDA kernels call the shared functions

# Per kernel: the spectral_math.h functions that it and its CPU twin (the file named) must call.
SHARED = {
    "hellinger_bwd_kernel": ("distances", {"hellinger_row_scale", "spow", "dspow", "inv_sum", "hellinger_root",
                                           "hellinger_live", "hellinger_c", "hellinger_scale", "dh2_dp",
                                           "hellinger_entry_grad"}),
    "subspace_coef_kernel": ("distances", {"subspace_grad", "inv_sum", "spectrum_weight", "subspace_grad_weighted",
                                           "subspace_grad_w", "subspace_term", "sum_term", "weight_grad"}),
    "split_grad_kernel": ("fourier", {"split_entry_grad"}),
    "merge_grad_kernel": ("fourier", {"merge_entry_grad", "polar_grad"}),
    "radial_bin_bwd_kernel": ("spectrum", {"entry_power", "psd_power", "psd_bin_factor", "psd_grad_factor"}),
    "svd_core_kernel": ("svd", {"max_abs", "svd_inv", "svd_core_entry"}),
    "svd_exact_core_kernel": ("svd", {"max_abs", "svd_inv", "svd_exact_entry"}),
}
_HEADER = re.compile(r"^(?:\.visible\s+|\.weak\s+)*\.(entry|func)\b[^\n]*?(_Z\w+)", re.M)


def _ptx_blocks(ptx: str) -> list:
    """(kind, mangled name, text) of each .entry / .func of a PTX listing, up to the next one."""
    starts = [(m.start(), m.group(1), m.group(2)) for m in _HEADER.finditer(ptx)] + [(len(ptx), "", "")]
    return [(kind, name, ptx[s:e]) for (s, kind, name), (e, _, _) in zip(starts, starts[1:])]


def _ptx_calls(ptx: str) -> dict:
    """{demangled kernel: set of sdekernels:: functions it calls, transitively} of a PTX listing."""
    direct, kernels = {}, []
    for kind, name, text in _ptx_blocks(ptx):
        direct.setdefault(name, set()).update(t for t in re.findall(r"_Z\w+", text) if t != name)
        if kind == "entry":
            kernels.append(name)
    names = sorted({n for calls in direct.values() for n in calls} | set(direct))
    plain = dict(zip(names, _run(["c++filt"], input="\n".join(names)).stdout.splitlines(), strict=True))

    def reach(n, seen):
        for c in direct.get(n, ()):
            if c not in seen:
                seen.add(c)
                reach(c, seen)
        return seen

    out = {}
    for k in kernels:
        fns = {m for c in reach(k, set()) for m in re.findall(r"sdekernels::(?!cuda::)(\w+)", plain[c])}
        out[plain[k]] = fns
    return out


@pytest.fixture(scope="module")
def ptx(tmp_path_factory):
    nvcc = _nvcc()
    require(nvcc is not None, "nvcc (the sm_90 compile check of csrc/cuda)")
    require(shutil.which("c++filt") is not None, "c++filt (demangling the launchers' PTX)")
    d, out = tmp_path_factory.mktemp("ptx"), {}
    for src in CUDA_SOURCES:
        dst = str(d / os.path.basename(src).replace(".cu", ".ptx"))
        res = _run([nvcc, "-arch=sm_90", "-O3", "-std=c++17", "-ptx", "-DSDK_HD=__host__ __device__ __noinline__",
                    src, "-o", dst])
        assert res.returncode == 0, res.stderr[-4000:]
        out[os.path.basename(src)] = open(dst).read()
    return out


@pytest.mark.parametrize("kernel", sorted(SHARED))
def test_cuda_kernel_and_cpu_twin_call_the_shared_functions(ptx, kernel):
    cpu_file, want = SHARED[kernel]
    found = {k: v for listing in ptx.values() for k, v in _ptx_calls(listing).items() if f"::{kernel}<" in k}
    assert len(found) == 2, f"{kernel}: float and double instances expected, got {sorted(found)}"
    for name, calls in found.items():
        assert want <= calls, f"{name} does not call {sorted(want - calls)}"
    cpu = open(os.path.join(CSRC, "cpu", cpu_file + ".cpp")).read()
    missing = sorted(f for f in want if not re.search(rf"\b{f}\s*[<(]", cpu))
    assert not missing, f"cpu/{cpu_file}.cpp does not call {missing}"


@pytest.mark.parametrize("kernel", ["hellinger_bwd_kernel", "subspace_coef_kernel"])
def test_cuda_distance_kernels_accumulate_float_rows_in_double(ptx, kernel):
    (f32,) = [text for kind, name, text in _ptx_blocks(ptx["distances.cu"])
              if kind == "entry" and f"{kernel}IfE" in name]
    assert re.search(r"\badd\.(rn\.)?f64\b", f32), f"{kernel}<float> has no double adds: acc_t not used"


# ---- the launchers' declarations bind both sides

def test_launcher_definition_that_drifts_from_its_declaration_does_not_compile(tmp_path):
    nvcc = _nvcc()
    require(nvcc is not None, "nvcc (the sm_90 compile check of csrc/cuda)")
    shutil.copytree(CSRC, tmp_path / "csrc")
    src = tmp_path / "csrc" / "cuda" / "svd.cu"
    text = src.read_text()
    drifted = text.replace("int64_t rows, int64_t k, void* stream) {", "int64_t rows, int k, void* stream) {")
    assert drifted != text
    for body, ok in ((text, True), (drifted, False)):
        src.write_text(body)
        out = _run([nvcc, "-arch=sm_90", "-std=c++17", "-c", str(src), "-o", str(tmp_path / "svd.o")])
        assert (out.returncode == 0) == ok, out.stderr[-2000:]
    assert "svd_core" in out.stderr


# The sources whose code differs in a CUDA build: the bridge and the callers of the CUDA twins.
CUDA_HOST_SIDE = ["cuda_bridge.cpp", "bindings.cpp", "cpu/fourier.cpp", "cpu/spectrum.cpp"]


@pytest.mark.parametrize("source", CUDA_HOST_SIDE)
def test_cuda_build_host_side_compiles_against_the_launchers(source, tmp_path):
    """g++ checks the CUDA build's C++ (SDEKERNELS_CUDA) against this torch's headers and the CUDA
    toolkit's; torch's one generated CUDA header, absent from a CPU build of torch, is stubbed."""
    from torch.utils import cpp_extension

    nvcc = _nvcc()
    homes = [os.environ.get("CUDA_HOME", ""), os.path.dirname(os.path.dirname(os.path.realpath(nvcc or "/")))]
    cuda_inc = next((os.path.join(h, "include") for h in homes + sorted(glob.glob("/usr/local/cuda*"))
                     if os.path.isfile(os.path.join(h, "include", "cuda_runtime_api.h"))), None)
    require(cuda_inc is not None and shutil.which("g++") is not None,
            "the CUDA toolkit's headers and g++ (the compile check of the CUDA build's host side)")
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    incs = [f"-I{p}" for p in (str(tmp_path), *cpp_extension.include_paths(), cuda_inc)]
    out = _run(["g++", "-std=c++20", "-fsyntax-only", "-fopenmp", "-DSDEKERNELS_CUDA", *incs,
                os.path.join(CSRC, source)])
    assert out.returncode == 0, out.stderr[-4000:]
