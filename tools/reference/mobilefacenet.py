"""MobileFaceNet-128 (MobileNetV2-style identity network), independent float64 PyTorch reference.

Written from the spec (``/work/shared/spec/identity.md``), not from the engine: module names are
chosen so that the official state dict (foamliu/MobileFaceNet, keys unchanged in
``mobilefacenet_128.pt`` / ``.safetensors``) loads with ``load_state_dict(strict=True)``.

Input: [N, 3, 112, 112] RGB, already normalised: ``(pixel / 255 - mean) / std`` with the ImageNet
``MEAN`` / ``STD`` below (``normalize`` does it). ``forward`` returns the raw embedding [N, 128] (the
final BatchNorm's output, flattened); ``embed`` also L2-normalises it (plain division by the norm).

Layers (every conv bias-free unless said; BatchNorm eps 1e-5; CBR6 = conv -> BN -> ReLU6):

    conv1      CBR6 3x3 s2 p1, 3 -> 64                                   64x56x56
    dw_conv    depthwise 3x3 p1 -> bn1 -> ReLU -> pointwise 64->64 -> bn2 -> ReLU
    features   15 inverted residual blocks (t, c, n, s) = (2,64,5,2), (4,128,1,2), (2,128,6,1),
               (4,128,1,2), (2,128,2,1): conv.0 expand 1x1 CBR6, conv.1 depthwise 3x3 CBR6 with
               the stride (first block of a setting), conv.2 project 1x1 + conv.3 BN, no
               activation; + input when stride 1 and in == out                128x7x7
    conv2      CBR6 1x1, 128 -> 512                                      512x7x7
    gdconv     depthwise 7x7 p0 (global) -> bn, no activation             512x1x1
    conv3      1x1 conv with bias, 512 -> 128
    bn         BatchNorm2d(128), then flatten                              128
"""

import numpy as np
import torch
from torch import nn

BN_EPS = 1e-5
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SETTINGS = [(2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1)]
EMBEDDING = 128
SIZE = 112


def _bn(c):
    return nn.BatchNorm2d(c, eps=BN_EPS)


def _cbr6(cin, cout, k, stride=1, groups=1):
    """conv (padding (k-1)/2, no bias) -> BN -> ReLU6, as a Sequential: keys .0 conv, .1 BN."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2, groups=groups, bias=False),
        _bn(cout),
        nn.ReLU6(),
    )


class DepthwiseSeparable(nn.Module):
    """depthwise 3x3 p1 -> bn1 -> ReLU -> pointwise -> bn2 -> ReLU (plain ReLU, not ReLU6)."""

    def __init__(self, c):
        super().__init__()
        self.depthwise = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn1 = _bn(c)
        self.pointwise = nn.Conv2d(c, c, 1, bias=False)
        self.bn2 = _bn(c)

    def forward(self, x):
        x = torch.relu(self.bn1(self.depthwise(x)))
        return torch.relu(self.bn2(self.pointwise(x)))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            _cbr6(cin, hidden, 1),
            _cbr6(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            _bn(cout),
        )

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.residual else y


class GlobalDepthwise(nn.Module):
    def __init__(self, c, k):
        super().__init__()
        self.depthwise = nn.Conv2d(c, c, k, padding=0, groups=c, bias=False)
        self.bn = _bn(c)

    def forward(self, x):
        return self.bn(self.depthwise(x))


class MobileFaceNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = _cbr6(3, 64, 3, stride=2)
        self.dw_conv = DepthwiseSeparable(64)
        blocks, cin = [], 64
        for t, c, n, s in SETTINGS:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.features = nn.Sequential(*blocks)
        self.conv2 = _cbr6(128, 512, 1)
        self.gdconv = GlobalDepthwise(512, 7)
        self.conv3 = nn.Conv2d(512, EMBEDDING, 1, bias=True)
        self.bn = _bn(EMBEDDING)

    def forward(self, x):
        """Raw embedding [N, 128] (the final BN's output, flattened)."""
        x = self.dw_conv(self.conv1(x))
        x = self.conv2(self.features(x))
        x = self.bn(self.conv3(self.gdconv(x)))
        return x.reshape(x.shape[0], -1)

    def embed(self, x):
        return l2_normalize(self.forward(x))


def l2_normalize(e):
    return e / torch.sqrt((e * e).sum(dim=1, keepdim=True))


def normalize(pixels):
    """[N, 3, H, W] RGB pixel values in 0..255 (any float array) -> the network input, float64."""
    p = np.asarray(pixels, dtype=np.float64) / 255.0
    mean = np.array(MEAN, dtype=np.float64)[None, :, None, None]
    std = np.array(STD, dtype=np.float64)[None, :, None, None]
    return (p - mean) / std


def load_state(path):
    """The official state dict from the legacy torch pickle (``.pt``) or a ``.safetensors`` file,
    as float64 tensors (integer ``num_batches_tracked`` kept as is)."""
    if str(path).endswith(".safetensors"):
        import sys
        import os

        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from fswap_tools.safetensors_io import read_safetensors

        f = read_safetensors(path)
        state = {k: torch.from_numpy(np.array(f.array(k))) for k in f.names()}
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.to(torch.float64) if v.is_floating_point() else v for k, v in state.items()}


def load(path):
    """A float64 MobileFaceNet in eval mode with the weights at ``path`` (strict: every key used,
    every shape exact)."""
    net = MobileFaceNet().double().eval()
    net.load_state_dict(load_state(path), strict=True)
    return net
