"""``ld3m-fast demo``: LD3M end to end on the embedded Fashion-MNIST, on a CPU, with an honest report.

It distils the embedded training subset with LD3M-DM through the shipped Fashion-MNIST prior and
with pixel-space DM, at 1 and 10 images per class. Both start from the same random real images,
which are also the "random real" baseline, so the table shows what distillation adds to them.
It trains ConvNet and VGG-11 on each set (several runs), tests them on the held-out images, prints
the table (mean ± std) and writes it with the PNG grids and the settings to ``<out>/report.json``.
The prior was trained on images scaled to [-1, 1], so LD3M's latents start from such images
(``encode_input="signed"``, not the official code's normalised ones).

The settings are scaled to finish on a 2-core CPU well within ten minutes (``--quick``: about a
minute): 60 distillation iterations, smaller real batches and evaluation networks, and the DC
papers' evaluation (their protocol for Fashion-MNIST: lr 0.01, divided by 10 halfway) shortened to
80 epochs — so the numbers are lower than a full-protocol run would give, for every method alike.
Before the work starts it times one distillation iteration and one evaluation epoch on this machine
and prints its estimate. Everything is seeded: two runs on the same CPU type print the same table
(another CPU type rounds floats differently, so the last digits may differ).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class DemoSettings:
    ipcs: tuple[int, ...] = (1, 10)
    iterations: int = 60             # distillation iterations (both spaces)
    batch_real: int = 64             # real images per class per iteration
    net_width: int = 64              # ConvNet width for the DM embedding
    lr_latent: float = 1.0           # LD3M: learning rate of Z and c
    lr_pixel: float = 1.0            # pixel DM: learning rate of the pixels
    steps: int = 10                  # DDIM steps of the rendering
    chunk_size: int = 100            # images per recomputed UNet call (the prior is small: all at once)
    archs: tuple[str, ...] = ("ConvNet", "VGG11")
    repeats: int = 3                 # evaluation networks per architecture
    protocol: str = "dc"             # the DC papers' evaluation (lr 0.01, step decay), which they use for Fashion-MNIST
    eval_epochs: int = 80
    eval_widths: tuple[tuple[str, int], ...] = (("ConvNet", 64), ("VGG11", 32))  # VGG11: a quarter of its channels
    seed: int = 0


QUICK = DemoSettings(ipcs=(1, 10), iterations=10, batch_real=32, archs=("ConvNet",), repeats=1, eval_epochs=50)


def prior_path() -> Path:
    """The Fashion-MNIST LDM shipped with the package (``ld3m-fast train-prior`` made it; README has the command)."""
    from .models.load import shipped_path

    return Path(shipped_path("fashion-mnist-prior"))


def run_demo(out="demo", quick: bool = False, settings: DemoSettings | None = None, progress: bool = True) -> dict:
    """Run the demo; returns the report (also written to ``<out>/report.json``)."""
    from .data import embedded_fashion_mnist
    from .distillation.real_data import as_real_data
    from .distillation.run import distill
    from .distillation.synthetic import initial_real_indices
    from .evaluation import evaluate
    from .models import load_ldm

    s = settings or (QUICK if quick else DemoSettings())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train, test = embedded_fashion_mnist("train"), embedded_fashion_mnist("test")
    prior = load_ldm("fashion-mnist-prior")
    common = dict(algorithm="dm", iterations=s.iterations, batch_real=s.batch_real, net_width=s.net_width,
                  seed=s.seed, progress=progress, checkpoint_every=max(1, s.iterations))
    real = as_real_data(train)
    rows, sets, seconds = [], {}, {}
    estimate = estimate_seconds(s, train, test, prior)
    if progress:
        print(f"the demo should take about {estimate / 60:.1f} minutes on this machine (timed on a few steps)")

    def timed(name, make):
        t = time.perf_counter()
        sets[name] = make()
        seconds[name] = {"make": time.perf_counter() - t}

    for ipc in s.ipcs:
        timed(f"ld3m-dm ipc{ipc}", lambda: distill(train, prior, ipc, lr=s.lr_latent, steps=s.steps,
                                                   chunk_size=s.chunk_size, encode_input="signed", **common))
        timed(f"pixel-dm ipc{ipc}", lambda: distill(train, None, ipc, lr=s.lr_pixel, **common))
        # the real images both distillations started from: the fair baseline
        timed(f"random-real ipc{ipc}", lambda: train.subset(
            torch.cat([initial_real_indices(real, ipc, s.seed, k) for k in range(real.num_classes)])))
    test_pair = test.tensors()
    for name, distilled in sets.items():
        method, ipc = name.split(" ")
        if hasattr(distilled, "save"):
            distilled.save(out / name.replace(" ", "_"))
        images = distilled.tensors() if hasattr(distilled, "tensors") else (distilled.images, distilled.labels)
        t = time.perf_counter()
        table = evaluate(images, test_pair, archs=s.archs, repeats=s.repeats, protocol=s.protocol, epochs=s.eval_epochs,
                         normalize=(test.mean, test.std), train_normalize=(distilled.mean, distilled.std),
                         net_kwargs={arch: {"width": width} for arch, width in s.eval_widths}, seed=s.seed,
                         progress=progress)
        seconds[name]["evaluate"] = time.perf_counter() - t
        for row in table.rows:
            rows.append({"method": method, "ipc": int(ipc[3:]), "arch": row.arch, "mean": row.mean, "std": row.std,
                         "accuracies": row.accuracies})
    report = {"settings": asdict(s), "quick": quick, "seconds": time.perf_counter() - start,
              "estimated_seconds": estimate, "rows": rows,
              "seconds_per_set": seconds, "test_images": len(test), "train_images": len(train),
              "torch": torch.__version__}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    from .plots import plot_accuracy_vs_ipc

    plot_accuracy_vs_ipc(report, out / "accuracy_vs_ipc.png", title="Fashion-MNIST (embedded subset)")
    return report


def estimate_seconds(s: DemoSettings, train, test, prior) -> float:
    """The demo's duration on this machine, from one LD3M-DM iteration at the largest IPC and one evaluation epoch
    of each architecture, timed now (a few seconds). Distillation at every IPC and in both spaces costs about 1.5
    times the largest LD3M-DM run (measured on the reference CPU); evaluating a set costs about the same per epoch
    whatever its size (one batch)."""
    from .distillation.run import distill
    from .nets import get_network
    from .nets.training import train_network

    ipc = max(s.ipcs)
    t = time.perf_counter()
    distill(train, prior, ipc, algorithm="dm", iterations=2, batch_real=s.batch_real, net_width=s.net_width,
            lr=s.lr_latent, steps=s.steps, chunk_size=s.chunk_size, encode_input="signed", seed=s.seed,
            progress=False)
    per_iteration = (time.perf_counter() - t) / 2
    images, labels = train.per_class(ipc, seed=s.seed).tensors()
    widths = dict(s.eval_widths)
    t = time.perf_counter()
    for arch in s.archs:
        net = get_network(arch, train.channels, train.num_classes, train.resolution, width=widths.get(arch, 128), seed=0)
        train_network(net, images, labels, epochs=2, lr=0.01, schedule="dc", normalize=(test.mean, test.std),
                      seed=s.seed)
    per_epoch = (time.perf_counter() - t) / 2
    evaluations = 3 * len(s.ipcs) * s.repeats  # three methods per IPC
    return 1.5 * s.iterations * per_iteration + evaluations * s.eval_epochs * per_epoch


def format_table(report: dict) -> str:
    """The report as a Markdown table: one row per method and IPC, one column per architecture."""
    archs = list(dict.fromkeys(r["arch"] for r in report["rows"]))
    keys = list(dict.fromkeys((r["method"], r["ipc"]) for r in report["rows"]))
    cell = {(r["method"], r["ipc"], r["arch"]): r for r in report["rows"]}
    lines = ["| method | IPC | " + " | ".join(archs) + " |", "|---|---|" + "---|" * len(archs)]
    for method, ipc in keys:
        vals = [f"{100 * cell[(method, ipc, a)]['mean']:.1f} ± {100 * cell[(method, ipc, a)]['std']:.1f}" for a in archs]
        lines.append(f"| {method} | {ipc} | " + " | ".join(vals) + " |")
    return "\n".join(lines)
