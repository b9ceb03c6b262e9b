"""Architecture of a class-conditional latent diffusion model, as plain data (JSON-serialisable).

``LDMConfig`` holds everything ``build_ldm`` needs: the image, the VQ autoencoder (``VQConfig``),
the UNet (``UNetConfig``), the class embedder and the training schedule. Named configurations:

- ``"cin256-v2"``: CompVis's ImageNet 256² model (the one LD3M uses): VQ-f4 (64×64×3 latents),
  UNet 192·[1,2,3,5] with one-head cross-attention at 32, 16 and 8 px, 1000 classes + unconditional.
- ``"tiny"``: 3×32×32 images, 8×8×3 latents, a few thousand parameters per part; for tests.
- ``"small"``: 1×28×28 images (Fashion-MNIST size), VQ-f4 to 7×7×3 latents; a starting point for
  training a small LDM.
- ``"fashion-mnist"``: the architecture of the shipped Fashion-MNIST prior (smaller than ``"small"``,
  so that it trains and renders on a CPU).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class VQConfig:
    """VQ autoencoder (CompVis ``VQModelInterface`` with its ``Encoder``/``Decoder``; no per-level attention)."""

    channels: int = 128                   # CompVis ddconfig.ch
    ch_mult: tuple[int, ...] = (1, 2, 4)  # downsampling factor f = 2 ** (len(ch_mult) - 1)
    num_res_blocks: int = 2
    embed_dim: int = 3                    # latent channels (codebook vector size)
    n_embed: int = 8192                   # codebook entries
    z_channels: int | None = None         # encoder output channels before quant_conv (default: embed_dim)
    norm_groups: int = 32
    beta: float = 0.25                    # commitment weight of the codebook loss

    @property
    def factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def z_ch(self) -> int:
        return self.z_channels or self.embed_dim

    @property
    def block_channels(self) -> tuple[int, ...]:
        return tuple(self.channels * m for m in self.ch_mult)


@dataclass(frozen=True)
class UNetConfig:
    """Noise-prediction UNet (CompVis ``openaimodel.UNetModel`` with ``SpatialTransformer`` cross-attention).

    ``cross_attention[i]`` says whether level ``i`` has a transformer after each residual block
    (the middle block always has one). Attention heads: either ``num_heads`` per layer (CompVis
    ``num_heads``; cin256-v2 uses 1) or ``head_dim`` channels per head (CompVis ``num_head_channels``).
    """

    block_channels: tuple[int, ...] = (192, 384, 576, 960)
    layers_per_block: int = 2
    cross_attention: tuple[bool, ...] = (False, True, True, True)
    num_heads: int | None = 1
    head_dim: int | None = None
    transformer_depth: int = 1
    norm_groups: int = 32

    def heads(self, channels: int) -> int:
        """Attention heads of a transformer with ``channels`` channels."""
        return self.num_heads if self.head_dim is None else channels // self.head_dim


@dataclass(frozen=True)
class LDMConfig:
    """A class-conditional LDM: images ↔ VQ latents, a UNet on the latents, a class embedder, a schedule."""

    image_channels: int = 3
    image_size: int = 256
    n_classes: int = 1000          # the embedder has n_classes + 1 rows; the last is the unconditional class
    context_dim: int = 512         # class-embedding size (UNet cross-attention context)
    vq: VQConfig = field(default_factory=VQConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    num_timesteps: int = 1000
    linear_start: float = 0.0015   # CompVis "linear" schedule: betas = linspace(√start, √end)²
    linear_end: float = 0.0195
    scale_factor: float = 1.0      # latents are scaled by this before the UNet (CompVis scale_factor)
    cond_stage_key: str = "class_label"
    name: str = "custom"

    def __post_init__(self):
        check_config(self)

    @property
    def latent_size(self) -> int:
        return -(-self.image_size // self.vq.factor)

    @property
    def latent_channels(self) -> int:
        return self.vq.embed_dim

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LDMConfig":
        """Inverse of ``to_dict`` (lists become tuples; unknown keys are an error)."""
        d = dict(d)
        try:
            vq = VQConfig(**_tuples(d.pop("vq", {})))
            unet = UNetConfig(**_tuples(d.pop("unet", {})))
            return cls(vq=vq, unet=unet, **d)
        except TypeError as err:
            raise InvalidArgumentError(f"not an ld3m_fast LDM config ({err})") from None

    def replace(self, **changes) -> "LDMConfig":
        return dataclasses.replace(self, **changes)


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def check_config(cfg: LDMConfig) -> None:
    """Reject configurations the modules cannot build, naming the field and the fix."""
    if cfg.image_channels < 1:
        raise InvalidArgumentError(f"image_channels={cfg.image_channels} must be at least 1 (1: grey, 3: RGB)")
    if cfg.image_size % cfg.vq.factor:
        raise InvalidArgumentError(f"image_size={cfg.image_size} is not divisible by the VQ factor {cfg.vq.factor} "
                                   f"(= 2 ** (len(vq.ch_mult) - 1)); choose another size or ch_mult")
    if cfg.n_classes < 1 or cfg.context_dim < 1:
        raise InvalidArgumentError("n_classes and context_dim must be positive")
    if not 0 < cfg.linear_start < cfg.linear_end < 1:
        raise InvalidArgumentError(f"need 0 < linear_start < linear_end < 1, got {cfg.linear_start}, {cfg.linear_end}")
    u, v = cfg.unet, cfg.vq
    if len(u.cross_attention) != len(u.block_channels):
        raise InvalidArgumentError(
            f"unet.cross_attention has {len(u.cross_attention)} entries but unet.block_channels has "
            f"{len(u.block_channels)}: give one flag per level")
    if (u.num_heads is None) == (u.head_dim is None):
        raise InvalidArgumentError("set exactly one of unet.num_heads and unet.head_dim")
    for ch in u.block_channels:
        if ch % u.norm_groups:
            raise InvalidArgumentError(f"UNet channels {ch} are not divisible by unet.norm_groups={u.norm_groups}")
        if u.head_dim is not None and ch % u.head_dim:
            raise InvalidArgumentError(f"UNet channels {ch} are not divisible by unet.head_dim={u.head_dim}")
    for ch in v.block_channels:
        if ch % v.norm_groups:
            raise InvalidArgumentError(f"VQ channels {ch} are not divisible by vq.norm_groups={v.norm_groups}")
    if min(v.num_res_blocks, u.layers_per_block, v.embed_dim, v.n_embed, u.transformer_depth) < 1:
        raise InvalidArgumentError("block counts, embed_dim and n_embed must be positive")


CIN256_V2 = LDMConfig(name="cin256-v2")

TINY = LDMConfig(
    name="tiny", image_channels=3, image_size=32, n_classes=10, context_dim=16,
    vq=VQConfig(channels=8, ch_mult=(1, 2, 2), num_res_blocks=1, embed_dim=3, n_embed=64, norm_groups=4),
    unet=UNetConfig(block_channels=(16, 32), layers_per_block=1, cross_attention=(False, True), num_heads=None,
                    head_dim=8, norm_groups=8))

SMALL = LDMConfig(
    name="small", image_channels=1, image_size=28, n_classes=10, context_dim=64,
    vq=VQConfig(channels=32, ch_mult=(1, 2, 4), num_res_blocks=1, embed_dim=3, n_embed=256, norm_groups=16),
    unet=UNetConfig(block_channels=(64, 128, 128), layers_per_block=2, cross_attention=(False, True, True),
                    num_heads=None, head_dim=32, norm_groups=16))

# The Fashion-MNIST prior shipped with the package (ld3m-fast train-prior; README): sized to train and to
# render 100 images x 10 guided steps per iteration on a 2-core CPU.
FASHION_MNIST = LDMConfig(
    name="fashion-mnist", image_channels=1, image_size=28, n_classes=10, context_dim=64,
    vq=VQConfig(channels=32, ch_mult=(1, 2, 2), num_res_blocks=1, embed_dim=3, n_embed=256, norm_groups=8),
    unet=UNetConfig(block_channels=(32, 64, 64), layers_per_block=1, cross_attention=(False, True, True),
                    num_heads=None, head_dim=32, norm_groups=16))

NAMED_CONFIGS = {c.name: c for c in (CIN256_V2, TINY, SMALL, FASHION_MNIST)}


def get_config(name_or_config) -> LDMConfig:
    """An ``LDMConfig`` from a name in ``NAMED_CONFIGS``, a dict, or an ``LDMConfig`` (returned as is)."""
    if isinstance(name_or_config, LDMConfig):
        return name_or_config
    if isinstance(name_or_config, dict):
        return LDMConfig.from_dict(name_or_config)
    if isinstance(name_or_config, str) and name_or_config in NAMED_CONFIGS:
        return NAMED_CONFIGS[name_or_config]
    raise InvalidArgumentError(
        f"unknown model {name_or_config!r}: choose one of {sorted(NAMED_CONFIGS)}, pass an "
        "LDMConfig, or give the path of a saved model (ld3m_fast safetensors file or diffusers folder)")
