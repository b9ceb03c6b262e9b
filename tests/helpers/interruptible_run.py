"""Run as a subprocess by tests/distillation/test_interrupts.py: one small distillation with a checkpoint folder,
which the test interrupts with real signals at random moments. Prints READY when distill is called and ITERATING
when its set-up is done and the loop starts."""
import argparse
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `tests` is a package there
from ld3m_fast.distillation import distill  # noqa: E402
from ld3m_fast.distillation import run as run_module  # noqa: E402
from ld3m_fast.errors import RunInterrupted  # noqa: E402
from tests.helpers.compvis_style import CompVisStyleLDM  # noqa: E402
from tests.helpers.toy import small, toy_data  # noqa: E402

CASES = {  # name -> (latent?, knobs)
    "dm": (True, dict(algorithm="dm")),
    "dc": (False, dict(algorithm="dc", outer_loop=2, inner_loop=1)),
    "mtt": (True, dict(algorithm="mtt", expert_epochs=1, max_start_epoch=2, syn_steps=3)),
}


def settings(case: str, experts: str | None):
    latent, knobs = CASES[case]
    kw = dict(small(True if latent else None), ipc=1, iterations=12, checkpoint_every=1000, seed=4, **knobs)
    if case == "mtt":
        kw["experts"] = experts
    return (CompVisStyleLDM(seed=3) if latent else None), kw


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("case", choices=sorted(CASES))
    p.add_argument("--out", required=True)
    p.add_argument("--experts")
    args = p.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job's children inherit SIGINT ignored
    model, kw = settings(args.case, args.experts)
    data = toy_data()
    prepare = run_module.prepare

    def announced(*a, **k):
        run = prepare(*a, **k)
        print("ITERATING", flush=True)
        return run
    run_module.prepare = announced
    print("READY", flush=True)
    try:
        distill(data, model, checkpoint_dir=args.out, **kw)
    except RunInterrupted as exc:
        print(f"INTERRUPTED {exc}", flush=True)
        return 128 + exc.signal
    except KeyboardInterrupt:
        print("HARD STOP", flush=True)
        return 130
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
