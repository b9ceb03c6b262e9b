"""An independent, functional re-statement of CompVis's LDM architecture, reading CompVis-named weights.

The oracle of the tests below for the CompVis → ld3m_fast key mapping: it
walks a CompVis-layout state dict by CompVis's own module names (``input_blocks.{i}.{j}``,
``in_layers.0``, ``encoder.down.{l}.block.{j}``, ...) with the semantics of CompVis's
``openaimodel.UNetModel``, ``SpatialTransformer``, VQ ``Encoder``/``Decoder`` and taming's
``VectorQuantizer2`` — written with torch.nn.functional only, sharing no code or naming with
``ld3m_fast.models`` (only the tests below import those). It was checked against the CompVis code
itself when it was written (UNet and VQ outputs equal to the last bit or to 1e-14).
Sizes must be divisible by the downsampling factor, as in CompVis.
"""
from __future__ import annotations

import hashlib
import math
import re

import pytest
import torch
from torch.nn import functional as F

from tests.helpers.numerics import rel_err
from ld3m_fast.models import LDMConfig, UNetConfig, VQConfig, build_ldm, load_ldm
from ld3m_fast.models.compvis import state_dict_to_compvis
from ld3m_fast.models.ldm import SCHEDULE_BUFFERS

UNET, VQ = "model.diffusion_model.", "first_stage_model."


def _conv(sd, p, x, stride=1, padding=None):
    w = sd[p + ".weight"]
    pad = (w.shape[-1] // 2) if padding is None else padding
    return F.conv2d(x, w, sd[p + ".bias"], stride=stride, padding=pad)


def _linear(sd, p, x):
    return F.linear(x, sd[p + ".weight"], sd.get(p + ".bias"))


def _gn(sd, p, x, groups, eps):
    return F.group_norm(x, groups, sd[p + ".weight"], sd[p + ".bias"], eps)


def _ln(sd, p, x):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], 1e-5)


def _attend(q, k, v, heads):
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) * d ** -0.5, dim=-1)
    return (w @ v).transpose(1, 2).reshape(b, n, inner)


def _indices(sd, prefix):
    """Sorted integer indices ``i`` of the modules ``{prefix}{i}.*`` present in ``sd``."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pat.match(k))})


# --- UNet ------------------------------------------------------------------------------------
def _res_block(sd, p, h, emb, groups):
    x = h
    h = _conv(sd, p + ".in_layers.2", F.silu(_gn(sd, p + ".in_layers.0", h, groups, 1e-5)))
    h = h + _linear(sd, p + ".emb_layers.1", F.silu(emb))[:, :, None, None]
    h = _conv(sd, p + ".out_layers.3", F.silu(_gn(sd, p + ".out_layers.0", h, groups, 1e-5)))
    skip = _conv(sd, p + ".skip_connection", x, padding=0) if p + ".skip_connection.weight" in sd else x
    return skip + h


def _cross_attention(sd, p, x, context, heads):
    q, k, v = (_linear(sd, f"{p}.to_{n}", x if n == "q" else context) for n in "qkv")
    return _linear(sd, p + ".to_out.0", _attend(q, k, v, heads))


def _spatial_transformer(sd, p, h, context, heads, groups):
    b, c, H, W = h.shape
    x = _conv(sd, p + ".proj_in", _gn(sd, p + ".norm", h, groups, 1e-6), padding=0).flatten(2).transpose(1, 2)
    for d in _indices(sd, p + ".transformer_blocks."):
        q = f"{p}.transformer_blocks.{d}"
        n1 = _ln(sd, q + ".norm1", x)
        x = _cross_attention(sd, q + ".attn1", n1, n1, heads) + x
        x = _cross_attention(sd, q + ".attn2", _ln(sd, q + ".norm2", x), context, heads) + x
        a, gate = _linear(sd, q + ".ff.net.0.proj", _ln(sd, q + ".norm3", x)).chunk(2, dim=-1)
        x = _linear(sd, q + ".ff.net.2", a * F.gelu(gate)) + x
    x = x.transpose(1, 2).reshape(b, -1, H, W)
    return _conv(sd, p + ".proj_out", x, padding=0) + h


def _timestep_block(sd, p, h, emb, context, heads_of, groups):
    """One ``TimestepEmbedSequential``: its children in order, each recognised by its weight names."""
    for j in _indices(sd, p + "."):
        q = f"{p}.{j}"
        if q + ".in_layers.0.weight" in sd:
            h = _res_block(sd, q, h, emb, groups)
        elif q + ".proj_in.weight" in sd:
            h = _spatial_transformer(sd, q, h, context, heads_of(h.shape[1]), groups)
        elif q + ".op.weight" in sd:
            h = _conv(sd, q + ".op", h, stride=2, padding=1)
        elif q + ".conv.weight" in sd:
            h = _conv(sd, q + ".conv", F.interpolate(h, scale_factor=2.0, mode="nearest"))
        else:
            raise KeyError(f"unknown module at {q}")
    return h


def unet_forward(sd, x, t, context, heads_of, groups=32):
    """CompVis ``UNetModel.forward(x, t, context)`` from CompVis-named weights (``heads_of(channels)`` heads)."""
    sd = {k[len(UNET):]: v for k, v in sd.items() if k.startswith(UNET)}
    mc = sd["time_embed.0.weight"].shape[1]
    half = mc // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    t_emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(x.dtype)
    emb = _linear(sd, "time_embed.2", F.silu(_linear(sd, "time_embed.0", t_emb)))
    hs, h = [], x
    for i in _indices(sd, "input_blocks."):
        if i == 0:
            h = _conv(sd, "input_blocks.0.0", h)
        else:
            h = _timestep_block(sd, f"input_blocks.{i}", h, emb, context, heads_of, groups)
        hs.append(h)
    h = _timestep_block(sd, "middle_block", h, emb, context, heads_of, groups)
    for i in _indices(sd, "output_blocks."):
        h = _timestep_block(sd, f"output_blocks.{i}", torch.cat([h, hs.pop()], dim=1), emb, context, heads_of, groups)
    return _conv(sd, "out.2", F.silu(_gn(sd, "out.0", h, groups, 1e-5)))


# --- VQ first stage --------------------------------------------------------------------------
def _vq_res(sd, p, h, groups):
    x = h
    h = _conv(sd, p + ".conv1", F.silu(_gn(sd, p + ".norm1", h, groups, 1e-6)))
    h = _conv(sd, p + ".conv2", F.silu(_gn(sd, p + ".norm2", h, groups, 1e-6)))
    return (_conv(sd, p + ".nin_shortcut", x, padding=0) if p + ".nin_shortcut.weight" in sd else x) + h


def _vq_attn(sd, p, h, groups):
    b, c, H, W = h.shape
    hn = _gn(sd, p + ".norm", h, groups, 1e-6)
    q, k, v = (_conv(sd, f"{p}.{n}", hn, padding=0).reshape(b, c, H * W) for n in "qkv")
    w = torch.softmax(q.transpose(1, 2) @ k * c ** -0.5, dim=2)      # (b, HW, HW)
    out = (v @ w.transpose(1, 2)).reshape(b, c, H, W)
    return h + _conv(sd, p + ".proj_out", out, padding=0)


def _vq_mid(sd, p, h, groups):
    h = _vq_res(sd, p + ".mid.block_1", h, groups)
    h = _vq_attn(sd, p + ".mid.attn_1", h, groups)
    return _vq_res(sd, p + ".mid.block_2", h, groups)


def vq_encode(sd, x, groups=32):
    """CompVis ``VQModelInterface.encode``: ``quant_conv(encoder(x))``."""
    sd = {k[len(VQ):]: v for k, v in sd.items() if k.startswith(VQ)}
    h = _conv(sd, "encoder.conv_in", x)
    for lv in _indices(sd, "encoder.down."):
        for j in _indices(sd, f"encoder.down.{lv}.block."):
            h = _vq_res(sd, f"encoder.down.{lv}.block.{j}", h, groups)
        if f"encoder.down.{lv}.downsample.conv.weight" in sd:
            h = _conv(sd, f"encoder.down.{lv}.downsample.conv", F.pad(h, (0, 1, 0, 1)), stride=2, padding=0)
    h = _vq_mid(sd, "encoder", h, groups)
    h = _conv(sd, "encoder.conv_out", F.silu(_gn(sd, "encoder.norm_out", h, groups, 1e-6)))
    return _conv(sd, "quant_conv", h, padding=0)


def vq_quantize(sd, z):
    """taming ``VectorQuantizer2`` (legacy loss, β = 0.25): ``(zq, loss, indices)``."""
    e = sd[VQ + "quantize.embedding.weight"]
    flat = z.permute(0, 2, 3, 1).reshape(-1, e.shape[1])
    d = (flat ** 2).sum(1, keepdim=True) + (e ** 2).sum(1) - 2 * flat @ e.t()
    idx = d.argmin(1)
    zq = e[idx].reshape(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
    loss = torch.mean((zq - z) ** 2) * 1.25
    return zq, loss, idx


def vq_decode(sd, h, groups=32, quantize=True):
    """CompVis ``VQModelInterface.decode``: quantise (optionally), ``post_quant_conv``, decoder."""
    if quantize:
        h = vq_quantize(sd, h)[0]
    sd = {k[len(VQ):]: v for k, v in sd.items() if k.startswith(VQ)}
    h = _conv(sd, "decoder.conv_in", _conv(sd, "post_quant_conv", h, padding=0))
    h = _vq_mid(sd, "decoder", h, groups)
    for lv in reversed(_indices(sd, "decoder.up.")):
        for j in _indices(sd, f"decoder.up.{lv}.block."):
            h = _vq_res(sd, f"decoder.up.{lv}.block.{j}", h, groups)
        if f"decoder.up.{lv}.upsample.conv.weight" in sd:
            h = _conv(sd, f"decoder.up.{lv}.upsample.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return _conv(sd, "decoder.conv_out", F.silu(_gn(sd, "decoder.norm_out", h, groups, 1e-6)))


def class_embedding(sd, labels):
    """CompVis ``ClassEmbedder``: ``embedding(labels)[:, None]``."""
    return sd["cond_stage_model.embedding.weight"][labels][:, None]


# ============================================================================================
# Tests: checkpoints in CompVis's layout load into ld3m_fast as the same function
# ============================================================================================
VARIANT = LDMConfig(  # exercises the other branches of the mapping: attention at the first and last level only,
    name="variant", image_size=32, n_classes=5, context_dim=12,  # two transformer layers, a fixed head count,
    vq=VQConfig(channels=8, ch_mult=(1, 2, 2, 4), num_res_blocks=2, embed_dim=3, n_embed=32, z_channels=4,
                norm_groups=4),                                     # f = 8, z_channels != embed_dim
    unet=UNetConfig(block_channels=(16, 24, 32), layers_per_block=2, cross_attention=(True, False, True),
                    num_heads=2, head_dim=None, transformer_depth=2, norm_groups=8))


def random_compvis_checkpoint(cfg, path, seed):
    """A Lightning-style checkpoint in CompVis's layout with fresh random values for every tensor.

    The key names and shapes come from ``state_dict_to_compvis``; the values do not come from any
    ld3m_fast model, and the oracle reads them by their CompVis names.
    """
    layout = state_dict_to_compvis(build_ldm(cfg, device="meta"))
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, meta in layout.items():
        if key in SCHEDULE_BUFFERS:
            continue
        if meta.dim() == 1:
            base = 1.0 if key.endswith("weight") and ("norm" in key or "in_layers.0" in key or "out_layers.0" in key
                                                       or key.endswith(("out.0.weight",))) else 0.0
            t = base + 0.2 * torch.randn(meta.shape, generator=gen, dtype=torch.float64)
        else:
            t = torch.randn(meta.shape, generator=gen, dtype=torch.float64) / math.sqrt(meta[0].numel())
        sd[key] = t.float()
    sd[VQ + "quantize.embedding.weight"] = 0.5 * torch.randn(sd[VQ + "quantize.embedding.weight"].shape, generator=gen)
    sd.update({k: v for k, v in layout.items() if k in SCHEDULE_BUFFERS})
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 1234}, path)
    return {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}


@pytest.mark.parametrize("cfg", [pytest.param("tiny", id="tiny"), pytest.param(VARIANT, id="variant")])
def test_compvis_layout_checkpoint_is_the_same_function(cfg, tmp_path):
    """UNet, encoder, quantiser, decoder and class embedder of the loaded model equal the CompVis oracle in float64."""
    model = load_ldm(cfg, dtype=torch.float64)  # for the config only
    cfg = model.config
    path = tmp_path / "model.ckpt"
    sd = random_compvis_checkpoint(cfg, path, seed=7)
    model = load_ldm(cfg, checkpoint=path, dtype=torch.float64)
    gen = torch.Generator().manual_seed(8)
    n, size = 3, cfg.latent_size
    x = torch.randn(n, cfg.latent_channels, size, size, generator=gen, dtype=torch.float64)
    t = torch.tensor([1, 500, 999])
    labels = torch.tensor([0, 2, cfg.n_classes])
    ctx = model.get_learned_conditioning({cfg.cond_stage_key: labels})
    assert torch.equal(ctx, class_embedding(sd, labels))
    groups_u, groups_v = cfg.unet.norm_groups, cfg.vq.norm_groups
    eps = model.apply_model(x, t, ctx)
    assert rel_err(eps, unet_forward(sd, x, t, ctx, cfg.unet.heads, groups_u)) < 1e-12
    img = torch.rand(2, cfg.image_channels, cfg.image_size, cfg.image_size, generator=gen, dtype=torch.float64) * 2 - 1
    h = model.first_stage_model.encode(img)
    assert rel_err(h, vq_encode(sd, img, groups_v)) < 1e-12
    zq, loss, (_, _, idx) = model.first_stage_model.quantize(h)
    r_zq, r_loss, r_idx = vq_quantize(sd, h)
    assert torch.equal(idx, r_idx) and rel_err(zq, r_zq) < 1e-14 and abs(float(loss - r_loss)) < 1e-12
    assert rel_err(model.first_stage_model.decode(h), vq_decode(sd, h, groups_v)) < 1e-12
    assert rel_err(model.decode_first_stage(x, force_not_quantize=True),
                   vq_decode(sd, x, groups_v, quantize=False)) < 1e-12


def test_cin256_v2_matches_compvis_key_layout_and_parameter_counts():
    """The cin256-v2 architecture, on the meta device: CompVis's parameter counts and exact (key, shape) list.

    Counts and the digest of the sorted ``key:shape`` lines were taken from CompVis's own modules
    (UNetModel, Encoder/Decoder, taming VectorQuantizer2, ClassEmbedder built from cin256-v2.yaml).
    """
    model = build_ldm("cin256-v2", device="meta")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    fs = model.first_stage_model
    assert count(model.diffusion_model) == 400_920_579
    assert count(fs.encoder) == 22_337_411 and count(fs.decoder) == 32_960_771
    assert count(fs.quantize) == 8192 * 3 and count(fs.quant_conv) + count(fs.post_quant_conv) == 24
    assert count(model.cond_stage_model) == 1001 * 512
    layout = {k: tuple(v.shape) for k, v in state_dict_to_compvis(model).items() if k not in SCHEDULE_BUFFERS}
    lines = "\n".join(f"{k}:{','.join(map(str, s))}" for k, s in sorted(layout.items()))
    assert len(layout) == 894
    assert hashlib.sha256(lines.encode()).hexdigest() == "27b289084387db2c589128aaa9c1244d82219bd1e5c55aa24659e614f44ab56a"
    assert model.diffusion_model.down_blocks[1].attentions[0].transformer_blocks[0].attn1.heads == 1  # num_heads: 1
