"""A small class-conditional LDM with CompVis's surface, written for the tests (and the CPU benchmarks).

It has what official LD3M code calls on a CompVis ``LatentDiffusion`` — ``apply_model``,
``first_stage_model.encode/quantize/decode``, ``cond_stage_model.embedding`` with the
unconditional class last, ``get_learned_conditioning``, ``q_sample``, ``decode_first_stage``, the
schedule buffers — and needs nothing but torch (no diffusers), so it stands in for the official
model wherever the engine is tested on its own. Small enough to run many steps on a CPU, and in
float64. Random weights, deterministic for a seed.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ld3m_fast.engine.schedule import linear_alphas_cumprod
from ld3m_fast.models.parts import ClassEmbedder, VectorQuantizer


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, as in DDPM/CompVis."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class _ResBlock(nn.Module):
    def __init__(self, channels: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * channels)
        self.norm2, self.conv2 = nn.GroupNorm(8, channels), nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


class _CrossAttention(nn.Module):
    """Single-head cross-attention of image tokens to the context tokens."""

    def __init__(self, channels: int, context_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(8, channels)
        self.q, self.k, self.v = (nn.Linear(channels, channels), nn.Linear(context_dim, channels),
                                  nn.Linear(context_dim, channels))
        self.out = nn.Linear(channels, channels)

    def forward(self, x, context):
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        attn = F.scaled_dot_product_attention(self.q(tokens), self.k(context), self.v(context))
        return x + self.out(attn).transpose(1, 2).reshape(b, c, h, w)


class _UNet(nn.Module):
    """A two-level UNet predicting the noise ``eps(z, t, context)``."""

    def __init__(self, in_channels: int, channels: int, context_dim: int):
        super().__init__()
        self.channels = channels
        emb_dim = 4 * channels
        self.time_mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down_block = _ResBlock(channels, emb_dim)
        self.down = nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1)
        self.mid_block, self.mid_attn = _ResBlock(2 * channels, emb_dim), _CrossAttention(2 * channels, context_dim)
        self.up = nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1)
        self.up_block, self.up_attn = _ResBlock(channels, emb_dim), _CrossAttention(channels, context_dim)
        self.out = nn.Sequential(nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, in_channels, 3, padding=1))

    def forward(self, x, t, context):
        emb = self.time_mlp(timestep_embedding(t, self.channels).to(x.dtype))
        h0 = self.down_block(self.inp(x), emb)
        h = self.mid_attn(self.mid_block(self.down(h0), emb), context)
        h = self.up_attn(self.up_block(self.up(h) + h0, emb), context)
        return self.out(h)


class _FirstStage(nn.Module):
    """A VQ autoencoder with downsampling factor 4 (like VQ-f4), no attention; ``decode`` quantises unless told not."""

    def __init__(self, embed_dim: int, n_embed: int, channels: int = 16):
        super().__init__()
        self.embed_dim = embed_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1), nn.SiLU(), nn.Conv2d(channels, channels, 4, stride=2, padding=1),
            nn.SiLU(), nn.Conv2d(channels, channels, 4, stride=2, padding=1), nn.SiLU(), nn.Conv2d(channels, embed_dim, 1))
        self.quantize = VectorQuantizer(n_embed, embed_dim)
        nn.init.uniform_(self.quantize.embedding.weight, -1.0, 1.0)  # a codebook spread over the latents' range
        self.decoder = nn.Sequential(
            nn.Conv2d(embed_dim, channels, 3, padding=1), nn.GroupNorm(8, channels), nn.SiLU(),
            nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(channels, 3, 3, padding=1))
        # He-normal weights keep the signal's scale through the layers, so that random-weight images respond to
        # the latents as a trained autoencoder's would.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z, force_not_quantize: bool = False):
        zq = z if force_not_quantize else self.quantize(z)[0]
        return torch.tanh(self.decoder(zq))


class CompVisStyleLDM(nn.Module):
    """A tiny CompVis-style class-conditional LDM (random weights; deterministic for a seed).

    8×8×``latent_channels`` latents ↔ 3×32×32 images; ``n_classes`` classes plus the unconditional one.
    """

    cond_stage_key = "class_label"
    parameterization = "eps"

    def __init__(self, n_classes: int = 10, latent_channels: int = 3, channels: int = 32, context_dim: int = 32,
                 n_embed: int = 64, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.diffusion_model = _UNet(latent_channels, channels, context_dim)
            self.first_stage_model = _FirstStage(latent_channels, n_embed)
            self.cond_stage_model = ClassEmbedder(n_classes, context_dim, self.cond_stage_key)
        self.n_classes = n_classes
        acp = linear_alphas_cumprod()
        self.num_timesteps = acp.numel()
        # float32 buffers, as CompVis registers them
        self.register_buffer("betas", (1 - acp / torch.cat([acp.new_ones(1), acp[:-1]])).float(), persistent=False)
        self.register_buffer("alphas_cumprod", acp.float(), persistent=False)
        self.register_buffer("alphas_cumprod_prev", torch.cat([acp.new_ones(1), acp[:-1]]).float(), persistent=False)
        self.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def apply_model(self, x, t, cond):
        return self.diffusion_model(x, t, cond)

    def get_learned_conditioning(self, c):
        return self.cond_stage_model(c)

    def q_sample(self, x_start, t, noise=None):
        noise = torch.randn_like(x_start) if noise is None else noise
        a = self.alphas_cumprod.to(x_start.dtype)[t].reshape(-1, *([1] * (x_start.dim() - 1)))
        return a.sqrt() * x_start + (1 - a).sqrt() * noise

    def decode_first_stage(self, z):
        return self.first_stage_model.decode(z)
