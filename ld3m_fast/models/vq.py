"""The VQ autoencoder (first stage) with CompVis ``VQModelInterface`` semantics, built from diffusers' blocks.

``encode(x)`` returns the pre-quantisation latent (``quant_conv(encoder(x))``), ``quantize(z)``
returns ``(zq, codebook loss, (None, None, indices))`` with the straight-through gradient, and
``decode(h)`` quantises (unless ``force_not_quantize=True``) and decodes to images in [-1, 1].
The encoder and decoder are diffusers' ``Encoder``/``Decoder``; attribute names follow diffusers'
``VQModel``, so its state dicts load as they are.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import VQConfig
from .dependency import require_diffusers
from .parts import VectorQuantizer

require_diffusers()
from diffusers.models.autoencoders.vae import Decoder, Encoder  # noqa: E402


class VQFirstStage(nn.Module):
    """CompVis ``VQModelInterface`` (encode → latent, decode quantises) over diffusers' Encoder/Decoder."""

    def __init__(self, cfg: VQConfig, image_channels: int = 3):
        super().__init__()
        blocks = cfg.block_channels
        self.embed_dim = cfg.embed_dim
        self.encoder = Encoder(in_channels=image_channels, out_channels=cfg.z_ch,
                               down_block_types=("DownEncoderBlock2D",) * len(blocks), block_out_channels=blocks,
                               layers_per_block=cfg.num_res_blocks, norm_num_groups=cfg.norm_groups, act_fn="silu",
                               double_z=False)
        self.quant_conv = nn.Conv2d(cfg.z_ch, cfg.embed_dim, 1)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.beta)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_ch, 1)
        self.decoder = Decoder(in_channels=cfg.z_ch, out_channels=image_channels,
                               up_block_types=("UpDecoderBlock2D",) * len(blocks), block_out_channels=blocks,
                               layers_per_block=cfg.num_res_blocks, norm_num_groups=cfg.norm_groups, act_fn="silu")
        self.autocast_dtype: torch.dtype | None = None  # set by ld3m_fast.optimize(bf16=True)
        self.checkpoint_decoder = False  # set by ld3m_fast.optimize(checkpoint_decoder=True)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → pre-quantisation latents (B, embed_dim, H/f, W/f)."""
        return self.quant_conv(self.encoder(x))

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        """Latents → images in [-1, 1]; quantises ``h`` first unless ``force_not_quantize``."""
        quant = h if force_not_quantize else self.quantize(h)[0]
        with _autocast(quant, self.autocast_dtype):
            if self.checkpoint_decoder and torch.is_grad_enabled():
                out = self._decode_recomputed(self.post_quant_conv(quant))
            else:
                out = self.decoder(self.post_quant_conv(quant))
        return out.to(h.dtype).contiguous()

    def _decode_recomputed(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder (diffusers' ``Decoder.forward`` for group norms, step by step) keeping only the input of
        each residual block, upsampler and the output head for backward; their insides are recomputed.

        At 256² (float32) that is 280 MiB of saved activations per image instead of 1606 MiB, and
        backward's transient peak is one residual block's activations, not one whole level's.
        """
        dec = self.decoder
        run = lambda fn, *args: checkpoint(fn, *args, use_reentrant=False)  # noqa: E731
        sample = run(dec.mid_block, dec.conv_in(z), None)
        sample = sample.to(next(iter(dec.up_blocks.parameters())).dtype)
        for block in dec.up_blocks:
            for resnet in block.resnets:
                sample = run(resnet, sample, None)
            for upsampler in block.upsamplers or ():
                sample = run(upsampler, sample)
        return run(lambda x: dec.conv_out(dec.conv_act(dec.conv_norm_out(x))), sample)

    def forward(self, x: torch.Tensor):
        """CompVis ``VQModel.forward``: ``(reconstruction, codebook loss)``."""
        quant, loss, _ = self.quantize(self.encode(x))
        return self.decode(quant, force_not_quantize=True), loss


def _autocast(like: torch.Tensor, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``like``'s device, or a no-op context when ``dtype`` is None."""
    return torch.autocast(like.device.type, dtype=dtype, enabled=dtype is not None)
