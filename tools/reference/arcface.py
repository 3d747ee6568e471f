"""ArcFace IR-SE ResNet (foamliu/InsightFace-v2 lineage, as ported to Paddle by MobileFaceSwap).

From spec section 2.1. Attribute names are chosen so that ``load_paddle_state`` finds the Paddle keys
(``conv1.weight``, ``bn1.*``, ``prelu._weight``, ``layer{s}.{b}.{bn0,conv1,bn1,prelu,conv2,bn2}``,
``layer{s}.0.downsample.{0,1}``, ``layer{s}.{b}.se.fc.{0,1,2}``, ``bn2``, ``fc``, ``bn3``).

Input: [N, 3, 112, 112], already normalised (RGB, ImageNet mean/std). Output of ``forward``:
(id_emb [N, 512] L2-normalised by plain division by its L2 norm, no epsilon;
 id_feature_map [N, 512, 7, 7], the head BN2d output, unnormalised).
"""

import torch
from torch import nn

from . import PADDLE_BN_EPS


def _bn2d(c):
    return nn.BatchNorm2d(c, eps=PADDLE_BN_EPS)


def _conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class SEBlock(nn.Module):
    """Global average pool -> Linear C->C/16 (bias) -> PReLU(1) -> Linear C/16->C (bias) ->
    sigmoid -> scale the input per channel."""

    def __init__(self, c, reduction=16):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(c, c // reduction),
            nn.PReLU(1),
            nn.Linear(c // reduction, c),
            nn.Sigmoid(),
        )

    def forward(self, x):
        y = x.mean(dim=(2, 3))
        return x * self.fc(y)[:, :, None, None]


class IRBlock(nn.Module):
    """BN -> conv3x3 (in->in, stride 1) -> BN -> PReLU -> conv3x3 (in->planes, block stride) -> BN
    -> SE -> + residual (downsample(x) if present) -> the same PReLU again."""

    def __init__(self, inplanes, planes, stride=1, downsample=False):
        super().__init__()
        self.bn0 = _bn2d(inplanes)
        self.conv1 = _conv3x3(inplanes, inplanes)
        self.bn1 = _bn2d(inplanes)
        self.prelu = nn.PReLU(1)
        self.conv2 = _conv3x3(inplanes, planes, stride)
        self.bn2 = _bn2d(planes)
        if downsample:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), _bn2d(planes)
            )
        else:
            self.downsample = None
        self.se = SEBlock(planes)

    def forward(self, x):
        out = self.prelu(self.bn1(self.conv1(self.bn0(x))))
        out = self.se(self.bn2(self.conv2(out)))
        residual = x if self.downsample is None else self.downsample(x)
        return self.prelu(out + residual)


class ArcFace(nn.Module):
    def __init__(self, depths=(3, 4, 23, 3)):
        super().__init__()
        self.depths = list(depths)
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=0, bias=False)
        self.bn1 = _bn2d(64)
        self.prelu = nn.PReLU(1)
        self.maxpool = nn.MaxPool2d(2, 2)
        inplanes = 64
        for s, (planes, n) in enumerate(zip([64, 128, 256, 512], self.depths), start=1):
            stride = 1 if s == 1 else 2
            blocks = []
            for b in range(n):
                if b == 0:
                    ds = stride != 1 or inplanes != planes
                    blocks.append(IRBlock(inplanes, planes, stride, ds))
                else:
                    blocks.append(IRBlock(planes, planes))
                inplanes = planes
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
        self.bn2 = _bn2d(512)
        self.fc = nn.Linear(512 * 7 * 7, 512)
        self.bn3 = nn.BatchNorm1d(512, eps=PADDLE_BN_EPS)

    def features(self, x):
        """(raw embedding [N,512] = bn3 output, before L2 normalisation; id_feature_map)."""
        x = self.maxpool(self.prelu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        fmap = self.bn2(x)  # dropout: identity in eval
        emb = self.bn3(self.fc(fmap.reshape(fmap.shape[0], -1)))
        return emb, fmap

    def forward(self, x):
        emb, fmap = self.features(x)
        return l2_normalize(emb), fmap


def l2_normalize(emb):
    """Plain division by the L2 norm over dim 1 (no epsilon), as the official l2_norm."""
    return emb / torch.sqrt((emb * emb).sum(dim=1, keepdim=True))
