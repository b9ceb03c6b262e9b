"""``distill``: the distillation loop — set up, iterate, checkpoint, resume, evaluate, return a ``DistilledSet``.

With ``distributed=True`` (under ``torchrun``) every rank runs this loop on its own block of
classes (``ld3m_fast.distributed``); checkpoints and results are gathered, and rank 0 writes them.
"""
from __future__ import annotations

import json

import torch
from tqdm.auto import tqdm

from ..devices import resolve_device
from ..errors import DistillationDiverged
from ..seeding import derive_seed
from .checkpoint import check_same_run, load_checkpoint, save_checkpoint
from .common import DistillRun
from .config import DistillConfig, knob_names, resolve
from .dc import DC
from .dm import DM
from .mtt import MTT
from .real_data import as_real_data
from .result import DistilledSet
from .synthetic import LatentSynthetic, PixelSynthetic

def _resolve_model(model, device):
    if isinstance(model, str):
        from ..models import load_ldm

        model = load_ldm(model, device=device)
    if device is not None and isinstance(model, torch.nn.Module):
        model.to(device)
    return model


def prepare(train, model=None, ipc: int = 1, algorithm: str = "dm", *, experts=None, device=None,
            checkpoint_dir=None, resume: bool = True, group=None, **knobs) -> DistillRun:
    """Resolve the settings, load the data, initialise (or restore) the synthetic set; see :func:`distill`.

    ``group`` (an ``ld3m_fast.distributed.Group``) shards the synthetic set by class.
    """
    unknown = sorted(set(knobs) - set(knob_names()))
    if unknown:
        raise TypeError(f"distill() got unknown settings {unknown}; known: {sorted(knob_names())}")
    cfg = DistillConfig(algorithm=algorithm, ipc=ipc, **knobs)
    real = as_real_data(train)
    device = None if device is None else resolve_device(device)
    model = _resolve_model(model, device)
    device = resolve_device(device, model)
    cfg = resolve(cfg, latent=model is not None, resolution=real.resolution, channels=real.channels,
                  dataset_class_ids=real.class_ids, num_classes=real.num_classes)
    config = json.loads(json.dumps(dict(cfg.to_dict(), space="latent" if model is not None else "pixel",
                                        dataset=real.name)))  # its JSON form
    classes = None
    if group is not None:
        from ..distributed import check_agreement, fingerprint, shard_classes

        classes = shard_classes(real.num_classes, group)
        step = max(1, len(real.labels) // 64)
        check_agreement("settings", fingerprint(config), group)
        check_agreement("training data", fingerprint(real.labels, real.images[::step]), group)
    synthetic = (LatentSynthetic(model, cfg, real, device, classes) if model is not None
                 else PixelSynthetic(cfg, real, device, classes))

    saved = load_checkpoint(checkpoint_dir) if checkpoint_dir is not None and resume else None
    run = DistillRun(cfg, config, real, synthetic, device, group=group)
    if saved is None:
        synthetic.initialize()
    else:
        run.start, tensors, saved_config, run.history = saved
        check_same_run(saved_config, config, checkpoint_dir)
        rows = run.own_rows()
        synthetic.load_state({k: v[rows] for k, v in tensors.items() if "." not in k})
    run.optimizer = torch.optim.SGD(synthetic.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    run.algorithm = MTT(run, experts) if cfg.algorithm == "mtt" else {"dm": DM, "dc": DC}[cfg.algorithm](run)
    if saved is not None:
        run.restore(tensors)
    return run


def distill(train, model=None, ipc: int = 1, algorithm: str = "dm", *, experts=None, test=None, device=None,
            checkpoint_dir=None, resume: bool = True, progress: bool = True, distributed: bool = False,
            **knobs) -> DistilledSet:
    """Distil ``train`` into ``ipc`` images per class with DM, DC or MTT, in an LDM's latent space (LD3M) or in pixels.

    Args:
        train: ``(images, labels)`` tensors (images uint8 or float in [0, 1]), an ``ImageDataset``, any
            map-style dataset of ``(image, label)``, or a dataset name of ``ld3m_fast.data.load_dataset``.
        model: a class-conditional LDM (``ld3m_fast.load_ldm(...)``, a CompVis model, or a model name) for
            LD3M, or ``None`` for the pixel-space baselines.
        ipc: synthetic images per class.
        algorithm: ``"dm"``, ``"dc"`` or ``"mtt"``.
        experts: MTT's expert trajectories (a folder written by ``train_experts``).
        test: held-out ``(images, labels)`` (or dataset) for ``eval_every``.
        checkpoint_dir: where to keep ``state.safetensors`` (every ``checkpoint_every`` iterations, at the end,
            on Ctrl-C and when the loss diverges); with ``resume=True`` a run finds its checkpoint there and
            continues from it, ending bit-identically to an uninterrupted run with the same settings.
        distributed: shard the synthetic set by class over the processes of a ``torchrun`` launch (NCCL on GPUs,
            gloo on CPUs); every rank returns the whole result, rank 0 writes checkpoints.
        **knobs: any field of :class:`DistillConfig` (``preset``, ``iterations``, ``lr``, ``steps``, ``guidance``,
            ``skip``, ``batch_real``, ``init``, ``memory_budget``, ``seed``, ``eval_every``, …); unset ones take
            the preset's defaults (docs/design.md §7).

    Returns a :class:`DistilledSet`. Raises :class:`DistillationDiverged` (with ``.last_good``) when the loss
    becomes NaN/Inf.
    """
    if knobs.get("eval_every") is not None and test is None:
        raise ValueError("eval_every needs test=(images, labels) (the held-out set to evaluate on)")
    group = None
    if distributed:
        from ..distributed import init

        group = init(device)
        device = group.device
    run = prepare(train, model, ipc, algorithm, experts=experts, device=device, checkpoint_dir=checkpoint_dir,
                  resume=resume, group=group, **knobs)
    cfg, algo, history = run.cfg, run.algorithm, run.history
    main = group is None or group.is_main

    def checkpoint(completed: int) -> None:
        if checkpoint_dir is None:
            return
        tensors = run.full_state()  # a collective: every rank takes part
        if main:
            save_checkpoint(checkpoint_dir, completed, tensors, run.config, history)

    bar = tqdm(total=cfg.iterations, initial=run.start, desc=f"distill {cfg.algorithm} ({run.config['space']})",
               disable=not (progress and main))
    completed = run.start
    try:
        for it in range(run.start, cfg.iterations):
            loss = algo.iteration(it)
            completed = it + 1
            history.append({"iteration": it, "loss": loss})
            bar.set_postfix(loss=f"{loss:.4g}")
            bar.update()
            if cfg.eval_every and (it + 1) % cfg.eval_every == 0:
                history.append({"iteration": it, "eval": _evaluate(run, test, it)})
            if (it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.iterations:
                checkpoint(it + 1)
    except DistillationDiverged as exc:  # raised before the update: the state is the last good one
        checkpoint(completed)
        exc.last_good = run.result()
        raise
    except KeyboardInterrupt:
        if group is None:  # a sharded run cannot gather once a rank is gone: its periodic checkpoint stands
            checkpoint(completed)
        raise
    finally:
        bar.close()
    return run.result()


def _evaluate(run: DistillRun, test, it: int) -> dict:
    """Evaluate the current set (rank 0 of a sharded run; the table is shared with the others)."""
    from ..evaluation import evaluate

    current, cfg, group = run.result(), run.cfg, run.group
    table = None
    if group is None or group.is_main:
        table = evaluate(current, test, archs=cfg.eval_archs, repeats=cfg.eval_repeats, epochs=cfg.eval_epochs,
                         train_arch=cfg.net, train_normalize=(current.mean, current.std),
                         seed=derive_seed(cfg.seed, it, "eval") % 2**31, progress=False).to_dict()
    if group is not None:
        from ..distributed import all_gather_objects

        table = all_gather_objects(table, group)[0]
    return table
