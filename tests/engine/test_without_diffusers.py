"""The engine needs torch only: with diffusers hidden, render, DDIMSampler, patch_ldm, denoise_step and the reference
work on a CompVis-style model, and ld3m_fast's own models fail with one error naming the package."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import sys
sys.modules["diffusers"] = None  # import diffusers -> ImportError, as where it is not installed
import torch
import ld3m_fast
from ld3m_fast import reference
from ld3m_fast.errors import MissingDependencyError
from tests.helpers.compvis_style import CompVisStyleLDM

model = CompVisStyleLDM(seed=0)
Z = torch.randn(2, 3, 8, 8, requires_grad=True)
c = model.get_learned_conditioning(torch.tensor([0, 1])).detach().requires_grad_(True)
ld3m_fast.render(model, Z, c, 4, seed=0).sum().backward()
assert Z.grad is not None and torch.isfinite(Z.grad).all()
out = ld3m_fast.DDIMSampler(model).sample(S=4, batch_size=2, shape=(3, 8, 8), conditioning=c, x_T=Z, verbose=False,
                                          unconditional_guidance_scale=1.0)
assert out.shape == Z.shape
reference.official_backward(model, Z, c, lambda x: x.square().mean(), 4, seed=0)
assert callable(ld3m_fast.patch_ldm) and callable(ld3m_fast.denoise_step)  # (render runs denoise_step)
try:
    ld3m_fast.load_ldm("tiny")
except MissingDependencyError as err:
    assert "pip install 'diffusers" in str(err), err
    print("REFUSED", str(err).splitlines()[0][:80])
else:
    raise AssertionError("load_ldm worked without diffusers")
assert not any(name == "diffusers" or name.startswith("diffusers.") for name, m in sys.modules.items() if m)
print("OK")
"""


def test_engine_runs_without_diffusers_and_own_models_say_what_to_install():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "REFUSED" in out.stdout and out.stdout.strip().endswith("OK"), out.stdout
