"""``distill``: the distillation loop — set up, iterate, checkpoint, resume, evaluate, return a ``DistilledSet``.

With ``distributed=True`` (under ``torchrun``) every rank runs this loop on its own block of
classes (``ld3m_fast.distributed``); checkpoints and results are gathered, and rank 0 writes them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..seeding import derive_seed
from .checkpoint import check_same_run, load_checkpoint, load_optimizer_state, optimizer_state, save_checkpoint
from .common import Algorithm, Context, DistillationDiverged
from .config import DistillConfig, knob_names, resolve
from .dc import DC
from .dm import DM
from .mtt import MTT
from .real_data import as_real_data
from .result import DistilledSet
from .synthetic import LatentSynthetic, PixelSynthetic

_MOMENTUM = "momentum."
_ALGORITHM = "algorithm."


def _resolve_model(model, device):
    if isinstance(model, str):
        from ..models import load_ldm

        model = load_ldm(model, device=device)
    if device is not None and isinstance(model, torch.nn.Module):
        model.to(device)
    return model


def _default_device(model, device):
    if device is not None:
        return torch.device(device)
    p = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    if p is not None:
        return p.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class PreparedRun:
    """A run set up and ready to iterate: config, context (data, synthetic set, optimiser), algorithm, resume point."""

    cfg: DistillConfig
    config: dict           # the resolved config as stored with results and checkpoints
    ctx: Context
    algorithm: Algorithm
    start: int             # iterations already completed (from a checkpoint)
    history: list

    def is_row(self, key: str) -> bool:
        """Whether checkpoint tensor ``key`` has one row per synthetic image (sharded by class across ranks)."""
        return key in self.ctx.synthetic.state() or key.startswith(_MOMENTUM)

    def full_state(self) -> dict[str, torch.Tensor]:
        """Synthetic set, optimiser momentum and algorithm state, with the rows of all classes."""
        ctx = self.ctx
        tensors = dict(ctx.synthetic.state(), **optimizer_state(ctx.optimizer, _MOMENTUM),
                       **{_ALGORITHM + k: v for k, v in self.algorithm.state().items()})
        return {k: ctx.gather_images(v) if self.is_row(k) else v for k, v in tensors.items()}

    def result(self) -> DistilledSet:
        ctx, synthetic = self.ctx, self.ctx.synthetic
        mean, std = synthetic.train_normalization
        state = {k: ctx.gather_images(v).cpu() for k, v in synthetic.state().items()}
        return DistilledSet(images=ctx.gather_images(synthetic.unit_images()).cpu(),
                            labels=torch.arange(ctx.real.num_classes).repeat_interleave(self.cfg.ipc), mean=mean,
                            std=std, class_names=ctx.real.class_names, config=self.config, history=list(self.history),
                            Z=state.get("Z"), c=state.get("c"))


def prepare(train, model=None, ipc: int = 1, algorithm: str = "dm", *, experts=None, device=None,
            checkpoint_dir=None, resume: bool = True, group=None, **knobs) -> PreparedRun:
    """Resolve the settings, load the data, initialise (or restore) the synthetic set; see :func:`distill`.

    ``group`` (an ``ld3m_fast.distributed.Group``) shards the synthetic set by class.
    """
    unknown = sorted(set(knobs) - set(knob_names()))
    if unknown:
        raise TypeError(f"distill() got unknown settings {unknown}; known: {sorted(knob_names())}")
    cfg = DistillConfig(algorithm=algorithm, ipc=ipc, **knobs)
    real = as_real_data(train)
    model = _resolve_model(model, device)
    device = _default_device(model, device)
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
    run = PreparedRun(cfg, config, Context(cfg, real, synthetic, device, group=group), None, 0, [])
    if saved is None:
        synthetic.initialize()
    else:
        run.start, tensors, saved_config, run.history = saved
        check_same_run(saved_config, config, checkpoint_dir)
        rows = run.ctx.own_rows()
        synthetic.load_state({k: v[rows] for k, v in tensors.items() if "." not in k})
    ctx = run.ctx
    ctx.optimizer = torch.optim.SGD(synthetic.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    run.algorithm = MTT(ctx, experts) if cfg.algorithm == "mtt" else {"dm": DM, "dc": DC}[cfg.algorithm](ctx)
    if saved is not None:
        load_optimizer_state(ctx.optimizer, {k: v[ctx.own_rows()] for k, v in tensors.items() if k.startswith(_MOMENTUM)},
                             _MOMENTUM)
        run.algorithm.load_state({k[len(_ALGORITHM):]: v for k, v in tensors.items() if k.startswith(_ALGORITHM)})
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
            the preset's defaults (DESIGN §2).

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


def _evaluate(run: PreparedRun, test, it: int) -> dict:
    """Evaluate the current set (rank 0 of a sharded run; the table is shared with the others)."""
    from ..evaluate import evaluate

    current, cfg, group = run.result(), run.cfg, run.ctx.group
    table = None
    if group is None or group.is_main:
        table = evaluate(current, test, archs=cfg.eval_archs, repeats=cfg.eval_repeats, epochs=cfg.eval_epochs,
                         train_arch=cfg.net, train_normalize=(current.mean, current.std),
                         seed=derive_seed(cfg.seed, it, "eval") % 2**31, progress=False).to_dict()
    if group is not None:
        from ..distributed import all_gather_objects

        table = all_gather_objects(table, group)[0]
    return table
