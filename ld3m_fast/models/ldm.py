"""The latent diffusion model object: diffusers modules behind CompVis ``LatentDiffusion``'s surface.

``LatentDiffusion`` holds a diffusers ``UNet2DConditionModel`` (at ``model.diffusion_model``, as
in CompVis), the VQ first stage (``first_stage_model``), the class embedder (``cond_stage_model``)
and the schedule buffers, and offers what LD3M code calls: ``apply_model``,
``get_learned_conditioning``, ``encode_first_stage``, ``get_first_stage_encoding``,
``decode_first_stage``, ``q_sample``, ``num_timesteps``, ``cond_stage_key``, ``device``,
``ema_scope``. ``ld3m_fast.render``, ``DDIMSampler`` and ``distill`` take it directly.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..errors import InvalidArgumentError, InvalidTypeError
from .config import LDMConfig, UNetConfig, get_config
from .dependency import require_diffusers
from .parts import ClassEmbedder
from .vq import VQFirstStage, _autocast

require_diffusers()
from diffusers import UNet2DConditionModel  # noqa: E402

SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2")


def schedule_tensors(cfg: LDMConfig, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """CompVis's schedule buffers: computed on the CPU in float64 as CompVis does (numpy), returned in ``dtype``
    (float32, as CompVis registers them, by default)."""
    f64 = dict(dtype=torch.float64, device="cpu")
    betas = torch.linspace(cfg.linear_start ** 0.5, cfg.linear_end ** 0.5, cfg.num_timesteps, **f64) ** 2
    alphas = 1.0 - betas
    acp = torch.cumprod(alphas, 0)
    prev = torch.cat([torch.ones(1, **f64), acp[:-1]])
    post_var = betas * (1.0 - prev) / (1.0 - acp)
    values = {
        "betas": betas, "alphas_cumprod": acp, "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": acp.sqrt(), "sqrt_one_minus_alphas_cumprod": (1.0 - acp).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - acp).log(), "sqrt_recip_alphas_cumprod": (1.0 / acp).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / acp - 1).sqrt(), "posterior_variance": post_var,
        "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * prev.sqrt() / (1.0 - acp),
        "posterior_mean_coef2": (1.0 - prev) * alphas.sqrt() / (1.0 - acp),
    }
    return {k: v.to(dtype) for k, v in values.items()}


def build_unet(cfg: LDMConfig) -> UNet2DConditionModel:
    """A diffusers UNet with the CompVis ``UNetModel`` architecture described by ``cfg.unet``."""
    u: UNetConfig = cfg.unet
    heads = tuple(u.heads(ch) for ch in u.block_channels)
    return UNet2DConditionModel(
        sample_size=cfg.latent_size, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in u.cross_attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(u.cross_attention)),
        mid_block_type="UNetMidBlock2DCrossAttn", block_out_channels=tuple(u.block_channels),
        layers_per_block=u.layers_per_block, transformer_layers_per_block=u.transformer_depth,
        cross_attention_dim=cfg.context_dim,
        attention_head_dim=heads,  # diffusers' (historical) name for the number of heads
        norm_num_groups=u.norm_groups, norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
        downsample_padding=1, use_linear_projection=False, upcast_attention=False)


class DiffusionWrapper(nn.Module):
    """CompVis ``DiffusionWrapper`` (cross-attention conditioning): ``model.diffusion_model`` is the UNet."""

    conditioning_key = "crossattn"

    def __init__(self, unet: UNet2DConditionModel):
        super().__init__()
        self.diffusion_model = unet
        self.autocast_dtype: torch.dtype | None = None  # set by ld3m_fast.optimize(bf16=True)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c_concat=None, c_crossattn=None) -> torch.Tensor:
        if c_concat is not None:
            raise InvalidArgumentError("this model is conditioned through cross-attention only; pass c_crossattn")
        if c_crossattn is None or any(c is None for c in c_crossattn):
            raise InvalidTypeError(
                "apply_model needs the class contexts (B, 1, D): model.get_learned_conditioning(labels)")
        context = torch.cat(list(c_crossattn), 1)
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        with _autocast(x, self.autocast_dtype):
            out = self.diffusion_model(x, t, encoder_hidden_states=context).sample
        return out.to(x.dtype).contiguous()


class LatentDiffusion(nn.Module):
    """A class-conditional LDM with CompVis's ``LatentDiffusion`` surface (eps-prediction, cross-attention)."""

    parameterization = "eps"
    first_stage_key = "image"

    def __init__(self, config: LDMConfig):
        super().__init__()
        self.config = config
        self.model = DiffusionWrapper(build_unet(config))
        self.first_stage_model = VQFirstStage(config.vq, config.image_channels)
        self.cond_stage_model = ClassEmbedder(config.n_classes, config.context_dim, config.cond_stage_key)
        for name, value in schedule_tensors(config).items():
            self.register_buffer(name, value.to(torch.get_default_device()), persistent=False)
        self.num_timesteps = config.num_timesteps
        self.linear_start, self.linear_end = config.linear_start, config.linear_end
        self.scale_factor = config.scale_factor
        self.cond_stage_key = config.cond_stage_key
        self.conditioning_key = "crossattn"
        self.channels = config.latent_channels
        self.image_size = config.latent_size
        self.n_classes = config.n_classes
        self.use_ema = False
        self.optimizations: dict = {}  # what ld3m_fast.optimize switched on

    def _apply(self, fn, recurse=True):
        """As ``nn.Module._apply``, then the schedule buffers are recomputed in their new dtype (at least float32).

        So ``model.double()`` has the exact float64 schedule (not float32 values widened),
        ``model.half()`` keeps a float32 one, and ``to_empty()`` leaves a valid one.
        """
        super()._apply(fn, recurse)
        fresh = schedule_tensors(self.config, torch.float64)
        for name in SCHEDULE_BUFFERS:
            buf = getattr(self, name)
            dtype = torch.float32 if buf.dtype in (torch.float16, torch.bfloat16) else buf.dtype
            setattr(self, name, fresh[name].to(device=buf.device, dtype=dtype))
        return self

    # --- parts ---------------------------------------------------------------------------
    @property
    def diffusion_model(self) -> UNet2DConditionModel:
        return self.model.diffusion_model

    @property
    def device(self) -> torch.device:
        return self.betas.device

    @property
    def dtype(self) -> torch.dtype:
        return self.cond_stage_model.embedding.weight.dtype

    # --- CompVis LatentDiffusion surface ---------------------------------------------------
    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond, return_ids: bool = False) -> torch.Tensor:
        """Predicted noise ``eps(x_noisy, t, cond)``; ``cond`` is a (B, L, D) context, a list of them, or
        CompVis's ``{"c_crossattn": [c]}``."""
        if not isinstance(cond, dict):
            cond = {"c_crossattn": cond if isinstance(cond, (list, tuple)) else [cond]}
        return self.model(x_noisy, t, **cond)

    def get_learned_conditioning(self, c) -> torch.Tensor:
        """Class labels (a tensor, a list, or ``{cond_stage_key: labels}``) → contexts (B, 1, D)."""
        return self.cond_stage_model(c)

    def unconditional_embedding(self) -> torch.Tensor:
        """The unconditional class's embedding (1, D): the embedder's last row."""
        return self.cond_stage_model.embedding.weight[-1:].detach()

    def encode_first_stage(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → pre-quantisation latents (CompVis VQ: a tensor, not a distribution)."""
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, encoder_posterior: torch.Tensor) -> torch.Tensor:
        return self.scale_factor * encoder_posterior

    def decode_first_stage(self, z: torch.Tensor, predict_cids: bool = False,
                           force_not_quantize: bool = False) -> torch.Tensor:
        """Latents → images in [-1, 1] (differentiable; CompVis wraps this one in ``no_grad``)."""
        if predict_cids:
            raise NotImplementedError("predict_cids is not supported (cin256-v2 predicts noise, not codebook ids)")
        return self.first_stage_model.decode(z / self.scale_factor, force_not_quantize=force_not_quantize)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``sqrt(ā_t) x_start + sqrt(1 − ā_t) noise`` (noise drawn if not given)."""
        noise = torch.randn_like(x_start) if noise is None else noise
        shape = (-1,) + (1,) * (x_start.dim() - 1)
        a = self.sqrt_alphas_cumprod[t].reshape(shape).to(x_start.dtype)
        s = self.sqrt_one_minus_alphas_cumprod[t].reshape(shape).to(x_start.dtype)
        return a * x_start + s * noise

    @contextlib.contextmanager
    def ema_scope(self, context=None):
        """No-op (these models carry no EMA copy); kept because CompVis scripts enter it."""
        yield

    def extra_repr(self) -> str:
        return f"config={self.config.name!r}"


def build_ldm(config, device=None, dtype: torch.dtype | None = None) -> LatentDiffusion:
    """A ``LatentDiffusion`` with fresh random weights from ``config`` (an ``LDMConfig``, dict or name).

    Parameters are trainable (``requires_grad``); ``device="meta"`` builds without allocating.
    """
    cfg = get_config(config)
    with torch.device(device if device is not None else torch.get_default_device()):
        model = LatentDiffusion(cfg)
    if dtype is not None:
        model.to(dtype)
    return model
