"""Memory budgets: parse them, measure what a rendering costs, choose its plan and predict its peak.

**What a budget means.** ``memory_budget`` bounds the peak of the device memory that one rendering
allocates *above what is allocated when* ``render`` *is called*: its forward pass and the backward
pass through it (from the images' gradient to ``Z.grad``/``c.grad``). The model's weights, ``Z``,
``c`` and whatever else the caller already holds are not part of it; neither is the caller's loss
(beyond the image gradient it hands back) nor the allocator's cache. It is the quantity
``torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()`` reports when measured from the
call of ``render`` to the end of backward, so a caller can give the free device memory (less a
margin for the loss and fragmentation) as the budget. Weights are left out because no plan can
change them and they are the same before, during and after the rendering.

**What one image costs is measured, not guessed.** ``measure_call`` runs one model call on one
image — with gradients and its backward, and once without gradients — while a dispatch mode follows
every storage the call allocates, when it is freed, and whether it derives from the inputs (grows
with the batch) or only from weights (a cast of a weight under autocast, a transposed copy: paid
once per call). Storages that existed before the call (parameters, buffers, the inputs, the
caller's tensors, and their views) are not counted at all. What kernels allocate and free inside
themselves, out of the dispatch mode's sight, is added where it is known (``_HIDDEN_WORKSPACES``: the
CPU convolutions' blocked copies and unfolded columns, the CPU flash attention's blocks). The trace
gives the exact peak of the call on one image, the peak on more images as ``max over time of
(per_call + images × per_image)`` (``Envelope``), and what stays alive from the forward to the
backward (``saved``: what keeping the call's graph costs), on any device and for any model. Checked
against torch's CPU allocator: exact for one image, within a few per cent above it for more (kernels
choose other layouts for larger batches); GPU kernels' own workspaces (cuDNN) are not modelled.

**The plan.** ``predict_peak`` adds up what the rendering keeps for all images (the per-step
latents, a few latents and images more) and the largest working set of its phases: the no-grad
denoiser calls of the forward chain and the no-grad decode (``forward_chunk`` images at a time), the
recomputed decoder and denoiser calls of backward (``chunk`` images at a time), and the graphs of
kept steps. ``plan_rendering`` picks the largest chunk that fits, then the largest no-grad chunk;
memory left once every image fits in one chunk keeps the graphs of whole steps, so that backward
need not recompute them. When not even one image fits beside every step's latent, only every k-th
latent is kept (k ≈ √S; backward regenerates the others), so the memory no longer grows with the
number of steps. ``resolve_plan`` turns a rendering's knobs (budget, or chunk size, kept steps and
stride by hand) into one ``RenderPlan`` with its predicted peak.
"""
from __future__ import annotations

import math
import re
import weakref
from typing import Callable, NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..errors import InvalidArgumentError, InvalidTypeError

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
DEFAULT_CHUNK = 10     # the official code's rendering chunk
NO_GRAD_CHUNK_FACTOR = 4  # with a budget and a chunk_size given by hand: no-grad calls run this many chunks at once
# latents the rendering keeps for every image besides the step latents (noise, noised start, skip anchor, z and
# the next z; the final latent and its quantised copy; the gradients of z and of the anchor)
KEPT_LATENTS_PER_IMAGE = 8
# images alive per image around the decoder (decoded chunks and their concatenation; the image gradient and its
# pass through the [0, 1] map) and where the caller's loss takes them (the images, what clamp saves, the loss's own)
IMAGES_AT_DECODER = 2
IMAGES_AT_LOSS = 4


def parse_memory_budget(budget) -> int | None:
    """Bytes from an int or a string such as ``"16GiB"``, ``"512MB"``, ``"2e9"``; ``None`` stays ``None``."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, float, str)):
        raise InvalidTypeError(f"memory_budget must be a number of bytes or a string like '16GiB', not "
                               f"{type(budget).__name__} ({budget!r})")
    if isinstance(budget, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", budget)
        if not m or m.group(2).lower() not in _UNITS:
            raise InvalidArgumentError(f"memory_budget={budget!r} is not understood: write bytes or e.g. '16GiB', "
                                       "'512MB'")
        value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    else:
        value = float(budget)
    if not math.isfinite(value):
        raise InvalidArgumentError(f"memory_budget={budget!r} is not a finite number of bytes: leave it None for no "
                                   "budget")
    if not value > 0:
        raise InvalidArgumentError(f"memory_budget={budget!r} must be a positive number of bytes")
    return int(value)


# ---------------------------------------------------------------------------------------------------------------
# measuring one call

Envelope = tuple[tuple[int, int], ...]  # (per_call, per_image) points; peak(b) = max(per_call + b · per_image)


def envelope_peak(envelope: Envelope, images: int) -> int:
    """Peak bytes of a call on ``images`` images from its measured envelope (0 for an empty one)."""
    return max((c + images * x for c, x in envelope), default=0)


def _upper_front(points) -> Envelope:
    """The points no other point beats for any batch ≥ 1 (both coordinates at least as large)."""
    front, best = [], -1
    for c, x in sorted(set(points), key=lambda p: (-p[0], -p[1])):
        if x > best:
            front.append((c, x))
            best = x
    return tuple(front)


def _storage_key(t: torch.Tensor):
    try:
        s = t.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):  # no storage (sparse, nested, functional wrappers)
        return None
    ptr = s.data_ptr()
    return None if ptr == 0 else (t.device, ptr)


def _blocked(t: torch.Tensor) -> int:
    """Bytes of ``t`` (N, C, ...) in oneDNN's blocked layout: channels padded to a multiple of 16."""
    channels = t.shape[1]
    return t.numel() // max(channels, 1) * (-(-channels // 16) * 16) * t.element_size()


def _convolution_workspace(func, args, out, more: bool) -> list[tuple[int, int]]:
    """What a CPU convolution allocates and frees inside its kernel, out of a dispatch mode's sight, as points
    (fixed by the weights, growing with the batch) above the memory once its output exists.

    oneDNN (NCHW tensors) copies the weight, the input (or, backward, the output's gradient) and its own result
    into blocked layouts (channels padded to 16), then copies the result into the plain output; the plain kernel
    unfolds the input into columns (``C_in/groups · kh · kw`` rows per output pixel), and its backward folds the
    gradient's columns back. Torch picks the plain kernel for small inputs of one image only: ``more`` answers
    for the same input with twice the images. (As measured with torch 2.13's CPU allocator.)
    """
    backward = func.overloadpacket is torch.ops.aten.convolution_backward
    x, w = (args[1], args[2]) if backward else (args[0], args[1])
    stride, padding, dilation, transposed, output_padding, groups = args[4:10] if backward else args[3:9]
    if x.device.type != "cpu" or w.dim() != 4 or transposed:
        return []
    try:
        batch = x.expand(2, *x.shape[1:]) if more and x.shape[0] == 1 else x  # (the size is what counts)
        conv_backend = torch._C._select_conv_backend(batch, w, None, stride, padding, dilation, transposed,
                                                     output_padding, groups, None)
    except (AttributeError, RuntimeError, TypeError):  # a torch without this private helper: not modelled
        return []
    if conv_backend == torch._C._ConvBackend.Mkldnn:
        kh, kw = w.shape[-2:]
        weight = -(-w.shape[0] // 16) * 16 * -(-w.shape[1] // 16) * 16 * kh * kw * w.element_size()
        if not x.is_contiguous():  # channels-last tensors are used as they are: only the weight is copied
            return [(weight, 0)]
        if backward:  # the output's gradient and the input's gradient blocked, then the plain input gradient
            grad_in = _blocked(x)
            return [(weight, _blocked(args[0]) + grad_in - _nbytes(x)), (0, grad_in)]
        result = out if isinstance(out, torch.Tensor) else out[0]
        blocked_in = _blocked(x) if x.shape[1] >= 8 else 0  # a first layer reads its few channels as they are
        return [(weight, blocked_in + _blocked(result) - _nbytes(result)), (0, _blocked(result))]
    if conv_backend == torch._C._ConvBackend.Slow2d:
        kh, kw = w.shape[-2:]
        if (kh, kw) == (1, 1) and all(v == 1 for v in stride) and all(v == 0 for v in padding):
            return []  # no columns: the kernel multiplies the input directly
        out_h = (x.shape[-2] + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        out_w = (x.shape[-1] + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        return [(0, x.shape[0] * (x.shape[1] // groups) * kh * kw * out_h * out_w * x.element_size())]
    return []


def _cpu_flash_attention_workspace(func, args, out, more: bool) -> list[tuple[int, int]]:
    """Bytes the CPU flash-attention kernel allocates inside itself: each thread's blocks of scores (``q_block ×
    kv_block``; backward: scores and their gradient), row statistics and output accumulator, in float32 — fixed,
    whatever the batch; backward also copies a non-contiguous output gradient, which grows with the batch (with
    ``more``: the same layout with more images, which may not be contiguous when one image's is)."""
    backward = func.overloadpacket is not torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    q, k = (args[1], args[2]) if backward else (args[0], args[1])
    if q.dim() != 4:
        return []
    q_len, head, kv_len = q.shape[-2], q.shape[-1], k.shape[-2]
    q_block = min(q_len, 256 if q_len >= 768 else 64 if q_len >= 192 else 32)
    kv_block = min(kv_len, 512)
    per_thread = 2 * q_block * kv_block if backward else q_block * kv_block + 2 * q_block + q_block * head
    reduced = q.element_size() < 4  # bf16/fp16 keep a copy of the score block in their own type too
    fixed = torch.get_num_threads() * (4 * per_thread + (q_block * kv_block * q.element_size() if reduced else 0))
    contiguous = _contiguous_at_any_batch(args[0]) if more else args[0].is_contiguous()
    return [(fixed, _nbytes(args[0]) if backward and not contiguous else 0)]


# ops whose kernels allocate and free memory inside themselves, out of a dispatch mode's sight, and what they take
_HIDDEN_WORKSPACES = {torch.ops.aten.convolution: _convolution_workspace,
                      torch.ops.aten.convolution_backward: _convolution_workspace}
for _name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward"):
    if hasattr(torch.ops.aten, _name):
        _HIDDEN_WORKSPACES[getattr(torch.ops.aten, _name)] = _cpu_flash_attention_workspace


def _contiguous_at_any_batch(t: torch.Tensor) -> bool:
    """Contiguous, with the batch outermost (a batch of one with the batch inside is contiguous by torch's rule,
    yet the same layout of more images is not)."""
    return t.is_contiguous() and (t.dim() < 2 or t.shape[0] > 1 or t.stride(0) >= t[0].numel())


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class _AllocationTrace(TorchDispatchMode):
    """Storages allocated while active: size, whether they derive from the batch inputs, and the live total.

    A storage is *per image* when an op made it from a batch input or a per-image storage (or from nothing:
    factories are counted per image, the safe side), *per call* when made only from tensors that existed before
    (weights, buffers: a cast under autocast, a transposed copy). Outputs that alias an input are not new.
    ``points`` are (per call, per image) live bytes after each allocation, for calls on more images than traced
    (kernels' hidden workspaces as they are for those); ``peak`` is the exact peak of the traced call.
    """

    def __init__(self, batch_inputs):
        super().__init__()
        self.batch_roots = {k for k in map(_storage_key, batch_inputs) if k is not None}
        self.created: dict[tuple, tuple[bool, int, int]] = {}  # storage → (per image, bytes, id), while alive
        self.live = [0, 0]  # bytes alive: per call, per image
        self.points: list[tuple[int, int]] = []
        self.peak = 0
        self.closed = False

    def per_image(self, key) -> bool | None:
        """``True``/``False`` for a storage made while tracing (per image / per call), ``None`` if it existed before."""
        entry = self.created.get(key)
        return None if entry is None else entry[0]

    @staticmethod
    def _freed(trace_ref, key, storage_id):
        trace = trace_ref()
        entry = None if trace is None or trace.closed else trace.created.get(key)
        if entry is None or entry[2] != storage_id:
            return
        del trace.created[key]
        trace.live[entry[0]] -= entry[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.closed:
            return out
        in_keys = {k for k in map(_storage_key, (a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)))
                   if k is not None}
        from_batch = not in_keys or any(k in self.batch_roots or self.per_image(k) for k in in_keys)
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            key = _storage_key(t)
            if key is None:
                continue
            if key in in_keys or key in self.created:
                if from_batch and self.per_image(key) is False:  # a per-call storage written from the batch
                    _, size, sid = self.created[key]
                    self.created[key] = (True, size, sid)
                    self.live[0] -= size
                    self.live[1] += size
                continue
            storage = t.untyped_storage()
            size = storage.nbytes()
            self.created[key] = (from_batch, size, id(storage))
            weakref.finalize(storage, _AllocationTrace._freed, weakref.ref(self), key, id(storage))
            self.live[from_batch] += size
            self.points.append(tuple(self.live))
            self.peak = max(self.peak, sum(self.live))
        workspace = _HIDDEN_WORKSPACES.get(func.overloadpacket)
        if workspace is not None:
            for per_call, with_batch in workspace(func, args, out, False):
                self.peak = max(self.peak, sum(self.live) + per_call + with_batch)
            for per_call, with_batch in workspace(func, args, out, True):
                point = [self.live[0] + per_call, self.live[1]]
                point[from_batch] += with_batch
                self.points.append(tuple(point))
        return out

    def __exit__(self, *exc):
        self.closed = True
        return super().__exit__(*exc)


class CallCost(NamedTuple):
    """Memory of one model call, per call and per image: what ``measure_call`` finds."""

    grad_peak: Envelope     # forward with gradients, then backward
    saved: tuple[int, int]  # (per call, per image) bytes alive after the forward with gradients: graph and output
    no_grad_peak: Envelope  # forward without gradients
    one_image: tuple[int, int] | None = None  # exact peaks (with, without gradients) of a call on one image

    def peak(self, images: int, grad: bool = True) -> int:
        """Peak bytes of a call on ``images`` images, with or without gradients."""
        if images == 1 and self.one_image is not None:
            return self.one_image[0 if grad else 1]
        return envelope_peak(self.grad_peak if grad else self.no_grad_peak, images)

    @classmethod
    def linear(cls, grad_peak_per_image: int, saved_per_image: int, no_grad_per_image: int) -> "CallCost":
        """A cost that is only per image (e.g. written by hand)."""
        return cls(((0, int(grad_peak_per_image)),), (0, int(saved_per_image)), ((0, int(no_grad_per_image)),))


def _saved_split(fn, args, trace: _AllocationTrace):
    """Run ``fn(*args)`` with gradients, adding up (per call, per image) bytes of the storages autograd saves."""
    saved: dict[tuple, bool] = {}

    def pack(t: torch.Tensor):
        key = _storage_key(t)
        kind = trace.per_image(key)
        if kind is not None:
            saved[key] = (kind, t.untyped_storage().nbytes())
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    split = [0, 0]
    for kind, size in saved.values():
        split[kind] += size
    return (split[0], split[1]), out


def _grad_outputs(out) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    outs = [o for o in tree_leaves(out) if isinstance(o, torch.Tensor) and o.requires_grad]
    return outs, [torch.ones_like(o) for o in outs]


def measure_call(fn: Callable, *batch_args) -> tuple[CallCost, object]:
    """Measure ``fn(*batch_args)`` on one image: its peak with gradients (forward + backward to the inputs that
    require grad), what stays alive between its forward and backward (what keeping its graph costs, checkpointed
    parts included), and its peak without gradients; and its output (from the no-grad run).

    ``batch_args`` are the call's per-image inputs (latents, timesteps, contexts), one image's worth; every tensor
    made from them counts per image, every other new tensor once per call.
    """
    inputs = [a for a in batch_args if isinstance(a, torch.Tensor) and a.requires_grad]
    with _AllocationTrace(batch_args) as grad_trace:
        with torch.enable_grad():
            out = fn(*batch_args)
        retained = (grad_trace.live[0], grad_trace.live[1])  # the graph and the output, until backward
        outs, grads = _grad_outputs(out)
        if outs and inputs:
            torch.autograd.grad(outs, inputs, grads, allow_unused=True)
        del out, outs, grads
    with _AllocationTrace(batch_args) as trace, torch.no_grad():
        out = fn(*batch_args)
    return CallCost(_upper_front(grad_trace.points), retained, _upper_front(trace.points),
                    (grad_trace.peak, trace.peak)), out


def saved_activation_bytes(fn, *args) -> tuple[int, object]:
    """Bytes of activations autograd saves for backward while running ``fn(*args)``, and its output.

    Counted once per storage: what the call allocates from its inputs and keeps. Not counted: parameters, buffers,
    the inputs and anything else that existed before the call (and their views), nor per-call copies of weights
    (casts under autocast), which do not grow with the batch (``measure_call`` reports those apart).
    """
    with _AllocationTrace(args) as trace:
        (_, per_image), out = _saved_split(fn, args, trace)
    return per_image, out


# ---------------------------------------------------------------------------------------------------------------
# planning

class RenderCosts(NamedTuple):
    """What a rendering's plan is made from: ``measure()`` of ``resolve_plan`` returns one."""

    denoiser: CallCost  # one (guided) denoiser call, per image of the rendering
    decoder: CallCost   # one decode
    latent_bytes: int   # one image's latent
    image_bytes: int    # one image's decoded output
    context_bytes: int = 0  # one image's context (its gradient is accumulated in backward)


class RenderPlan(NamedTuple):
    chunk: int          # images per recomputed denoiser call in backward
    kept_steps: int     # last steps whose denoiser graphs the forward keeps
    latent_stride: int  # keep every k-th step's latent (1: all)
    forward_chunk: int  # images per no-grad denoiser call in forward
    predicted_bytes: int | None = None  # the planner's predicted peak above the memory at the call (None: not planned)


def thinning_stride(steps: int) -> int:
    """``⌈√S⌉``: the latent stride that keeps fewest latents alive (``S/k + k``)."""
    return math.isqrt(steps - 1) + 1 if steps > 1 else 1


def stored_latents(steps: int, stride: int) -> int:
    """Step latents alive at once with ``latent_stride = stride``: the kept ones plus one regenerated segment."""
    return steps if stride == 1 else -(-steps // stride) + stride


def predict_peak(n_images: int, steps: int, plan: RenderPlan, costs: RenderCosts) -> int:
    """Predicted peak bytes of rendering ``n_images`` in ``steps`` steps with ``plan``, forward and backward,
    above the memory allocated when the rendering starts (see the module docstring).

    The latents kept throughout, plus the largest of the phases: the no-grad forward chain; the no-grad decode;
    the caller's loss; the recomputed decode of backward; the recomputed denoiser calls of backward (with one
    regenerated segment of latents when thinned). Kept steps' graphs are alive from the forward's last steps until
    backward has used them, so they add to every phase but the recomputed calls, which come after them.
    """
    b, f, stride = min(plan.chunk, n_images), min(plan.forward_chunk, n_images), plan.latent_stride
    den, dec = costs.denoiser, costs.decoder
    n_x = n_images * costs.image_bytes
    latents = ((-(-steps // stride) + KEPT_LATENTS_PER_IMAGE) * n_images * costs.latent_bytes
               + n_images * costs.context_bytes)
    kept = min(plan.kept_steps, steps) * (-(-n_images // b) * den.saved[0] + n_images * den.saved[1])
    with_graph = den.peak(b)
    kept_phase = kept + max(0, with_graph - den.saved[0] - b * den.saved[1]) if kept else 0
    phases = (den.peak(f, grad=False) + kept,
              kept_phase,
              dec.peak(f, grad=False) + IMAGES_AT_DECODER * n_x + kept,
              IMAGES_AT_LOSS * n_x + kept,
              dec.peak(b) + IMAGES_AT_DECODER * n_x + kept,
              with_graph + (stride * b * costs.latent_bytes if stride > 1 else 0))
    return int(latents + max(phases))


def _largest(limit: int, fits: Callable[[int], bool]) -> int:
    """Largest ``x`` in ``1..limit`` with ``fits(x)``, or 0 (a scan: peaks need not grow with the chunk — torch
    runs small convolutions of one image with another kernel than those of more)."""
    return next((x for x in range(limit, 0, -1) if fits(x)), 0)


def _plan_at_stride(n_images, steps, budget, costs, stride) -> RenderPlan | None:
    def peak(chunk, forward, kept=0):
        return predict_peak(n_images, steps, RenderPlan(chunk, kept, stride, forward), costs)

    chunk = _largest(n_images, lambda b: peak(b, b) <= budget)
    if not chunk:
        return None
    forward = max(chunk, _largest(n_images, lambda f: peak(chunk, max(f, chunk)) <= budget))
    kept = 0
    if chunk == n_images and stride == 1:
        kept = _largest(steps, lambda k: peak(chunk, forward, k) <= budget)
    plan = RenderPlan(chunk, kept, stride, forward)
    return plan._replace(predicted_bytes=predict_peak(n_images, steps, plan, costs))


def plan_rendering(n_images: int, steps: int, budget: int, costs: RenderCosts,
                   allow_thinning: bool = True) -> RenderPlan:
    """Chunk, kept steps, latent stride and no-grad chunk for a budget, with the predicted peak.

    The largest chunk whose predicted peak fits, then the largest no-grad chunk; once all images fit in one chunk,
    what is left keeps the last steps' denoiser graphs (sparing their recomputation in backward). If not even one
    image fits beside every step's latent, only every ``⌈√S⌉``-th latent is kept (unless ``allow_thinning`` is
    false: with DDIM noise, ``eta > 0``, the dropped latents cannot be regenerated).
    """
    plan = _plan_at_stride(n_images, steps, budget, costs, 1)
    if plan is not None:
        return plan
    stride = thinning_stride(steps)
    thinned = _plan_at_stride(n_images, steps, budget, costs, stride) if stride > 1 else None
    if thinned is not None and allow_thinning:
        return thinned
    one = predict_peak(n_images, steps, RenderPlan(1, 0, 1, 1), costs)
    message = (f"memory_budget={_fmt(budget)} is too small for one image: rendering these {n_images} images in {steps} "
               f"steps one at a time needs about {_fmt(one)} above what is allocated now")
    if thinned is not None:
        raise InvalidArgumentError(f"{message}. Keeping only some steps' latents would fit, but with eta > 0 they "
                                   "cannot be regenerated: use eta=0")
    if stride > 1:
        least = predict_peak(n_images, steps, RenderPlan(1, 0, stride, 1), costs)
        message += f" (about {_fmt(least)} keeping the latent of one step in {stride})"
    raise InvalidArgumentError(f"{message}. Raise memory_budget, or use fewer steps or images")


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{name}={value!r} must be an int >= {minimum}")
    return value


def resolve_plan(n_images: int, steps: int, budget: int | None, *, chunk_size: int | None = None,
                 keep_steps: int | None = None, latent_stride: int | None = None, allow_thinning: bool = True,
                 measure=None) -> RenderPlan:
    """The plan of one rendering from its knobs.

    ``chunk_size`` given: that chunk (forward runs all images at once without a budget, four chunks at once
    with one). Else a ``budget`` is planned by ``plan_rendering`` from ``measure()`` → ``RenderCosts``; else the
    official chunk of 10. ``keep_steps`` and ``latent_stride`` given by hand override the plan's.
    ``predicted_bytes`` is set when the planner measured the costs (a budget and no ``chunk_size``), for the
    final plan, hand-set knobs included.
    """
    keep, stride, costs, planned = 0, 1, None, None
    if chunk_size is not None:
        chunk = min(_check_count("chunk_size", chunk_size, 1), n_images)
        forward = n_images if budget is None else min(n_images, NO_GRAD_CHUNK_FACTOR * chunk)
    elif budget is not None:
        costs = measure()
        planned = plan_rendering(n_images, steps, budget, costs, allow_thinning=allow_thinning)
        chunk, keep, stride, forward = planned[:4]
    else:
        chunk, forward = min(n_images, DEFAULT_CHUNK), n_images
    if keep_steps is not None:
        keep = min(_check_count("keep_steps", keep_steps, 0), steps)
    if latent_stride is not None:
        stride = _check_count("latent_stride", latent_stride, 1)
    plan = RenderPlan(chunk, keep, stride, forward)
    if planned is not None and plan[:4] == planned[:4]:
        return planned
    if isinstance(costs, RenderCosts):
        plan = plan._replace(predicted_bytes=predict_peak(n_images, steps, plan, costs))
    return plan


def _fmt(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
