"""The memory planner: budgets parsed, chunk sizes, kept steps and latent thinning chosen from measured costs."""
import functools

import pytest

from ld3m_fast.engine.memory import parse_memory_budget, plan_chunk_size, plan_rendering, stored_latents


@pytest.mark.parametrize("text, value", [("16GiB", 16 * 2**30), ("512MB", 512 * 10**6), ("2e9", 2 * 10**9),
                                         (1024, 1024), ("1.5 kib", 1536)])
def test_parse_memory_budget(text, value):
    assert parse_memory_budget(text) == value



@pytest.mark.parametrize("bad", ["lots", "-1GB", 0, True])
def test_bad_memory_budget(bad):
    with pytest.raises((ValueError, TypeError), match="memory_budget"):
        parse_memory_budget(bad)



def test_plan_chunk_size():
    assert plan_chunk_size(100, budget=1000 + 2 * 10 * 7, per_image_bytes=10, fixed_bytes=1000) == 7
    assert plan_chunk_size(3, budget=10**9, per_image_bytes=10, fixed_bytes=0) == 3
    with pytest.raises(ValueError, match="too small for one image"):
        plan_chunk_size(3, budget=1019, per_image_bytes=10, fixed_bytes=1000)



def test_plan_rendering_keeps_steps_only_when_every_image_fits_one_chunk():
    # 4 images, 10 bytes per image and call, 100 fixed: one chunk needs 100 + 2*4*10 = 180
    plan = functools.partial(plan_rendering, 4, 10, unet_bytes=10, decoder_bytes=5, latent_bytes=0, fixed_bytes=100)
    assert plan(budget=179) == (3, 0, 1, 4)
    assert plan(budget=180 + 39) == (4, 0, 1, 4)
    assert plan(budget=180 + 80) == (4, 2, 1, 4)
    assert plan(budget=10**6) == (4, 10, 1, 4)



def test_plan_rendering_thins_the_latents_only_when_one_image_does_not_fit_beside_them():
    # 100 steps of 10-byte latents: 1000 bytes; one image in a chunk needs 2*10 more
    assert plan_rendering(4, 100, budget=1020, unet_bytes=10, decoder_bytes=5, latent_bytes=10, fixed_bytes=0) == (1, 0, 1, 4)
    # 1019 bytes: keep every 10th latent, 10 kept + one segment of 10 = 200 bytes, leaving room for all 4 images
    assert stored_latents(100, 10) == 20
    assert plan_rendering(4, 100, budget=1019, unet_bytes=10, decoder_bytes=5, latent_bytes=10, fixed_bytes=0) == (4, 0, 10, 4)
    with pytest.raises(ValueError, match="too small for one image"):
        plan_rendering(4, 100, budget=219, unet_bytes=10, decoder_bytes=5, latent_bytes=10, fixed_bytes=0)

