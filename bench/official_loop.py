"""The official LD3M training step, side by side: the official pattern, the drop-in, acceleration, one rendering.

    nice -n 10 python bench/official_loop.py --out bench/results/official_loop_cpu.json         # CPU: a few minutes
    python bench/official_loop.py --device cuda --out bench/results/official_loop_cuda.json      # GPU sizes
    python bench/official_loop.py --dry-run --out /tmp/official_loop_dry.json                    # tiny, seconds

One iteration of the official step (what the official DM/DC/MTT scripts do around their loss): render the N synthetic
images chunk by chunk (``sg_batch``) without gradients, take the loss's gradient w.r.t. the images, back-propagate it
into the latents ``Z`` and class embeddings ``c``. On a CompVis-layout LDM (``tests/helpers/compvis_modules.py``:
CompVis's module names and arithmetic), five ways:

- ``official``: ``ld3m_fast.reference.official_backward`` — the plain sampler, re-rendering every chunk with gradients
  and checkpointed UNet calls, as the official code does (3 UNet forwards + 1 backward per step);
- ``drop_in``: the official step with ``ld3m_fast.DDIMSampler`` in place of the official sampler and the official
  backward helper's pattern (every chunk rendered again with gradients): the engine's chain, still 3 + 1;
- ``drop_in_accelerated``: the same on the model after ``ld3m_fast.models.compvis_acceleration.accelerate``
  (ld3m_fast's model with ``optimize``'s switches: on the CPU SDPA attention and decoder recomputation, on a GPU
  also bf16, fused GroupNorm+SiLU and channels-last);
- ``one_render``: the official step with ``DDIMSampler(one_render=True)`` and
  ``ld3m_fast.engine.official_step.one_render_backward`` (the backward helper's call shape): 2 forwards + 1 backward;
- ``one_render_accelerated``: the same on the accelerated model (every acceleration at once).

Per case and number of steps S: seconds per iteration (median and minimum of interleaved repeats after one warm-up:
the minimum is the least disturbed by other load on the machine), peak memory
(``bench.measure.peak_memory``: bytes allocated above those held before the call), UNet forward passes per step
and image (the latents through the UNet, counted with a hook: 3 for the official pattern, 2 for one rendering),
and, for the one-render cases, the relative difference of their gradients from the official pattern's with the same
noise. Ratios are against
``official`` measured in the same run. The JSON holds device, sizes, torch version and git commit.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
from bench.measure import environment, peak_memory, write_report
from ld3m_fast import DDIMSampler, ddim_timesteps, reference
from ld3m_fast.engine.official_step import one_render_backward, render_images
from ld3m_fast.models.compvis_acceleration import accelerate
from tests.helpers.compvis_modules import compvis_ldm

CASES = ("official", "drop_in", "drop_in_accelerated", "one_render", "one_render_accelerated")
GUIDANCE = 3.0
# model and problem sizes per device (CompVis-layout LDM: UNet channels and levels, latents, images N, chunk)
SIZES = {
    "cpu": dict(model=dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                           num_head_channels=16, context_dim=32, latent_size=8, vq_ch=16, vq_ch_mult=(1, 2, 2),
                           groups=8), n=4, sg_batch=2, latent=8, steps=(10, 100), repeats=(3, 2)),
    "cuda": dict(model=dict(model_channels=128, channel_mult=(1, 2, 4), num_res_blocks=2, attention_resolutions=(2, 4),
                            num_head_channels=64, context_dim=512, latent_size=32, vq_ch=64, vq_ch_mult=(1, 2, 4),
                            groups=32), n=20, sg_batch=10, latent=32, steps=(10, 100), repeats=(5, 3)),
    "dry": dict(model=dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                           num_head_channels=16, context_dim=16, latent_size=4, vq_ch=8, vq_ch_mult=(1, 2, 2),
                           groups=8), n=2, sg_batch=1, latent=4, steps=(2, 4), repeats=(1, 1)),
}


class Problem:
    """The model (plain and accelerated copies), the learnable Z and c, the loss and the official scripts' args."""

    def __init__(self, sizes: dict, device: torch.device, seed: int = 0):
        self.model = compvis_ldm(seed=seed, **sizes["model"]).to(device)
        self.accelerated = accelerate(copy.deepcopy(self.model))
        n, latent = sizes["n"], sizes["latent"]
        gen = torch.Generator().manual_seed(seed)
        self.Z = torch.randn(n, 3, latent, latent, generator=gen).to(device).requires_grad_(True)
        labels = torch.arange(n, device=device) % self.model.cond_stage_model.embedding.num_embeddings
        self.c = self.model.get_learned_conditioning(labels).detach().clone().requires_grad_(True)
        self.target = torch.rand(n, 3, 4 * latent, 4 * latent, generator=gen).to(device)
        self.sg_batch = sizes["sg_batch"]
        self.samplers = {case: DDIMSampler(self._model(case), one_render=case.startswith("one_render"))
                         for case in CASES[1:]}
        self.unet_images = 0  # latents through the UNet (a pre-hook: checkpointing's recomputation may stop early)
        for m in (self.model, self.accelerated.ld3m_fast_model):
            m.model.diffusion_model.register_forward_pre_hook(self._count)

    def _count(self, _module, inputs):
        self.unet_images += inputs[0].shape[0]

    def _model(self, case):
        return self.accelerated if case.endswith("accelerated") else self.model

    def loss(self, images):
        return ((images - self.target) ** 2).mean()

    def args(self, steps):
        return types.SimpleNamespace(sg_batch=self.sg_batch, ddim_steps=steps, unconditional_guidance_scale=GUIDANCE,
                                     res=self.target.shape[-1], layer=12, rand_g=False, ffhq=False)


def official_pattern_backward(latents, f_latents, image_syn, G, sampler, args):
    """The official backward helper's pattern: every chunk rendered again with gradients, its image gradient pulled
    back (here through ``ld3m_fast.DDIMSampler``)."""
    grads, f_grads = [], []
    for part, f_part, image_grad in zip(torch.split(latents, args.sg_batch), torch.split(f_latents, args.sg_batch),
                                        torch.split(image_syn.grad, args.sg_batch)):
        leaf, f_leaf = (t.detach().clone().requires_grad_(True) for t in (part, f_part))
        render_images(sampler, G, leaf, f_leaf, args).backward(image_grad)
        grads.append(leaf.grad)
        f_grads.append(f_leaf.grad)
    latents.grad, f_latents.grad = torch.cat(grads), torch.cat(f_grads)


def step(case: str, p: Problem, steps: int) -> None:
    """One official-style iteration of ``case``; the gradients land in ``p.Z.grad`` and ``p.c.grad``."""
    p.Z.grad = p.c.grad = None
    if case == "official":
        reference.official_backward(p.model, p.Z, p.c, p.loss, steps, GUIDANCE, chunk_size=p.sg_batch, seed=0)
        return
    model, sampler, args = p._model(case), p.samplers[case], p.args(steps)
    torch.manual_seed(0)  # the start noise of the model's q_sample: the official pattern's (its seed 0)
    with torch.no_grad():
        images = torch.cat([render_images(sampler, model, part, f_part, args)
                            for part, f_part in zip(torch.split(p.c, p.sg_batch), torch.split(p.Z, p.sg_batch))])
    image_syn = images.detach().requires_grad_(True)
    p.loss(image_syn).backward()
    backward = one_render_backward if case.startswith("one_render") else official_pattern_backward
    backward(latents=p.c, f_latents=p.Z, image_syn=image_syn, G=model, sampler=sampler, args=args)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cpu", help="cpu or cuda (sizes per device: SIZES)")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes: checks the code paths in seconds")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--steps", type=int, nargs="+", default=None, help="step counts (default: 10 100)")
    p.add_argument("--repeats", type=int, nargs="+", default=None, help="timed repeats per step count")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = SIZES["dry" if args.dry_run else device.type]
    steps_list = tuple(args.steps or sizes["steps"])
    repeats = tuple(args.repeats or sizes["repeats"])
    repeats = repeats + (repeats[-1],) * (len(steps_list) - len(repeats))
    t0 = time.perf_counter()
    problem = Problem(sizes, device)
    rows = []
    for steps, n_repeats in zip(steps_list, repeats):
        per_forward = 2 * problem.Z.shape[0] * len(ddim_timesteps(steps))  # guided: every latent twice per step
        times, peaks, calls, grads = {c: [] for c in CASES}, {}, {}, {}
        for case in CASES:  # warm-up, which also counts the UNet calls and keeps the gradients
            problem.unet_images = 0
            step(case, problem, steps)
            _sync(device)
            calls[case] = problem.unet_images / per_forward
            grads[case] = (problem.Z.grad.detach().clone(), problem.c.grad.detach().clone())
            peaks[case], _ = peak_memory(lambda case=case, steps=steps: step(case, problem, steps), device)
        for _ in range(n_repeats):  # interleaved: a drift of the machine's load affects every case alike
            for case in CASES:
                _sync(device)
                start = time.perf_counter()
                step(case, problem, steps)
                _sync(device)
                times[case].append(time.perf_counter() - start)
        official = statistics.median(times["official"])
        for case in CASES:
            median = statistics.median(times[case])
            row = {"case": case, "steps": steps, "steps_run": len(ddim_timesteps(steps)), "seconds_median": median,
                   "seconds_min": min(times[case]), "seconds": times[case], "speedup_vs_official": official / median,
                   "speedup_vs_official_min": min(times["official"]) / min(times[case]),
                   "peak_MiB": peaks[case] / 2**20, "peak_ratio_vs_official": peaks[case] / peaks["official"],
                   "unet_forwards_per_step": calls[case]}
            if case.startswith("one_render"):
                row["grad_rel_diff_vs_official"] = max(_rel(g, r) for g, r in zip(grads[case], grads["official"]))
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "seconds"}), flush=True)
    report = {
        "environment": environment(device), "dry_run": args.dry_run, "cases": list(CASES),
        "sizes": {"model": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes["model"].items()},
                  "unet_parameters": sum(t.numel() for t in problem.model.model.parameters()),
                  "N": problem.Z.shape[0], "sg_batch": problem.sg_batch, "latents": list(problem.Z.shape[1:]),
                  "images": list(problem.target.shape[1:]), "guidance": GUIDANCE, "steps": list(steps_list),
                  "repeats": list(repeats), "dtype": str(problem.Z.dtype).replace("torch.", "")},
        "accelerate_switches": problem.accelerated.ld3m_fast_model.optimizations,
        "rows": rows, "seconds_total": time.perf_counter() - t0,
    }
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
