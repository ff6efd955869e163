"""Op modules: each holds an op's kernels, host launcher, custom-op registration and registry entry."""
from . import distances  # noqa: F401
from . import contrastive  # noqa: F401
from . import svd  # noqa: F401
from . import fourier  # noqa: F401
from . import spectrum  # noqa: F401
from . import enhance  # noqa: F401

from .._core import autocast_float32  # noqa: E402

autocast_float32()  # every custom op above runs in float32 under torch.autocast
