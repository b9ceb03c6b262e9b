"""``distill``: the distillation loop — set up, iterate, checkpoint, resume, evaluate, return a ``DistilledSet``.

With ``distributed=True`` (under ``torchrun``) every rank runs this loop on its own block of
classes (``ld3m_fast.distributed``); checkpoints and results are gathered, and rank 0 writes them.

Interrupts lose nothing: SIGINT (Ctrl-C) and SIGTERM (what clusters send before a kill) let the
iteration in flight finish, then the run writes its checkpoint at that iteration boundary and stops
(``RunInterrupted``); a second signal stops at once, rewinding the state to the last boundary. Every
iteration starts from a snapshot, so a divergence or a hard stop in the middle of an iteration never
saves a partly applied one.
"""
from __future__ import annotations

import json
import signal
import threading

import torch
from tqdm.auto import tqdm

from ..atomic import check_writable_folder
from ..devices import resolve_device
from ..errors import DistillationDiverged, InvalidArgumentError, RunInterrupted
from ..fingerprint import data_fingerprint, fingerprint, model_fingerprint
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
            checkpoint_dir=None, resume: bool | str = True, group=None, **knobs) -> DistillRun:
    """Resolve the settings, load the data, initialise (or restore) the synthetic set; see :func:`distill`.

    ``group`` (an ``ld3m_fast.distributed.Group``) shards the synthetic set by class.
    """
    unknown = sorted(set(knobs) - set(knob_names()))
    if unknown:
        raise InvalidArgumentError(f"distill() got unknown settings {unknown}; known: {sorted(knob_names())}")
    if resume not in (True, False, "force"):
        raise InvalidArgumentError(f"resume={resume!r} must be True, False or 'force'")
    if experts is not None and algorithm != "mtt":
        raise InvalidArgumentError(f"experts= is given but algorithm={algorithm!r}: expert trajectories are used by "
                                   "algorithm='mtt' only; drop experts or choose mtt")
    cfg = DistillConfig(algorithm=algorithm, ipc=ipc, **knobs)
    real = as_real_data(train)
    device = None if device is None else resolve_device(device)
    model = _resolve_model(model, device)
    device = resolve_device(device, model)
    cfg = resolve(cfg, latent=model is not None, resolution=real.resolution, channels=real.channels,
                  dataset_class_ids=real.class_ids, num_classes=real.num_classes)
    config = json.loads(json.dumps(dict(cfg.to_dict(), space="latent" if model is not None else "pixel",
                                        dataset=real.name)))  # its JSON form
    classes, data = None, data_fingerprint(real.images, real.labels)
    if group is not None:
        from ..distributed import check_agreement, shard_classes

        classes = shard_classes(real.num_classes, group)
        check_agreement("settings", fingerprint(config), group)
        check_agreement("training data", data, group)
    synthetic = (LatentSynthetic(model, cfg, real, device, classes) if model is not None
                 else PixelSynthetic(cfg, real, device, classes))
    run = DistillRun(cfg, config, real, synthetic, device, group=group)
    run.algorithm = MTT(run, experts) if cfg.algorithm == "mtt" else {"dm": DM, "dc": DC}[cfg.algorithm](run)
    run.fingerprints = {"model": model_fingerprint(model), "data": data}
    if cfg.algorithm == "mtt":
        run.fingerprints["experts"] = run.algorithm.buffer.fingerprint
    saved = load_checkpoint(checkpoint_dir) if checkpoint_dir is not None and resume else None
    if saved is None:
        synthetic.initialize()
    else:
        check_same_run(saved, config, run.fingerprints, checkpoint_dir, force=resume == "force")
        run.start, run.history = saved.completed, saved.history
        run.load_synthetic(saved.tensors, checkpoint_dir)
    run.optimizer = torch.optim.SGD(synthetic.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    if saved is not None:
        run.restore(saved.tensors)
    return run


def distill(train, model=None, ipc: int = 1, algorithm: str = "dm", *, experts=None, test=None, device=None,
            checkpoint_dir=None, resume: bool | str = True, progress: bool = True, distributed: bool = False,
            log_dir=None, log=(), **knobs) -> DistilledSet:
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
            on SIGINT/SIGTERM and when the loss diverges); checked to be writable before any work. With
            ``resume=True`` a run finds its checkpoint there and continues from it, ending bit-identically to an
            uninterrupted run with the same settings; a checkpoint of other settings, another model, other data or
            another expert buffer is refused (``resume="force"`` continues one of another model, data or buffer
            anyway; ``resume=False`` starts over).
        distributed: shard the synthetic set by class over the processes of a ``torchrun`` launch (NCCL on GPUs,
            gloo on CPUs); every rank returns the whole result, rank 0 writes checkpoints.
        log_dir: where ``log.jsonl`` and ``log.csv`` get one row per iteration (loss, MTT's step size, periodic
            accuracies; default: ``checkpoint_dir``; none without either); ``log``: further trackers,
            ``"tensorboard"`` and/or ``"wandb"`` (``ld3m_fast.tracking``).
        **knobs: any field of :class:`DistillConfig` (``preset``, ``iterations``, ``lr``, ``steps``, ``guidance``,
            ``skip``, ``batch_real``, ``init``, ``memory_budget``, ``seed``, ``eval_every``, …); unset ones take
            the preset's defaults (docs/design.md §7).

    Returns a :class:`DistilledSet`. Raises :class:`DistillationDiverged` (with ``.last_good``) when the loss
    becomes NaN/Inf, and :class:`RunInterrupted` (a ``KeyboardInterrupt``) after SIGINT/SIGTERM.
    """
    if knobs.get("eval_every") is not None and test is None:
        raise InvalidArgumentError("eval_every needs test=(images, labels) (the held-out set to evaluate on)")
    for name, folder in (("checkpoint_dir", checkpoint_dir), ("log_dir", log_dir)):
        if folder is not None:
            check_writable_folder(folder, name)  # before any work, not at the first checkpoint
    group = None
    if distributed:
        from ..distributed import init

        group = init(device)
        device = group.device
    with _StopSignals() as stop:  # from here on SIGINT/SIGTERM stop at an iteration boundary
        run = prepare(train, model, ipc, algorithm, experts=experts, device=device, checkpoint_dir=checkpoint_dir,
                      resume=resume, group=group, **knobs)
        log_dir = checkpoint_dir if log_dir is None else log_dir
        tracker = None
        if log_dir is not None and (group is None or group.is_main):
            from ..tracking import RunLog

            tracker = RunLog(log_dir, backends=("jsonl", *((log,) if isinstance(log, str) else log)),
                             config=run.config, resume_from=run.start)
        try:
            return _iterate(run, stop, test, checkpoint_dir, progress, tracker)
        finally:
            if tracker is not None:
                tracker.close()


def _iterate(run: DistillRun, stop: "_StopSignals", test, checkpoint_dir, progress: bool, tracker) -> DistilledSet:
    """The loop of ``distill``: iterations, checkpoints, periodic evaluation, logs, stops at boundaries."""
    cfg, algo, history, group = run.cfg, run.algorithm, run.history, run.group
    main = group is None or group.is_main
    saved_at = run.start

    def checkpoint(completed: int) -> None:
        nonlocal saved_at
        if checkpoint_dir is None:
            return
        tensors = run.full_state()  # a collective: every rank takes part
        if main:
            save_checkpoint(checkpoint_dir, completed, tensors, run.config, history, run.fingerprints)
        saved_at = completed

    bar = tqdm(total=cfg.iterations, initial=run.start, desc=f"distill {cfg.algorithm} ({run.config['space']})",
               disable=not (progress and main))
    completed = run.start
    try:
        for it in range(run.start, cfg.iterations):
            if stop.agreed(run):
                if completed > saved_at:
                    checkpoint(completed)
                where = f"; the checkpoint in {str(checkpoint_dir)!r} continues it" if checkpoint_dir else ""
                raise RunInterrupted(stop.signal, f"{signal.Signals(stop.signal).name}: stopped after iteration "
                                                  f"{completed} of {cfg.iterations}{where}")
            boundary = run.snapshot()
            try:
                loss = algo.iteration(it)
            except (DistillationDiverged, KeyboardInterrupt):
                run.rewind(boundary)  # never keep a partly applied iteration
                raise
            completed = it + 1
            history.append({"iteration": it, "loss": loss})
            bar.set_postfix(loss=f"{loss:.4g}")
            bar.update()
            scalars = {"loss": loss}
            if "syn_lr" in algo.state():  # MTT's learned step size
                scalars["syn_lr"] = float(algo.state()["syn_lr"])
            if cfg.eval_every and (it + 1) % cfg.eval_every == 0:
                table = _evaluate(run, test, it)
                history.append({"iteration": it, "eval": table})
                scalars.update({f"accuracy/{r['arch']}": r["mean"] for r in table["rows"]})
            if tracker is not None:
                tracker.log(it, **scalars)
            if (it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.iterations:
                checkpoint(it + 1)
    except DistillationDiverged as exc:  # the state was rewound to the last good iteration
        checkpoint(completed)
        exc.last_good = run.result()
        raise
    except RunInterrupted:
        raise
    except KeyboardInterrupt:  # a second signal, or Ctrl-C where no handler could be installed: state rewound
        if group is None and completed > saved_at:  # a sharded run cannot gather once a rank is gone
            checkpoint(completed)
        raise
    finally:
        bar.close()
    return run.result()


class _StopSignals:
    """While active, SIGINT and SIGTERM ask the run to stop at the next iteration boundary; a second one stops at once.

    Handlers can only be installed in the main thread; elsewhere signals keep their default effect. A signal the
    process ignores (a job started in the background by a shell, or under ``nohup``) stays ignored.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} again: stopping now")
        self.signal = signum
        print(f"\n{signal.Signals(signum).name}: finishing this iteration, then writing the checkpoint "
              "(send it again to stop at once)", flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS
                              if signal.getsignal(s) is not signal.SIG_IGN}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def agreed(self, run: DistillRun) -> bool:
        """Whether to stop now: this process got a signal, or (in a sharded run) any rank did."""
        if run.group is None:
            return self.signal is not None
        asked = run.reduce_sum(float(self.signal or 0))  # the same decision on every rank, at the same iteration
        if asked and self.signal is None:
            self.signal = int(signal.SIGTERM)
        return asked > 0


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
