"""The DDIM schedule exactly as the official LD3M sampler computes it (docs/design.md §1, §3).

- ``linear_alphas_cumprod``: the `cin256-v2` training schedule (1000 steps, betas
  ``linspace(sqrt(0.0015), sqrt(0.0195), 1000) ** 2`` in float64).
- ``ddim_timesteps``: uniform discretisation ``range(0, T, T // S) + 1``. When ``S`` does not
  divide ``T`` the list is longer than ``S`` and all of it is used, as the official code does.
- ``DDIMSchedule``: per-step coefficients of the reverse chain, in the order the chain runs
  (largest timestep first), with the skip weights of each variant and the guidance scale (an
  unguided chain is a schedule with ``guidance == 1``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InvalidArgumentError, InvalidTypeError
from .fused_step import StepCoefficients

SKIP_VARIANTS = ("official", "paper", "none")


def linear_alphas_cumprod(num_timesteps: int = 1000, linear_start: float = 0.0015,
                          linear_end: float = 0.0195) -> torch.Tensor:
    """``ā`` of the CompVis "linear" schedule, float64."""
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, num_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_timesteps(steps: int, num_timesteps: int = 1000) -> list[int]:
    """The official "uniform" DDIM timesteps, ascending (``steps=10`` → 1, 101, …, 901)."""
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise InvalidTypeError(f"steps must be an int, got {type(steps).__name__}")
    if not 1 <= steps <= num_timesteps:
        raise InvalidArgumentError(f"steps={steps} is out of range: choose 1 <= steps <= {num_timesteps}")
    stride = num_timesteps // steps
    taus = [t + 1 for t in range(0, num_timesteps, stride)]
    if taus[-1] >= num_timesteps:
        valid = [s for s in range(steps - 1, 0, -1) if (num_timesteps - 1) % (num_timesteps // s) != 0]
        hint = f"; the nearest smaller valid value is {valid[0]}" if valid else ""
        raise InvalidArgumentError(
            f"steps={steps} gives stride {stride} and timestep {taus[-1]}, which a {num_timesteps}-step schedule "
            f"does not have (the official sampler fails with an index error here){hint}")
    return taus


@dataclass(frozen=True)
class DDIMSchedule:
    """Coefficients of every step of the LD3M reverse chain, in run order (largest timestep first).

    ``timesteps[i]`` is the UNet's timestep at step ``i``; ``coefficients[i]`` the fused step's
    scalars; ``start_alpha`` is ``ā`` at the first timestep, used to noise ``Z`` into ``z_T``.
    """

    timesteps: tuple[int, ...]
    coefficients: tuple[StepCoefficients, ...]
    start_alpha: float
    skip: str
    guidance: float = 1.0

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def guided(self) -> bool:
        """Whether every step combines an unconditional and a conditional prediction (``guidance != 1``)."""
        return self.guidance != 1.0

    @classmethod
    def make(cls, steps: int, alphas_cumprod: torch.Tensor | None = None, guidance: float = 3.0,
             skip: str = "official", eta: float = 0.0) -> "DDIMSchedule":
        if skip not in SKIP_VARIANTS:
            raise InvalidArgumentError(f"skip={skip!r} is unknown; choose one of {SKIP_VARIANTS}")
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance) \
                or guidance < 0:
            raise InvalidArgumentError(
                f"guidance={guidance!r} must be a finite number >= 0 (LD3M uses 3.0; 1.0 disables guidance)")
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
            raise InvalidArgumentError(f"eta={eta!r} must be a finite number >= 0 (LD3M uses 0)")
        acp = linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
        acp = acp.detach().to("cpu", torch.float64)
        taus = ddim_timesteps(steps, acp.numel())
        n = len(taus)
        if skip == "official" and n == 1:
            raise InvalidArgumentError(
                "steps=1 with skip='official' is undefined: the official skip weight k/K divides by K = 0. "
                "Use steps >= 2, or skip='paper' / skip='none' for a single step")
        a_t = acp[taus]
        a_prev = torch.cat([acp[:1], acp[taus[:-1]]])
        sigma = eta * torch.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        coefs = []
        for k in reversed(range(n)):  # k = n-1 … 0, as the official `index`
            w = 0.0
            if skip == "official":
                w = k / (n - 1)
            elif skip == "paper":
                w = (k + 1) / n
            at, ap, sg = float(a_t[k]), float(a_prev[k]), float(sigma[k])
            coefs.append(StepCoefficients(
                sqrt_alpha=math.sqrt(at), sqrt_one_minus_alpha=math.sqrt(1 - at), sqrt_alpha_prev=math.sqrt(ap),
                direction=math.sqrt(max(1 - ap - sg * sg, 0.0)), sigma=sg, guidance=float(guidance),
                blend_x0=w if skip == "official" else 0.0, blend_out=w if skip == "paper" else 0.0))
        return cls(timesteps=tuple(reversed(taus)), coefficients=tuple(coefs),
                   start_alpha=float(a_t[-1]), skip=skip, guidance=float(guidance))
