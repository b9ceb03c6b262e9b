"""Dataset distillation: LD3M (DM, DC, MTT through an LDM's latent space) and the pixel-space baselines.

``distill`` is the entry point (``ld3m_fast.distill``); ``train_experts`` makes MTT's expert
trajectories. One module per concept: ``config`` (knobs and presets), ``real_data``, ``synthetic``
(latent or pixel parameters), ``common`` (the run, ``DistillRun``, and the update step the
algorithms share), ``dm``/``dc``/``mtt`` (the algorithms), ``experts``, ``checkpoint``, ``result``
(``DistilledSet``), ``run`` (set-up and the loop).
"""
from ..errors import DistillationDiverged
from .config import DistillConfig
from .experts import ExpertBuffer, train_experts
from .result import DistilledSet
from .run import distill

__all__ = ["distill", "train_experts", "ExpertBuffer", "DistilledSet", "DistillConfig", "DistillationDiverged"]
