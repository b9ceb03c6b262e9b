"""Run under torchrun by tests/test_distributed.py: distil toy data with the synthetic set sharded over the ranks.

Every rank works on the CPU (gloo), also on machines with GPUs: ``device="cpu"`` is passed to ``distill`` and
``evaluate``, so two ranks on a one-GPU machine neither pick NCCL nor ask for a second GPU.
"""
import argparse
import os
import sys
import traceback
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `tests` is a package there
from tests.helpers.toy import small, toy_data  # noqa: E402

from ld3m_fast.distillation import distill  # noqa: E402
from ld3m_fast.distributed import finish  # noqa: E402
from ld3m_fast.evaluation import evaluate  # noqa: E402
from tests.helpers.compvis_style import CompVisStyleLDM  # noqa: E402

DEVICE = "cpu"  # the test compares with one CPU process; gloo runs anywhere
EVAL = dict(archs=("ConvNet", "AlexNet"), repeats=2, epochs=2, net_kwargs={"width": 16}, progress=False, seed=3,
            device=DEVICE)
CASES = {  # name -> (space, algorithm, extra knobs)
    "dm": ("latent", "dm", {}),
    "dm_batchnorm": ("pixel", "dm", dict(net="ConvNetBN")),  # BatchNorm statistics over the classes of every rank
    "dc": ("pixel", "dc", dict(outer_loop=2, inner_loop=1)),
    "mtt": ("latent", "mtt", dict(expert_epochs=1, max_start_epoch=2, syn_steps=3)),
}


def run_case(name, out, experts, seed=2, data=None):
    space, algorithm, extra = CASES[name]
    model = CompVisStyleLDM(seed=3) if space == "latent" else None
    kw = small(model, **extra)
    if algorithm == "mtt":
        kw["experts"] = experts
    return distill(data or toy_data(), model, ipc=2, algorithm=algorithm, iterations=3, seed=seed, distributed=True,
                   checkpoint_dir=out / f"{name}_ckpt", device=DEVICE, **kw)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("case")
    p.add_argument("--out", type=Path)
    p.add_argument("--experts")
    args = p.parse_args()
    rank = int(os.environ["RANK"])
    try:
        if args.case == "equal":
            for name in CASES:
                result = run_case(name, args.out, args.experts)
                if rank == 0:
                    result.save(args.out / name)
            table = evaluate(toy_data(), toy_data(seed=1, per_class=4), **EVAL, distributed=True)
            if rank == 0:
                (args.out / "eval.json").write_text(table.to_json())
                (args.out / "backend.txt").write_text(dist.get_backend())
        elif args.case == "disagree":
            run_case("dm", args.out, args.experts, seed=2 + rank)
        elif args.case == "too_many_ranks":
            images, labels = toy_data(classes=1)
            run_case("dm", args.out, args.experts, data=(images, labels))
        elif args.case == "rank_dies":
            from ld3m_fast.distillation import dm

            original = dm.DM.iteration

            def iteration(self, it):
                if it == 1 and rank == 1:
                    os._exit(3)  # the process is gone, mid-run
                return original(self, it)
            dm.DM.iteration = iteration
            run_case("dm", args.out, args.experts)
        finish()  # every rank done: leave the group together
    except BaseException as exc:  # record what each rank saw, for the test to read
        (args.out / f"error_rank{rank}.txt").write_text(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
