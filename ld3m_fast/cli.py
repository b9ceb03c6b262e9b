"""Command line: ``ld3m-fast check`` (and ``python -m ld3m_fast check``).

``check`` shows which fused-step backends this installation has, then renders a batch with a tiny
model through the engine and through the official-style reference, and reports whether their
gradients agree and how long each took.
"""
from __future__ import annotations

import argparse
import sys
import time


def _check(args) -> int:
    import torch

    from . import available_backends, reference, render
    from .render import make_generator, start_noise
    from .tiny import TinyLDM

    print(f"ld3m_fast on torch {torch.__version__}; backends available: {', '.join(available_backends())}")
    torch.manual_seed(args.seed)
    model = TinyLDM(seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    Z = torch.randn(args.images, 3, 8, 8, generator=gen).requires_grad_(True)
    c = model.get_learned_conditioning(torch.arange(args.images) % model.n_classes).clone().requires_grad_(True)
    target = torch.rand(args.images, 3, 32, 32, generator=gen)

    def loss_fn(images):
        return ((images - target) ** 2).mean()

    start = time.perf_counter()
    loss_fn(render(model, Z, c, args.steps, seed=args.seed, progress=True)).backward()
    engine_s, gZ = time.perf_counter() - start, Z.grad.clone()
    Z.grad = c.grad = None
    start = time.perf_counter()
    reference.official_backward(model, Z, c, loss_fn, args.steps, seed=args.seed)
    reference_s = time.perf_counter() - start
    err = float((gZ - Z.grad).norm() / Z.grad.norm())
    print(f"render+backward of {args.images} images, {args.steps} steps: engine {engine_s:.2f} s, "
          f"official-style reference {reference_s:.2f} s ({reference_s / engine_s:.2f}x); "
          f"gradient relative difference {err:.1e}")
    ok = err < 1e-4
    print("check passed" if ok else "check FAILED: engine and reference gradients differ")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ld3m-fast", description="ld3m_fast: fast, memory-bounded LD3M")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="show backends and compare engine vs reference on a tiny model")
    check.add_argument("--images", type=int, default=20, help="number of latents to render (default 20)")
    check.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    check.add_argument("--seed", type=int, default=0)
    check.set_defaults(func=_check)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
