"""Rules of the package layout, read from the source (AST), so a violation fails here and not in review:
- torch.linalg.eigh / eigvalsh are called from the spectral core's solvers (sdekernels/ops/_solvers.py) alone;
- the reference (reference/*.py) is a leaf: it imports nothing from sdekernels;
- the library enters the reference through two doors only: sdekernels/_fallback.py (the no-extension
  fallback and the registry's reference of each op) and the drivers' --backend switch (train/common.py);
- sdekernels/data.py imports nothing from the training drivers (sdekernels/train/ imports it);
- an op module (sdekernels/ops/*.py) or loss.py imports from the shared modules (the private modules
  of sdekernels/ops: the spectral core, the ring exchange and the Triton policy; _core, _ext,
  _fallback, constants, dist, registry, schedules) and from another op module only public names:
  those of sdekernels.functional (never a module object, which would reach its internals);
- no module of sdekernels/ops, shared or not, nor loss.py imports a private (leading-underscore)
  name of another module of sdekernels/ops."""
import ast
import importlib.util
import pathlib

import pytest

import sdekernels.functional
import sdekernels.reference

PKG = pathlib.Path(sdekernels.functional.__file__).parent
CORE = {f"sdekernels.ops.{p.stem}" for p in (PKG / "ops").glob("_*.py") if p.stem != "__init__"}
SHARED = CORE | {"sdekernels._core", "sdekernels._ext", "sdekernels._fallback", "sdekernels.constants",
                 "sdekernels.dist", "sdekernels.registry", "sdekernels.schedules"}
PUBLIC = set(sdekernels.functional.__all__)
DOORS = {"_fallback.py", "train/common.py"}  # the only library modules that import the reference
OP_MODULES = sorted(p for p in (PKG / "ops").glob("*.py") if not p.name.startswith("_"))


def _package_files():
    """Every .py file of the package itself (the reference is its own package, linked in: not followed)."""
    return [p for p in PKG.rglob("*.py") if not p.relative_to(PKG).parts[0] == "reference"]


def _module_name(path: pathlib.Path) -> str:
    return ".".join(("sdekernels", *path.relative_to(PKG).with_suffix("").parts))


def _eigh_calls(tree: ast.AST) -> list:
    """Line numbers of torch.linalg.eigh / eigvalsh references (attribute access or import)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("eigh", "eigvalsh") and \
                isinstance(node.value, ast.Attribute) and node.value.attr == "linalg":
            lines.append(node.lineno)
        if isinstance(node, ast.ImportFrom) and node.module == "torch.linalg" and \
                any(a.name in ("eigh", "eigvalsh") for a in node.names):
            lines.append(node.lineno)
    return lines


def test_eigh_only_in_the_spectral_core():
    found = {}
    for path in _package_files():
        lines = _eigh_calls(ast.parse(path.read_text()))
        if lines:
            found[str(path.relative_to(PKG))] = lines
    assert set(found) == {"ops/_solvers.py"}, found


def _is_module(name: str) -> bool:
    """Whether `name` is a module, as the import system sees it (sdekernels.reference is mapped in by
    the install, not a folder inside sdekernels/)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _imports(path: pathlib.Path, source: str):
    """(imported module, name or None for the module itself, line) of each sdekernels import in the
    source of the module at path."""
    package = _module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "sdekernels":
                    yield a.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            if module.split(".")[0] != "sdekernels":
                continue
            for a in node.names:
                sub = f"{module}.{a.name}"
                if _is_module(sub):
                    yield sub, None, node.lineno  # `from . import svd`: a module object
                else:
                    yield module, a.name, node.lineno


def _violations(path: pathlib.Path, source: str) -> list:
    own = _module_name(path)
    bad = []
    for module, name, line in _imports(path, source):
        if module == own or any(module == s or module.startswith(s + ".") for s in SHARED):
            continue
        if module.startswith("sdekernels.ops.") and name is not None and name in PUBLIC:
            continue  # a public op of another op module
        bad.append(f"{path.name}:{line} imports {module}{'' if name is None else '.' + name}")
    return bad


@pytest.mark.parametrize("path", [*OP_MODULES, PKG / "loss.py"], ids=lambda p: p.name)
def test_op_modules_import_only_public_names(path):
    assert _violations(path, path.read_text()) == []


def test_import_rule_catches_internal_names():
    """The rule above can fail: an internal name, a module object and a private name are each caught."""
    src = ("from .enhance import enhance_coefs\nfrom . import distances\nimport sdekernels.ops.fourier as f\n"
           "from .contrastive import info_nce, _info_nce\nfrom ._solvers import topk\nfrom .. import _ext\n")
    assert [v.split(" imports ")[1] for v in _violations(PKG / "ops" / "svd.py", src)] == [
        "sdekernels.ops.enhance.enhance_coefs", "sdekernels.ops.distances", "sdekernels.ops.fourier",
        "sdekernels.ops.contrastive._info_nce"]


# A private module that is a part of one op, split off for reading: it shares that op's private names.
PARTS = {"sdekernels.ops._ring": "sdekernels.ops.contrastive"}  # info_nce's and siglip_loss's ring exchange


def _private_names(path: pathlib.Path, source: str) -> list:
    """Private names that the module at path imports from another module of sdekernels/ops (not its own op)."""
    own = _module_name(path)
    mine = {own, PARTS.get(own)}
    return [f"{path.name}:{line} imports {module}.{name}" for module, name, line in _imports(path, source)
            if module not in mine and module.startswith("sdekernels.ops.") and name and name.startswith("_")]


@pytest.mark.parametrize("path", [*sorted((PKG / "ops").glob("*.py")), PKG / "loss.py"], ids=lambda p: p.name)
def test_no_private_name_crosses_op_modules(path):
    assert _private_names(path, path.read_text()) == []


def test_private_name_rule_catches_them():
    """The rule above can fail: a private name of an op module or of the shared core is caught; a private
    module object (the Triton policy) and a name of the module itself are not private names."""
    src = ("from .svd import _svd_topk\nfrom ._solvers import _krylov, topk\nfrom . import _triton as kt\n"
           "from .enhance import _enhance\n")
    assert [v.split(" imports ")[1] for v in _private_names(PKG / "ops" / "enhance.py", src)] == [
        "sdekernels.ops.svd._svd_topk", "sdekernels.ops._solvers._krylov"]
    ring = "from .contrastive import _lse_cpu\nfrom .svd import _svd_topk\n"  # the ring is contrastive's part
    assert [v.split(" imports ")[1] for v in _private_names(PKG / "ops" / "_ring.py", ring)] == [
        "sdekernels.ops.svd._svd_topk"]


REFERENCE = pathlib.Path(sdekernels.reference.__file__).parent


def _sdekernels_imports(source: str) -> list:
    """Line numbers of absolute imports of sdekernels (the reference's own modules are imported relatively)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
        lines += [node.lineno for n in names if n.split(".")[0] == "sdekernels"]
    return lines


@pytest.mark.parametrize("path", sorted(REFERENCE.glob("*.py")), ids=lambda p: p.name)
def test_reference_is_a_leaf(path):
    assert _sdekernels_imports(path.read_text()) == []


def test_leaf_rule_catches_library_imports():
    src = "import torch\nfrom .svd import mp_median\nfrom sdekernels._core import check_int\nimport sdekernels.ops\n"
    assert _sdekernels_imports(src) == [3, 4]


def test_data_does_not_import_the_drivers():
    path = PKG / "data.py"
    assert [m for m, _, _ in _imports(path, path.read_text()) if m.startswith("sdekernels.train")] == []
    src = "from .train.common import load_file\nfrom .files import CheckpointError\n"
    assert [m for m, _, _ in _imports(path, src) if m.startswith("sdekernels.train")] == ["sdekernels.train.common"]


def _reference_imports(path: pathlib.Path, source: str) -> list:
    return [line for module, _, line in _imports(path, source) if module.startswith("sdekernels.reference")]


@pytest.mark.parametrize("path", sorted(_package_files()), ids=lambda p: str(p.relative_to(PKG)))
def test_library_enters_the_reference_through_its_doors(path):
    found = _reference_imports(path, path.read_text())
    assert (str(path.relative_to(PKG)) in DOORS) == bool(found), found


def test_door_rule_catches_reference_imports():
    src = ("from .. import reference as ref\nfrom ..reference.fourier import cut_width\n"
           "import sdekernels.reference.svd\nfrom .._fallback import ref\nfrom .._core import check\n")
    assert _reference_imports(PKG / "ops" / "fourier.py", src) == [1, 2, 3]
