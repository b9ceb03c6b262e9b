"""Every knob of a distillation run, the two papers' defaults, and their validation.

``DistillConfig`` holds the knobs; ``None`` means "the preset's default". ``resolve`` fills them in
from ``PRESETS`` (docs/design.md §7: the official LD3M code, ``"ld3m"``, and GLaD, ``"glad"``) and from the
data (resolution-dependent defaults), and checks every value, naming the knob and the fix.
The resolved config is stored with checkpoints and results, so a run can be resumed and reported.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

ALGORITHMS = ("dm", "dc", "mtt")
PRESETS_NAMES = ("ld3m", "glad")

# (preset, algorithm) -> defaults that differ between the two papers (docs/design.md §7).
PRESETS = {
    ("ld3m", "dm"): dict(lr=1.0, iterations=10000),
    ("ld3m", "dc"): dict(lr=0.1, iterations=10000),
    ("ld3m", "mtt"): dict(lr=1000.0, iterations=10000, syn_steps=10, expert_epochs=2, max_start_epoch=2),
    ("glad", "dm"): dict(lr=0.01, iterations=1000),
    ("glad", "dc"): dict(lr=0.001, iterations=1000),
    ("glad", "mtt"): dict(lr=10.0, iterations=1000, syn_steps=20, expert_epochs=3, max_start_epoch=5),
}

# Synthetic images of the GLaD/LD3M code are normalised with these values, not ImageNet's (docs/design.md §2).
OFFICIAL_SYNTHETIC_MEAN = (0.4377, 0.4438, 0.4728)
OFFICIAL_SYNTHETIC_STD = (0.229, 0.224, 0.225)


@dataclass
class DistillConfig:
    """The knobs of ``ld3m_fast.distill``; ``None`` means the preset's default (see ``resolve``)."""

    algorithm: str = "dm"
    ipc: int = 1
    preset: str = "ld3m"
    iterations: int | None = None
    lr: float | None = None              # learning rate of Z and c (latent space) or of the pixels
    momentum: float = 0.5                # SGD momentum of the synthetic data (both papers)
    batch_real: int = 256                # real images per class and iteration
    init: str = "real"                   # "real": encode (or copy) random real images; "noise"
    seed: int = 0
    # the network the losses are computed with (a fresh random one every iteration for DM/DC)
    net: str = "ConvNet"
    net_width: int = 128
    net_depth: int | None = None         # ConvNet: None = 5 at 128², 6 at 256², by resolution otherwise
    net_norm: str = "instancenorm"
    dsa: bool = True                     # differentiable Siamese augmentation on real and synthetic
    # latent space (LD3M)
    steps: int | None = None             # DDIM steps: 10 at <= 128², 20 above
    guidance: float = 3.0
    skip: str = "official"
    eta: float = 0.0
    chunk_size: int | None = None        # images per recomputed denoiser call (default 10)
    memory_budget: int | str | None = None
    class_ids: tuple[int, ...] | None = None  # LDM class of each label; default: the dataset's, else 0..C-1
    syn_mean: tuple[float, ...] | None = None  # normalisation of rendered images (default: see resolve)
    syn_std: tuple[float, ...] | None = None
    encode_input: str | None = None      # "normalized" (official: encoder sees normalised images) or "signed" ([-1, 1])
    backend: str | None = None           # fused-step backend
    # DC
    lr_net: float = 0.01
    outer_loop: int = 1
    inner_loop: int = 1
    batch_train: int = 256
    # MTT
    lr_lr: float = 1e-6
    lr_teacher: float = 0.01
    syn_steps: int | None = None
    expert_epochs: int | None = None
    max_start_epoch: int | None = None
    batch_syn: int | None = None         # synthetic images per student step (None: all)
    # running
    checkpoint_every: int = 100
    eval_every: int | None = None
    eval_archs: tuple[str, ...] = ("ConvNet",)
    eval_repeats: int = 1
    eval_epochs: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DistillConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown distillation settings {unknown}; known: {sorted(names)}")
        d = dict(d)
        for key in ("class_ids", "syn_mean", "syn_std", "eval_archs"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


def knob_names() -> list[str]:
    return [f.name for f in dataclasses.fields(DistillConfig)]


def default_steps(resolution: int) -> int:
    """DDIM steps of the official code: 10 at 128² and below, 20 above (docs/design.md §7)."""
    return 10 if resolution <= 128 else 20


def _positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an int >= {minimum}")


def _positive_float(name, value, allow_zero=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}={value!r} must be a finite number {'>=' if allow_zero else '>'} 0")


def resolve(cfg: DistillConfig, *, latent: bool, resolution: int, channels: int,
            dataset_class_ids: tuple[int, ...] | None, num_classes: int) -> DistillConfig:
    """Fill the preset's defaults in and check every knob; returns a new, complete config."""
    if cfg.algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={cfg.algorithm!r} is unknown; choose one of {ALGORITHMS}")
    if cfg.preset not in PRESETS_NAMES:
        raise ValueError(f"preset={cfg.preset!r} is unknown; choose one of {PRESETS_NAMES}")
    values = {k: v for k, v in PRESETS[(cfg.preset, cfg.algorithm)].items() if getattr(cfg, k) is None}
    out = dataclasses.replace(cfg, **values)
    if out.steps is None:
        out.steps = default_steps(resolution)
    from ..nets import network_depth  # also rejects unknown network names here, before any work

    out.net_depth = network_depth(out.net, resolution, out.net_depth)
    if out.syn_mean is None and out.syn_std is None and channels == 3:
        out.syn_mean, out.syn_std = OFFICIAL_SYNTHETIC_MEAN, OFFICIAL_SYNTHETIC_STD
    if out.encode_input is None:
        out.encode_input = "normalized"
    if out.class_ids is None:
        out.class_ids = tuple(dataset_class_ids) if dataset_class_ids is not None else tuple(range(num_classes))
    if out.algorithm != "mtt":
        out.syn_steps = out.expert_epochs = out.max_start_epoch = None

    _positive_int("ipc", out.ipc)
    _positive_int("iterations", out.iterations, minimum=0)
    _positive_float("lr", out.lr)
    _positive_float("momentum", out.momentum, allow_zero=True)
    _positive_int("batch_real", out.batch_real)
    _positive_int("net_width", out.net_width)
    if out.net_depth is not None:
        _positive_int("net_depth", out.net_depth)
    _positive_int("checkpoint_every", out.checkpoint_every)
    if out.init not in ("real", "noise"):
        raise ValueError(f"init={out.init!r} must be 'real' or 'noise'")
    if out.encode_input not in ("normalized", "signed"):
        raise ValueError(f"encode_input={out.encode_input!r} must be 'normalized' (the official code) or 'signed' ([-1, 1])")
    if (out.syn_mean is None) != (out.syn_std is None):
        raise ValueError("give syn_mean and syn_std together (or neither: the dataset's normalisation)")
    if out.syn_mean is not None and (len(out.syn_mean) != channels or len(out.syn_std) != channels):
        raise ValueError(f"syn_mean/syn_std need {channels} values (one per image channel), got "
                         f"{len(out.syn_mean)}/{len(out.syn_std)}")
    if len(out.class_ids) != num_classes:
        raise ValueError(f"class_ids has {len(out.class_ids)} entries but the data has {num_classes} classes: "
                         "give the LDM class of every label")
    if out.eval_every is not None:
        _positive_int("eval_every", out.eval_every)
    _positive_int("eval_repeats", out.eval_repeats)
    if latent:
        _positive_int("steps", out.steps)
        _positive_float("guidance", out.guidance, allow_zero=True)
    if out.algorithm == "dc":
        _positive_float("lr_net", out.lr_net)
        _positive_int("outer_loop", out.outer_loop)
        _positive_int("inner_loop", out.inner_loop, minimum=0)
        _positive_int("batch_train", out.batch_train)
    if out.algorithm == "mtt":
        _positive_float("lr_lr", out.lr_lr, allow_zero=True)
        _positive_float("lr_teacher", out.lr_teacher)
        _positive_int("syn_steps", out.syn_steps)
        _positive_int("expert_epochs", out.expert_epochs)
        _positive_int("max_start_epoch", out.max_start_epoch)
        if out.batch_syn is not None:
            _positive_int("batch_syn", out.batch_syn)
    return out


__all__ = ["DistillConfig", "ALGORITHMS", "PRESETS", "PRESETS_NAMES", "resolve", "knob_names", "default_steps",
           "OFFICIAL_SYNTHETIC_MEAN", "OFFICIAL_SYNTHETIC_STD"]
