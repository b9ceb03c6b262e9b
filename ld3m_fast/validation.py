"""Checks of user input that fail early with a message naming the argument and the fix."""
from __future__ import annotations

import torch


def check_latents_and_context(Z: torch.Tensor, c: torch.Tensor, latent_channels: int | None = None,
                              model: torch.nn.Module | None = None, check_finite: bool = True,
                              z_name: str = "Z", c_name: str = "c") -> None:
    """Shapes, dtypes, devices and finiteness of the latents ``Z`` (N, C, h, w) and contexts ``c`` (N, L, D)."""
    for name, t in ((z_name, Z), (c_name, c)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} has dtype {t.dtype}; pass a floating-point tensor (e.g. {name}.float())")
    if Z.dim() != 4:
        raise ValueError(f"{z_name} must be (N, C, h, w), got shape {tuple(Z.shape)}")
    if c.dim() != 3:
        raise ValueError(f"{c_name} must be (N, L, D) class embeddings (cin256-v2: (N, 1, 512)), got shape "
                         f"{tuple(c.shape)}" + ("; add the token axis with c.unsqueeze(1)" if c.dim() == 2 else ""))
    if Z.shape[0] != c.shape[0]:
        raise ValueError(f"{z_name} has {Z.shape[0]} latents but {c_name} has {c.shape[0]} embeddings: "
                         f"pass one embedding per latent ({c_name}.shape[0] == {z_name}.shape[0])")
    if Z.shape[0] == 0:
        raise ValueError(f"{z_name} is empty: there is nothing to render")
    if latent_channels is not None and Z.shape[1] != latent_channels:
        raise ValueError(f"{z_name} has {Z.shape[1]} channels but the model's latent space has {latent_channels} "
                         f"(cin256-v2: 3); pass latents of shape (N, {latent_channels}, h, w)")
    if Z.device != c.device:
        raise ValueError(f"{z_name} is on {Z.device} but {c_name} is on {c.device}: move both to one device")
    if Z.dtype != c.dtype:
        raise TypeError(f"{z_name} is {Z.dtype} but {c_name} is {c.dtype}: use one dtype for both "
                        f"(e.g. {c_name} = {c_name}.to({z_name}.dtype))")
    if model is not None:
        p = next(iter(model.parameters()), None)
        if p is not None and p.device != Z.device:
            raise ValueError(f"the model is on {p.device} but {z_name} is on {Z.device}: "
                             f"move them to one device (model.to(device) or {z_name}.to(device))")
        if p is not None and p.dtype != Z.dtype:
            raise TypeError(f"the model's weights are {p.dtype} but {z_name} is {Z.dtype}: "
                            f"convert one of them (model.to({z_name}.dtype) or {z_name}.to({p.dtype}))")
    if check_finite:
        for name, t in ((z_name, Z), (c_name, c)):
            if not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise ValueError(f"{name} has {bad} NaN/Inf values; fix the input (or the learning rate that produced it). "
                                 "Pass check_finite=False to skip this check")
