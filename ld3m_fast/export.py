"""Distilled sets out to other tools, and sets from other tools in.

``export_set(distilled, out, format)`` writes one of three layouts into the folder ``out``:

- ``"mtt"``: ``images_best.pt`` and ``labels_best.pt``, the pair the MTT, GLaD and LD3M scripts save for
  their best synthetic set, so that their evaluation code loads ours unchanged: images float32
  (N, C, H, W) *normalised* (``(x − mean) / std``, as those scripts keep and save the images their
  networks train on; GLaD/LD3M normalise with the synthetic-image values 0.4377/0.4438/0.4728,
  0.229/0.224/0.225), labels int64 (N,). A set made by MTT also gets ``lr_best.pt``, its learned step
  size as a 0-dim float32 tensor (MTT's descendants save ``syn_lr`` so; their evaluation reads it as
  the networks' learning rate).
- ``"ddranking"``: ``images.pt``, ``labels.pt`` and (MTT) ``lr.pt``, the tensors DD-Ranking's
  ``compute_metrics(image_tensor=, hard_labels=, syn_lr=)`` takes. DD-Ranking trains on these tensors
  as given and tests on images normalised with the dataset's mean/std, so they are normalised too —
  with the set's own mean/std by default (what the distillation and the official scripts used);
  pass ``normalize=(mean, std)`` to use the dataset's instead.
- ``"folder"``: PNG class folders ``out/<index>_<class name>/<i>.png`` (images in [0, 1], 8 bits; the
  index is zero-padded so that sorted folder names — ImageFolder's labels — follow the labels; ``i``
  is the image's position in the set).

Each export ends with ``export.json`` (format, files, normalisation, classes, ``syn_lr``), written last.

``load_set(path)`` reads any of these back, a ``DistilledSet`` folder, ``.pt`` pairs the official
scripts wrote (``images_best.pt``, ``images_00100.pt``, ``images.pt``, … with the matching
``labels*.pt`` and optional ``lr*.pt``), and ``root/<class>/<images>`` trees. ``.pt`` files are read
with ``torch.load(weights_only=True)``: tensors and numbers only, never pickled code.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import check_writable_folder, write_atomic
from .errors import DamagedFileError, InvalidArgumentError, InvalidTypeError, MissingFileError
from .normalization import check_normalization, denormalize, to_unit
from .normalization import normalize as normalize_images

FORMATS = ("mtt", "ddranking", "folder")
EXPORT_FORMAT = "ld3m_fast.export/1"
_PT_FILES = {"mtt": ("images_best.pt", "labels_best.pt", "lr_best.pt"),
             "ddranking": ("images.pt", "labels.pt", "lr.pt")}
NORMALIZATIONS = ("glad", "imagenet", "unit")  # names load_set(normalization=) accepts


@dataclass
class LoadedSet:
    """A labelled image set read by :func:`load_set`: images float32 (N, C, H, W), in [0, 1] but for pixel-space sets
    (kept as the loss saw them), labels int64.

    ``mean``/``std``: the normalisation networks should train these images with (the one they were
    saved or distilled with), ``None`` when unknown. ``syn_lr``: MTT's learned step size, if the set
    has one. ``source``: what was read ('distilled', 'mtt', 'ddranking', 'folder', 'pt', 'class_folder').
    """

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    class_names: list[str]
    syn_lr: float | None = None
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ------------------------------------------------------------------------------------------------ export

def export_set(distilled, out, format: str, *, normalize: tuple | None = None, overwrite: bool = False) -> Path:
    """Write ``distilled`` (a ``DistilledSet``, a :class:`LoadedSet`, or a path :func:`load_set` reads) to the
    folder ``out`` in ``format`` ('mtt', 'ddranking' or 'folder'); returns the path of ``export.json``.

    normalize: (mean, std) the ``.pt`` images are normalised with; default: the set's own ``mean``/``std``.
    overwrite: replace a previous export in ``out`` (only the files it lists are removed); without it a
      non-empty ``out`` is refused.
    """
    if format not in FORMATS:
        raise InvalidArgumentError(f"format={format!r} is unknown; use one of {FORMATS}")
    if isinstance(distilled, (str, os.PathLike)):
        distilled = load_set(distilled)
    images, labels, class_names = _checked_set(distilled)
    channels = images.shape[1]
    own = (getattr(distilled, "mean", None), getattr(distilled, "std", None))
    norm = normalize if normalize is not None else (own if own[0] is not None and own[1] is not None else None)
    if norm is not None:
        norm = check_normalization(norm[0], norm[1], channels, "normalize")
    elif format != "folder":
        raise InvalidArgumentError(f"the set has no mean/std, so the {format!r} export cannot normalise its images as "
                                   "the official code expects: pass normalize=(mean, std)")
    syn_lr = getattr(distilled, "syn_lr", None)
    syn_lr = None if syn_lr is None else float(syn_lr)
    out = _prepare_out(out, overwrite)

    info = {"format": EXPORT_FORMAT, "kind": format, "num_images": int(images.shape[0]),
            "image_shape": list(images.shape[1:]), "class_names": class_names, "syn_lr": syn_lr,
            "normalization": None if norm is None else {"mean": list(norm[0]), "std": list(norm[1])}}
    if format == "folder":
        info.update(_write_folder(images, labels, class_names, out), images_are="unit in [0, 1], 8-bit PNG")
    else:
        names = _PT_FILES[format]
        _save_tensor(out / names[0], normalize_images(images, *norm).float())
        _save_tensor(out / names[1], labels.long())
        files = list(names[:2])
        if syn_lr is not None:
            _save_tensor(out / names[2], torch.tensor(syn_lr, dtype=torch.float32))
            files.append(names[2])
        info.update(files=files, images_are="normalized: images = (x - mean) / std for x in [0, 1]")
    return write_atomic(out / "export.json", lambda p: Path(p).write_text(json.dumps(info, indent=1)))


def _checked_set(distilled) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from .data.pairs import check_images_labels

    if not (hasattr(distilled, "images") and hasattr(distilled, "labels")):
        raise InvalidTypeError(f"distilled must be a DistilledSet, a LoadedSet or a path to one, got "
                               f"{type(distilled).__name__}")
    images, labels = distilled.images, distilled.labels
    check_images_labels(images, labels, "distilled images", "distilled labels", unit_range=False)  # pixel sets may
    images, labels = to_unit(images.detach().cpu()), labels.detach().cpu().long()                 # leave [0, 1]
    names = getattr(distilled, "class_names", None)
    names = [str(n) for n in names] if names else [str(k) for k in range(int(labels.max()) + 1)]
    if int(labels.max()) >= len(names):
        raise InvalidArgumentError(f"distilled labels go up to {int(labels.max())} but there are {len(names)} class "
                                   "names")
    return images, labels, names


def _prepare_out(out, overwrite: bool) -> Path:
    out = Path(out).expanduser()
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InvalidArgumentError(f"out={str(out)!r} is not empty: choose a new folder or pass overwrite=True "
                                       "(ld3m-fast export --overwrite) to replace a previous export there")
        _remove_previous_export(out)
    return check_writable_folder(out, "out")


def _remove_previous_export(out: Path) -> None:
    """Delete the files a previous export in ``out`` listed (nothing else), then its emptied class folders."""
    info = _read_info(out / "export.json") if (out / "export.json").is_file() else {}
    files = info.get("files") or []
    for rel in files:
        target = (out / rel).resolve()
        if out.resolve() in target.parents and target.is_file():
            target.unlink()
    for folder in info.get("class_folders") or []:
        with contextlib.suppress(OSError):
            (out / folder).rmdir()  # only if empty


def _save_tensor(path: Path, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous().clone()  # a clone: torch.save writes the whole storage of a view
    write_atomic(path, lambda p: torch.save(tensor, p))


def safe_name(name: str) -> str:
    """``name`` as one file-system-safe path component (letters, digits, ``.``, ``_``, ``-``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"


def _write_folder(images: torch.Tensor, labels: torch.Tensor, class_names: list[str], out: Path) -> dict:
    from PIL import Image

    if images.shape[1] not in (1, 3):
        raise InvalidArgumentError(f"the 'folder' export writes 1- or 3-channel PNGs; these images have "
                                   f"{images.shape[1]} channels")
    width, digits = len(str(len(class_names) - 1)), len(str(len(images) - 1))
    folders = [f"{k:0{width}d}_{safe_name(n)}" for k, n in enumerate(class_names)]
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    files = []
    for i, (array, label) in enumerate(zip(pixels, labels.tolist())):
        (out / folders[label]).mkdir(exist_ok=True)
        rel = f"{folders[label]}/{i:0{digits}d}.png"
        picture = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        write_atomic(out / rel, lambda p, picture=picture: picture.save(p, format="PNG"))
        files.append(rel)
    return {"class_folders": folders, "files": files, "labels": labels.tolist()}


# ------------------------------------------------------------------------------------------------ load

def load_set(path, *, normalization=None, resolution: int | None = None) -> LoadedSet:
    """Read a labelled image set from ``path``:

    - a ``DistilledSet`` folder (``distilled.json``), or a folder written by :func:`export_set`;
    - a ``.pt`` pair: the path of ``images_best.pt`` (or ``images_<it>.pt``, ``images.pt``, …) or a folder
      holding one; ``labels…pt`` beside it is required, ``lr…pt`` (MTT's step size) optional;
    - an image tree ``root/<class>/<images>`` (resized and centre-cropped to ``resolution``², default: the
      first image's side when it is square).

    normalization: how ``.pt`` images without an ``export.json`` were normalised, to bring them back to
      [0, 1]: 'glad' (GLaD/LD3M synthetic images: mean 0.4377/0.4438/0.4728, std 0.229/0.224/0.225),
      'imagenet' (pixel-space MTT on ImageNet: mean 0.485/0.456/0.406, same std), 'unit' (already in [0, 1])
      or (mean, std). Such files carry no record of it, so it must be given; with an ``export.json`` it is
      read from there.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingFileError(f"{str(p)!r} does not exist: give a distilled set folder, an images_best.pt file (or "
                               "its folder) or an image class folder")
    if p.is_file():
        if p.suffix != ".pt":
            raise InvalidArgumentError(f"{str(p)!r} is not a .pt file: give images_best.pt (or a folder)")
        return _load_pt_pair(p, normalization)
    if (p / "distilled.json").is_file():
        return _load_distilled(p)
    if (p / "export.json").is_file():
        info = _read_info(p / "export.json")
        if info.get("kind") == "folder":
            return _load_png_export(p, info)
        return _load_pt_pair(p / info["files"][0], normalization)
    for name in ("images_best.pt", "images.pt"):
        if (p / name).is_file():
            return _load_pt_pair(p / name, normalization)
    if any(e.is_dir() and not e.name.startswith(".") for e in p.iterdir()):
        return _load_class_folder(p, resolution)
    raise InvalidArgumentError(f"{str(p)!r} holds neither distilled.json, export.json, images_best.pt, images.pt nor "
                               "class sub-folders: give a distilled set, an exported set or root/<class>/<images>")


def _read_info(path: Path) -> dict:
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedFileError(f"{str(path)!r} cannot be read ({err}); export the set again") from None
    if not isinstance(info, dict) or info.get("format") != EXPORT_FORMAT or info.get("kind") not in FORMATS:
        raise DamagedFileError(f"{str(path)!r} is not an export record of ld3m_fast ({EXPORT_FORMAT!r})")
    files = info.get("files")
    complete = isinstance(files, list) and files and all(isinstance(f, str) for f in files)
    if info["kind"] == "folder":
        complete = complete and isinstance(info.get("labels"), list) and len(info["labels"]) == len(files) and \
            isinstance(info.get("class_names"), list) and isinstance(info.get("image_shape"), list) and \
            len(info["image_shape"]) == 3
    if not complete:
        raise DamagedFileError(f"{str(path)!r} lacks entries of an export record (files, labels, classes, shape); "
                               "export the set again")
    return info


def _load_distilled(folder: Path) -> LoadedSet:
    from .distillation.result import DistilledSet

    d = DistilledSet.load(folder)
    syn_lr = getattr(d, "syn_lr", None)
    return LoadedSet(to_unit(d.images), d.labels.long(), tuple(d.mean), tuple(d.std), list(d.class_names),
                     None if syn_lr is None else float(syn_lr), "distilled")


def _load_tensor(path: Path, what: str):
    """``torch.load`` with ``weights_only=True``: a pickle that would run code is refused, not executed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for forbidden globals, RuntimeError/EOFError for damaged files
        raise DamagedFileError(f"{str(path)!r} ({what}) cannot be read as plain tensors ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''}); ld3m_fast loads .pt files with "
                               "weights_only=True and never runs pickled code") from None


def _sibling(images_path: Path, kind: str) -> Path:
    name = images_path.name
    at = name.rfind("images")
    if at < 0:
        raise InvalidArgumentError(f"{str(images_path)!r}: the images file's name must contain 'images' (as "
                                   "images_best.pt does), so that its labels file can be found")
    return images_path.with_name(name[:at] + kind + name[at + len("images"):])


def _load_pt_pair(images_path: Path, normalization) -> LoadedSet:
    labels_path, lr_path = _sibling(images_path, "labels"), _sibling(images_path, "lr")
    if not labels_path.is_file():
        raise MissingFileError(f"{str(labels_path)!r} is missing: the labels saved with {images_path.name} are needed")
    images, labels = _load_tensor(images_path, "images"), _load_tensor(labels_path, "labels")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise DamagedFileError(f"{str(images_path)!r} must hold one float tensor (N, C, H, W), got "
                               f"{_describe(images)}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point():
        hint = " (soft labels are not supported: ld3m_fast trains on hard labels)" if \
            isinstance(labels, torch.Tensor) and labels.dim() == 2 else ""
        raise DamagedFileError(f"{str(labels_path)!r} must hold one integer tensor (N,), got "
                               f"{_describe(labels)}{hint}")
    if labels.shape[0] != images.shape[0]:
        raise DamagedFileError(f"{images_path.name} holds {images.shape[0]} images but {labels_path.name} "
                               f"{labels.shape[0]} labels")
    info = _info_for(images_path)
    norm, unit = _pt_normalization(images_path, info, normalization, images.shape[1])
    images = images.float() if unit else denormalize(images.double(), *norm).float()
    images = _check_range(images, images_path, norm, guessed=not info)
    syn_lr = None
    if lr_path.is_file():
        lr = _load_tensor(lr_path, "learning rate")
        if not (isinstance(lr, (int, float)) or (isinstance(lr, torch.Tensor) and lr.numel() == 1)):
            raise DamagedFileError(f"{str(lr_path)!r} must hold one number, got {_describe(lr)}")
        syn_lr = float(lr)
    names = info.get("class_names") or [str(k) for k in range(int(labels.max()) + 1)]
    mean, std = (None, None) if norm is None else norm
    return LoadedSet(images, labels.long(), mean, std, list(names), syn_lr, info.get("kind", "pt"))


def _describe(obj) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a {obj.dtype} tensor of shape {tuple(obj.shape)}"
    return type(obj).__name__


def _info_for(images_path: Path) -> dict:
    """The export record beside ``images_path`` if it describes that file, else {}."""
    record = images_path.parent / "export.json"
    if record.is_file():
        info = _read_info(record)
        if images_path.name in (info.get("files") or []):
            return info
    return {}


def _pt_normalization(images_path: Path, info: dict, normalization, channels: int):
    """((mean, std) or None, images-already-in-[0, 1]) from the export record or the caller."""
    given = _resolve_normalization(normalization, channels)
    if info:
        recorded = info.get("normalization")
        recorded = None if recorded is None else check_normalization(recorded["mean"], recorded["std"], channels,
                                                                      "export.json normalization")
        if normalization is not None and given != recorded:
            raise InvalidArgumentError(f"normalization={normalization!r} contradicts {images_path.parent / 'export.json'}"
                                       f", which records {recorded}: leave normalization out")
        return recorded, recorded is None
    if normalization is None:
        raise InvalidArgumentError(
            f"{str(images_path)!r} has no export.json saying how its images were normalised: pass normalization="
            "'glad' (GLaD/LD3M synthetic images), 'imagenet' (pixel-space MTT on ImageNet subsets), 'unit' (already "
            "in [0, 1]) or (mean, std) — ld3m-fast eval --normalization")
    return given, given is None


def _resolve_normalization(normalization, channels: int):
    if normalization is None:
        return None
    if isinstance(normalization, str):
        if normalization not in NORMALIZATIONS:
            raise InvalidArgumentError(f"normalization={normalization!r} is unknown; use one of "
                                       f"{tuple(NORMALIZATIONS)} or (mean, std)")
        if normalization == "unit":
            return None
        normalization = _named_normalization(normalization)
    if not isinstance(normalization, (tuple, list)) or len(normalization) != 2:
        raise InvalidArgumentError(f"normalization must be a name or (mean, std), got {normalization!r}")
    return check_normalization(normalization[0], normalization[1], channels, "normalization")


def _named_normalization(name: str) -> tuple:
    if name == "glad":
        from .distillation.config import OFFICIAL_SYNTHETIC_MEAN, OFFICIAL_SYNTHETIC_STD

        return OFFICIAL_SYNTHETIC_MEAN, OFFICIAL_SYNTHETIC_STD
    from .data.dataset import IMAGENET_MEAN, IMAGENET_STD

    return IMAGENET_MEAN, IMAGENET_STD


def _check_range(images: torch.Tensor, path: Path, norm, guessed: bool) -> torch.Tensor:
    """NaN/Inf is damage. Values outside [0, 1] are kept — pixel-space sets leave it, and evaluation trains on
    exactly what the loss saw — but when the normalisation was the caller's guess and much lies outside, one warning
    says the guess may be wrong."""
    if not bool(torch.isfinite(images).all()):
        raise DamagedFileError(f"{str(path)!r} holds NaN/Inf values")
    outside = float(((images < -1e-3) | (images > 1 + 1e-3)).float().mean()) if images.numel() else 0.0
    if guessed and outside > 0.05:
        warnings.warn(f"{path.name}: {100 * outside:.2f}% of the values lie outside [0, 1] after de-normalising with "
                      f"{norm}: a pixel-space set, or the wrong normalization?", stacklevel=4)
    return images


def _load_png_export(folder: Path, info: dict) -> LoadedSet:
    import numpy as np
    from PIL import Image

    channels, h, w = info["image_shape"]
    images = torch.empty(len(info["files"]), channels, h, w)
    for i, rel in enumerate(info["files"]):
        try:
            with Image.open(folder / rel) as picture:
                array = np.asarray(picture.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
        except OSError as err:
            raise DamagedFileError(f"{str(folder / rel)!r} cannot be read ({err}); export the set again") from None
        if array.shape[:2] != (h, w):
            raise DamagedFileError(f"{str(folder / rel)!r} is {array.shape[1]}×{array.shape[0]}, export.json says "
                                   f"{w}×{h}")
        images[i] = torch.from_numpy(array.reshape(h, w, channels).copy()).permute(2, 0, 1).float() / 255
    norm = info.get("normalization")
    mean, std = (None, None) if norm is None else (tuple(norm["mean"]), tuple(norm["std"]))
    return LoadedSet(images, torch.tensor(info["labels"], dtype=torch.int64), mean, std, list(info["class_names"]),
                     info.get("syn_lr"), "folder")


def _load_class_folder(root: Path, resolution: int | None) -> LoadedSet:
    from .data.folders import class_folder, list_image_files

    if resolution is None:
        from PIL import Image

        first = next((f for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")
                      for f in list_image_files(d)), None)
        if first is None:
            raise InvalidArgumentError(f"{str(root)!r}: no images in its class sub-folders")
        with Image.open(first) as picture:
            width, height = picture.size
        if width != height:
            raise InvalidArgumentError(f"{str(first)!r} is {width}×{height}, not square: pass resolution=<side> "
                                       "(images are resized and centre-cropped to it)")
        resolution = width
    data = class_folder(root, resolution, cache_dir=False, progress=False)
    return LoadedSet(to_unit(data.images), data.labels, None, None, list(data.class_names), None, "class_folder")


__all__ = ["FORMATS", "NORMALIZATIONS", "LoadedSet", "export_set", "load_set", "safe_name"]
