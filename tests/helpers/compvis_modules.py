"""A small LDM whose modules carry CompVis's names and compute what CompVis's modules compute (written for the tests).

``tests/helpers/compvis_style.py`` has CompVis's *surface* only; this one also has CompVis's *layout*: the UNet
(``model.diffusion_model``) is built like ``openaimodel.UNetModel`` — ``time_embed``, ``input_blocks`` /
``middle_block`` / ``output_blocks`` of ``ResBlock`` (``in_layers``, ``emb_layers``, ``out_layers``,
``skip_connection``), ``SpatialTransformer`` (``norm``, ``proj_in``, ``transformer_blocks``, ``proj_out``),
``Downsample.op`` and ``Upsample.conv``, then ``out`` — and the first stage like ``VQModelInterface``
(``encoder``/``decoder`` with ``down.{i}.block.{j}``, ``mid.block_1/attn_1/block_2``, ``up.{i}.upsample``,
``norm_out``; ``quant_conv``, ``quantize``, ``post_quant_conv``), with the class embedder at
``cond_stage_model.embedding`` and the schedule as persistent buffers. So its state dict is a CompVis checkpoint's,
and ``ld3m_fast.models.compvis`` maps it. The arithmetic follows the CompVis modules (sinusoidal time embedding,
GroupNorm → SiLU → conv residual blocks, softmax(q kᵀ/√d) v attention, GEGLU feed-forward, nearest-neighbour
upsampling, asymmetric padding before the VQ encoder's strided convolutions), without CompVis's float32 casts, so
that it also runs in float64. The group count of every GroupNorm is a parameter (CompVis fixes it at 32), which lets
the models stay small. Needs nothing but torch.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn
from torch.nn import functional as F

from ld3m_fast.models.parts import ClassEmbedder, VectorQuantizer


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``[cos(t·f), sin(t·f)]`` with ``f = 10000^(−i/(dim/2))`` (float32, as CompVis computes it)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


# --- UNet (openaimodel layout) ------------------------------------------------------------------
class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(groups, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(nn.GroupNorm(groups, out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    """Multi-head attention of ``x`` to ``context`` (to itself when ``context`` is None)."""

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head ** -0.5
        context_dim = query_dim if context_dim is None else context_dim
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x, context=None):
        context = x if context is None else context
        b, n, _ = x.shape
        heads = lambda t: t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)
        q, k, v = heads(self.to_q(x)), heads(self.to_k(context)), heads(self.to_v(context))
        weights = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
        return self.to_out((weights @ v).transpose(1, 2).reshape(b, n, -1))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x):
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, mult * dim), nn.Dropout(0.0), nn.Linear(mult * dim, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, context=None):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int | None, groups: int):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth))
        self.proj_out = nn.Conv2d(inner, channels, 1)

    def forward(self, x, context=None):
        b, _, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return self.proj_out(tokens.transpose(1, 2).reshape(b, -1, h, w)) + x


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """Children in order; residual blocks also get the time embedding, transformers the context."""

    def forward(self, x, emb, context=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    """``openaimodel.UNetModel`` with spatial transformers: the same constructor arguments, modules and names."""

    def __init__(self, in_channels: int, model_channels: int, out_channels: int, num_res_blocks: int,
                 attention_resolutions, channel_mult=(1, 2, 4, 8), num_heads: int = -1, num_head_channels: int = -1,
                 transformer_depth: int = 1, context_dim: int | None = None, groups: int = 32):
        super().__init__()
        self.in_channels, self.model_channels, self.out_channels = in_channels, model_channels, out_channels
        self.num_res_blocks, self.attention_resolutions = num_res_blocks, tuple(attention_resolutions)
        self.channel_mult, self.num_heads, self.num_head_channels = tuple(channel_mult), num_heads, num_head_channels

        def transformer(ch):
            heads = num_heads if num_head_channels == -1 else ch // num_head_channels
            return SpatialTransformer(ch, heads, ch // heads, transformer_depth, context_dim, groups)

        emb = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3,
                                                                             padding=1))])
        skips, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, emb, mult * model_channels, groups)]
                ch = mult * model_channels
                if ds in self.attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skips.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(ResBlock(ch, emb, ch, groups), transformer(ch),
                                                    ResBlock(ch, emb, ch, groups))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), emb, mult * model_channels, groups)]
                ch = mult * model_channels
                if ds in self.attention_resolutions:
                    layers.append(transformer(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x, timesteps, context=None):
        emb = self.time_embed(sinusoidal_embedding(timesteps, self.model_channels).to(x.dtype))
        skips, h = [], x
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h)


# --- VQ first stage (taming/CompVis layout) -----------------------------------------------------
class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, in_channels, eps=1e-6), nn.Conv2d(in_channels, out_channels, 3,
                                                                                         padding=1)
        self.norm2, self.dropout = nn.GroupNorm(groups, out_channels, eps=1e-6), nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels, with 1×1 convolutions."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        hn = self.norm(x)
        q, k, v = (conv(hn).reshape(b, c, h * w) for conv in (self.q, self.k, self.v))
        weights = torch.softmax(q.transpose(1, 2) @ k * c ** -0.5, dim=-1)   # (b, query pixel, key pixel)
        return x + self.proj_out((v @ weights.transpose(1, 2)).reshape(b, c, h, w))


class _VQDownsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Mid(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1, self.attn_1 = ResnetBlock(channels, channels, groups), AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, ch: int, ch_mult, num_res_blocks: int, in_channels: int, z_channels: int, groups: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = ch
        for i, mult in enumerate(ch_mult):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(num_res_blocks):
                level.block.append(ResnetBlock(block_in, ch * mult, groups))
                block_in = ch * mult
            level.attn = nn.ModuleList()
            if i != len(ch_mult) - 1:
                level.downsample = _VQDownsample(block_in)
            self.down.append(level)
        self.mid = _Mid(block_in, groups)
        self.norm_out = nn.GroupNorm(groups, block_in, eps=1e-6)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, ch: int, ch_mult, num_res_blocks: int, out_ch: int, z_channels: int, groups: int):
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, groups)
        levels = []
        for i in reversed(range(len(ch_mult))):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, ch * ch_mult[i], groups))
                block_in = ch * ch_mult[i]
            level.attn = nn.ModuleList()
            if i != 0:
                level.upsample = Upsample(block_in)
            levels.insert(0, level)  # up[i] is level i; the forward pass walks them from the deepest
        self.up = nn.ModuleList(levels)
        self.norm_out = nn.GroupNorm(groups, block_in, eps=1e-6)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VQModelInterface(nn.Module):
    """``encode`` → pre-quantisation latents; ``decode`` quantises (unless told not to), then decodes."""

    def __init__(self, embed_dim: int, n_embed: int, ch: int, ch_mult, num_res_blocks: int, z_channels: int,
                 image_channels: int = 3, groups: int = 32):
        super().__init__()
        self.embed_dim = embed_dim
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, image_channels, z_channels, groups)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, image_channels, z_channels, groups)
        self.quantize = VectorQuantizer(n_embed, embed_dim)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)

    def encode(self, x):
        return self.quant_conv(self.encoder(x))

    def decode(self, h, force_not_quantize: bool = False):
        quant = h if force_not_quantize else self.quantize(h)[0]
        return self.decoder(self.post_quant_conv(quant))


# --- the diffusion model -----------------------------------------------------------------------
class DiffusionWrapper(nn.Module):
    def __init__(self, diffusion_model: UNetModel, conditioning_key: str | None):
        super().__init__()
        self.diffusion_model, self.conditioning_key = diffusion_model, conditioning_key

    def forward(self, x, t, c_concat=None, c_crossattn=None):
        if self.conditioning_key is None:
            return self.diffusion_model(x, t)
        return self.diffusion_model(x, t, context=torch.cat(list(c_crossattn), 1))


def linear_schedule(num_timesteps: int, linear_start: float, linear_end: float) -> dict[str, torch.Tensor]:
    """The schedule buffers CompVis registers (computed in float64, stored in float32)."""
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, num_timesteps, dtype=torch.float64) ** 2
    acp = torch.cumprod(1 - betas, 0)
    prev = torch.cat([acp.new_ones(1), acp[:-1]])
    var = betas * (1 - prev) / (1 - acp)
    values = dict(betas=betas, alphas_cumprod=acp, alphas_cumprod_prev=prev, sqrt_alphas_cumprod=acp.sqrt(),
                  sqrt_one_minus_alphas_cumprod=(1 - acp).sqrt(), log_one_minus_alphas_cumprod=(1 - acp).log(),
                  sqrt_recip_alphas_cumprod=(1 / acp).sqrt(), sqrt_recipm1_alphas_cumprod=(1 / acp - 1).sqrt(),
                  posterior_variance=var, posterior_log_variance_clipped=var.clamp(min=1e-20).log(),
                  posterior_mean_coef1=betas * prev.sqrt() / (1 - acp),
                  posterior_mean_coef2=(1 - prev) * (1 - betas).sqrt() / (1 - acp))
    return {k: v.float() for k, v in values.items()}


class LatentDiffusion(nn.Module):
    """CompVis ``LatentDiffusion``'s attributes and the methods LD3M code calls (eps-prediction)."""

    parameterization = "eps"

    def __init__(self, unet: UNetModel, first_stage: VQModelInterface, n_classes: int | None, context_dim: int,
                 image_size: int, num_timesteps: int = 1000, linear_start: float = 0.0015, linear_end: float = 0.0195,
                 scale_factor: float = 1.0, cond_stage_key: str = "class_label"):
        super().__init__()
        self.model = DiffusionWrapper(unet, "crossattn" if n_classes is not None else None)
        self.first_stage_model = first_stage
        self.cond_stage_model = None if n_classes is None else ClassEmbedder(n_classes, context_dim, cond_stage_key)
        self.num_timesteps, self.linear_start, self.linear_end = num_timesteps, linear_start, linear_end
        self.scale_factor, self.cond_stage_key = scale_factor, cond_stage_key
        self.image_size, self.channels = image_size, first_stage.embed_dim
        for name, value in linear_schedule(num_timesteps, linear_start, linear_end).items():
            self.register_buffer(name, value)

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def apply_model(self, x_noisy, t, cond, return_ids: bool = False):
        if not isinstance(cond, dict):
            key = "c_concat" if self.model.conditioning_key == "concat" else "c_crossattn"
            cond = {key: cond if isinstance(cond, list) else [cond]}
        return self.model(x_noisy, t, **cond)

    def get_learned_conditioning(self, c):
        return self.cond_stage_model(c)

    def q_sample(self, x_start, t, noise=None):
        noise = torch.randn_like(x_start) if noise is None else noise
        shape = (-1,) + (1,) * (x_start.dim() - 1)
        return (self.sqrt_alphas_cumprod[t].reshape(shape) * x_start
                + self.sqrt_one_minus_alphas_cumprod[t].reshape(shape) * noise)

    def encode_first_stage(self, x):
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, encoder_posterior):
        return self.scale_factor * encoder_posterior

    def decode_first_stage(self, z, predict_cids: bool = False, force_not_quantize: bool = False):
        if predict_cids:
            raise NotImplementedError("predict_cids is not part of this test model")
        return self.first_stage_model.decode(1.0 / self.scale_factor * z, force_not_quantize=force_not_quantize)

    differentiable_decode_first_stage = decode_first_stage

    @contextlib.contextmanager
    def ema_scope(self, context=None):
        yield


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Fresh random values for every parameter from one generator: norms near 1, weights scaled by their fan-in,
    biases small, the codebook spread over [-1, 1] (the latents' range), class embeddings standard normal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
                if isinstance(module, VectorQuantizer):
                    value = torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1
                elif isinstance(module, nn.Embedding):
                    value = noise
                elif isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
                    value = (1.0 if name == "weight" else 0.0) + 0.1 * noise
                elif name == "bias":
                    value = 0.1 * noise
                else:
                    value = noise / math.sqrt(p[0].numel())
                p.copy_(value)
    return model


def compvis_ldm(seed: int = 0, *, model_channels: int = 32, channel_mult=(1, 2), num_res_blocks: int = 1,
                attention_resolutions=(2,), num_heads: int = -1, num_head_channels: int = 16,
                transformer_depth: int = 1, context_dim: int = 32, n_classes: int | None = 10, latent_size: int = 8,
                vq_ch: int = 16, vq_ch_mult=(1, 2, 2), vq_num_res_blocks: int = 1, embed_dim: int = 3,
                z_channels: int = 3, n_embed: int = 64, groups: int = 8,
                scale_factor: float = 1.0) -> LatentDiffusion:
    """A frozen CompVis-layout LDM with random weights (deterministic for ``seed``). Defaults: 8×8×3 latents ↔ 3×32×32
    images (f = 4), a two-level UNet with 32/64 channels, cross-attention at the second level (heads of 16 channels),
    ``n_classes`` classes plus the unconditional one (``n_classes=None``: an unconditional model)."""
    context_dim_unet = None if n_classes is None else context_dim
    unet = UNetModel(embed_dim, model_channels, embed_dim, num_res_blocks, attention_resolutions, channel_mult,
                     num_heads, num_head_channels, transformer_depth, context_dim_unet, groups)
    first_stage = VQModelInterface(embed_dim, n_embed, vq_ch, vq_ch_mult, vq_num_res_blocks, z_channels, 3, groups)
    model = LatentDiffusion(unet, first_stage, n_classes, context_dim, latent_size, scale_factor=scale_factor)
    return randomize(model, seed).requires_grad_(False).eval()
