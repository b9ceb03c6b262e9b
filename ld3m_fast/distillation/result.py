"""``DistilledSet``: what a distillation run produces, and its on-disk form.

A folder holds ``distilled.safetensors`` (images in [0, 1], labels, and LD3M's ``Z`` and ``c``),
``distilled.json`` (the full config, the loss history, class names and the normalisation networks
should use on these images) and one PNG grid per class plus ``all.png``. Every file is written
atomically (``ld3m_fast.atomic``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import write_atomic
from ..errors import DamagedFileError, InvalidArgumentError, MissingFileError
from ..image_grid import save_grid
from ..data.pairs import check_images_labels
from ..normalization import check_normalization, normalize

_FORMAT = "ld3m_fast.distilled/1"


@dataclass
class DistilledSet:
    """A distilled dataset: images (N, C, H, W) in [0, 1], labels, and how it was made.

    ``mean``/``std``: the normalisation the distillation loss saw these images with — train
    networks on ``(images − mean) / std``. ``Z``/``c``: LD3M's latents and class embeddings
    (``None`` for a pixel-space set). ``syn_lr``: MTT's learned step size (``None`` otherwise).
    ``history``: one entry per iteration (``loss``) plus evaluation entries (``eval``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    config: dict
    history: list[dict] = field(default_factory=list)
    Z: torch.Tensor | None = None
    c: torch.Tensor | None = None
    syn_lr: float | None = None      # MTT's learned step size (the scripts' lr_best), None for DM/DC

    @property
    def space(self) -> str:
        return "latent" if self.Z is not None else "pixel"

    @property
    def losses(self) -> list[float]:
        return [h["loss"] for h in self.history if "loss" in h]

    def normalized_images(self) -> torch.Tensor:
        return normalize(self.images, self.mean, self.std)

    def save(self, directory) -> Path:
        """Write the set to ``directory`` (created if needed); returns its path."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {"images": self.images, "labels": self.labels}
        if self.Z is not None:
            tensors.update(Z=self.Z, c=self.c)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        write_atomic(out / "distilled.safetensors", lambda p: save_file(tensors, p, metadata={"format": _FORMAT}))
        info = {"format": _FORMAT, "space": self.space, "mean": list(self.mean), "std": list(self.std),
                "class_names": self.class_names, "syn_lr": self.syn_lr, "config": self.config, "history": self.history}
        write_atomic(out / "distilled.json", lambda p: Path(p).write_text(json.dumps(info, indent=1)))
        scale = max(1, 64 // self.images.shape[-1])
        for k, name in enumerate(self.class_names):
            chosen = self.images[self.labels == k]
            if len(chosen):
                write_atomic(out / f"class_{k:03d}.png", lambda p: save_grid(chosen, p, scale=scale))
        ipc = max(1, int((self.labels == self.labels[0]).sum()))
        write_atomic(out / "all.png", lambda p: save_grid(self.images, p, nrow=ipc, scale=scale))
        return out

    @classmethod
    def load(cls, directory) -> "DistilledSet":
        """Read a set written by :meth:`save`; a missing, damaged or tampered file is an error naming it."""
        from safetensors.torch import load_file

        d = Path(directory)
        if not d.is_dir():
            raise MissingFileError(f"{str(d)!r} is not a folder: give the folder a distillation run wrote "
                                   "(it holds distilled.safetensors and distilled.json)")
        for name in ("distilled.safetensors", "distilled.json"):
            if not (d / name).is_file():
                raise MissingFileError(
                    f"{str(d / name)!r} is missing: is {str(d)!r} a folder written by DistilledSet.save?")
        try:
            info = json.loads((d / "distilled.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DamagedFileError(f"{str(d / 'distilled.json')!r} is not valid JSON ({err})") from None
        if not isinstance(info, dict) or info.get("format") != _FORMAT:
            raise DamagedFileError(f"{str(d / 'distilled.json')!r} holds format "
                                   f"{info.get('format') if isinstance(info, dict) else None!r}, expected {_FORMAT!r}")
        try:
            t = load_file(str(d / "distilled.safetensors"))
        except Exception as err:  # safetensors' own errors: truncated, not a safetensors file, ...
            raise DamagedFileError(f"{str(d / 'distilled.safetensors')!r} cannot be read ({type(err).__name__}: "
                                   f"{err}); write the set again") from None
        missing = [k for k in ("images", "labels") if k not in t] + \
                  [k for k in ("mean", "std", "class_names", "config", "history") if k not in info]
        if missing:
            raise DamagedFileError(f"the distilled set in {str(d)!r} lacks {missing}; write it again")
        images, labels = t["images"], t["labels"]
        check_images_labels(images, labels, f"{str(d)!r} images", f"{str(d)!r} labels", unit_range=False)
        try:
            mean, std = check_normalization(info["mean"], info["std"], images.shape[1], f"{str(d)!r} mean/std")
        except InvalidArgumentError as err:
            raise DamagedFileError(str(err)) from None
        return cls(images=images, labels=labels, mean=mean, std=std, class_names=list(info["class_names"]),
                   config=info["config"], history=info["history"], Z=t.get("Z"), c=t.get("c"),
                   syn_lr=info.get("syn_lr"))
