"""A drop-in for the official LD3M ``DDIMSampler`` running on the engine's chain, and ``patch_ldm``.

``DDIMSampler(model).sample(S, batch_size, shape, conditioning=c, x_T=Z, unconditional_guidance_scale=g,
unconditional_conditioning=uc)`` returns the final latents of the official algorithm: the start
is the model's own ``q_sample(x_T, τ_last)``, the skip blends x̂0 with ``quantize(x_T)`` with weight
``index / (steps − 1)``. Gradients reach ``x_T`` and ``conditioning`` through the engine's chain
(per-step recomputation), on whatever device the model is on (the official one hard-codes CUDA).

It runs what the official sampler runs: the latents' shape comes from ``x_T`` (the official code passes
``shape=[3, 64, 64]`` with 32×32 latents at 128²; a mismatch warns once), ``conditioning=None`` runs an
unconditional LDM (``apply_model(x, t, None)``, no guidance). The constructor and ``sample`` have the official
signatures; the options LD3M never sets are refused unless left at their defaults, and unknown keyword arguments
(which the official sampler ignores silently) are refused. ld3m_fast's own keyword-only knobs —
``memory_budget``, ``latent_stride``, ``keep_steps``, ``chunk_size``, ``backend`` — plan the chain as ``render``
does (``resolve_plan`` with the measured ``cost_probe``).

``one_render=True`` serves the official training step with one rendering instead of two: a ``sample`` call made
without gradients (the rendering the loss sees) keeps its chain (the per-step latents), and inside
``sampler.replaying()`` a ``sample`` call with gradients on equal inputs returns the kept result, whose backward
runs the chain's backward — so the re-rendering of the official backward helper costs no forward pass
(``ld3m_fast.engine.official_step``). A kept rendering (``S`` latents per image) lives until it is replayed, until
``replaying()`` ends, until its inputs change in place (an optimiser step) and a newer one is kept, or
``drop_kept()``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InvalidArgumentError, InvalidTypeError
from .chain import ChainSettings, reverse_chain
from .latent_model import as_latent_model, check_latents_and_context
from .memory import parse_memory_budget, resolve_plan
from .rendering import cost_probe
from .schedule import SKIP_VARIANTS, DDIMSchedule, ddim_timesteps

# options of the official sample() that LD3M never sets: accepted at these defaults, refused otherwise
UNSUPPORTED_DEFAULTS = {"normals_sequence": None, "img_callback": None, "quantize_x0": False, "mask": None, "x0": None,
                        "temperature": 1.0, "noise_dropout": 0.0, "score_corrector": None, "corrector_kwargs": None}
KNOBS = ("memory_budget", "latent_stride", "keep_steps", "chunk_size", "backend", "skip", "one_render")


def _is_default(value, default) -> bool:
    if value is default:
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == default


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"<a {value.dtype} tensor of shape {tuple(value.shape)}>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unconditional_denoiser(model):
    def eps(z, t, _context):
        return model.apply_model(z, t, None)
    return eps


@dataclass
class _KeptRendering:
    """A no-grad ``sample`` call's result with its chain, kept for one replay (``one_render``)."""

    key: tuple                        # S, eta, guidance, skip, shape, dtype, device
    x_T: torch.Tensor                 # the inputs (copies: leaves of the kept graph, and compared on replay)
    conditioning: torch.Tensor | None
    unconditional: torch.Tensor | None
    z0: torch.Tensor                  # the result, attached to the chain
    sources: tuple                    # (tensor, version) of the caller's inputs: a changed version makes it stale

    def matches(self, key, x_T, conditioning, unconditional) -> bool:
        return (key == self.key and _equal(x_T, self.x_T) and _equal(conditioning, self.conditioning)
                and _equal(unconditional, self.unconditional))

    def stale(self) -> bool:
        return any(t._version != v for t, v in self.sources)


def _equal(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a.detach(), b)


class _Replay(torch.autograd.Function):
    """Returns a kept rendering's result; backward runs its chain's backward into the new inputs."""

    @staticmethod
    def forward(ctx, x_T, conditioning, kept: _KeptRendering):
        ctx.kept = kept
        return kept.z0.detach().clone()

    @staticmethod
    def backward(ctx, grad):
        kept, ctx.kept = ctx.kept, None
        want = [(i, leaf) for i, leaf in enumerate((kept.x_T, kept.conditioning))
                if ctx.needs_input_grad[i] and leaf is not None]
        out = [None, None, None]
        if want:
            grads = torch.autograd.grad(kept.z0, [leaf for _, leaf in want], grad, allow_unused=True)
            for (i, _), g in zip(want, grads):
                out[i] = g
        return tuple(out)


class DDIMSampler:
    """Same constructor, ``make_schedule`` and ``sample`` as the official LD3M sampler, plus keyword-only knobs.

    Args:
        model: a CompVis-style LDM (``apply_model``, ``q_sample``, ``first_stage_model.quantize``,
            ``alphas_cumprod``, ``num_timesteps``) — the official ``LatentDiffusion`` or ld3m_fast's.
        memory_budget: bytes or e.g. ``"8GiB"`` for one ``sample`` call's backward: picks the chunk size, kept steps
            and latent stride from measured costs (as ``render``).
        latent_stride, keep_steps, chunk_size: the chain's plan by hand (see ``render``); override the budget's.
        backend: fused-step backend (``"torch"``, ``"triton"``, ``"cpp"``, ``"cuda"``; default automatic).
        skip: ``"official"`` (the LD3M code), ``"paper"`` (Eq. 7) or ``"none"``.
        one_render: keep the chains of no-grad ``sample`` calls for a replay (module docstring).
    """

    def __init__(self, model, schedule: str = "linear", *, memory_budget=None, latent_stride: int | None = None,
                 keep_steps: int | None = None, chunk_size: int | None = None, backend: str | None = None,
                 skip: str = "official", one_render: bool = False, **kwargs):
        if kwargs:
            raise InvalidTypeError(f"DDIMSampler() got unknown keyword argument(s) {sorted(kwargs)}: the official "
                                   "sampler ignores such arguments silently, ld3m_fast refuses them so that a typo "
                                   f"cannot pass unnoticed. Its keyword options are {list(KNOBS)}")
        if skip not in SKIP_VARIANTS:
            raise InvalidArgumentError(f"skip={skip!r} is unknown; choose one of {SKIP_VARIANTS}")
        for name in ("apply_model", "q_sample", "first_stage_model", "alphas_cumprod", "num_timesteps"):
            if not hasattr(model, name):
                raise InvalidTypeError(f"DDIMSampler needs a CompVis-style LDM; this {type(model).__name__} has no "
                                       f"{name!r} (pass the LatentDiffusion itself, e.g. G.module for DataParallel)")
        try:
            self.memory_budget = parse_memory_budget(memory_budget)
            resolve_plan(1, 1, None, chunk_size=chunk_size, keep_steps=keep_steps, latent_stride=latent_stride)
        except (TypeError, ValueError) as err:
            raise InvalidArgumentError(f"DDIMSampler: {err}") from None
        self.model = model
        self.ddpm_num_timesteps = model.num_timesteps
        self.schedule = schedule
        self.latent_stride, self.keep_steps, self.chunk_size = latent_stride, keep_steps, chunk_size
        self.backend, self.skip, self.one_render = backend, skip, bool(one_render)
        self._kept: list[_KeptRendering] = []
        self._replaying = False
        self._warned: set = set()
        self._plans: dict = {}

    # --- the official schedule -------------------------------------------------------------------
    def register_buffer(self, name: str, attr) -> None:
        """As the official sampler's (which also moves tensors to CUDA): here the tensor stays where it is."""
        setattr(self, name, attr)

    def make_schedule(self, ddim_num_steps: int, ddim_discretize: str = "uniform", ddim_eta: float = 0.0,
                      verbose: bool = True) -> None:
        """Compute the DDIM timesteps and coefficients (as attributes, like the official sampler)."""
        if ddim_discretize != "uniform":
            raise InvalidArgumentError(f"ddim_discretize={ddim_discretize!r}: only 'uniform' (LD3M's) is supported")
        acp = self.model.alphas_cumprod
        if acp.shape[0] != self.ddpm_num_timesteps:
            raise InvalidArgumentError("model.alphas_cumprod must have one value per training timestep")
        self.ddim_timesteps = np.asarray(ddim_timesteps(ddim_num_steps, self.ddpm_num_timesteps))
        if verbose:
            print(f"Selected timesteps for ddim sampler: {self.ddim_timesteps}")
        self._ddim_eta, self._ddim_num_steps = ddim_eta, ddim_num_steps
        a = acp.detach().double().cpu()
        prev = torch.cat([a.new_ones(1), a[:-1]])
        to = dict(device=self.model.device, dtype=torch.float32)
        self.betas = (1 - a / prev).to(**to)
        self.alphas_cumprod, self.alphas_cumprod_prev = a.to(**to), prev.to(**to)
        self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod = a.sqrt().to(**to), (1 - a).sqrt().to(**to)
        self.log_one_minus_alphas_cumprod = (1 - a).log().to(**to)
        self.sqrt_recip_alphas_cumprod = (1 / a).sqrt().to(**to)
        self.sqrt_recipm1_alphas_cumprod = (1 / a - 1).sqrt().to(**to)
        self.ddim_alphas = a[self.ddim_timesteps].to(**to)
        self.ddim_alphas_prev = torch.cat([a[:1], a[self.ddim_timesteps[:-1]]]).to(**to)
        self.ddim_sigmas = (ddim_eta * torch.sqrt((1 - self.ddim_alphas_prev) / (1 - self.ddim_alphas)
                                                  * (1 - self.ddim_alphas / self.ddim_alphas_prev)))
        self.ddim_sqrt_one_minus_alphas = torch.sqrt(1 - self.ddim_alphas)
        original_sigmas = ddim_eta * torch.sqrt((1 - prev) / (1 - a) * (1 - a / prev))
        self.ddim_sigmas_for_original_num_steps = original_sigmas.to(**to)

    # --- sampling --------------------------------------------------------------------------------
    def sample(self, S: int, batch_size: int, shape, conditioning=None, callback=None, normals_sequence=None,
               img_callback=None, quantize_x0: bool = False, eta: float = 0.0, mask=None, x0=None,
               temperature: float = 1.0, noise_dropout: float = 0.0, score_corrector=None, corrector_kwargs=None,
               verbose: bool = True, x_T: torch.Tensor | None = None, log_every_t: int = 100,
               unconditional_guidance_scale: float = 1.0, unconditional_conditioning: torch.Tensor | None = None,
               *, generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
        """Final latents of the official LD3M sampler (``x_T``'s shape, else ``(batch_size, *shape)``), differentiable
        w.r.t. ``x_T`` and ``conditioning``. ``generator`` draws what the sampler itself draws (the start noise when
        ``x_T`` is None, the DDIM noise when ``eta > 0``); the start noise of ``x_T`` is the model's ``q_sample``'s."""
        if kwargs:
            raise InvalidTypeError(f"DDIMSampler.sample() got unknown keyword argument(s) {sorted(kwargs)}: the "
                                   "official sampler ignores such arguments silently, ld3m_fast refuses them so that a "
                                   "typo cannot pass unnoticed")
        given = dict(normals_sequence=normals_sequence, img_callback=img_callback, quantize_x0=quantize_x0, mask=mask,
                     x0=x0, temperature=temperature, noise_dropout=noise_dropout, score_corrector=score_corrector,
                     corrector_kwargs=corrector_kwargs)
        for name, value in given.items():
            if not _is_default(value, UNSUPPORTED_DEFAULTS[name]):
                default = UNSUPPORTED_DEFAULTS[name]
                raise InvalidArgumentError(f"{name}={_describe(value)} is not supported by ld3m_fast.DDIMSampler (LD3M "
                                           f"does not use it); leave it at its default ({default!r})")
        if conditioning is not None and not isinstance(conditioning, torch.Tensor):
            raise InvalidTypeError(f"conditioning must be the (batch_size, L, D) class-embedding tensor "
                                   f"(model.get_learned_conditioning(...)) or None, not {type(conditioning).__name__}")
        guided = unconditional_conditioning is not None and unconditional_guidance_scale != 1
        self._check_conditioning(conditioning, guided)
        self.make_schedule(S, ddim_eta=eta, verbose=verbose)
        size = self._size(batch_size, shape, x_T)
        n = size[0]
        if x_T is None:  # the official LD3M sampler needs x_T; without it: plain DDIM from pure noise
            dtype = conditioning.dtype if conditioning is not None else as_latent_model(self.model).dtype
            start = torch.randn(size, generator=generator, dtype=dtype).to(self.model.device)
            return self._chain(start, conditioning, None, 1.0, eta, generator, callback, verbose, skip="none")
        if conditioning is not None and conditioning.shape[0] != n:
            raise InvalidArgumentError(f"conditioning has {conditioning.shape[0]} rows but x_T has {n} latents: pass "
                                       "one class embedding per latent")
        uc = None
        if guided:
            uc = unconditional_conditioning.to(conditioning)
            if uc.shape[0] == 1 and n > 1:
                uc = uc.expand(n, *uc.shape[1:])
            if uc.shape != conditioning.shape:
                raise InvalidArgumentError(f"unconditional_conditioning has shape {tuple(uc.shape)} but conditioning "
                                           f"has {tuple(conditioning.shape)}: pass the unconditional class's embedding "
                                           "once per latent")
        guidance = float(unconditional_guidance_scale) if guided else 1.0
        key = (S, float(eta), guidance, self.skip, tuple(x_T.shape), x_T.dtype, x_T.device)
        args = (guidance, eta, generator, callback, verbose)
        if self.one_render and not torch.is_grad_enabled():
            return self._keep(key, x_T, conditioning, uc, args)
        if self._replaying and torch.is_grad_enabled():
            kept = self._take(key, x_T, conditioning, uc)
            if kept is not None:
                return _Replay.apply(x_T, conditioning, kept)
            self._warn_once("replay", "ld3m_fast.DDIMSampler: no kept rendering matches these inputs, so this one is "
                                      "rendered again (with new start noise, as the official code does). The loss's "
                                      "rendering must come from this sampler with one_render=True, under "
                                      "torch.no_grad(), with the same inputs, steps and guidance")
        return self._chain(x_T, conditioning, uc, *args, skip=self.skip)

    def _check_conditioning(self, conditioning, guided: bool) -> None:
        if conditioning is not None:
            return
        if guided:
            raise InvalidArgumentError("unconditional_conditioning with conditioning=None: guidance needs the "
                                       "conditional embedding too (the official sampler fails here); pass "
                                       "conditioning=..., or no unconditional_conditioning for an unconditional LDM")
        if getattr(self.model, "cond_stage_model", None) is not None:
            raise InvalidArgumentError(f"conditioning=None, but this {type(self.model).__name__} is class-conditional "
                                       "(it has a cond_stage_model): pass conditioning=model.get_learned_conditioning("
                                       "...) — conditioning=None is for unconditional LDMs")

    def _size(self, batch_size, shape, x_T) -> tuple:
        if x_T is None:
            return (int(batch_size), *(int(s) for s in shape))
        if not isinstance(x_T, torch.Tensor) or x_T.dim() != 4:
            raise InvalidTypeError(f"x_T must be a (N, C, h, w) tensor of latents, got "
                                   f"{tuple(x_T.shape) if isinstance(x_T, torch.Tensor) else type(x_T).__name__}")
        asked = (batch_size, *tuple(shape))
        if tuple(x_T.shape) != asked:
            self._warn_once(("shape", asked, tuple(x_T.shape)),
                            f"ld3m_fast.DDIMSampler: x_T has shape {tuple(x_T.shape)} but batch_size and shape ask for "
                            f"{asked}; x_T's shape is used (the official sampler ignores shape when x_T is given)")
        return tuple(x_T.shape)

    def _warn_once(self, key, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=4)

    def _chain(self, x_T, conditioning, uc, guidance, eta, generator, callback, verbose, skip) -> torch.Tensor:
        """The official algorithm from ``x_T`` on the engine's chain (``skip="none"``: ``x_T`` is the start itself)."""
        model, n = self.model, x_T.shape[0]
        context = conditioning if conditioning is not None else x_T.new_zeros(n, 1, 1)
        denoiser = model.apply_model if conditioning is not None else _unconditional_denoiser(model)
        lm = dataclasses.replace(as_latent_model(model), denoiser=denoiser)
        check_latents_and_context(x_T, context, lm, z_name="x_T", c_name="conditioning")
        schedule = DDIMSchedule.make(self._ddim_num_steps, model.alphas_cumprod, guidance, skip, eta)
        if skip == "none":
            z_start, anchor = x_T, None
        else:
            ts = torch.full((n,), int(self.ddim_timesteps[-1]), device=x_T.device, dtype=torch.long)
            z_start = model.q_sample(x_T, ts)
            anchor = model.first_stage_model.quantize(x_T)[0] if skip == "official" else z_start
        plan_key = (n, tuple(x_T.shape[1:]), x_T.dtype, x_T.device, schedule.num_steps, uc is not None, eta == 0)
        plan = self._plans.get(plan_key)
        if plan is None:  # measured once per kind of call: the official loop calls sample once per chunk
            plan = resolve_plan(n, schedule.num_steps, self.memory_budget, chunk_size=self.chunk_size,
                                keep_steps=self.keep_steps, latent_stride=self.latent_stride, allow_thinning=eta == 0,
                                measure=cost_probe(lm, x_T, context, None if uc is None else uc[:1], schedule,
                                                   decode=False))  # sample returns latents: no decoder
            self._plans[plan_key] = plan
        keep = frozenset(range(schedule.num_steps - plan.kept_steps, schedule.num_steps))
        settings = ChainSettings(denoiser, schedule, uc, plan.chunk, self.backend, generator, progress=verbose,
                                 callback=callback, forward_chunk_size=plan.forward_chunk, keep_steps=keep,
                                 latent_stride=plan.latent_stride)
        return reverse_chain(z_start, anchor, context, settings)

    # --- one rendering per training step -----------------------------------------------------------
    def _keep(self, key, x_T, conditioning, uc, args) -> torch.Tensor:
        """Render without gradients for the caller, keeping the chain for one replay."""
        sources = tuple((t, t._version) for t in (x_T, conditioning) if t is not None)
        x_leaf = x_T.detach().clone().requires_grad_(True)
        c_leaf = None if conditioning is None else conditioning.detach().clone().requires_grad_(True)
        uc = None if uc is None else uc.detach().clone()
        with torch.enable_grad():
            z0 = self._chain(x_leaf, c_leaf, uc, *args, skip=self.skip)
        self._kept = [k for k in self._kept if not (k.stale() or k.matches(key, x_leaf, c_leaf, uc))]
        self._kept.append(_KeptRendering(key, x_leaf, c_leaf, uc, z0, sources))
        return z0.detach()

    def _take(self, key, x_T, conditioning, uc) -> _KeptRendering | None:
        for i in reversed(range(len(self._kept))):
            if self._kept[i].matches(key, x_T, conditioning, uc):
                return self._kept.pop(i)
        return None

    @contextlib.contextmanager
    def replaying(self):
        """``sample`` calls with gradients inside return the kept renderings of equal inputs (``one_render``);
        renderings not replayed are dropped at the end."""
        self._replaying = True
        try:
            yield self
        finally:
            self._replaying = False
            self._kept.clear()

    @property
    def kept_renderings(self) -> int:
        """How many no-grad renderings are kept for a replay (each holds ``S`` latents per image)."""
        return len(self._kept)

    def drop_kept(self) -> None:
        """Forget the kept renderings."""
        self._kept.clear()


def _sampler_class(accelerate, options: dict) -> type:
    """``DDIMSampler`` itself, or a subclass with other defaults that accelerates the model it is given."""
    if not accelerate and not options:
        return DDIMSampler
    unknown = sorted(set(options) - set(KNOBS))
    if unknown:
        raise InvalidTypeError(f"patch_ldm() got unknown sampler option(s) {unknown}; choose from {list(KNOBS)}")
    switches = accelerate if isinstance(accelerate, dict) else {}
    acceleration = importlib.import_module("ld3m_fast.models.compvis_acceleration") if accelerate else None

    class PatchedDDIMSampler(DDIMSampler):
        __doc__ = DDIMSampler.__doc__

        def __init__(self, model, schedule="linear", **kwargs):
            if acceleration is not None:
                reason = acceleration.acceleration_unsupported_reason(model)
                if reason is None:
                    acceleration.accelerate(model, **switches)
                else:
                    warnings.warn(f"ld3m_fast.patch_ldm(accelerate=...): this model runs unaccelerated: {reason}",
                                  UserWarning, stacklevel=2)
            super().__init__(model, schedule, **{**options, **kwargs})

    return PatchedDDIMSampler


def patch_ldm(accelerate=False, **sampler_options) -> type:
    """Make an installed ``ldm.models.diffusion.ddim`` (and modules that imported from it) use this sampler.

    ``accelerate=True`` (or a dict of ``ld3m_fast.optimize`` switches) also accelerates every CompVis model a sampler
    is made for (``ld3m_fast.models.compvis_acceleration.accelerate``; needs diffusers): the official code's
    ``DDIMSampler(G)`` then gives ``G`` itself the engine's speed. ``sampler_options`` are defaults of the swapped
    sampler's knobs (e.g. ``memory_budget="40GiB"``, ``one_render=True``).
    Returns the original class, so ``ldm.models.diffusion.ddim.DDIMSampler = original`` undoes it.
    """
    try:
        import ldm.models.diffusion.ddim as ddim_module
    except ImportError as err:
        raise ImportError("patch_ldm() needs the official code's 'ldm' package on sys.path "
                          "(run from its src/latentdiff folder or add it to PYTHONPATH)") from err
    replacement = _sampler_class(accelerate, sampler_options)
    original = getattr(ddim_module, "_ld3m_fast_original", ddim_module.DDIMSampler)
    ours = getattr(ddim_module, "_ld3m_fast_patched", {})  # module name -> the class patch_ldm put there
    for name, module in list(sys.modules.items()):
        if module is None or name.partition(".")[0] == "ld3m_fast":
            continue
        found = getattr(module, "__dict__", {}).get("DDIMSampler")  # no lazy module __getattr__ is triggered
        if found is not None and (found is original or found is ours.get(name)):
            module.DDIMSampler = replacement
            ours[name] = replacement
    ddim_module._ld3m_fast_original, ddim_module._ld3m_fast_patched = original, ours
    return original
