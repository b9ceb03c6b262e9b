"""The two small parts of a class-conditional LDM that need nothing but torch: the class embedder and the
vector quantiser (CompVis semantics). ``ld3m_fast.models`` builds its models with them; code that needs
a CompVis-style model without diffusers can use them too.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidTypeError


class ClassEmbedder(nn.Module):
    """CompVis ``ClassEmbedder``: labels → ``(B, 1, D)`` contexts; ``n_classes + 1`` rows, the last unconditional."""

    def __init__(self, n_classes: int, embed_dim: int, key: str = "class_label"):
        super().__init__()
        self.key = key
        self.embedding = nn.Embedding(n_classes + 1, embed_dim)

    def forward(self, batch, key: str | None = None) -> torch.Tensor:
        labels = batch[key or self.key] if isinstance(batch, dict) else batch
        labels = torch.as_tensor(labels, device=self.embedding.weight.device)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise InvalidTypeError(f"class labels must be integers, got {labels.dtype}")
        return self.embedding(labels.long().reshape(-1))[:, None]


class VectorQuantizer(nn.Module):
    """Nearest-codebook lookup exactly as taming-transformers' ``VectorQuantizer2`` (legacy loss, no remap).

    Distances are ``|z|² + |e|² − 2 z·e`` (the same formula, hence the same argmin, as the
    original); the loss is ``mean((zq.detach() − z)²) + β mean((zq − z.detach())²)``; the output
    carries the straight-through gradient; ``forward`` returns CompVis's triple
    ``(zq, loss, (None, None, indices))``.
    """

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25):
        super().__init__()
        self.n_e, self.e_dim, self.beta = n_embed, embed_dim, beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Codebook index of every latent vector of ``z`` (B, C, h, w), flattened in (B, h, w) order."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.e_dim)
        w = self.embedding.weight
        dist = (flat ** 2).sum(1, keepdim=True) + (w ** 2).sum(1) - 2 * flat @ w.t()
        return dist.argmin(1)

    def forward(self, z: torch.Tensor):
        idx = self.indices(z)
        b, _, h, w = z.shape
        zq = self.embedding(idx).view(b, h, w, self.e_dim).permute(0, 3, 1, 2)
        loss = torch.mean((zq.detach() - z) ** 2) + self.beta * torch.mean((zq - z.detach()) ** 2)
        zq = z + (zq - z).detach()
        return zq.contiguous(), loss, (None, None, idx)

    def get_codebook_entry(self, indices: torch.Tensor, shape=None) -> torch.Tensor:
        """Codebook vectors of ``indices``; with ``shape`` (B, h, w, C) returned as (B, C, h, w)."""
        zq = self.embedding(indices)
        if shape is not None:
            zq = zq.view(shape).permute(0, 3, 1, 2).contiguous()
        return zq
