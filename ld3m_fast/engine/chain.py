"""The LD3M reverse chain as one autograd Function with step-level recomputation.

Forward runs every step without building a graph and keeps only the input latent of each step
(``steps × N × C × h × w``: a few MB) — the start noise is inside the first one. Backward walks the
steps in reverse, one chunk of images at a time: it applies the fused step's backward, recomputes
that step's (guided) denoiser call with gradients, and pulls the gradient through it with one
vector-Jacobian product. Cost: 1 forward + 1 recomputed forward + 1 backward of the denoiser per
step; memory: one denoiser call's activations for one chunk, whatever the number of steps.

Where memory allows, ``keep_steps`` names steps whose denoiser calls run with gradients already in
the forward pass (in backward chunks) and keep their graphs: backward then reuses them instead of
recomputing — one denoiser forward less per kept step, for one call's activations per image kept.
Where memory is short, ``latent_stride = k`` keeps only every k-th step's latent: backward regenerates
the others one segment of k steps at a time (no-grad, for its chunk) — about one denoiser forward more
per step, for ``S/k + k`` stored latents instead of ``S``, so memory stops growing with the steps.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..errors import InvalidArgumentError
from .fused_step import StepCoefficients, select_backend
from .latent_model import Denoiser
from .schedule import DDIMSchedule


@dataclass
class ChainSettings:
    """Everything the chain needs besides its differentiable inputs."""

    denoiser: Denoiser
    schedule: DDIMSchedule
    unconditional: torch.Tensor | None  # (N, L, D) contexts of the unconditional class (used when guided)
    chunk_size: int                      # images per recomputed denoiser call in backward
    backend: str | None = None
    generator: torch.Generator | None = None  # draws the per-step noise when eta > 0
    progress: bool = False
    callback: Callable[[int], None] | None = None  # called with the step index after each forward step
    forward_chunk_size: int | None = None  # images per no-grad denoiser call in forward (default: chunk_size)
    keep_steps: frozenset[int] = frozenset()  # steps whose graphs forward keeps for backward (no recomputation)
    latent_stride: int = 1  # keep every k-th step's latent; backward regenerates the others (eta = 0 only)

    def __post_init__(self):
        self.unconditional = guidance_contexts(self.schedule, self.unconditional)
        if self.latent_stride > 1 and any(coef.sigma for coef in self.schedule.coefficients):
            raise InvalidArgumentError(
                f"latent_stride={self.latent_stride} needs eta=0: the regenerated steps would need their "
                "DDIM noise again; use latent_stride=1 with eta > 0")


def guidance_contexts(schedule: DDIMSchedule, unconditional: torch.Tensor | None) -> torch.Tensor | None:
    """The unconditional contexts a chain with ``schedule`` uses: ``None`` when unguided (``guidance == 1``);
    guidance without them is an error. The one place where guided and unguided runs part ways."""
    if not schedule.guided:
        return None
    if unconditional is None:
        raise InvalidArgumentError(
            f"guidance={schedule.guidance} needs the unconditional class embedding, which this model "
            "lacks; give LatentModel(unconditional=...) or use guidance=1.0 (no guidance)")
    return unconditional


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _denoiser_graph(cfg: ChainSettings, z, context, uc, tau, need_ctx):
    """One (guided) denoiser call with gradients: ``(z_in, c_in, out)``, ``out`` = ``[eps_u; eps_c]`` (or ``eps``)."""
    with torch.enable_grad():
        z_in = z.detach().requires_grad_(True)
        c_in = context.detach().requires_grad_(need_ctx)
        t = torch.full((z_in.shape[0],), tau, device=z_in.device, dtype=torch.long)
        if uc is None:
            out = cfg.denoiser(z_in, t, c_in)
        else:
            out = cfg.denoiser(torch.cat([z_in, z_in]), torch.cat([t, t]), torch.cat([uc, c_in]))
    return z_in, c_in, out


def guided_eps(denoiser: Denoiser, z, t, context, unconditional):
    """``(eps_u, eps_c)`` from one denoiser call on the doubled batch ``[z; z]`` with ``[uc; c]``."""
    if unconditional is None:
        eps = denoiser(z, t, context)
        return eps, eps
    out = denoiser(torch.cat([z, z]), torch.cat([t, t]), torch.cat([unconditional, context]))
    return out.chunk(2)


def _fused_update(impl, coef: StepCoefficients, z, eps_u, eps_c, anchor, noise, sl: slice, z_next) -> None:
    """Write the fused step's output for images ``sl`` into ``z_next``."""
    a = z[sl] if anchor is None else anchor[sl]
    z_next[sl], _ = impl.forward(z[sl], eps_u.contiguous(), eps_c.contiguous(), a,
                                 None if noise is None else noise[sl], coef, False)


def _step_no_grad(cfg: ChainSettings, impl, i: int, z, context, uc, anchor, noise, chunk: int):
    """``z`` after step ``i`` (no graph), the denoiser run ``chunk`` images at a time."""
    coef, tau = cfg.schedule.coefficients[i], cfg.schedule.timesteps[i]
    z_next = torch.empty_like(z)
    for sl in _chunks(z.shape[0], chunk):
        t = torch.full((sl.stop - sl.start,), tau, device=z.device, dtype=torch.long)
        eps_u, eps_c = guided_eps(cfg.denoiser, z[sl], t, context[sl], None if uc is None else uc[sl])
        _fused_update(impl, coef, z, eps_u, eps_c, anchor, noise, sl, z_next)
    return z_next


class _ReverseChain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z_start, anchor, context, cfg: ChainSettings):
        n, steps = z_start.shape[0], cfg.schedule.num_steps
        uc = cfg.unconditional
        impl = select_backend(z_start, cfg.backend)
        anchor_c = None if anchor is None else anchor.detach().contiguous()
        stride = cfg.latent_stride
        latents = z_start.new_empty((-(-steps // stride), *z_start.shape))
        z = z_start.detach().contiguous()
        bar = tqdm(total=steps, desc="render", disable=not cfg.progress, leave=False)
        keep = cfg.keep_steps if any(ctx.needs_input_grad[:3]) else frozenset()
        kept = {}  # (step, chunk start) -> (z_in, c_in, out): graphs backward reuses
        for i, tau in enumerate(cfg.schedule.timesteps):
            coef = cfg.schedule.coefficients[i]
            if i % stride == 0:
                latents[i // stride].copy_(z)
            noise = None
            if coef.sigma:
                noise = torch.randn(z.shape, generator=cfg.generator, dtype=z.dtype).to(z.device)
            if i not in keep:
                z = _step_no_grad(cfg, impl, i, z, context, uc, anchor_c, noise, cfg.forward_chunk_size or cfg.chunk_size)
            else:
                z_next = torch.empty_like(z)
                for sl in _chunks(n, cfg.chunk_size):
                    kept[(i, sl.start)] = graph = _denoiser_graph(cfg, z[sl], context[sl], None if uc is None else uc[sl],
                                                                  tau, ctx.needs_input_grad[2])
                    eps_u, eps_c = (graph[2].detach(), graph[2].detach()) if uc is None else graph[2].detach().chunk(2)
                    _fused_update(impl, coef, z, eps_u, eps_c, anchor_c, noise, sl, z_next)
                z = z_next
            bar.update()
            if cfg.callback is not None:
                cfg.callback(i)
        bar.close()
        ctx.cfg, ctx.impl, ctx.latents, ctx.kept = cfg, impl, latents, kept
        ctx.has_anchor = anchor is not None
        ctx.anchor = anchor_c if stride > 1 else None  # regeneration needs the skip target
        ctx.save_for_backward(context)
        return z

    @staticmethod
    def backward(ctx, grad_out):
        (context,) = ctx.saved_tensors
        cfg, impl, latents = ctx.cfg, ctx.impl, ctx.latents
        uc = cfg.unconditional
        need_ctx = ctx.needs_input_grad[2]
        n, steps = latents.shape[1], cfg.schedule.num_steps
        grad_z = torch.empty_like(latents[0])
        grad_anchor = torch.zeros_like(latents[0]) if ctx.has_anchor else None
        grad_ctx = torch.zeros_like(context) if need_ctx else None
        bar = tqdm(total=steps * -(-n // cfg.chunk_size), desc="render backward", disable=not cfg.progress, leave=False)
        for sl in _chunks(n, cfg.chunk_size):
            gz = grad_out[sl].contiguous()
            segment = _SegmentLatents(ctx, sl, context)
            for i in reversed(range(steps)):
                g_direct, g_eps, g_anchor = impl.backward(gz, None, cfg.schedule.coefficients[i])
                if grad_anchor is not None:
                    grad_anchor[sl] += g_anchor
                kept = ctx.kept.pop((i, sl.start), None)  # a graph the forward kept, else recompute the call
                z_in, c_in, out = kept or _denoiser_graph(cfg, segment.latent(i), context[sl], None if uc is None else uc[sl],
                                                          cfg.schedule.timesteps[i], need_ctx)
                g_out = g_eps[1] if uc is None else g_eps.view_as(out)
                inputs = (z_in, c_in) if need_ctx else (z_in,)
                grads = torch.autograd.grad(out, inputs, g_out, allow_unused=True)
                gz = g_direct if grads[0] is None else g_direct + grads[0]
                if need_ctx and grads[1] is not None:
                    grad_ctx[sl] += grads[1]
                bar.update()
            grad_z[sl] = gz
        bar.close()
        return grad_z, grad_anchor, grad_ctx, None


class _SegmentLatents:
    """Step latents of one chunk in backward: stored ones directly, the others regenerated a segment at a time."""

    def __init__(self, ctx, sl: slice, context: torch.Tensor):
        self.ctx, self.sl, self.context, self.first, self.cache = ctx, sl, context[sl], None, None

    def latent(self, i: int) -> torch.Tensor:
        ctx, sl, stride = self.ctx, self.sl, self.ctx.cfg.latent_stride
        if stride == 1:
            return ctx.latents[i, sl]
        first = i - i % stride
        if first != self.first:  # run the segment's steps again from its stored latent
            cfg, uc = ctx.cfg, ctx.cfg.unconditional
            anchor = None if ctx.anchor is None else ctx.anchor[sl]
            z = ctx.latents[first // stride, sl]
            self.cache = [z]
            with torch.no_grad():
                for j in range(first, min(first + stride, cfg.schedule.num_steps) - 1):
                    z = _step_no_grad(cfg, ctx.impl, j, z, self.context, None if uc is None else uc[sl], anchor, None,
                                      cfg.chunk_size)
                    self.cache.append(z)
            self.first = first
        return self.cache[i - first]


def reverse_chain(z_start: torch.Tensor, anchor: torch.Tensor | None, context: torch.Tensor,
                  settings: ChainSettings) -> torch.Tensor:
    """Run the LD3M reverse chain from ``z_start``; differentiable w.r.t. ``z_start``, ``anchor``, ``context``.

    ``anchor`` is the skip target (``Zq`` for ``skip="official"``, ``z_start`` itself for ``"paper"``,
    ``None`` for ``"none"``). Returns the final latent ``z_0``.
    """
    if not torch.is_grad_enabled() and settings.keep_steps:  # no backward will come: keep no graphs
        settings = dataclasses.replace(settings, keep_steps=frozenset())
    return _ReverseChain.apply(z_start, anchor, context, settings)
