"""ld3m_fast's own model classes are built from diffusers' modules; the engine is not (it needs torch only)."""
from __future__ import annotations

from ..errors import MissingDependencyError


def require_diffusers():
    """``diffusers`` if it imports, else one clear error naming the package and what works without it."""
    try:
        import diffusers
    except ImportError as err:
        raise MissingDependencyError(
            "ld3m_fast's own models (load_ldm, build_ldm, save_ldm, optimize, train_prior, the demo) are built from "
            "diffusers' modules: pip install 'diffusers>=0.30'. The engine (render, DDIMSampler, patch_ldm, "
            f"denoise_step) works without it on CompVis-style models. ({err})") from err
    return diffusers
