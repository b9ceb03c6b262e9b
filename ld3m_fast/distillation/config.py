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

from ..errors import InvalidArgumentError
from ..seeding import check_seed

ALGORITHMS = ("dm", "dc", "mtt")
PRESETS_NAMES = ("ld3m", "glad")

# (preset, algorithm) -> defaults that differ between the two papers (docs/design.md §7).
PRESETS = {
    ("ld3m", "dm"): dict(lr=1.0, iterations=10000),
    ("ld3m", "dc"): dict(lr=0.1, iterations=10000),
    # the official script's lr is 1000 on half the true image gradient: 500 on the true one (docs/design.md §11)
    ("ld3m", "mtt"): dict(lr=500.0, iterations=10000, syn_steps=10, expert_epochs=2, max_start_epoch=2),
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
    guidance: float | None = None       # classifier-free guidance scale (3.0)
    skip: str | None = None              # "official" (default), "paper" or "none"
    eta: float | None = None             # DDIM eta (0)
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
            raise InvalidArgumentError(f"unknown distillation settings {unknown}; known: {sorted(names)}")
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


# knobs of the latent space: setting one for a pixel-space run (model=None) is an error, not silently ignored
LATENT_ONLY = ("steps", "guidance", "skip", "eta", "chunk_size", "memory_budget", "class_ids", "syn_mean", "syn_std",
               "encode_input", "backend")


def _positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{name}={value!r} must be an int >= {minimum}")


def _positive_float(name, value, allow_zero=False, below=None):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero) or (below is not None and value >= below):
        limit = f" and < {below}" if below is not None else ""
        raise InvalidArgumentError(f"{name}={value!r} must be a finite number {'>=' if allow_zero else '>'} 0{limit}")


def _choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise InvalidArgumentError(f"{name}={value!r} is unknown; choose one of {tuple(choices)}")


def _numbers(name, values, count, positive=False):
    ok = isinstance(values, (tuple, list)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
        for v in values)
    if not ok or len(values) != count:
        kind = "positive finite numbers" if positive else "finite numbers"
        raise InvalidArgumentError(f"{name}={values!r} must be {count} {kind} (one per image channel)")


def check_knobs(cfg: DistillConfig, *, latent: bool) -> DistillConfig:
    """The preset's defaults filled in and every knob checked that needs no data (``resolve`` does the rest): a new
    config. The command line calls it before loading the data, so a bad value fails at once."""
    from ..engine.fused_step import BACKEND_NAMES
    from ..engine.memory import parse_memory_budget
    from ..engine.schedule import SKIP_VARIANTS, ddim_timesteps
    from ..nets import canonical_norm, parse_network_name

    _choice("algorithm", cfg.algorithm, ALGORITHMS)
    _choice("preset", cfg.preset, PRESETS_NAMES)
    if not latent:
        given = [k for k in LATENT_ONLY if getattr(cfg, k) is not None]
        if given:
            raise InvalidArgumentError(f"{', '.join(given)} set for a pixel-space run (no model): they apply to the "
                                       "latent space of an LDM only; pass a model or leave them unset")
    values = {k: v for k, v in PRESETS[(cfg.preset, cfg.algorithm)].items() if getattr(cfg, k) is None}
    out = dataclasses.replace(cfg, **values)
    if latent:
        for key, value in dict(guidance=3.0, skip="official", eta=0.0, encode_input="normalized").items():
            if getattr(out, key) is None:
                setattr(out, key, value)
    if out.algorithm != "mtt":
        out.syn_steps = out.expert_epochs = out.max_start_epoch = None

    _positive_int("ipc", out.ipc)
    _positive_int("iterations", out.iterations, minimum=0)
    _positive_float("lr", out.lr)
    _positive_float("momentum", out.momentum, allow_zero=True, below=1)
    _positive_int("batch_real", out.batch_real)
    check_seed(out.seed)
    _positive_int("net_width", out.net_width)
    parse_network_name(out.net)
    if out.net_depth is not None:
        _positive_int("net_depth", out.net_depth)
    canonical_norm(out.net_norm)
    if not isinstance(out.dsa, bool):
        raise InvalidArgumentError(f"dsa={out.dsa!r} must be True or False")
    _positive_int("checkpoint_every", out.checkpoint_every)
    _choice("init", out.init, ("real", "noise"))
    if latent:
        if out.steps is not None:
            _positive_int("steps", out.steps)
            ddim_timesteps(out.steps)  # a count the schedule cannot run fails here, naming steps
        _positive_float("guidance", out.guidance, allow_zero=True)
        _choice("skip", out.skip, SKIP_VARIANTS)
        _positive_float("eta", out.eta, allow_zero=True)
        if out.chunk_size is not None:
            _positive_int("chunk_size", out.chunk_size)
        parse_memory_budget(out.memory_budget)
        _choice("encode_input", out.encode_input, ("normalized", "signed"))
        if out.backend is not None:
            _choice("backend", out.backend, BACKEND_NAMES)
        if (out.syn_mean is None) != (out.syn_std is None):
            raise InvalidArgumentError("give syn_mean and syn_std together (or neither: the dataset's normalisation)")
        if out.syn_mean is not None:
            _numbers("syn_mean", out.syn_mean, len(out.syn_mean))
            _numbers("syn_std", out.syn_std, len(out.syn_mean), positive=True)
        if out.class_ids is not None and not (isinstance(out.class_ids, (tuple, list)) and all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in out.class_ids)):
            raise InvalidArgumentError(f"class_ids={out.class_ids!r} must be the LDM classes (ints >= 0) of the labels")
    if out.eval_every is not None:
        _positive_int("eval_every", out.eval_every)
    _positive_int("eval_repeats", out.eval_repeats)
    if out.eval_epochs is not None:
        _positive_int("eval_epochs", out.eval_epochs)
    if isinstance(out.eval_archs, str) or not out.eval_archs:
        raise InvalidArgumentError(f"eval_archs={out.eval_archs!r} must be a non-empty list of network names")
    for arch in out.eval_archs:
        parse_network_name(arch)
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


def resolve(cfg: DistillConfig, *, latent: bool, resolution: int, channels: int,
            dataset_class_ids: tuple[int, ...] | None, num_classes: int) -> DistillConfig:
    """Fill the preset's and the data's defaults in and check every knob; returns a new, complete config."""
    from ..nets import network_depth

    out = check_knobs(cfg, latent=latent)
    out.net_depth = network_depth(out.net, resolution, out.net_depth)
    if latent:
        if out.steps is None:
            out.steps = default_steps(resolution)
        if out.syn_mean is None and out.syn_std is None and channels == 3:
            out.syn_mean, out.syn_std = OFFICIAL_SYNTHETIC_MEAN, OFFICIAL_SYNTHETIC_STD
        if out.syn_mean is not None:
            _numbers("syn_mean", out.syn_mean, channels)
            _numbers("syn_std", out.syn_std, channels, positive=True)
        if out.class_ids is None:
            out.class_ids = tuple(dataset_class_ids) if dataset_class_ids is not None else tuple(range(num_classes))
        if len(out.class_ids) != num_classes:
            raise InvalidArgumentError(f"class_ids={list(out.class_ids)!r} must give the LDM class of each of the "
                                       f"data's {num_classes} labels")
    return out


__all__ = ["DistillConfig", "ALGORITHMS", "PRESETS", "PRESETS_NAMES", "LATENT_ONLY", "check_knobs", "resolve",
           "knob_names", "default_steps", "OFFICIAL_SYNTHETIC_MEAN", "OFFICIAL_SYNTHETIC_STD"]
