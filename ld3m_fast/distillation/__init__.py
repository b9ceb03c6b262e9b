"""Dataset distillation: LD3M (DM, DC, MTT through an LDM's latent space) and the pixel-space baselines.

``distill`` is the entry point (``ld3m_fast.distill``); ``train_experts`` makes MTT's expert
trajectories. One module per concept: ``config`` (knobs and presets), ``real_data``, ``synthetic``
(latent or pixel parameters), ``common`` (the run, ``DistillRun``, and the update step the
algorithms share), ``dm``/``dc``/``mtt`` (the algorithms), ``experts``, ``checkpoint``, ``result``
(``DistilledSet``), ``run`` (set-up and the loop).
"""
import importlib

_EXPORTS = {"distill": "run", "train_experts": "experts", "ExpertBuffer": "experts", "DistilledSet": "result",
            "DistillConfig": "config"}
__all__ = list(_EXPORTS)


def __getattr__(name):  # imported on first use: the command line's parser needs the config without torch
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
