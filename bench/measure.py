"""Peak memory of one call, and the model set-ups the benchmarks share."""
from __future__ import annotations

import ctypes
import re

import torch

from ld3m_fast import LatentModel, as_denoiser
from ld3m_fast.tiny import TinyLDM


def _return_freed_memory_to_the_os() -> None:
    """Make the process's resident set follow live memory, so that ``VmHWM`` measures a peak.

    glibc keeps freed blocks in its heap and reuses them, so the resident set of a process that
    has already run a big step no longer grows when it runs it again. Serving every allocation of
    64 KiB or more with its own ``mmap`` (released on free) and trimming the heap top at once makes
    the resident set rise and fall with the tensors that are alive.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 * 1024)
    libc.mallopt(m_trim_threshold, 0)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+)", f.read()).group(1))


def peak_memory(fn, device: torch.device | str) -> tuple[int, object]:
    """Peak extra bytes while ``fn()`` runs, and its result.

    CUDA: ``max_memory_allocated`` above the memory allocated before. CPU: the process's peak
    resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) above its resident set before,
    with glibc told to give freed memory back at once (see ``_return_freed_memory_to_the_os``).
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before, out
    _return_freed_memory_to_the_os()
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    out = fn()
    return (_status_kib("VmHWM") - before) * 1024, out


def small_problem(n: int, latent: int = 8, channels: int = 64, seed: int = 0):
    """A small LDM with random learnable Z and c: by default the DESIGN §5 CPU stack (0.9 M-parameter
    UNet, 8×8×3 latents, 32² images); ``latent`` and ``channels`` scale it."""
    model = TinyLDM(channels=channels, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, 3, latent, latent, generator=gen).requires_grad_(True)
    c = model.get_learned_conditioning(torch.arange(n) % model.n_classes).clone().requires_grad_(True)
    target = torch.rand(n, 3, 4 * latent, 4 * latent, generator=gen)
    return model, Z, c, lambda images: ((images - target) ** 2).mean()


def cin256_problem(n: int, device: str = "cuda", seed: int = 0):
    """The cin256-v2 architecture (diffusers UNet + VQ-f4 decoder) with random weights at 256² (64×64×3 latents)."""
    from diffusers import UNet2DConditionModel, VQModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=3, out_channels=3, block_out_channels=(192, 384, 576, 960), layers_per_block=2,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
        cross_attention_dim=512, attention_head_dim=(6, 12, 18, 30)).to(device).requires_grad_(False)
    vq = VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                 up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(128, 256, 512), layers_per_block=2,
                 latent_channels=3, num_vq_embeddings=8192, vq_embed_dim=3).to(device).requires_grad_(False)
    embed = torch.nn.Embedding(1001, 512).to(device).requires_grad_(False)
    model = LatentModel(as_denoiser(unet), lambda z: vq.quantize(z)[0], lambda z: vq.decode(z, force_not_quantize=True).sample,
                        unconditional=embed.weight[-1:], latent_channels=3, module=unet)
    Z = torch.randn(n, 3, 64, 64, device=device).requires_grad_(True)
    c = embed(torch.arange(n, device=device) % 1000)[:, None].clone().requires_grad_(True)
    target = torch.rand(n, 3, 256, 256, device=device)
    return model, Z, c, lambda images: ((images - target) ** 2).mean()
