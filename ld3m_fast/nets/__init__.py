"""The networks of the dataset-distillation field, written without torchvision.

``get_network(name, channels, num_classes, image_size, ...)`` builds ConvNet, AlexNet, VGG11, ResNet18 or ViT
for 28, 32, 64, 128 or 256-pixel images. Every network has ``forward(x) -> logits`` and ``embed(x) ->``
penultimate features (used by DM's mean-embedding matching) and an attribute ``feature_dim``.

Names are case-insensitive. ConvNet accepts the DC code's suffixes, optionally after ``_``: ``D<k>`` (depth k),
``W<k>`` (width k), ``BN``/``IN``/``LN``/``GN``/``NN`` (batch/instance/layer/group/no norm),
``AR``/``AS``/``AL`` (ReLU/sigmoid/leaky ReLU), ``AP``/``MP``/``NP`` (average/max/no pooling), e.g.
"ConvNetD5", "ConvNet_BN", "ConvNetW64BN". VGG11 and ResNet18 accept the norm suffixes ("VGG11BN").
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn

from ..errors import InvalidArgumentError, InvalidTypeError
from .alexnet import AlexNet
from .common import NORMS, canonical_norm
from .convnet import ConvNet, default_depth
from .resnet import ResNet18
from .vgg import VGG11
from .vit import ViT

NETWORKS = ("ConvNet", "AlexNet", "VGG11", "ResNet18", "ViT")
_CLASSES = {"ConvNet": ConvNet, "AlexNet": AlexNet, "VGG11": VGG11, "ResNet18": ResNet18, "ViT": ViT}
_BASES = {n.lower(): n for n in NETWORKS}
_NORM_SUFFIX = {"bn": "batchnorm", "in": "instancenorm", "ln": "layernorm", "gn": "groupnorm", "nn": "none"}
_ACT_SUFFIX = {"ar": "relu", "as": "sigmoid", "al": "leakyrelu"}
_POOL_SUFFIX = {"ap": "avgpooling", "mp": "maxpooling", "np": "none"}
_SUFFIXES = {
    "ConvNet": r"d\d+|w\d+|bn|in|ln|gn|nn|ar|as|al|ap|mp|np",
    "VGG11": r"bn|in|gn|nn",
    "ResNet18": r"bn|in|gn|nn",
    "AlexNet": None,
    "ViT": None,
}


def _unknown(name) -> InvalidArgumentError:
    return InvalidArgumentError(f"unknown network {name!r}; use one of {NETWORKS} (case-insensitive; ConvNet also as "
                                f"ConvNetD<depth>, ConvNetW<width>, ConvNetBN/IN/LN/GN/NN, and VGG11BN, ResNet18BN)")


def parse_network_name(name: str) -> tuple[str, dict]:
    """Split a network name into its canonical family (one of ``NETWORKS``) and the options its suffixes set.

    >>> parse_network_name("convnet_d5bn")
    ('ConvNet', {'depth': 5, 'norm': 'batchnorm'})
    """
    if not isinstance(name, str):
        raise InvalidTypeError(f"network name must be a str, got {type(name).__name__}")
    low = name.strip().lower()
    base = next((b for b in sorted(_BASES, key=len, reverse=True) if low.startswith(b)), None)
    if base is None:
        raise _unknown(name)
    family, rest = _BASES[base], low[len(base):]
    options: dict = {}
    if rest:
        pattern = _SUFFIXES[family]
        tokens = re.findall(rf"[_-]?({pattern})", rest) if pattern else []
        if not pattern or "".join(re.findall(rf"[_-]?(?:{pattern})", rest)) != rest:
            raise _unknown(name)
        for tok in tokens:
            key, value = None, None
            if tok[0] == "d" and tok[1:].isdigit():
                key, value = "depth", int(tok[1:])
            elif tok[0] == "w" and tok[1:].isdigit():
                key, value = "width", int(tok[1:])
            elif tok in _NORM_SUFFIX:
                key, value = "norm", _NORM_SUFFIX[tok]
            elif tok in _ACT_SUFFIX:
                key, value = "act", _ACT_SUFFIX[tok]
            elif tok in _POOL_SUFFIX:
                key, value = "pooling", _POOL_SUFFIX[tok]
            if key in options and options[key] != value:
                raise InvalidArgumentError(f"network name {name!r} sets {key} twice ({options[key]!r} and {value!r})")
            options[key] = value
    return family, options


def network_family(name: str) -> str:
    """The canonical family of a network name ("convnetd5" -> "ConvNet")."""
    return parse_network_name(name)[0]


def network_depth(name: str, image_size, depth: int | None = None) -> int | None:
    """The depth a network called ``name`` gets: ``depth`` if given, else for a ConvNet whose name sets none,
    ``default_depth(image_size)``; ``None`` (the network's own) otherwise."""
    family, options = parse_network_name(name)
    if depth is None and family == "ConvNet" and "depth" not in options:
        return default_depth(image_size)
    return depth


def get_network(name: str, channels: int, num_classes: int, image_size, *, width: int = 128,
                depth: int | None = None, norm: str = "instancenorm", seed: int | None = None,
                **kwargs) -> nn.Module:
    """Build a freshly initialised network.

    width: ConvNet's width; for AlexNet, VGG11, ResNet18 and ViT the standard channel counts are scaled by
      ``width / 128`` (the default 128 gives the standard networks; small widths make small test networks).
    depth: ConvNet depth (default from the image size: 3 at 28/32 px, 4 at 64, 5 at 128, 6 at 256) or ViT depth;
      AlexNet, VGG11 and ResNet18 have a fixed depth.
    norm: ConvNet, VGG11 and ResNet18 ('instancenorm' = GroupNorm(C, C) as in the DC code, 'batchnorm',
      'groupnorm', 'none'; 'layernorm' for ConvNet only). AlexNet and ViT have no normalisation layers, as in the
      field's code, and accept only the default. A suffix in the name ("ConvNetBN") overrides the defaults.
    seed: deterministic initialisation without touching the global random state (None: global RNG).
    kwargs: network-specific settings (ConvNet: act, pooling; ViT: patch_size, dim, heads, dim_head, mlp_dim,
      dropout, emb_dropout, layer_norm).
    """
    family, options = parse_network_name(name)
    for arg, value in (("channels", channels), ("num_classes", num_classes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidArgumentError(f"{arg} must be a positive int, got {value!r}")
    norm = canonical_norm(norm)
    explicit = {"width": (width, 128), "depth": (depth, None), "norm": (norm, "instancenorm")}
    for key, value in options.items():
        given, default = explicit.get(key, (kwargs.get(key), None))
        if given != default and given != value:
            raise InvalidArgumentError(f"network name {name!r} sets {key}={value!r} but {key}={given!r} was passed; "
                                       f"pass only one of them")
    settings = {"width": width, "depth": depth, "norm": norm}
    settings.update({k: v for k, v in options.items() if k in settings})
    kwargs.update({k: v for k, v in options.items() if k not in settings})
    if family == "ConvNet":
        kwargs.update(settings)
    else:
        kwargs["width"] = settings["width"]
        if family == "ViT":
            kwargs["depth"] = settings["depth"]
        elif settings["depth"] is not None:
            raise InvalidArgumentError(
                f"{family} has a fixed depth; depth={settings['depth']!r} applies to ConvNet and ViT "
                f"only (use e.g. 'ConvNetD{settings['depth']}')")
        if family in ("VGG11", "ResNet18"):
            if settings["norm"] == "layernorm":
                raise InvalidArgumentError(
                    f"{family} supports norm in ('instancenorm', 'batchnorm', 'groupnorm', 'none'), "
                    f"not 'layernorm'")
            kwargs["norm"] = settings["norm"]
        elif settings["norm"] not in ("instancenorm", "none"):
            raise InvalidArgumentError(
                f"{family} has no normalisation layers (as in the DC/GLaD code); leave norm at its "
                f"default, got norm={settings['norm']!r}")
    cls = _CLASSES[family]
    try:
        if seed is None:
            return cls(channels, num_classes, image_size, **kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(int(seed))
            return cls(channels, num_classes, image_size, **kwargs)
    except TypeError as e:
        if "unexpected keyword" in str(e):
            raise InvalidTypeError(f"{family}: {e}; see ld3m_fast.nets.{cls.__name__} for its settings") from None
        raise


__all__ = ["NETWORKS", "NORMS", "get_network", "parse_network_name", "network_family", "network_depth",
           "default_depth",
           "ConvNet", "AlexNet", "VGG11", "ResNet18", "ViT"]
