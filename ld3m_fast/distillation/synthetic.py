"""The learnable synthetic set: LD3M's latents ``Z`` and class embeddings ``c``, or plain pixels.

Both kinds give the images the distillation loss sees (normalised, differentiable w.r.t. the
parameters) and the images a network is later trained on (in [0, 1]). Latent images are rendered
by ``ld3m_fast.render``: one rendering per use, back-propagated by per-step recomputation. Each
rendering's start noise is drawn from a seed derived from the run's seed and the iteration, so a
resumed run renders exactly what the uninterrupted one did.
"""
from __future__ import annotations

import torch

from ..engine.latent_model import as_latent_model
from ..engine.rendering import render
from ..errors import InvalidArgumentError
from ..normalization import denormalize, to_unit
from ..seeding import derive_seed, generator
from .config import DistillConfig
from .real_data import RealData


def initial_real_indices(real: RealData, ipc: int, seed: int, k: int) -> torch.Tensor:
    """The ``ipc`` random real images of class ``k`` a run with ``seed`` starts from (``init="real"``), latent or pixel.

    Also the fair "random real subset" baseline: the very images distillation started from."""
    idx = real.indices[k]
    if idx.numel() < ipc:
        raise InvalidArgumentError(f"ipc={ipc} is larger than class {k} ({real.class_names[k]!r}), which has "
                                   f"{idx.numel()} real images; use ipc <= {idx.numel()} or init='noise'")
    return idx[torch.randperm(idx.numel(), generator=generator(seed, "init", k))[:ipc]]


class _SyntheticSet:
    """``ipc`` images for each of ``classes`` (all classes unless the run is sharded), in class order.

    Every per-class draw (which real images start it, its start noise) comes from a generator of its
    own, keyed by the class, so a class's images do not depend on which other classes a process holds.
    """

    def __init__(self, cfg: DistillConfig, real: RealData, device, classes=None):
        self.cfg, self.real = cfg, real
        self.device = torch.device(device)
        self.classes = list(range(real.num_classes)) if classes is None else list(classes)
        self.num_images = cfg.ipc * len(self.classes)
        self.labels = torch.tensor(self.classes).repeat_interleave(cfg.ipc).to(self.device)

    def initial_picks(self, k: int) -> torch.Tensor:
        """Indices of the ``ipc`` random real images class ``k`` starts from."""
        return initial_real_indices(self.real, self.cfg.ipc, self.cfg.seed, k)

    def class_noise(self, shape, *keys) -> torch.Tensor:
        """Standard normal noise of ``(ipc, *shape)`` per class, concatenated, from (seed, keys, class)."""
        return torch.cat([torch.randn((self.cfg.ipc, *shape), generator=generator(self.cfg.seed, *keys, k))
                          for k in self.classes])


class LatentSynthetic(_SyntheticSet):
    """LD3M's synthetic set: ``Z`` (N, C, h, w) and ``c`` (N, L, D), rendered through the LDM."""

    space = "latent"
    state_names = ("Z", "c")  # in the order of parameters()

    def __init__(self, model, cfg: DistillConfig, real: RealData, device, classes=None):
        super().__init__(cfg, real, device, classes)
        self.model = model
        self.lm = as_latent_model(model)
        self.syn_mean = cfg.syn_mean if cfg.syn_mean is not None else real.mean
        self.syn_std = cfg.syn_std if cfg.syn_std is not None else real.std
        self.Z = self.c = None

    def initialize(self) -> None:
        """``Z``: encoded random real images (``init="real"``) or Gaussian noise; ``c``: the class embeddings."""
        cfg, real = self.cfg, self.real
        first = self._encode(real.images[real.indices[self.classes[0]][:1]])
        self._check_geometry(first)
        if cfg.init == "real":
            Z = torch.cat([self._encode(real.images[self.initial_picks(k)]) for k in self.classes])
        else:
            Z = self.class_noise(first.shape[1:], "init").to(self.device, first.dtype)
        ids = torch.tensor(cfg.class_ids)[self.labels.cpu()]
        self.Z = Z.detach().clone().requires_grad_(True)
        self.c = self.lm.contexts(ids).to(self.device).detach().clone().requires_grad_(True)

    def _encode(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = to_unit(images_uint8, self.device)
        x = self.real.normalize(x) if self.cfg.encode_input == "normalized" else 2 * x - 1
        try:
            return self.lm.encode_images(x)
        except RuntimeError as err:  # the encoder's first convolution refuses images of another channel count
            raise InvalidArgumentError(
                f"the LDM's encoder cannot take the data's {self.real.channels}-channel {self.real.resolution}² images "
                f"({str(err).splitlines()[0][:160]}): use data the model was made for (cin256-v2: RGB) or a model "
                "made for this data") from None

    def _check_geometry(self, z: torch.Tensor) -> None:
        res = self.real.resolution
        if res % z.shape[-1] != 0:
            raise InvalidArgumentError(f"image size {res} is not divisible by the autoencoder's factor "
                                       f"(~{res / z.shape[-1]:.2f}): resize the images to a multiple of it")
        with torch.no_grad():
            out = self.lm.decode(self.lm.quantize(z))
        if tuple(out.shape[-2:]) != (res, res) or out.shape[1] != self.real.channels:
            raise InvalidArgumentError(
                f"the autoencoder turns {tuple(z.shape[1:])} latents into {tuple(out.shape[1:])} images, "
                f"but the real images are {self.real.channels}×{res}×{res}: image size or channels do "
                f"not fit this LDM (factor {res // z.shape[-1]})")

    def parameters(self) -> list[torch.Tensor]:
        return [self.Z, self.c]

    def state(self) -> dict[str, torch.Tensor]:
        return {"Z": self.Z.detach(), "c": self.c.detach()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.Z = tensors["Z"].to(self.device).clone().requires_grad_(True)
        self.c = tensors["c"].to(self.device).clone().requires_grad_(True)

    def _render(self, keys: tuple, normalize) -> torch.Tensor:
        """Render all images; the start noise of class ``k``'s images is drawn from (seed, keys, k), so an image's
        noise does not depend on which other classes are rendered with it (class-sharded runs match one process)."""
        cfg = self.cfg
        noise = self.class_noise(self.Z.shape[1:], "render", *keys)
        seed = derive_seed(cfg.seed, "ddim", *keys)  # DDIM noise when eta > 0
        return render(self.lm, self.Z, self.c, cfg.steps, guidance=cfg.guidance, skip=cfg.skip,
                      memory_budget=cfg.memory_budget, seed=seed, noise=noise, chunk_size=cfg.chunk_size,
                      eta=cfg.eta, backend=cfg.backend, normalize=normalize)

    def images(self, *keys) -> torch.Tensor:
        """Normalised images for the loss, differentiable w.r.t. ``Z`` and ``c``; ``keys`` pick the noise."""
        return self._render(keys, (self.syn_mean, self.syn_std))

    def unit_images(self) -> torch.Tensor:
        """Images in [0, 1] (fixed noise), no gradient: what networks are trained on."""
        with torch.no_grad():
            return self._render(("final",), None).detach()

    @property
    def train_normalization(self):
        """(mean, std) networks use on ``unit_images`` (the normalisation the loss saw)."""
        return tuple(self.syn_mean), tuple(self.syn_std)


class PixelSynthetic(_SyntheticSet):
    """The classic baselines' synthetic set: the (normalised) pixels themselves."""

    space = "pixel"
    state_names = ("X",)

    def __init__(self, cfg: DistillConfig, real: RealData, device, classes=None):
        super().__init__(cfg, real, device, classes)
        self.X = None

    def initialize(self) -> None:
        cfg, real = self.cfg, self.real
        if cfg.init == "real":
            X = real.all_normalized(self.device, torch.cat([self.initial_picks(k) for k in self.classes]))
        else:
            X = self.class_noise((real.channels, real.resolution, real.resolution), "init").to(self.device)
        self.X = X.detach().clone().requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.X]

    def state(self) -> dict[str, torch.Tensor]:
        return {"X": self.X.detach()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.X = tensors["X"].to(self.device).clone().requires_grad_(True)

    def images(self, *keys) -> torch.Tensor:
        return self.X

    def unit_images(self) -> torch.Tensor:
        """The pixels de-normalised to image values (not clamped: networks see exactly what the loss saw)."""
        return denormalize(self.X.detach(), self.real.mean, self.real.std)

    @property
    def train_normalization(self):
        return tuple(self.real.mean), tuple(self.real.std)
