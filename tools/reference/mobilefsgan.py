"""MobileFSGAN generator and its 512-d MobileFaceNet identity model: independent float64 PyTorch
reference (developer tooling only; never on the runtime path).

Written from the architecture spec (``/work/shared/spec/mobilefsgan.md`` sections 1, 2 and 3.1), not
from the engine: module names follow the official code (HoiM/MobileFSGAN ``EncoderDecoder``, and
TreB1eN/InsightFace_Pytorch ``MobileFaceNet`` for the identity model), so an official state dict
(``module.`` prefix stripped) loads with ``load_state_dict(strict=True)``, BatchNorm
``num_batches_tracked`` counters included.

Generator (``EncoderDecoder(64, 512)``), every hidden map 64 channels, LeakyReLU slope 0.01, BN eps
1e-5, pre-norm blocks (BN -> conv1x1 -> act -> conv3x3, no act after the last conv):

* ``encoder_head``: conv_image 3x3 3->64 + LReLU = A0; conv1x1 + LReLU; conv3x3 (no bias) = I0.
* ``attribute_encoder``: residual ``AttributeEncoderBlock``s b256_1, b256_2, downsample128,
  b128_1..3, downsample64, b64_1..4; returns the 12 maps of spec 1.2 (all decoder skips).
* ``identity_encoder``: a U-Net on I0 with 9 ``IdentityEncoderBlock``s (conditional BN with
  affine=False and running statistics, then x_hat * fc_var(e) + fc_mean(e), raw scale), 5 Downsample
  (BN -> zero-padded 4x4/s2 conv -> LReLU), 3 Upsample (BN -> bilinear x2 align_corners=True ->
  ReflectionPad2d(1) -> 3x3 conv p0 -> LReLU) with additive skips; output at H/4.
* ``decoder``: 12 ``DecoderBlock``s ``h <- h + block(a*h + (1-a)*A)`` with a = conv_attention(h), a
  raw 64->1 1x1 conv (no sigmoid); up128, up256; the three tanh heads images64/128/256.

``forward(target, embedding)`` returns ``(images256, images128, images64, attributes)`` like the
official module. Use it in eval mode (``.eval()``): batch norms on their running statistics.

Identity model (``MobileFaceNet512``): conv1 (3x3/s2, 3->64) and conv2_dw (depthwise) Conv_blocks
(conv no bias -> BN -> per-channel PReLU); Depth_Wise blocks conv_23, conv_34, conv_45 (1x1 expand
Conv_block -> depthwise 3x3/s2 Conv_block -> 1x1 project Linear_block, conv+BN); Residual stages
conv_3 (4 blocks, 64, groups 128), conv_4 (6, 128, groups 256), conv_5 (2, 128, groups 256), each
block x + Depth_Wise(x) at stride 1; conv_6_sep Conv_block 1x1 128->512; conv_6_dw Linear_block
depthwise 7x7 p0; flatten -> Linear(512, 512, bias=False) -> BatchNorm1d(512) -> x / ||x||_2.
Input [N, 3, 112, 112] RGB in [-1, 1].

``crop_resize_112(img)``: the embedding preprocessing of ``helpers.get_embeddings`` (spec 3.1): a
256 image is cropped to rows/cols [26:230] and resized bilinearly (align_corners=True) to 112x112
(128 -> [13:115], 64 -> [7:57]); a 112 image passes through.
"""

import torch
import torch.nn.functional as F
from torch import nn

NGF = 64
EMBEDDING = 512
LRELU = 0.01
BN_EPS = 1e-5

IDENTITY_BLOCKS = ["b256_down", "b128_down", "b64_down", "b32_down", "b16_down", "b8_down",
                   "b16_up", "b32_up", "b64_up"]
ATTRIBUTE_BLOCKS = ["b256_1", "b256_2", "b128_1", "b128_2", "b128_3", "b64_1", "b64_2", "b64_3", "b64_4"]
DECODER_BLOCKS = ["b64_4", "b64_3", "b64_2", "b64_1", "b64_0", "b128_3", "b128_2", "b128_1", "b128_0",
                  "b256_2", "b256_1", "b256_0"]
CROPS = {256: (26, 230), 128: (13, 115), 64: (7, 57)}


def _act(x):
    return F.leaky_relu(x, LRELU)


# ------------------------------------------------------------------------------------------------
# generator blocks


class EncoderHead(nn.Module):
    def __init__(self, c=NGF):
        super().__init__()
        self.conv_image = nn.Conv2d(3, c, 3, 1, 1, bias=True)
        self.conv1x1 = nn.Conv2d(c, c, 1, 1, 0, bias=True)
        self.conv3x3 = nn.Conv2d(c, c, 3, 1, 1, bias=False)

    def forward(self, x):
        a0 = _act(self.conv_image(x))
        i0 = self.conv3x3(_act(self.conv1x1(a0)))
        return i0, a0


class AttributeEncoderBlock(nn.Module):
    """BN (affine) -> 1x1 (bias) -> LReLU -> 3x3 (no bias); the caller adds the residual."""

    def __init__(self, c=NGF):
        super().__init__()
        self.normalize = nn.BatchNorm2d(c, eps=BN_EPS)
        self.conv1x1 = nn.Conv2d(c, c, 1, 1, 0, bias=True)
        self.conv3x3 = nn.Conv2d(c, c, 3, 1, 1, bias=False)

    def forward(self, x):
        return self.conv3x3(_act(self.conv1x1(self.normalize(x))))


class IdentityEncoderBlock(nn.Module):
    """Conditional batch norm: BN(affine=False, running stats) * fc_var(e) + fc_mean(e) (raw scale)
    -> LReLU -> 1x1 (bias) -> LReLU -> 3x3 (no bias); the caller adds the residual."""

    def __init__(self, c=NGF, e=EMBEDDING):
        super().__init__()
        self.normalize = nn.BatchNorm2d(c, eps=BN_EPS, affine=False)
        self.fc_mean = nn.Linear(e, c)
        self.fc_var = nn.Linear(e, c)
        self.conv1x1 = nn.Conv2d(c, c, 1, 1, 0, bias=True)
        self.conv3x3 = nn.Conv2d(c, c, 3, 1, 1, bias=False)

    def forward(self, x, e):
        mu = self.fc_mean(e)[:, :, None, None]
        sigma = self.fc_var(e)[:, :, None, None]
        m = self.normalize(x) * sigma + mu
        return self.conv3x3(_act(self.conv1x1(_act(m))))


class Downsample(nn.Module):
    """BN (affine) -> 4x4 stride-2 conv, zero padding 1, no bias -> LReLU."""

    def __init__(self, c=NGF):
        super().__init__()
        self.normalize = nn.BatchNorm2d(c, eps=BN_EPS)
        self.conv = nn.Conv2d(c, c, 4, 2, 1, bias=False)

    def forward(self, x):
        return _act(self.conv(self.normalize(x)))


class Upsample(nn.Module):
    """BN (affine) -> bilinear x2 (align_corners=True) -> ReflectionPad2d(1) -> 3x3 conv p0 -> LReLU."""

    def __init__(self, c=NGF):
        super().__init__()
        self.normalize = nn.BatchNorm2d(c, eps=BN_EPS)
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.pad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(c, c, 3, 1, 0, bias=False)

    def forward(self, x):
        return _act(self.conv(self.pad(self.upsample(self.normalize(x)))))


class DecoderBlock(nn.Module):
    """a = conv_attention(h) (64 -> 1, bias, raw: no sigmoid); f = a*h + (1-a)*A;
    returns basic_block(f); the caller adds the pre-fusion h."""

    def __init__(self, c=NGF):
        super().__init__()
        self.conv_attention = nn.Conv2d(c, 1, 1, 1, 0, bias=True)
        self.basic_block = AttributeEncoderBlock(c)

    def forward(self, h, attr):
        a = self.conv_attention(h)
        return self.basic_block(a * h + (1.0 - a) * attr)


class DecoderImageOutput(nn.Module):
    def __init__(self, c=NGF):
        super().__init__()
        self.conv = nn.Conv2d(c, 3, 3, 1, 1, bias=True)

    def forward(self, x):
        return torch.tanh(self.conv(x))


class AttributeEncoderBody(nn.Module):
    def __init__(self, c=NGF):
        super().__init__()
        self.b256_1 = AttributeEncoderBlock(c)
        self.b256_2 = AttributeEncoderBlock(c)
        self.downsample128 = Downsample(c)
        self.b128_1 = AttributeEncoderBlock(c)
        self.b128_2 = AttributeEncoderBlock(c)
        self.b128_3 = AttributeEncoderBlock(c)
        self.downsample64 = Downsample(c)
        self.b64_1 = AttributeEncoderBlock(c)
        self.b64_2 = AttributeEncoderBlock(c)
        self.b64_3 = AttributeEncoderBlock(c)
        self.b64_4 = AttributeEncoderBlock(c)

    def forward(self, a0):
        out = [a0]
        x = a0
        for name in ("b256_1", "b256_2"):
            x = x + getattr(self, name)(x)
            out.append(x)
        x = self.downsample128(x)
        out.append(x)
        for name in ("b128_1", "b128_2", "b128_3"):
            x = x + getattr(self, name)(x)
            out.append(x)
        x = self.downsample64(x)
        out.append(x)
        for name in ("b64_1", "b64_2", "b64_3", "b64_4"):
            x = x + getattr(self, name)(x)
            out.append(x)
        return out  # x256_0..2, x128_0..3, x64_0..4


class IdentityEncoderBody(nn.Module):
    """Registration order = the official state-dict order (spec section 2)."""

    def __init__(self, c=NGF, e=EMBEDDING):
        super().__init__()
        self.b256_down = IdentityEncoderBlock(c, e)
        self.down128 = Downsample(c)
        self.b128_down = IdentityEncoderBlock(c, e)
        self.down64 = Downsample(c)
        self.b64_down = IdentityEncoderBlock(c, e)
        self.down32 = Downsample(c)
        self.b32_down = IdentityEncoderBlock(c, e)
        self.down16 = Downsample(c)
        self.b16_down = IdentityEncoderBlock(c, e)
        self.down8 = Downsample(c)
        self.b8_down = IdentityEncoderBlock(c, e)
        self.up16 = Upsample(c)
        self.b16_up = IdentityEncoderBlock(c, e)
        self.up32 = Upsample(c)
        self.b32_up = IdentityEncoderBlock(c, e)
        self.up64 = Upsample(c)
        self.b64_up = IdentityEncoderBlock(c, e)

    def forward(self, i0, e):
        x256 = i0 + self.b256_down(i0, e)
        x = self.down128(x256)
        x128 = x + self.b128_down(x, e)
        x = self.down64(x128)
        x64 = x + self.b64_down(x, e)
        x = self.down32(x64)
        x32 = x + self.b32_down(x, e)
        x = self.down16(x32)
        x16 = x + self.b16_down(x, e)
        x = self.down8(x16)
        x8 = x + self.b8_down(x, e)
        y = self.up16(x8) + x16
        y = y + self.b16_up(y, e)
        y = self.up32(y) + x32
        y = y + self.b32_up(y, e)
        y = self.up64(y) + x64
        y = y + self.b64_up(y, e)
        return y


class Decoder(nn.Module):
    def __init__(self, c=NGF):
        super().__init__()
        for name in DECODER_BLOCKS[:5]:
            setattr(self, name, DecoderBlock(c))
        self.image64_output = DecoderImageOutput(c)
        self.up128 = Upsample(c)
        for name in DECODER_BLOCKS[5:9]:
            setattr(self, name, DecoderBlock(c))
        self.image128_output = DecoderImageOutput(c)
        self.up256 = Upsample(c)
        for name in DECODER_BLOCKS[9:]:
            setattr(self, name, DecoderBlock(c))
        self.image256_output = DecoderImageOutput(c)

    def forward(self, h, attrs):
        x256_0, x256_1, x256_2, x128_0, x128_1, x128_2, x128_3, x64_0, x64_1, x64_2, x64_3, x64_4 = attrs
        for name, a in zip(DECODER_BLOCKS[:5], (x64_4, x64_3, x64_2, x64_1, x64_0)):
            h = h + getattr(self, name)(h, a)
        images64 = self.image64_output(h)
        h = self.up128(h)
        for name, a in zip(DECODER_BLOCKS[5:9], (x128_3, x128_2, x128_1, x128_0)):
            h = h + getattr(self, name)(h, a)
        images128 = self.image128_output(h)
        h = self.up256(h)
        for name, a in zip(DECODER_BLOCKS[9:], (x256_2, x256_1, x256_0)):
            h = h + getattr(self, name)(h, a)
        images256 = self.image256_output(h)
        return images256, images128, images64


class EncoderDecoder(nn.Module):
    def __init__(self, num_channels=NGF, embedding_size=EMBEDDING):
        super().__init__()
        self.encoder_head = EncoderHead(num_channels)
        self.identity_encoder = IdentityEncoderBody(num_channels, embedding_size)
        self.attribute_encoder = AttributeEncoderBody(num_channels)
        self.decoder = Decoder(num_channels)

    def forward(self, targets, embeddings):
        h, w = targets.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"H and W must be multiples of 32, got {h}x{w}")
        i0, a0 = self.encoder_head(targets)
        identity = self.identity_encoder(i0, embeddings)
        attrs = self.attribute_encoder(a0)
        images256, images128, images64 = self.decoder(identity, attrs)
        return images256, images128, images64, attrs


# ------------------------------------------------------------------------------------------------
# identity model (TreB1eN MobileFaceNet, 512-d)


class Conv_block(nn.Module):  # noqa: N801 (official name)
    def __init__(self, cin, cout, kernel=1, stride=1, padding=0, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.prelu = nn.PReLU(cout)

    def forward(self, x):
        return self.prelu(self.bn(self.conv(x)))


class Linear_block(nn.Module):  # noqa: N801
    def __init__(self, cin, cout, kernel=1, stride=1, padding=0, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x):
        return self.bn(self.conv(x))


class Depth_Wise(nn.Module):  # noqa: N801
    def __init__(self, cin, cout, residual=False, stride=2, groups=1):
        super().__init__()
        self.conv = Conv_block(cin, groups, 1)
        self.conv_dw = Conv_block(groups, groups, 3, stride, 1, groups=groups)
        self.project = Linear_block(groups, cout, 1)
        self.residual = residual

    def forward(self, x):
        y = self.project(self.conv_dw(self.conv(x)))
        return x + y if self.residual else y


class Residual(nn.Module):
    def __init__(self, c, num_block, groups):
        super().__init__()
        self.model = nn.Sequential(*[Depth_Wise(c, c, residual=True, stride=1, groups=groups)
                                     for _ in range(num_block)])

    def forward(self, x):
        return self.model(x)


class MobileFaceNet512(nn.Module):
    def __init__(self, embedding_size=EMBEDDING):
        super().__init__()
        self.conv1 = Conv_block(3, 64, 3, 2, 1)
        self.conv2_dw = Conv_block(64, 64, 3, 1, 1, groups=64)
        self.conv_23 = Depth_Wise(64, 64, stride=2, groups=128)
        self.conv_3 = Residual(64, 4, 128)
        self.conv_34 = Depth_Wise(64, 128, stride=2, groups=256)
        self.conv_4 = Residual(128, 6, 256)
        self.conv_45 = Depth_Wise(128, 128, stride=2, groups=512)
        self.conv_5 = Residual(128, 2, 256)
        self.conv_6_sep = Conv_block(128, 512, 1)
        self.conv_6_dw = Linear_block(512, 512, 7, 1, 0, groups=512)
        self.linear = nn.Linear(512, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size, eps=BN_EPS)

    def raw(self, x):
        """The BatchNorm1d output [N, 512] (before the L2 normalisation)."""
        if tuple(x.shape[1:]) != (3, 112, 112):
            raise ValueError(f"input must be [N, 3, 112, 112], got {tuple(x.shape)}")
        for name in ("conv1", "conv2_dw", "conv_23", "conv_3", "conv_34", "conv_4", "conv_45",
                     "conv_5", "conv_6_sep", "conv_6_dw"):
            x = getattr(self, name)(x)
        return self.bn(self.linear(x.flatten(1)))

    def forward(self, x):
        e = self.raw(x)
        return e / torch.norm(e, 2, 1, True)


def crop_resize_112(img):
    """helpers.get_embeddings' preprocessing: crop [26:230] of a 256 image (128: [13:115],
    64: [7:57]) and resize to 112x112, bilinear, align_corners=True; 112 passes through."""
    size = img.shape[-1]
    if size == 112:
        return img
    a, b = CROPS[size]
    crop = img[:, :, a:b, a:b]
    return F.interpolate(crop, size=(112, 112), mode="bilinear", align_corners=True)


def load_state(module, state):
    """Strictly loads a PyTorch state dict (name -> tensor/ndarray, ``module.`` already stripped;
    int64 ``num_batches_tracked`` counters included or absent) into `module` as float64."""
    import numpy as np

    own = module.state_dict()
    tensors = {}
    for k, v in state.items():
        t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v, copy=True))
        if k not in own:
            raise KeyError(f"unexpected key {k}")
        if tuple(t.shape) != tuple(own[k].shape):
            raise ValueError(f"{k}: shape {tuple(t.shape)}, module wants {tuple(own[k].shape)}")
        tensors[k] = t.to(own[k].dtype)
    missing = [k for k in own if k not in tensors and not k.endswith("num_batches_tracked")]
    if missing:
        raise KeyError(f"missing keys {missing[:10]}")
    for k in own:
        if k.endswith("num_batches_tracked") and k not in tensors:
            tensors[k] = own[k]
    module.load_state_dict(tensors, strict=True)
    return module
