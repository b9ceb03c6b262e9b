"""Command line: ``ld3m-fast distill | eval | experts | train-prior | demo | check`` (also ``python -m ld3m_fast``).

Every distillation knob of ``ld3m_fast.distill`` is an option named after it (``--ipc``,
``--steps``, ``--lr``, ...); unset ones take the preset's defaults. ``distill`` keeps a checkpoint
in ``<out>/checkpoint``: Ctrl-C saves the last completed iteration, and running the same command
again continues from it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from .atomic import check_writable_folder, write_atomic
from .errors import (DamagedFileError, InvalidArgumentError, LD3MError, MissingDependencyError, MissingFileError,
                     RunInterrupted)

# Help for the knobs of DistillConfig, phrased like the papers' hyper-parameters.
KNOB_HELP = {
    "preset": "hyper-parameters of 'ld3m' (official LD3M code, default) or 'glad' (GLaD)",
    "iterations": "distillation iterations (ld3m: 10000, glad: 1000)",
    "lr": "learning rate of Z and c, or of the pixels (ld3m: DM 1, DC 0.1, MTT 500 = the official 1000 on half the "
          "gradient; glad: 0.01, 0.001, 10)",
    "momentum": "SGD momentum of the synthetic set (0.5)",
    "batch_real": "real images per class per iteration (256)",
    "init": "'real': start from encoded (or copied) random real images; 'noise'",
    "seed": "seed of every random draw; a fixed seed gives the same result (0)",
    "net": "network the loss is computed with (ConvNet; also ConvNetD5, ConvNetBN, AlexNet, VGG11, ResNet18, ViT)",
    "net_width": "network width (128)",
    "net_depth": "ConvNet depth (default: 5 at 128 px, 6 at 256 px)",
    "net_norm": "ConvNet normalisation: instancenorm, batchnorm, none",
    "dsa": "differentiable Siamese augmentation on real and synthetic images (on)",
    "steps": "DDIM steps of the LDM rendering (10 at <= 128 px, 20 above)",
    "guidance": "classifier-free guidance scale (3.0; 1.0 disables it)",
    "skip": "LD3M skip: 'official' (x0 blended with Zq, the code), 'paper' (Eq. 7), 'none'",
    "eta": "DDIM eta (0)",
    "chunk_size": "images per recomputed denoiser call (10)",
    "memory_budget": "bytes or e.g. '16GiB' for the rendering's backward; picks the chunk size, kept steps and latent stride",
    "class_ids": "the LDM class of each label (default: the dataset's ImageNet ids, else 0..C-1)",
    "syn_mean": "normalisation mean of rendered images (3-channel default: the official 0.4377 0.4438 0.4728)",
    "syn_std": "normalisation std of rendered images",
    "encode_input": "what the encoder sees at init='real': 'normalized' (official) or 'signed' ([-1, 1])",
    "backend": "fused-step backend: torch, triton, cpp, cuda (default: fastest available)",
    "lr_net": "DC: learning rate of the network between outer loops (0.01)",
    "outer_loop": "DC: outer loops per iteration (1)",
    "inner_loop": "DC: network epochs between outer loops (1)",
    "batch_train": "DC: batch size of the network's inner training (256)",
    "lr_lr": "MTT: learning rate of the learnable step size (1e-6)",
    "lr_teacher": "MTT: initial student step size (0.01)",
    "syn_steps": "MTT: student steps on synthetic data (ld3m 10, glad 20)",
    "expert_epochs": "MTT: expert epochs the student should cover (ld3m 2, glad 3)",
    "max_start_epoch": "MTT: latest expert start epoch, exclusive (ld3m 2, glad 5)",
    "batch_syn": "MTT: synthetic images per student step (all)",
    "checkpoint_every": "iterations between checkpoints (100)",
    "eval_every": "evaluate every N iterations on the test split (off)",
    "eval_archs": "architectures of the periodic evaluation (ConvNet)",
    "eval_repeats": "networks per architecture in the periodic evaluation (1)",
    "eval_epochs": "epochs of the periodic evaluation (protocol default)",
}
_TUPLE_KNOBS = {"class_ids": int, "syn_mean": float, "syn_std": float, "eval_archs": str}


def _add_data_args(p: argparse.ArgumentParser, split: str) -> None:
    p.add_argument("--data", default="fashion-mnist",
                   help="dataset: fashion-mnist (embedded, default), fashion-mnist-full, imagenette, imagewoof, "
                        "imagenet-a..e, ..., or a class-folder path")
    p.add_argument("--root", default=None, help="dataset root folder (ImageNet: the folder with train/ and val/)")
    p.add_argument("--resolution", type=int, default=None, help="image size (ImageNet subsets: 128 or 256)")
    p.add_argument(f"--{'split' if split == 'train' else 'test-split'}", dest="split", default=split,
                   help=f"split to use (default {split})")


def _load_data(args, split=None):
    from .data import load_dataset

    kw = {} if args.resolution is None else {"resolution": args.resolution}
    return load_dataset(args.data, root=args.root, split=split or args.split, **kw)


_KNOB_CHOICES = {  # closed sets: a bad value fails while parsing, before any data loads
    "preset": ("ld3m", "glad"), "init": ("real", "noise"), "skip": ("official", "paper", "none"),
    "encode_input": ("normalized", "signed"), "backend": ("torch", "triton", "cpp", "cuda"),
    "net_norm": ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none"),
}


def _add_knobs(p: argparse.ArgumentParser) -> None:
    from .distillation.config import DistillConfig

    g = p.add_argument_group("distillation knobs (unset: the preset's default, given in each help)")
    for f in dataclasses.fields(DistillConfig):
        if f.name in ("algorithm", "ipc"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name in _TUPLE_KNOBS:
            g.add_argument(flag, dest=f.name, nargs="+", type=_TUPLE_KNOBS[f.name], default=None, help=KNOB_HELP[f.name])
        elif f.type in ("bool", bool):
            g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=KNOB_HELP[f.name])
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0].replace("| None", ""), str)
            g.add_argument(flag, dest=f.name, type=str if f.name == "memory_budget" else kind, default=None,
                           choices=_KNOB_CHOICES.get(f.name), help=KNOB_HELP[f.name])


def _knobs(args) -> dict:
    from .distillation.config import knob_names

    out = {}
    for name in knob_names():
        value = getattr(args, name, None)
        if value is not None and name not in ("algorithm", "ipc"):
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def _load_model(args):
    if args.ldm in (None, "none", "pixel"):
        if args.ldm_checkpoint is not None:
            raise InvalidArgumentError("--ldm-checkpoint is given without --ldm: name the architecture it holds "
                                       "(e.g. --ldm cin256-v2)")
        return None
    from .models import load_ldm

    return load_ldm(args.ldm, checkpoint=args.ldm_checkpoint, device=args.device)


def _distill(args) -> int:
    from .distillation.run import distill
    from .distributed import launched_by_torchrun
    from .errors import DistillationDiverged

    distributed = launched_by_torchrun()  # torchrun --nproc_per_node=K -m ld3m_fast distill ...
    main = not distributed or int(os.environ["RANK"]) == 0
    from .distillation.config import DistillConfig, check_knobs

    check_knobs(DistillConfig(algorithm=args.algorithm, ipc=args.ipc, **_knobs(args)),  # before the data loads
                latent=args.ldm not in (None, "none", "pixel"))
    out = check_writable_folder(args.out, "--out")  # before any work: never lose a finished run to a bad path
    if main:  # `--config <out>` repeats (or continues) this run
        settings = {k: v for k, v in vars(args).items() if k not in ("func", "command", "config")}
        write_atomic(out / "config.json", lambda p: Path(p).write_text(json.dumps(settings, indent=1)))
    train = _load_data(args)
    test = _load_data(args, args.test_split) if args.eval_every else None
    model = _load_model(args)
    ckpt = out / "checkpoint"
    if main:
        space = f"latent space of {args.ldm}" if model is not None else "pixel space"
        ranks = f" on {os.environ['WORLD_SIZE']} ranks" if distributed else ""
        print(f"distilling {train!r} with {args.algorithm.upper()} into {args.ipc} images per class, {space}{ranks}; "
              f"output: {out}")
    start = time.perf_counter()
    try:
        result = distill(train, model, args.ipc, args.algorithm, experts=args.experts, test=test, device=args.device,
                         checkpoint_dir=ckpt, resume="force" if args.force_resume else True, progress=not args.quiet,
                         distributed=distributed, log_dir=out, log=tuple(args.log), **_knobs(args))
    except RunInterrupted as exc:
        print(f"\n{exc}; run the same command to continue", file=sys.stderr)
        return 128 + exc.signal
    except KeyboardInterrupt:
        print(f"\nstopped: the checkpoint in {ckpt} holds the last completed iteration it saved; run the same "
              "command to continue", file=sys.stderr)
        return 130
    except DistillationDiverged as exc:
        if main:
            exc.last_good.save(out / "last_good")
            print(f"error: {exc}\nthe last good set is in {out / 'last_good'}", file=sys.stderr)
        return 1
    if not main:
        return 0
    from .plots import plot_history

    result.save(out)
    plot_history(result.history, out / "loss.png", title=f"{args.algorithm.upper()}, {args.ipc} images per class")
    losses = result.losses
    print(f"done in {time.perf_counter() - start:.1f} s: {len(losses)} iterations, final loss "
          f"{losses[-1] if losses else float('nan'):.4g}; wrote {out}/distilled.safetensors, distilled.json, PNG grids, "
          "log.jsonl/log.csv and loss.png (with matplotlib)")
    return 0


def _eval(args) -> int:
    from .distributed import launched_by_torchrun
    from .evaluation import evaluate
    from .export import load_set

    distributed = launched_by_torchrun()  # torchrun --nproc_per_node=K -m ld3m_fast eval ...: jobs spread over ranks
    if args.out:
        check_writable_folder(Path(args.out).parent, "--out (its folder)")
    distilled = load_set(args.distilled, normalization=_normalization_arg(args.normalization, "--normalization"))
    test = _load_data(args, args.split)
    table = evaluate(distilled, test, archs=tuple(args.archs), repeats=args.repeats, protocol=args.protocol,
                     epochs=args.epochs, train_arch=args.train_arch, device=args.device, seed=args.seed,
                     progress=not args.quiet, distributed=distributed)
    if distributed and int(os.environ["RANK"]) != 0:
        return 0
    print(table)
    if args.out:
        Path(args.out).write_text(json.dumps(table.to_dict(), indent=1))
        print(f"wrote {args.out}")
    return 0


def _normalization_arg(text: str | None, flag: str):
    """``'imagenet'``-style names pass through; ``'m,m,m:s,s,s'`` becomes ``(mean, std)``."""
    if text is None or ":" not in text:
        return text
    try:
        mean, std = ([float(v) for v in part.split(",")] for part in text.split(":"))
    except ValueError:
        raise InvalidArgumentError(f"{flag}={text!r}: write 'mean,mean,mean:std,std,std' or a name") from None
    return mean, std


def _export(args) -> int:
    from .export import export_set

    src = Path(args.distilled)
    out = Path(args.out) if args.out else src / f"export-{args.format}"
    normalize = _normalization_arg(args.normalize, "--normalize")
    if normalize == "imagenet":
        from .data import IMAGENET_MEAN, IMAGENET_STD

        normalize = (IMAGENET_MEAN, IMAGENET_STD)
    elif isinstance(normalize, str):
        raise InvalidArgumentError(f"--normalize={args.normalize!r}: use 'imagenet' or 'mean,mean,mean:std,std,std'")
    record = export_set(src, out, args.format, normalize=normalize, overwrite=args.overwrite)
    print(f"wrote the {args.format} export of {src} to {out} (described in {record.name})")
    return 0


def _experts(args) -> int:
    from .distillation.experts import train_experts

    check_writable_folder(args.out, "--out")
    train = _load_data(args)
    buffer = train_experts(train, args.out, num_experts=args.num_experts, epochs=args.epochs, net=args.net,
                           width=args.width, depth=args.depth, norm=args.norm, lr=args.lr, batch_size=args.batch_size,
                           seed=args.seed, device=args.device, progress=not args.quiet)
    print(f"{len(buffer)} expert trajectories of {buffer.epochs} epochs in {buffer.path}")
    return 0


def _train_prior(args) -> int:
    import torch

    from .image_grid import save_grid
    from .models.prior import prior_report, train_prior

    out = Path(args.out)
    check_writable_folder(out.parent, "--out (its folder)")
    if out.is_dir():
        raise InvalidArgumentError(f"--out={str(out)!r} is a folder; give a model file such as prior.safetensors")
    train = _load_data(args)
    test = _load_data(args, args.test_split)
    start = time.perf_counter()
    model = train_prior(train, out, config=args.config, vq_epochs=args.vq_epochs, unet_epochs=args.unet_epochs,
                        batch_size=args.batch_size, seed=args.seed, device=args.device,
                        checkpoint_dir=args.checkpoint_dir or out.with_suffix(".training"),
                        save_dtype=getattr(torch, args.save_dtype), progress=not args.quiet)
    seconds = time.perf_counter() - start
    report = prior_report(model, train, test, seed=args.seed, device=args.device, progress=not args.quiet)
    grid = out.with_name(out.stem + "_samples.png")
    per_class = report["samples_per_class"]
    picks = torch.cat([torch.arange(k * per_class, k * per_class + 10) for k in range(train.num_classes)])
    save_grid(report.pop("samples")[picks], grid, nrow=10, scale=2)
    report.pop("sample_labels")
    report.update(seconds_training=seconds, command=" ".join(sys.argv), history=model.training_history)
    out.with_name(out.stem + "_report.json").write_text(json.dumps(report, indent=1))
    rec = report["reconstruction"]
    print(f"trained in {seconds / 60:.1f} min; wrote {out}, {grid}\n"
          f"autoencoder reconstruction on {args.test_split}: MSE {rec['mse']:.5f} (PSNR {rec['psnr_db']:.1f} dB)\n"
          f"ConvNet trained on real images: {100 * report['classifier_accuracy_real_test']:.1f}% on real test images, "
          f"{100 * report['classifier_accuracy_samples']:.1f}% on the prior's class-conditional samples")
    return 0


def _demo(args) -> int:
    from .demo import format_table, run_demo

    check_writable_folder(args.out, "--out")
    report = run_demo(args.out, quick=args.quick, progress=not args.quiet)
    print(f"\nFashion-MNIST (embedded: {report['train_images']} train / {report['test_images']} test images), "
          f"test accuracy in %, mean ± std over {report['settings']['repeats']} runs "
          f"({report['seconds'] / 60:.1f} min):\n")
    print(format_table(report))
    print(f"\nwrote {args.out}/report.json and the distilled sets with their PNG grids")
    return 0


def _check(args) -> int:
    import statistics

    import torch

    from .engine import backend_status, reference, render
    from .models import build_ldm

    print(f"ld3m_fast on torch {torch.__version__}; fused-step backends:")
    for name, reason in backend_status().items():
        print(f"  {name:7s} {'available' if reason is None else 'unavailable: ' + reason}")
    model = build_ldm("tiny").requires_grad_(False).eval()
    gen = torch.Generator().manual_seed(args.seed)
    shape = (model.channels, model.image_size, model.image_size)
    Z = torch.randn(args.images, *shape, generator=gen).requires_grad_(True)
    c = model.get_learned_conditioning(torch.arange(args.images) % model.n_classes).clone().requires_grad_(True)
    target = torch.rand(args.images, model.config.image_channels, model.config.image_size, model.config.image_size,
                        generator=gen)

    def loss_fn(images):
        return ((images - target) ** 2).mean()

    def engine():
        Z.grad = c.grad = None
        loss_fn(render(model, Z, c, args.steps, seed=args.seed)).backward()
        return Z.grad.clone()

    def official():
        Z.grad = c.grad = None
        reference.official_backward(model, Z, c, loss_fn, args.steps, seed=args.seed)
        return Z.grad.clone()

    times = {"engine": [], "official": []}
    grads = {}
    for repeat in range(args.repeats + 1):  # the first round warms up and is not timed
        for name, fn in (("engine", engine), ("official", official)):
            start = time.perf_counter()
            grads[name] = fn()
            if repeat:
                times[name].append(time.perf_counter() - start)
    engine_s, official_s = statistics.median(times["engine"]), statistics.median(times["official"])
    err = float((grads["engine"] - grads["official"]).norm() / grads["official"].norm())
    print(f"render+backward of {args.images} images, {args.steps} steps, tiny LDM (median of {args.repeats} "
          f"interleaved runs after a warm-up): engine {engine_s:.3f} s, official-style reference {official_s:.3f} s "
          f"({official_s / engine_s:.2f}x); gradient relative difference {err:.1e}")
    ok = err < 1e-4
    print("check passed" if ok else "check FAILED: engine and reference gradients differ")
    return 0 if ok else 1


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, except where there is none (the knobs say their preset's)."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _RenamedOption(argparse.Action):
    """An option's old spelling: still accepted for a while, with a warning naming the new one."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is now {self.new} (in the official scripts --model names the distillation "
              f"network, here --net); the old spelling will be removed", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _subparser(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    return sub.add_parser(name, formatter_class=_HelpFormatter, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .models.config import NAMED_CONFIGS

    parser = argparse.ArgumentParser(prog="ld3m-fast", formatter_class=_HelpFormatter,
                                     description="ld3m_fast: fast, memory-bounded LD3M dataset distillation")
    parser.add_argument("--version", action="version", version=f"ld3m-fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    d = _subparser(sub, "distill", help="distil a dataset (LD3M in an LDM's latent space, or pixel-space baselines)",
                   description="Distil a dataset into a few images per class. SIGINT (Ctrl-C) and SIGTERM stop at an "
                               "iteration boundary with a checkpoint; the same command continues from it.")
    d.add_argument("--config", default=None,
                   help="a JSON (or YAML, with pyyaml) file of settings — any option below by its name, e.g. "
                        '{"ipc": 10, "lr": 1.0} — or a run folder / its config.json to repeat a run; flags override it')
    _add_data_args(d, "train")
    d.add_argument("--ldm", default="none",
                   help="the LDM: cin256-v2, tiny, small, fashion-mnist-prior, a saved model (save_ldm) or a diffusers "
                        "folder; 'none' for pixel space")
    d.add_argument("--ldm-checkpoint", default=None, help="CompVis checkpoint to load into --ldm (e.g. model.ckpt)")
    d.add_argument("--model", dest="ldm", action=_RenamedOption, new="--ldm", help=argparse.SUPPRESS)
    d.add_argument("--model-checkpoint", dest="ldm_checkpoint", action=_RenamedOption, new="--ldm-checkpoint",
                   help=argparse.SUPPRESS)
    d.add_argument("--algorithm", choices=("dm", "dc", "mtt"), default="dm", help="distillation loss")
    d.add_argument("--ipc", type=int, default=1, help="images per class")
    d.add_argument("--experts", default=None, help="MTT: folder of expert trajectories (ld3m-fast experts)")
    d.add_argument("--test-split", default="test", help="split for --eval-every")
    d.add_argument("--out", default="distilled", help="output folder")
    d.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the LDM's, else cuda if present)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.add_argument("--force-resume", action="store_true",
                   help="continue a checkpoint made with another model, data or expert buffer (settings must match)")
    d.add_argument("--log", nargs="*", default=[], choices=("tensorboard", "wandb"),
                   help="trackers besides <out>/log.jsonl and log.csv (need the tensorboard / wandb package)")
    _add_knobs(d)
    d.set_defaults(func=_distill)

    e = _subparser(sub, "eval", help="train networks on a distilled set and test them (GLaD/LD3M protocol)")
    e.add_argument("distilled", help="a folder written by distill or export, an images_best.pt (with labels_best.pt "
                                     "beside it) as the MTT/GLaD/LD3M scripts write them, or a class-folder tree")
    e.add_argument("--normalization", default=None,
                   help="how a .pt pair without export.json is normalised: glad, imagenet, unit, or 'mean,mean,mean:std,"
                        "std,std'")
    e.add_argument("--train-arch", default="ConvNet", help="the architecture the set was distilled with (the others "
                                                           "count as unseen)")
    _add_data_args(e, "test")
    e.add_argument("--archs", nargs="+", default=["ConvNet", "AlexNet", "VGG11", "ResNet18", "ViT"],
                   help="architectures to train")
    e.add_argument("--repeats", type=int, default=5, help="networks per architecture")
    e.add_argument("--protocol", choices=("glad", "dc"), default="glad",
                   help="glad: 1000 epochs, warm-up + cosine, EMA; dc: 300 epochs, step lr")
    e.add_argument("--epochs", type=int, default=None, help="override the protocol's epochs")
    e.add_argument("--seed", type=int, default=0, help="seed of the networks' initialisation and training")
    e.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    e.add_argument("--out", default=None, help="write the table as JSON here")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=_eval)

    x = _subparser(sub, "experts", help="train MTT expert trajectories on real data")
    _add_data_args(x, "train")
    x.add_argument("--out", required=True, help="folder for the trajectories")
    x.add_argument("--num-experts", type=int, default=10, help="expert networks to train")
    x.add_argument("--epochs", type=int, default=15, help="epochs per expert")
    x.add_argument("--net", default="ConvNet", help="network (ConvNet, ConvNetBN, AlexNet, VGG11, ResNet18, ViT)")
    x.add_argument("--width", type=int, default=128, help="network width")
    x.add_argument("--depth", type=int, default=None, help="ConvNet depth (default: by resolution)")
    x.add_argument("--norm", default="instancenorm", choices=_KNOB_CHOICES["net_norm"], help="normalisation layers")
    x.add_argument("--lr", type=float, default=0.01, help="expert SGD learning rate")
    x.add_argument("--batch-size", type=int, default=256, help="training batch size")
    x.add_argument("--seed", type=int, default=0, help="seed of the experts' initialisation and training")
    x.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    x.add_argument("--quiet", action="store_true", help="no progress bars")
    x.set_defaults(func=_experts)

    t = _subparser(sub, "train-prior", help="train a class-conditional LDM (VQ autoencoder + UNet) for a dataset")
    _add_data_args(t, "train")
    t.add_argument("--test-split", default="test", help="split for the quality report")
    t.add_argument("--out", required=True, help="model file to write (safetensors; load_ldm reads it)")
    t.add_argument("--config", default="small", choices=sorted(NAMED_CONFIGS),
                   help="architecture (a named LDMConfig; its image size, channels and classes follow the data)")
    t.add_argument("--vq-epochs", type=int, default=10, help="epochs of the VQ autoencoder")
    t.add_argument("--unet-epochs", type=int, default=40, help="epochs of the UNet")
    t.add_argument("--batch-size", type=int, default=128, help="training batch size")
    t.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    t.add_argument("--checkpoint-dir", default=None, help="training state, for resuming (default: <out>.training)")
    t.add_argument("--save-dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="dtype of the saved weights (float16 halves the file)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=_train_prior)

    xp = _subparser(sub, "export", help="write a distilled set for other tools: MTT/GLaD/LD3M .pt pair, DD-Ranking, "
                                        "PNG class folders")
    xp.add_argument("distilled", help="folder written by distill")
    xp.add_argument("--format", required=True, choices=("mtt", "ddranking", "folder"),
                    help="mtt: images_best.pt/labels_best.pt/lr_best.pt as the official scripts write them; ddranking: "
                         "images.pt/labels.pt/lr.pt; folder: one PNG folder per class")
    xp.add_argument("--out", default=None, help="output folder (default: <set>/export-<format>)")
    xp.add_argument("--normalize", default=None,
                    help="normalise the .pt images with 'imagenet' values or 'mean,mean,mean:std,std,std' instead of "
                         "the set's own")
    xp.add_argument("--overwrite", action="store_true", help="replace a previous export in --out")
    xp.set_defaults(func=_export)

    m = _subparser(sub, "demo", help="LD3M vs pixel DM vs random real images on the embedded Fashion-MNIST (CPU)")
    m.add_argument("--out", default="demo", help="output folder")
    m.add_argument("--quick", action="store_true", help="a smoke run of under a minute")
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    m.set_defaults(func=_demo)

    check = _subparser(sub, "check", help="list the backends (and why one is missing); compare engine and reference "
                                          "on a tiny model: gradients and speed")
    check.add_argument("--images", type=int, default=20, help="number of latents to render")
    check.add_argument("--steps", type=int, default=20, help="DDIM steps")
    check.add_argument("--repeats", type=int, default=3, help="timed runs of each, interleaved")
    check.add_argument("--seed", type=int, default=0, help="seed of the inputs")
    check.set_defaults(func=_check)
    return parser


def _read_settings(path: str) -> dict:
    """Settings from ``--config``: a JSON/YAML file of option names, or a run folder (its ``config.json``, else the
    ``config`` of its ``distilled.json``)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json" if (p / "config.json").is_file() else p / "distilled.json"
    if not p.is_file():
        raise MissingFileError(f"--config={path!r} does not exist (give a JSON/YAML file or a run folder)")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise MissingDependencyError(f"--config={path!r} is YAML, which needs pyyaml: pip install pyyaml "
                                             "(or write the settings as JSON)") from None
            settings = yaml.safe_load(text)
        else:
            settings = json.loads(text)
    except (ValueError, TypeError) as err:
        raise DamagedFileError(f"--config={str(p)!r} cannot be read ({err})") from None
    if not isinstance(settings, dict):
        raise DamagedFileError(f"--config={str(p)!r} must hold a mapping of option names to values")
    if p.name == "distilled.json":  # a run folder written before config.json existed: its resolved knobs
        settings = {k: v for k, v in settings.get("config", {}).items() if k not in ("space", "dataset")}
    return settings


def _apply_settings(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; with ``--config``, the file's settings become the defaults that flags override."""
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is None or args.command != "distill":
        return args
    settings = _read_settings(args.config)
    sub = next(a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction))
    distill_parser = sub.choices["distill"]
    known = {a.dest for a in distill_parser._actions}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise InvalidArgumentError(f"--config={args.config!r} has unknown settings {unknown}; use option names "
                                   "such as 'ipc', 'lr', 'ldm', 'data' (see ld3m-fast distill --help)")
    settings = {k: tuple(v) if isinstance(v, list) and k in _TUPLE_KNOBS else v for k, v in settings.items()}
    distill_parser.set_defaults(**settings)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; a problem with what it was given prints one line and returns 2, a bug keeps its traceback."""
    try:
        try:
            args = _apply_settings(build_parser(), argv)
        except SystemExit as exc:  # argparse has printed its one-line usage error (2), or --help/--version (0)
            return exc.code if isinstance(exc.code, int) else 2
        code = args.func(args)
        if "torch.distributed" in sys.modules:  # a torchrun rank: leave the process group together with the others
            from .distributed import finish
            finish()
        return code
    except LD3MError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
