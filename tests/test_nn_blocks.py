"""Tests for vqzoo.nn building blocks: formulas against independent float64 computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqzoo.nn import (
    AttnBlock,
    BlurPool,
    Decoder,
    Downsample,
    Encoder,
    ResnetBlock,
    SpatialNorm,
    Upsample,
    binomial_filter,
    group_norm,
)

METHODS = ("strided_conv", "conv_blurpool", "maxpool", "max_blurpool")
TINY = dict(ch=8, ch_mult=(1, 2, 2), z_channels=4)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _set_binomial3(conv: nn.Conv2d) -> None:
    """Channel-wise weighted average with the dyadic 3x3 binomial kernel (exact in floating point)."""
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(min(conv.in_channels, conv.out_channels)):
            conv.weight[c, c] = k
        conv.bias.zero_()


# --------------------------------------------------------------------------- group_norm


def test_group_norm_groups_and_eps():
    assert group_norm(128).num_groups == 32
    assert group_norm(48).num_groups == 24  # largest divisor <= 32
    assert group_norm(8).num_groups == 8
    assert group_norm(3).num_groups == 3
    gn = group_norm(64)
    assert gn.eps == 1e-6 and gn.affine
    with pytest.raises(ValueError):
        group_norm(0)


# --------------------------------------------------------------------------- BlurPool


def test_binomial_filter_values():
    row = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64)
    expected = torch.outer(row, row) / 256.0
    assert torch.equal(binomial_filter(5, torch.float64), expected)


def test_blurpool_against_hand_computed_depthwise_conv():
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64)
    pool = BlurPool(3).double()
    out = pool(x)
    # Independent computation: explicit 5x5 window sums, replicate padding by index clamping.
    row = [1.0, 4.0, 6.0, 4.0, 1.0]
    h_out, w_out = math.ceil(9 / 2), math.ceil(10 / 2)
    ref = torch.zeros(2, 3, h_out, w_out, dtype=torch.float64)
    for i in range(h_out):
        for j in range(w_out):
            acc = torch.zeros(2, 3, dtype=torch.float64)
            for u in range(5):
                for v in range(5):
                    r = min(max(2 * i + u - 2, 0), 8)
                    c = min(max(2 * j + v - 2, 0), 9)
                    acc += row[u] * row[v] / 256.0 * x[:, :, r, c]
            ref[:, :, i, j] = acc
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_blurpool_filter_is_a_nonpersistent_buffer():
    pool = BlurPool(4)
    assert "filter" in dict(pool.named_buffers())
    assert "filter" not in pool.state_dict()
    assert list(pool.parameters()) == []
    with pytest.raises(ValueError, match="BlurPool expected"):
        pool(torch.randn(1, 3, 8, 8))


# --------------------------------------------------------------------------- Downsample / Upsample


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size", [2, 8, 16, 64])
def test_downsample_halves_even_sizes(method, size):
    down = Downsample(4, method, replicate_padding=True)
    assert down(torch.randn(1, 4, size, size + 2)).shape == (1, 4, size // 2, size // 2 + 1)


@pytest.mark.parametrize(
    "method,expected", [("strided_conv", 3), ("conv_blurpool", 4), ("maxpool", 3), ("max_blurpool", 3)]
)
def test_downsample_odd_sizes_documented(method, expected):
    # floor(7/2) = 3 everywhere except conv_blurpool (size-keeping conv, then ceil(7/2) = 4).
    assert Downsample(2, method)(torch.randn(1, 2, 7, 7)).shape[-2:] == (expected, expected)


def test_max_blurpool_matches_manual_composition():
    x = torch.randn(1, 2, 8, 8)
    down = Downsample(2, "max_blurpool")
    ref = F.conv2d(
        F.pad(F.max_pool2d(x, 2, stride=1), (2, 2, 2, 2), mode="replicate"),
        binomial_filter(5).expand(2, 1, 5, 5),
        stride=2,
        groups=2,
    )
    torch.testing.assert_close(down(x), ref)
    assert ref.shape[-1] == 4


def test_strided_conv_pads_right_bottom_only():
    down = Downsample(1, "strided_conv", replicate_padding=False)
    x = torch.randn(1, 1, 6, 6)
    ref = F.conv2d(F.pad(x, (0, 1, 0, 1)), down.conv.weight, down.conv.bias, stride=2)
    torch.testing.assert_close(down(x), ref)
    down_r = Downsample(1, "strided_conv", replicate_padding=True)
    ref_r = F.conv2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), down_r.conv.weight, down_r.conv.bias, stride=2)
    torch.testing.assert_close(down_r(x), ref_r)


def test_downsample_rejects_unknown_method():
    with pytest.raises(ValueError, match="method"):
        Downsample(4, "avgpool")


def test_upsample_nearest_then_conv():
    x = torch.randn(1, 2, 3, 4)
    plain = Upsample(2, with_conv=False)(x)
    assert torch.equal(plain, x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    up = Upsample(2)
    torch.testing.assert_close(up(x), up.conv(plain))
    assert up(x).shape == (1, 2, 6, 8)


# --------------------------------------------------------------------------- replicate padding


def test_replicate_padded_conv_keeps_constant_image_constant():
    x = torch.full((1, 4, 8, 8), 0.75)
    rep = ResnetBlock(4, padding="replicate").conv1
    zer = ResnetBlock(4, padding="zeros").conv1
    _set_binomial3(rep)
    _set_binomial3(zer)
    assert torch.equal(rep(x), x)
    out_z = zer(x)
    assert torch.equal(out_z[..., 1:-1, 1:-1], x[..., 1:-1, 1:-1])
    assert not torch.equal(out_z[..., 0, :], x[..., 0, :])  # zero padding darkens the border


def test_replicate_resnet_block_equals_explicit_pad_then_unpadded_conv():
    block = ResnetBlock(4, 8, padding="replicate")
    x = torch.randn(2, 4, 6, 5)

    def conv(c, t):
        return F.conv2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), c.weight, c.bias)

    h = conv(block.conv1, F.silu(block.norm1(x)))
    h = conv(block.conv2, F.silu(block.norm2(h)))
    torch.testing.assert_close(block(x), block.nin_shortcut(x) + h)


@pytest.mark.parametrize("method", ["strided_conv", "conv_blurpool"])
def test_encoder_replicate_padding_reaches_every_conv(method):
    enc = Encoder(in_channels=4, ch=4, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(), resolution=8,
                  z_channels=4, downsample=method, replicate_padding=True)
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    x = torch.full((1, 4, 8, 8), 0.75)
    for conv in convs:
        _set_binomial3(conv)
        out = conv(x if conv.stride == (1, 1) else F.pad(x, (0, 1, 0, 1), mode="replicate"))
        assert torch.equal(out, torch.full_like(out, 0.75)), conv
    down = enc.down[0].resample
    _set_binomial3(down.conv)
    out = down(x)
    assert out.shape[-2:] == (4, 4) and torch.equal(out, torch.full_like(out, 0.75))


def test_decoder_uses_zero_padding():
    dec = Decoder(**TINY, resolution=16, attn_resolutions=())
    assert all(m.padding_mode == "zeros" for m in dec.modules() if isinstance(m, nn.Conv2d))


# --------------------------------------------------------------------------- SpatialNorm


def _nearest(zq: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h_in, w_in = zq.shape[-2:]
    rows = torch.tensor([(i * h_in) // size[0] for i in range(size[0])])
    cols = torch.tensor([(j * w_in) // size[1] for j in range(size[1])])
    return zq[:, :, rows][:, :, :, cols]


@pytest.mark.parametrize("zq_size", [(4, 4), (3, 5), (8, 8)])
def test_spatial_norm_against_float64_reference(zq_size):
    sn = SpatialNorm(64, 3).double()
    with torch.no_grad():  # non-trivial affine GroupNorm parameters
        sn.norm_layer.weight.normal_()
        sn.norm_layer.bias.normal_()
    f = torch.randn(2, 64, 8, 8, dtype=torch.float64)
    zq = torch.randn(2, 3, *zq_size, dtype=torch.float64)
    gn = F.group_norm(f, 32, sn.norm_layer.weight, sn.norm_layer.bias, eps=1e-6)
    z = _nearest(zq, (8, 8))
    gamma = torch.einsum("oc,bchw->bohw", sn.conv_y.weight[:, :, 0, 0], z) + sn.conv_y.bias[:, None, None]
    beta = torch.einsum("oc,bchw->bohw", sn.conv_b.weight[:, :, 0, 0], z) + sn.conv_b.bias[:, None, None]
    torch.testing.assert_close(sn(f, zq), gn * gamma + beta, rtol=1e-10, atol=1e-10)


def test_spatial_norm_validation():
    sn = SpatialNorm(8, 2)
    with pytest.raises(ValueError, match="batch-size mismatch"):
        sn(torch.randn(2, 8, 4, 4), torch.randn(3, 2, 2, 2))
    with pytest.raises(ValueError, match="zq"):
        sn(torch.randn(2, 8, 4, 4), torch.randn(2, 5, 2, 2))
    with pytest.raises(ValueError, match="zq"):
        sn(torch.randn(2, 8, 4, 4))


# --------------------------------------------------------------------------- attention


def test_attention_against_hand_written_softmax():
    attn = AttnBlock(16).double()
    x = torch.randn(2, 16, 3, 5, dtype=torch.float64)
    n = F.group_norm(x, 16, attn.norm.weight, attn.norm.bias, eps=1e-6).flatten(2)  # (B, C, N)

    def conv1x1(conv, t):
        return torch.einsum("oc,bcn->bon", conv.weight[:, :, 0, 0], t) + conv.bias[:, None]

    q, k, v = conv1x1(attn.q, n), conv1x1(attn.k, n), conv1x1(attn.v, n)
    weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(16), dim=-1)
    out = torch.einsum("bij,bcj->bci", weights, v)
    ref = x + conv1x1(attn.proj_out, out).reshape(x.shape)
    torch.testing.assert_close(attn(x), ref, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- encoder / decoder


@pytest.mark.parametrize("method", METHODS)
def test_encoder_latent_size_per_downsampling_method(method):
    enc = Encoder(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,), resolution=64, z_channels=4,
                  downsample=method, replicate_padding=True)
    assert enc.downsample_factor == 4
    assert enc(torch.randn(1, 3, 64, 64)).shape == (1, 4, 16, 16)


def test_encoder_layout_matches_reference():
    enc = Encoder()  # TE-VQGAN defaults: 64x64, ch 128, ch_mult (1, 2, 2), attention at 16
    widths = [(s.block[0].in_channels, s.block[0].out_channels) for s in enc.down]
    assert widths == [(128, 128), (128, 256), (256, 256)]
    assert [len(s.attn) for s in enc.down] == [0, 0, 1]
    assert isinstance(enc.down[2].resample, nn.Identity)
    assert enc.conv_out.out_channels == 256
    dec = Decoder()
    assert [len(s.block) for s in dec.up] == [3, 3, 3]
    assert [len(s.attn) for s in dec.up] == [0, 0, 3]
    assert isinstance(dec.up[0].resample, nn.Identity) and dec.last_layer is dec.conv_out.weight


def test_round_trip_shapes_and_validation():
    enc = Encoder(**TINY, resolution=16, downsample="max_blurpool", replicate_padding=True)
    dec = Decoder(**TINY, resolution=16)
    x = torch.randn(2, 3, 16, 16)
    z = enc(x)
    assert z.shape == (2, 4, 4, 4)
    assert dec(z).shape == x.shape
    # Inputs are checked once, at the tokenizer's door (tests/test_vqgan.py, tests/test_bad_inputs.py):
    # the inner encoder passes NaN through instead of reading the values back on every call.
    assert torch.isnan(enc(torch.full((1, 3, 16, 16), float("nan")))).all()
    with pytest.raises(ValueError, match="attn_resolutions"):
        Encoder(**TINY, resolution=16, attn_resolutions=(32,))


def test_conditional_decoder_gradient_reaches_zq_through_every_spatial_norm():
    dec = Decoder(**TINY, num_res_blocks=1, resolution=16, attn_resolutions=(8,), zq_channels=3)
    norms = [m for m in dec.modules() if isinstance(m, SpatialNorm)]
    # mid: 2 res blocks x 2 + 1 attn; levels: 3 x 2 res blocks x 2 + 2 attn (at 8); norm_out.
    assert len(norms) == 5 + 12 + 2 + 1
    plain = [m for m in dec.modules() if isinstance(m, nn.GroupNorm)]
    assert all(any(m is sn.norm_layer for sn in norms) for m in plain)

    h = torch.randn(2, 4, 4, 4)
    zq = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="zq"):
        dec(h)
    # Give every SpatialNorm its own leaf copy of zq, to see the gradient through each one.
    leaves = {}

    def hook(module, args):
        leaf = args[1].detach().clone().requires_grad_(True)
        leaves[module] = leaf
        return args[0], leaf

    handles = [m.register_forward_pre_hook(hook) for m in norms]
    out = dec(h, zq)
    for handle in handles:
        handle.remove()
    assert out.shape == (2, 3, 16, 16)
    (out * torch.randn_like(out)).sum().backward()
    assert len(leaves) == len(norms)
    for m in norms:
        assert leaves[m].grad is not None and leaves[m].grad.abs().sum() > 0
        assert m.conv_y.weight.grad is not None and m.conv_y.weight.grad.abs().sum() > 0

    # And end to end, without hooks.
    dec.zero_grad()
    zq.requires_grad_(True)
    dec(h, zq).square().mean().backward()
    assert zq.grad.abs().sum() > 0


def test_unconditional_decoder_has_no_spatial_norm():
    dec = Decoder(**TINY, resolution=16)
    assert not any(isinstance(m, SpatialNorm) for m in dec.modules())
    assert not dec.conditional
