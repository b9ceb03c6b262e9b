"""The field's networks: shapes at every image size, name parsing, seeding, ConvNet against a plain reference."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ld3m_fast.nets import (NETWORKS, ConvNet, ViT, default_depth, get_network, network_depth, network_family,
                            parse_network_name)


@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("name", NETWORKS)
def test_forward_and_embed_shapes_small_images(name, size):
    net = get_network(name, 3, 7, size, width=16, seed=0)
    x = torch.rand(3, 3, size, size)
    logits, feats = net(x), net.embed(x)
    assert logits.shape == (3, 7)
    assert feats.shape == (3, net.feature_dim)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("size", [64, 128, 256])
@pytest.mark.parametrize("name", NETWORKS)
def test_forward_shapes_large_images(name, size):
    net = get_network(name, 3, 5, size, width=8, seed=0, **({"depth": 2} if name == "ViT" else {}))
    with torch.no_grad():
        assert net(torch.rand(1, 3, size, size)).shape == (1, 5)


@pytest.mark.parametrize("name", NETWORKS)
def test_grayscale_28px(name):
    net = get_network(name, 1, 10, 28, width=8, seed=0)
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("size,depth", [(28, 3), (32, 3), (64, 4), (128, 5), (256, 6)])
def test_convnet_default_depth(size, depth):
    assert default_depth(size) == depth
    net = get_network("ConvNet", 3, 10, size, width=4)
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == depth
    # the last map is 4x4 at every size (28 px is padded to 32 by the first convolution)
    assert net.feature_dim == 4 * 4 * 4


def _convnet_reference(net: ConvNet, x: torch.Tensor) -> torch.Tensor:
    """conv3x3 -> per-image per-channel normalisation with affine -> ReLU -> 2x2 average, written out."""
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    norms = [m for m in net.features if isinstance(m, nn.GroupNorm)]
    for conv, norm in zip(convs, norms):
        x = F.conv2d(x, conv.weight, conv.bias, padding=conv.padding)
        mean = x.mean(dim=(2, 3), keepdim=True)
        var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
        x = (x - mean) / torch.sqrt(var + norm.eps) * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
        x = torch.relu(x)
        x = (x[:, :, 0::2, 0::2] + x[:, :, 1::2, 0::2] + x[:, :, 0::2, 1::2] + x[:, :, 1::2, 1::2]) / 4
    return x.flatten(1) @ net.classifier.weight.T + net.classifier.bias


@pytest.mark.parametrize("size", [28, 32])
def test_convnet_matches_plain_reference(size, ):
    from tests.helpers.numerics import rel_err
    net = get_network("ConvNet", 3, 10, size, width=12, seed=1).double()
    with torch.no_grad():  # non-trivial affine parameters
        for m in net.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    x = torch.rand(4, 3, size, size, dtype=torch.float64)
    assert rel_err(net(x), _convnet_reference(net, x)) < 1e-12


def test_convnet_full_size_parameter_count():
    # depth 5, width 128 at 128 px: 5 conv+norm blocks, 4x4x128 features
    net = get_network("ConvNet", 3, 10, 128)
    expected = (3 * 9 * 128 + 128) + 4 * (128 * 9 * 128 + 128) + 5 * 2 * 128 + (128 * 16 * 10 + 10)
    assert sum(p.numel() for p in net.parameters()) == expected
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 5 and all(m.num_groups == m.num_channels == 128 for m in norms)


def test_vit_settings_follow_image_size():
    big = get_network("ViT", 3, 10, 128)
    assert big.config == dict(patch_size=16, dim=512, depth=10, heads=8, dim_head=64, mlp_dim=512, dropout=0.1,
                              emb_dropout=0.1, layer_norm=False)
    small = get_network("vit", 3, 10, 32, depth=2)
    assert small.config["patch_size"] == 4 and small.config["layer_norm"] and small.config["depth"] == 2
    assert get_network("ViT", 3, 10, 28, width=8, depth=1).pos_embedding.shape[1] == 7 * 7 + 1
    with pytest.raises(ValueError, match="patch_size"):
        ViT(3, 10, 32, patch_size=5)


def test_vit_patches_are_row_major_pixel_blocks():
    net = ViT(2, 3, 32, patch_size=4, dim=8, depth=1, dim_head=4, mlp_dim=8)
    x = torch.rand(1, 2, 32, 32)
    p = net.patches(x)
    assert p.shape == (1, 64, 32)
    # patch (row 1, column 2) holds pixels [4:8, 8:12], ordered (row, column, channel)
    assert torch.equal(p[0, 1 * 8 + 2], x[0, :, 4:8, 8:12].permute(1, 2, 0).reshape(-1))


def test_names_are_case_insensitive_and_accept_suffixes():
    assert parse_network_name("convnet") == ("ConvNet", {})
    assert parse_network_name("ConvNetD4") == ("ConvNet", {"depth": 4})
    assert parse_network_name("CONVNET_BN") == ("ConvNet", {"norm": "batchnorm"})
    assert parse_network_name("ConvNetW32_NN") == ("ConvNet", {"width": 32, "norm": "none"})
    assert parse_network_name("vgg11bn") == ("VGG11", {"norm": "batchnorm"})
    assert parse_network_name("resnet18") == ("ResNet18", {})
    assert network_family("alexnet") == "AlexNet"
    net = get_network("ConvNetD2BN", 3, 10, 32, width=8)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 2
    assert any(isinstance(m, nn.BatchNorm2d) for m in get_network("VGG11_BN", 3, 10, 32, width=8).modules())
    ln = get_network("convnet", 3, 10, 32, width=8, norm="layernorm")
    assert sum(isinstance(m, nn.LayerNorm) for m in ln.modules()) == 3
    assert get_network("ConvNetW24", 3, 10, 32).feature_dim == 24 * 16


@pytest.mark.parametrize("bad", ["LeNet", "ConvNetXYZ", "VGG16", "ViTBN", "", "ConvNetD3D4"])
def test_unknown_names_raise_listing_the_networks(bad):
    with pytest.raises(ValueError, match="ConvNet"):
        get_network(bad, 3, 10, 32)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="depth"):
        get_network("ConvNetD3", 3, 10, 32, depth=4)
    with pytest.raises(ValueError, match="fixed depth"):
        get_network("AlexNet", 3, 10, 32, depth=3)
    with pytest.raises(ValueError, match="no normalisation"):
        get_network("AlexNet", 3, 10, 32, norm="batchnorm")
    with pytest.raises(ValueError, match="norm"):
        get_network("ConvNet", 3, 10, 32, norm="weird")
    with pytest.raises(ValueError, match="layernorm"):
        get_network("ResNet18", 3, 10, 32, norm="layernorm")
    with pytest.raises(ValueError, match="num_classes"):
        get_network("ConvNet", 3, 0, 32)
    with pytest.raises(ValueError, match="below 1 pixel"):
        get_network("ConvNet", 3, 10, 32, depth=7)
    with pytest.raises(TypeError, match="ConvNet"):
        get_network("ConvNet", 3, 10, 32, patch_size=4)
    with pytest.raises(TypeError, match="image_size"):
        get_network("ConvNet", 3, 10, "32")


@pytest.mark.parametrize("name", NETWORKS)
def test_seed_is_deterministic_and_leaves_global_rng_alone(name):
    state = torch.get_rng_state()
    a = get_network(name, 3, 10, 32, width=8, seed=3).state_dict()
    b = get_network(name, 3, 10, 32, width=8, seed=3).state_dict()
    c = get_network(name, 3, 10, 32, width=8, seed=4).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 1)


@pytest.mark.parametrize("name", NETWORKS)
def test_gradients_reach_the_images_and_functional_call_matches(name):
    net = get_network(name, 3, 4, 32, width=8, seed=0).eval()
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    (g,) = torch.autograd.grad(net.embed(x).square().sum(), x)
    assert g.abs().sum() > 0
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    out = torch.func.functional_call(net, params, (x,))
    assert torch.allclose(out, net(x))


def test_convnet_second_order_gradients():
    """MTT and DC differentiate through parameter gradients: grad of a function of d loss / d theta w.r.t. x."""
    net = get_network("ConvNet", 3, 4, 32, width=8, seed=0)
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    loss = F.cross_entropy(net(x), torch.tensor([0, 1, 2, 3]))
    grads = torch.autograd.grad(loss, list(net.parameters()), create_graph=True)
    (gx,) = torch.autograd.grad(sum(g.square().sum() for g in grads), x)
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0


@pytest.mark.parametrize("size, depth", [(28, 3), (32, 3), (40, 3), (64, 4), (128, 5), (160, 5), (256, 6)])
def test_distillation_experts_and_evaluation_build_one_convnet_depth(size, depth):
    """One depth rule for every user of the ConvNet: the distillation settings, the experts and evaluation."""
    from ld3m_fast.distillation.config import DistillConfig, resolve

    cfg = resolve(DistillConfig(), latent=False, resolution=size, channels=3, dataset_class_ids=None, num_classes=2)
    evaluated = get_network("ConvNet", 3, 2, size, width=8)
    assert cfg.net_depth == default_depth(size) == evaluated.config["depth"] == depth
    assert network_depth("ConvNet", size) == depth and network_depth("ConvNetD2", size) is None
    assert network_depth("VGG11", size) is None and network_depth("ConvNet", size, depth=4) == 4
