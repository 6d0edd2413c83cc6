"""U-Net 2D/3D, presets, build_network, weight files and denoisers."""

import pytest
import torch

from ctdip.errors import UserError
from ctdip.networks import build_network, count_parameters, network_preset, preset_names
from ctdip.networks.weights import geometry_key, load_weights, save_weights
from ctdip.priors.denoisers import load_denoiser
from ctdip.priors.tv import spatial_div, spatial_grad, tv_norm, tv_prox


def test_presets_exist_and_paper_matches_handbook():
    assert {"paper", "light", "tiny", "3d"} <= set(preset_names())
    a = network_preset("paper", 2)
    assert a["channels"] == [128] * 6 and a["skip_channels"] == [0, 0, 0, 0, 4, 4] and a["dim"] == 2
    assert network_preset("3d", 2)["dim"] == 3  # the 3D preset pins its dimension
    assert network_preset("3d", 3)["skip_channels"] == [0, 0, 0]


@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (1, 1, 37, 50), (2, 1, 16, 16)])
def test_unet_2d_shapes(shape):
    torch.manual_seed(0)
    net = build_network(network_preset("light", 2))
    assert net(torch.randn(shape)).shape == shape


def test_unet_3d_and_skip_layout():
    net = build_network(network_preset("3d", 3))
    x = torch.randn(1, 1, 12, 16, 20)
    assert net(x).shape == x.shape
    # paper layout: skips only into the two coarsest up blocks (entries 4 and 5 of [0,0,0,0,4,4])
    paper = build_network(network_preset("paper", 2, channels=[8] * 6))
    widths = [blk[0].in_channels for blk in paper.up]
    assert widths == [8 + 4, 8 + 4, 8, 8, 8]
    assert 5.6e5 < count_parameters(build_network(network_preset("paper", 2))) / 4 < 6e5


def test_sigmoid_and_groupnorm_and_nearest():
    arch = network_preset("tiny", 2, sigmoid=True)
    net = build_network(arch)
    y = net(torch.randn(1, 1, 16, 16)).detach()
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    assert any(isinstance(m, torch.nn.GroupNorm) for m in net.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_build_network_errors(tmp_path):
    with pytest.raises(UserError, match="unknown network 'nope'"):
        build_network({"name": "nope"})
    with pytest.raises(UserError, match="unknown network preset"):
        network_preset("huge", 2)
    bad = tmp_path / "net.yaml"
    bad.write_text("arch: [unclosed\n")
    with pytest.raises(UserError, match="bad YAML"):
        network_preset(bad, 2)
    with pytest.raises(UserError, match="bad parameters"):
        build_network({"name": "unet", "channels": [4, 4], "skip_channels": [0]})


def test_drunet_registered():
    net = build_network({"name": "drunet", "dim": 2, "in_channels": 2, "out_channels": 1,
                         "channels": [8, 16], "blocks": 1})
    assert net(torch.randn(1, 2, 16, 16)).shape == (1, 1, 16, 16)


def test_weights_roundtrip_and_errors(tmp_path):
    arch = network_preset("tiny", 2)
    net = build_network(arch)
    p = save_weights(tmp_path / "w.pt", net.state_dict(), arch, kind="unet", geometry_key="abc",
                     data_spec={"phantom": "ellipses"}, extra={"steps": 3})
    obj = load_weights(p)
    assert obj["format"] == "ctdip-weights/1" and obj["kind"] == "unet" and obj["geometry_key"] == "abc"
    net2 = build_network(obj["arch"])
    net2.load_state_dict(obj["state_dict"])
    x = torch.randn(1, 1, 16, 16)
    assert torch.equal(net(x), net2(x))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="junk.pt"):
        load_weights(tmp_path / "junk.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a ctdip weights file"):
        load_weights(tmp_path / "other.pt")
    with pytest.raises(UserError, match="expected 'denoiser'"):
        load_weights(p, kind="denoiser")


def test_geometry_key_stable():
    class G:
        def __init__(self, h):
            self.h = h

        def hash(self):
            return self.h

    k = geometry_key(G("a"), G("b"))
    assert k == geometry_key(G("a"), G("b")) and len(k) == 16 and k != geometry_key(G("a"), G("c"))


@pytest.mark.parametrize("shape", [(1, 1, 7, 9), (1, 1, 4, 5, 6)])
def test_grad_div_adjoint(shape):
    x = torch.randn(shape, dtype=torch.float64)
    p = torch.randn((len(shape) - 2, *shape), dtype=torch.float64)
    assert torch.allclose((spatial_grad(x) * p).sum(), -(x * spatial_div(p)).sum(), rtol=1e-12)


def test_tv_prox_denoises_and_is_optimal():
    torch.manual_seed(0)
    img = torch.zeros(1, 1, 32, 32)
    img[..., 8:24, 8:24] = 1
    noisy = img + 0.1 * torch.randn_like(img)
    d = tv_prox(noisy, 0.1, 200)
    assert float(((d - img) ** 2).mean()) < 0.1 * float(((noisy - img) ** 2).mean())

    def obj(u):
        g = spatial_grad(u)
        return 0.5 * float(((u - noisy) ** 2).sum()) + 0.1 * float(torch.sqrt((g * g).sum(0)).sum())

    # the prox beats small perturbations of itself
    for _ in range(5):
        assert obj(d) <= obj(d + 1e-3 * torch.randn_like(d)) + 1e-6
    assert float(tv_norm(img)) > 0 and float(tv_norm(torch.ones(1, 1, 8, 8))) < 1e-3


def test_load_denoiser_specs(tmp_path):
    D = load_denoiser("tv")
    x = torch.rand(1, 1, 16, 16)
    assert D(x, 0.0).equal(x)
    with pytest.raises(UserError, match="unknown denoiser"):
        load_denoiser("wavelets")
    try:
        import bm3d  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match=r"pip install 'ctdip\[bm3d\]'"):
            load_denoiser("bm3d")
    arch = {"name": "drunet", "dim": 2, "in_channels": 2, "out_channels": 1, "channels": [8, 16], "blocks": 1}
    net = build_network(arch)
    save_weights(tmp_path / "den.pt", net.state_dict(), arch, kind="denoiser")
    Dc = load_denoiser(str(tmp_path / "den.pt"))
    expected = net(torch.cat([x, torch.full_like(x, 0.05)], 1))
    assert torch.allclose(Dc(x, 0.05), expected)


@pytest.mark.parametrize("dim,shape", [(2, (1, 1, 40, 36)), (3, (1, 1, 12, 16, 8))])
def test_unet_channels_last_is_opt_in_and_agrees(dim, shape):
    """``channels_last: true`` changes the memory layout only: same parameters, a contiguous output
    equal to the default layout's to float rounding (other conv kernels), same gradients."""
    from ctdip.networks.unet import UNet

    preset = "light" if dim == 2 else "3d"
    torch.manual_seed(0)
    base = build_network(network_preset(preset, dim))
    assert base.channels_last is False
    cl = build_network(network_preset(preset, dim, channels_last=True))
    assert isinstance(cl, UNet) and cl.channels_last
    cl.load_state_dict(base.state_dict())
    fmt = torch.channels_last if dim == 2 else torch.channels_last_3d
    assert cl.inc[0].weight.is_contiguous(memory_format=fmt)
    z = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    a, b = base(z), cl(z)
    assert b.is_contiguous() and b.shape == shape
    assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())
    a.square().mean().backward()
    b.square().mean().backward()
    ga = torch.cat([p.grad.flatten() for p in base.parameters()])
    gb = torch.cat([p.grad.flatten() for p in cl.parameters()])
    assert float((ga - gb).norm()) <= 1e-4 * float(ga.norm())


def test_unet_bfloat16_precision_is_opt_in_float32_out_and_close():
    """``precision: bfloat16`` runs the convolutions under bfloat16 autocast: the same parameters
    (float32), a float32 output within 5 % of the float32 network's (8-bit mantissa through six
    scales), float32 gradients pointing the same way (cosine > 0.97); a bad value is refused."""
    torch.manual_seed(0)
    base = build_network(network_preset("light", 2))
    assert base.precision == "float32"
    bf = build_network(network_preset("light", 2, precision="bfloat16"))
    bf.load_state_dict(base.state_dict())
    z = torch.rand((1, 1, 64, 64), generator=torch.Generator().manual_seed(1))
    a, b = base(z), bf(z)
    assert b.dtype == torch.float32 and b.shape == a.shape
    err = float((a - b).norm() / a.norm())
    assert 0 < err < 0.05, err
    a.square().mean().backward()
    b.square().mean().backward()
    ga = torch.cat([p.grad.flatten() for p in base.parameters()])
    gb = torch.cat([p.grad.flatten() for p in bf.parameters()])
    assert gb.dtype == torch.float32
    assert float(torch.nn.functional.cosine_similarity(ga, gb, dim=0)) > 0.97  # 0.986 measured
    with pytest.raises(UserError, match="precision must be one of float32, bfloat16"):
        build_network(network_preset("light", 2, precision="float16"))
