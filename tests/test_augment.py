"""Differentiable Siamese augmentation: official parameters, differentiability, Siamese sharing, each op's effect."""
import dataclasses

import pytest
import torch

from ld3m_fast import augment
from ld3m_fast.augment import DSA_OPS, DSA_STRATEGY, DSAParams, dsa

P = DSAParams()


class FixedDraw:
    """Stands in for the random source: returns the given values, one per image (or one for the batch)."""

    def __init__(self, uniforms=(), integers=()):
        self.u, self.i = list(uniforms), list(integers)
        first = (self.u + self.i)[0]
        self.n = len(first)

    def uniform(self):
        return torch.tensor(self.u.pop(0), dtype=torch.float64)

    def integers(self, low, high):
        v = torch.tensor(self.i.pop(0))
        assert ((v >= low) & (v < high)).all()
        return v


def test_official_parameter_values():
    assert DSA_STRATEGY == "color_crop_cutout_flip_scale_rotate"
    assert set(DSA_OPS) == set(DSA_STRATEGY.split("_"))
    assert (P.prob_flip, P.ratio_scale, P.ratio_rotate, P.ratio_crop_pad, P.ratio_cutout) == (0.5, 1.2, 15.0, 0.125, 0.5)
    assert (P.brightness, P.saturation, P.contrast, P.single_op) == (1.0, 2.0, 0.5, True)


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("op", DSA_OPS)
def test_gradcheck_float64(op, per_sample):
    x = torch.rand(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    gen_seed = 11

    def f(t):
        if per_sample:
            return dsa(t, op, generator=torch.Generator().manual_seed(gen_seed), per_sample=True)
        return dsa(t, op, seed=gen_seed)
    assert torch.autograd.gradcheck(f, (x,))


@pytest.mark.parametrize("strategy", list(DSA_OPS) + [DSA_STRATEGY])
def test_siamese_same_seed_same_transformation_for_any_batch(strategy):
    real, syn = torch.rand(6, 3, 16, 16), torch.rand(2, 3, 16, 16)
    for seed in range(8):
        both = dsa(torch.cat([real, syn]), strategy, seed=seed)
        assert torch.allclose(both[:6], dsa(real, strategy, seed=seed), atol=1e-6)
        assert torch.allclose(both[6:], dsa(syn, strategy, seed=seed), atol=1e-6)
        assert torch.allclose(both[:1], dsa(real[:1], strategy, seed=seed), atol=1e-6)


def test_siamese_identical_images_get_identical_outputs():
    x = torch.rand(1, 3, 16, 16).expand(5, -1, -1, -1)
    for seed in range(6):
        y = dsa(x, seed=seed)
        assert torch.allclose(y, y[:1].expand_as(y), atol=1e-6)


def test_per_sample_mode_gives_each_image_its_own_transformation():
    x = torch.rand(1, 3, 16, 16).expand(8, -1, -1, -1)
    y = dsa(x, "crop", generator=torch.Generator().manual_seed(0))
    assert len({tuple(v.flatten().tolist()) for v in y}) > 1


@pytest.mark.parametrize("op", DSA_OPS)
def test_per_sample_path_equals_image_by_image(op):
    """The batched per-image path (advanced indexing, batched affine grids) against one image at a time."""
    b, h, w = 4, 9, 10
    x = torch.rand(b, 3, h, w, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    u = [torch.rand(b, generator=g, dtype=torch.float64).tolist() for _ in range(3)]
    low, high = (-1, 2) if op == "crop" else (0, 9)  # crop: shifts up to 1 pixel; cutout: centres
    i = [torch.randint(low, high, (b,), generator=g).tolist() for _ in range(2)]
    out = augment.OPS[op](x, FixedDraw(u, i), P)
    for k in range(b):
        one = augment.OPS[op](x[k:k + 1], FixedDraw([[v[k]] for v in u], [[v[k]] for v in i]), P)
        assert torch.allclose(out[k:k + 1], one, atol=1e-12)


def test_deterministic_and_global_rng_untouched():
    x = torch.rand(4, 3, 16, 16)
    state = torch.get_rng_state()
    a, b = dsa(x, seed=123), dsa(x, seed=123)
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(dsa(x, generator=g1), dsa(x, generator=g2))
    torch.manual_seed(3)
    c = dsa(x)
    torch.manual_seed(3)
    assert torch.equal(c, dsa(x))  # without a seed it draws from the global RNG


def test_different_seeds_give_different_outputs():
    x = torch.rand(2, 3, 16, 16)
    outs = {tuple(dsa(x, seed=s).flatten()[:64].tolist()) for s in range(12)}
    assert len(outs) >= 8
    ops = set()
    for s in range(60):  # single-op mode draws each operation of the strategy
        g = torch.Generator().manual_seed(s)
        ops.add(DSA_STRATEGY.split("_")[int(torch.randint(0, 6, (1,), generator=g))])
    assert ops == set(DSA_OPS)


def test_flip():
    x = torch.rand(2, 3, 5, 6)
    assert torch.equal(augment.flip(x, FixedDraw([[0.2]]), P), x.flip(3))
    assert torch.equal(augment.flip(x, FixedDraw([[0.7]]), P), x)
    both = augment.flip(x, FixedDraw([[0.2, 0.7]]), P)
    assert torch.equal(both[0], x[0].flip(2)) and torch.equal(both[1], x[1])


def test_color():
    x = torch.rand(2, 3, 5, 6, dtype=torch.float64)
    # u = 0.5 for all three: brightness +0, saturation x1, contrast x1 -> identity
    assert torch.allclose(augment.color(x, FixedDraw([[0.5]] * 3), P), x)
    # brightness u = 1 adds 0.5 * brightness everywhere
    assert torch.allclose(augment.color(x, FixedDraw([[1.0], [0.5], [0.5]]), P), x + 0.5)
    # saturation u = 0 makes every channel the channel mean (grey)
    grey = augment.color(x, FixedDraw([[0.5], [0.0], [0.5]]), P)
    assert torch.allclose(grey, x.mean(dim=1, keepdim=True).expand_as(x))
    # contrast u = 0 halves each image's deviation from its mean (factor 0 + 0.5)
    low = augment.color(x, FixedDraw([[0.5], [0.5], [0.0]]), P)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(low - m, 0.5 * (x - m))


def _translate_reference(x, th, tw):
    out = torch.zeros_like(x)
    _, _, h, w = x.shape
    for i in range(h):
        for j in range(w):
            if 0 <= i + th < h and 0 <= j + tw < w:
                out[:, :, i, j] = x[:, :, i + th, j + tw]
    return out


@pytest.mark.parametrize("th,tw", [(0, 0), (2, -1), (-2, 2), (1, 0)])
def test_crop_translates_with_zero_fill(th, tw):
    x = torch.rand(2, 3, 16, 12)  # shifts up to round(0.125 * 16) = 2 rows, round(0.125 * 12) = 2 columns
    out = augment.crop(x, FixedDraw(integers=[[th], [tw]]), P)
    assert torch.equal(out, _translate_reference(x, th, tw))


def test_crop_range_follows_the_pad_ratio():
    x = torch.rand(1, 1, 32, 32)
    seen = set()
    for s in range(200):
        d = augment._Draw(1, torch.Generator().manual_seed(s))
        y = augment.crop(x, d, P)
        seen.add(int((y == 0).all(dim=3).sum()) + int((y == 0).all(dim=2).sum()))  # zero rows + zero columns
    assert max(seen) == 8 and 0 in seen  # up to 4 pixels (0.125 * 32) each way


def test_cutout_zeroes_one_square():
    x = torch.rand(1, 2, 16, 16) + 0.1
    out = augment.cutout(x, FixedDraw(integers=[[8], [6]]), P)  # 8x8 square centred at (8, 6)
    zero = (out == 0).all(dim=1)[0]
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[4:12, 2:10] = True
    assert torch.equal(zero, expected)
    corner = augment.cutout(x, FixedDraw(integers=[[0], [15]]), P)  # clipped at the border
    zero = (corner == 0).all(dim=1)[0]
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[0:4, 11:16] = True
    assert torch.equal(zero, expected)


def _ramp(h, w, a=0.7, b=-0.4, c=0.2):
    """f(u, v) = a u + b v + c on align_corners coordinates u (columns) and v (rows) in [-1, 1]."""
    v = torch.linspace(-1, 1, h, dtype=torch.float64).view(h, 1)
    u = torch.linspace(-1, 1, w, dtype=torch.float64).view(1, w)
    return (a * u + b * v + c).expand(1, 1, h, w).clone(), u, v, (a, b, c)


def test_scale_samples_at_scaled_coordinates():
    x, u, v, (a, b, c) = _ramp(17, 13)
    sx_u, sy_u = 0.25, 0.75  # uniforms -> scale factors in [1/1.2, 1.2]
    r = P.ratio_scale
    sx, sy = sx_u * (r - 1 / r) + 1 / r, sy_u * (r - 1 / r) + 1 / r
    out = augment.scale(x, FixedDraw([[sx_u], [sy_u]]), P)[0, 0]
    expected = a * sx * u + b * sy * v + c
    inside = ((sx * u).abs() <= 1) & ((sy * v).abs() <= 1)
    assert torch.allclose(out[inside], expected.expand_as(out)[inside], atol=1e-12)
    assert (out[~inside] != expected.expand_as(out)[~inside]).any()  # zeros come in from outside


def test_rotate_samples_at_rotated_coordinates():
    import math
    x, u, v, (a, b, c) = _ramp(21, 21)
    uniform = 0.9
    angle = (uniform - 0.5) * 2 * P.ratio_rotate / 180 * math.pi  # 12 degrees
    out = augment.rotate(x, FixedDraw([[uniform]]), P)[0, 0]
    ui = math.cos(angle) * u - math.sin(angle) * v
    vi = math.sin(angle) * u + math.cos(angle) * v
    inside = (ui.abs() <= 1) & (vi.abs() <= 1)
    assert inside.float().mean() > 0.6
    assert torch.allclose(out[inside], (a * ui + b * vi + c)[inside], atol=1e-12)


def test_strategy_parsing_and_modes():
    x = torch.rand(2, 3, 8, 8)
    assert dsa(x, "none") is x and dsa(x, "None", seed=1) is x
    with pytest.raises(ValueError, match="unknown DSA operation"):
        dsa(x, "color_blur")
    always = dataclasses.replace(P, prob_flip=1.0)
    assert torch.equal(dsa(x, "flip", seed=0, params=always), x.flip(3))
    every_op = dataclasses.replace(always, single_op=False)  # 'M' mode applies each listed op in turn
    assert torch.equal(dsa(x, "flip_flip", seed=0, params=every_op), x)
    with pytest.raises(ValueError, match="4-D"):
        dsa(torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match="floating"):
        dsa(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="either seed"):
        dsa(x, seed=1, generator=torch.Generator())


def test_dtype_is_kept():
    for dt in (torch.float32, torch.float64):
        x = torch.rand(2, 3, 8, 8, dtype=dt)
        for op in DSA_OPS:
            assert dsa(x, op, seed=2).dtype == dt


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_seed_same_result_on_cpu_and_cuda():
    x = torch.rand(4, 3, 32, 32)
    for seed in range(12):
        for per_sample in (False, True):
            cpu = dsa(x, seed=seed, per_sample=per_sample)
            gpu = dsa(x.cuda(), seed=seed, per_sample=per_sample).cpu()
            assert torch.allclose(cpu, gpu, atol=1e-5)
