"""osp: Open-Sora-Plan v1.1.0 as a library.

Heavy classes are imported on first use, so `import osp_core` (and the CLI) starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import (
    DeviceError,
    HubUnavailableError,
    InputError,
    ModelLoadError,
    OSPError,
)
from .lazy import lazy_getattr
from .version import __version__

# public name -> module that defines it
_LAZY = {
    "CausalVideoVAE": ".models.causal_vae",
    "LatteT2V": ".models.latte_t2v",
    "T2VPipeline": ".pipelines.t2v",
    "ModelRepository": ".pipelines.repository",
    "SamplingJob": ".jobs.sampling_plan",
    "run_sampling": ".jobs.sampling",
    "Captioner": ".caption.captioner",
}

if TYPE_CHECKING:  # pragma: no cover
    from .caption.captioner import Captioner
    from .jobs.sampling import run_sampling
    from .jobs.sampling_plan import SamplingJob
    from .models.causal_vae import CausalVideoVAE
    from .models.latte_t2v import LatteT2V
    from .pipelines.repository import ModelRepository
    from .pipelines.t2v import T2VPipeline


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "Captioner",
    "CausalVideoVAE",
    "DeviceError",
    "HubUnavailableError",
    "InputError",
    "LatteT2V",
    "ModelLoadError",
    "ModelRepository",
    "OSPError",
    "SamplingJob",
    "T2VPipeline",
    "__version__",
    "run_sampling",
]
