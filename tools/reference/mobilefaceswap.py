"""MobileFaceSwap IIN (``BuildFaceSwap``) and IDN (``UNet``), from spec sections 1-3.

Module attribute names equal the Paddle key prefixes, so ``load_paddle_state`` maps the official
checkpoint (spec 2.5) onto ``BuildFaceSwap`` and the 92 tensors of spec 1.6 onto ``UNet``.

Conventions: LeakyReLU slope 0.1, Paddle BN eps 1e-5 (eval: running stats), bilinear x2 with
align_corners=True, zero padding, float64.
"""

import torch
import torch.nn.functional as F
from torch import nn

from . import LEAKY_SLOPE, PADDLE_BN_EPS

ENC_CH = [3, 32, 64, 128, 256, 512]
DEC_IN = [512, 512, 256, 128]
DEC_OUT = [256, 128, 64, 32]
MASK_CH = [512, 128, 64, 32, 8, 2]
STYLE_DIM = 512
DEMOD_EPS = 1e-16


def _bn(c):
    return nn.BatchNorm2d(c, eps=PADDLE_BN_EPS)


def _lrelu():
    return nn.LeakyReLU(LEAKY_SLOPE)


def _up():
    return nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=True)


def _final():
    """[0] up2, [1] 1x1 32->8, [2] BN, [3] LReLU, [4] 3x3 8->3, [5] BN, [6] LReLU, [7] 3x3 3->3, [8] tanh."""
    c = DEC_OUT[-1]
    return nn.Sequential(
        _up(), nn.Conv2d(c, c // 4, 1), _bn(c // 4), _lrelu(),
        nn.Conv2d(c // 4, 3, 3, padding=1), _bn(3), _lrelu(),
        nn.Conv2d(3, 3, 3, padding=1), nn.Tanh(),
    )


def _mask():
    """5 x [up2, DW 3x3 (bias), PW 1x1 (bias), BN, LReLU] then [5] conv 3x3 2->1, [6] sigmoid."""
    blocks = []
    for a, b in zip(MASK_CH[:-1], MASK_CH[1:]):
        blocks.append(nn.Sequential(
            _up(), nn.Conv2d(a, a, 3, padding=1, groups=a), nn.Conv2d(a, b, 1), _bn(b), _lrelu()
        ))
    return nn.Sequential(*blocks, nn.Conv2d(2, 1, 3, padding=1), nn.Sigmoid())


# --------------------------------------------------------------------------------------------
# IIN


class Mod2Weight(nn.Module):
    """Pointwise kernel by modulation + demodulation: s = style(z) [1,Cin];
    W'[o,i] = W[o,i] (1 + s[i]); W''[o,i] = W'[o,i] / sqrt(sum_i W'[o,i]^2 + 1e-16)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.cin, self.cout = cin, cout
        self.style = nn.Linear(STYLE_DIM, cin)
        self.weight = nn.Parameter(torch.zeros(cout, cin, 1, 1))

    def forward(self, z):
        assert z.shape == (1, STYLE_DIM), z.shape  # the official code uses batch b = 1
        s = self.style(z)  # [1, Cin]
        w = self.weight[None] * (1.0 + s[:, None, :, None, None])  # [1, Cout, Cin, 1, 1]
        d = torch.rsqrt((w * w).sum(dim=(2, 3, 4), keepdim=True) + DEMOD_EPS)
        return (w * d).reshape(self.cout, self.cin, 1, 1)


class ConvBlock(nn.Module):
    """h = LReLU(BN(conv3x3(x))); kernel = weight3x3(h) (linear). Returns (h, kernel)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = _bn(cout)
        self.weight = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x):
        h = F.leaky_relu(self.norm(self.conv(x)), LEAKY_SLOPE)
        return h, self.weight(h)


class WeightPrediction(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(STYLE_DIM, STYLE_DIM, 4)  # 7x7 -> 4x4, no padding
        self.first_decoder = nn.Conv2d(STYLE_DIM, STYLE_DIM, 2)  # 4x4 -> 3x3
        self.decoder_norm = _bn(STYLE_DIM)
        self.norm = _bn(STYLE_DIM)
        enc = (ENC_CH[:-1] + [STYLE_DIM])[::-1]  # 512, 256, 128, 64, 32, 3
        self.encoder = nn.ModuleList([ConvBlock(a, b) for a, b in zip(enc[:-1], enc[1:])])
        dec = [STYLE_DIM] + DEC_IN  # 512, 512, 512, 256, 128
        self.decoder = nn.ModuleList([ConvBlock(a, b) for a, b in zip(dec[:-1], dec[1:])])

    def forward(self, fmap):
        """fmap [1,512,7,7] -> (encoder DW kernels for E0..E4 as [C,1,4,4],
        decoder DW kernels for D0..D3 as [C,1,3,3])."""
        assert fmap.shape == (1, STYLE_DIM, 7, 7), fmap.shape
        z = F.leaky_relu(self.norm(self.first(fmap)), LEAKY_SLOPE)
        x, enc = z, []
        for blk in self.encoder:
            x, k = blk(x)
            enc.append(k)
        enc = enc[::-1]  # C = 256,128,64,32,3 -> E0..E4 = 3,32,64,128,256
        y, dec = F.leaky_relu(self.decoder_norm(self.first_decoder(z)), LEAKY_SLOPE), []
        for blk in self.decoder:
            y, k = blk(y)
            dec.append(k)
        return [k[0].unsqueeze(1) for k in enc], [k[0].unsqueeze(1) for k in dec]


class BuildFaceSwap(nn.Module):
    def __init__(self):
        super().__init__()
        self.EncoderModulation = nn.ModuleList(
            [Mod2Weight(a, b) for a, b in zip(ENC_CH[:-1], ENC_CH[1:])])
        self.DecoderModulation = nn.ModuleList(
            [Mod2Weight(a, b) for a, b in zip(DEC_IN, DEC_OUT)])
        self.predictor = WeightPrediction()
        self.final = _final()
        self.mask = _mask()

    def forward(self, id_emb, id_feature_map):
        """-> (enc_dw [5], dec_dw [4], enc_pw [5], dec_pw [4]) kernels, in E0..E4 / D0..D3 order."""
        enc_dw, dec_dw = self.predictor(id_feature_map)
        enc_pw = [m(id_emb) for m in self.EncoderModulation]
        dec_pw = [m(id_emb) for m in self.DecoderModulation]
        return enc_dw, dec_dw, enc_pw, dec_pw

    def styles(self, id_emb):
        """The style vectors s = style(z) of the 9 modulations (before the +1), for debugging."""
        out = {f"EncoderModulation.{i}": m.style(id_emb) for i, m in enumerate(self.EncoderModulation)}
        out.update({f"DecoderModulation.{j}": m.style(id_emb) for j, m in enumerate(self.DecoderModulation)})
        return out


def _paddle_state(module, prefix):
    """Paddle-named float64 tensors of a module (BN stats as _mean/_variance)."""
    out = {}
    for name, t in module.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        name = name.replace("running_mean", "_mean").replace("running_var", "_variance")
        out[f"{prefix}.{name}"] = t.detach().to(torch.float64).clone()
    return out


@torch.no_grad()
def inject(bfs, id_emb, id_feature_map):
    """The 92 UNet tensors (spec 1.6 names) for one identity: dynamic DW/PW kernels, zero
    encoder/decoder biases, and final.* / mask.* copied from `bfs`."""
    bfs.eval()
    enc_dw, dec_dw, enc_pw, dec_pw = bfs(id_emb, id_feature_map)
    st = {}
    for i in range(5):
        st[f"Encoder.{i}.0.weight"] = enc_dw[i]
        st[f"Encoder.{i}.0.bias"] = torch.zeros(ENC_CH[i], dtype=torch.float64)
        st[f"Encoder.{i}.1.weight"] = enc_pw[i]
        st[f"Encoder.{i}.1.bias"] = torch.zeros(ENC_CH[i + 1], dtype=torch.float64)
    for j in range(4):
        st[f"Decoder.{j}.0.weight"] = dec_dw[j]
        st[f"Decoder.{j}.0.bias"] = torch.zeros(DEC_IN[j], dtype=torch.float64)
        st[f"Decoder.{j}.1.weight"] = dec_pw[j]
        st[f"Decoder.{j}.1.bias"] = torch.zeros(DEC_OUT[j], dtype=torch.float64)
    st.update(_paddle_state(bfs.final, "final"))
    st.update(_paddle_state(bfs.mask, "mask"))
    assert len(st) == 92, len(st)
    return st


# --------------------------------------------------------------------------------------------
# IDN


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.Encoder = nn.ModuleList([
            nn.Sequential(nn.Conv2d(a, a, 4, stride=2, padding=1, groups=a), nn.Conv2d(a, b, 1))
            for a, b in zip(ENC_CH[:-1], ENC_CH[1:])
        ])
        self.Decoder = nn.ModuleList([
            nn.Sequential(nn.Conv2d(a, a, 3, padding=1, groups=a), nn.Conv2d(a, b, 1))
            for a, b in zip(DEC_IN, DEC_OUT)
        ])
        self.final = _final()
        self.mask = _mask()
        self.up = _up()

    def forward(self, data, return_e4=False):
        """data [N,3,H,W] RGB in [0,1] -> (swapped [N,3,H,W], mask [N,1,H,W])."""
        x = (data - 0.5) / 0.5
        skips = []
        for enc in self.Encoder:
            x = F.leaky_relu(enc(x), LEAKY_SLOPE)
            skips.append(x)  # e0..e4
        e4 = x
        m = self.mask(e4)
        y = e4
        for j, dec in enumerate(self.Decoder):
            y = F.leaky_relu(dec(self.up(y)), LEAKY_SLOPE)
            if j < 3:
                y = torch.cat([y, skips[3 - j]], dim=1)  # e3, e2, e1; e0 is never a skip
        out = (self.final(y) + 1.0) / 2.0
        swapped = out * m + (1.0 - m) * data
        return (swapped, m, e4) if return_e4 else (swapped, m)


@torch.no_grad()
def unet_forward(unet_state, img, return_e4=False):
    """Runs the static IDN given its 92 Paddle-named tensors (e.g. from `inject`) on img [N,3,H,W]."""
    from . import load_paddle_state

    unet = UNet().double().eval()
    load_paddle_state(unet, unet_state)
    return unet(img.to(torch.float64), return_e4=return_e4)


# --------------------------------------------------------------------------------------------
# Differentiable forwards for the gradient goldens (tools/golden_grads.py). Separate from the
# modules above so their behaviour (used by tools/golden_models.py) is unchanged.

UNET_KERNEL_NAMES = ([f"Encoder.{i}.{k}.weight" for i in range(5) for k in (0, 1)]
                     + [f"Decoder.{j}.{k}.weight" for j in range(4) for k in (0, 1)])


def idn_apply(kernels, biases, final, mask, data, detach_mask_input=True, tap=None):
    """The IDN forward of ``UNet.forward`` as plain functions of its weights, so autograd reaches
    whatever produced them (parameters of a ``UNet``, or kernels predicted by ``BuildFaceSwap``).

    * ``kernels``: the 18 dynamic conv weights by spec 1.6 name (``UNET_KERNEL_NAMES``);
    * ``biases``: the 18 ``...bias`` tensors by name, or None for the zero biases of an injection;
    * ``final`` / ``mask``: the static heads (their own train/eval mode picks the BN statistics);
    * ``detach_mask_input``: the mask branch reads ``e4.detach()`` (spec 3: gradient stopped), so
      the mask output reaches the mask parameters and nothing upstream;
    * ``tap(name, tensor) -> tensor``: optional, called on every intermediate (e0..e4 and their
      depthwise outputs e0.dw.., d0.up.., d0.dw.., d0..d3, out, m, swapped), e.g. to hook
      gradient statistics; it must return the tensor (or a stand-in for it).

    Same operations in the same order as ``UNet.forward`` (bit-identical in float64).
    Returns (swapped [N,3,H,W], mask [N,1,H,W])."""
    tap = tap or (lambda _name, t: t)

    def b(name):
        return None if biases is None else biases[name]

    def up(t):
        return F.interpolate(t, scale_factor=2.0, mode="bilinear", align_corners=True)

    x = (data - 0.5) / 0.5
    skips = []
    for i, c in enumerate(ENC_CH[:-1]):
        x = tap(f"e{i}.dw", F.conv2d(x, kernels[f"Encoder.{i}.0.weight"], b(f"Encoder.{i}.0.bias"),
                                     stride=2, padding=1, groups=c))
        x = F.conv2d(x, kernels[f"Encoder.{i}.1.weight"], b(f"Encoder.{i}.1.bias"))
        x = tap(f"e{i}", F.leaky_relu(x, LEAKY_SLOPE))
        skips.append(x)
    e4 = x
    m = tap("m", mask(e4.detach() if detach_mask_input else e4))
    y = e4
    for j, c in enumerate(DEC_IN):
        y = tap(f"d{j}.up", up(y))
        y = tap(f"d{j}.dw", F.conv2d(y, kernels[f"Decoder.{j}.0.weight"], b(f"Decoder.{j}.0.bias"),
                                     padding=1, groups=c))
        y = F.conv2d(y, kernels[f"Decoder.{j}.1.weight"], b(f"Decoder.{j}.1.bias"))
        y = tap(f"d{j}", F.leaky_relu(y, LEAKY_SLOPE))
        if j < 3:
            y = torch.cat([y, skips[3 - j]], dim=1)
    out = tap("out", (final(y) + 1.0) / 2.0)
    swapped = tap("swapped", out * m + (1.0 - m) * data)
    return swapped, m


def unet_apply(unet, data, detach_mask_input=True, tap=None):
    """``idn_apply`` with a ``UNet``'s own parameters (kernels, biases, final, mask)."""
    p = dict(unet.named_parameters())
    kernels = {k: p[k] for k in UNET_KERNEL_NAMES}
    biases = {k.replace(".weight", ".bias"): p[k.replace(".weight", ".bias")] for k in UNET_KERNEL_NAMES}
    return idn_apply(kernels, biases, unet.final, unet.mask, data, detach_mask_input, tap)


def swap_apply(bfs, id_emb, id_feature_map, data, detach_mask_input=True, tap=None):
    """The whole MobileFaceSwap forward, differentiable end to end: the IIN predicts and
    modulates the 18 kernels from (id_emb [1,512], id_feature_map [1,512,7,7]) (``bfs``'s mode
    picks its BN statistics), then ``idn_apply`` runs the IDN on data [N,3,H,W] with zero
    encoder/decoder biases and ``bfs.final`` / ``bfs.mask``. Returns (swapped, mask)."""
    enc_dw, dec_dw, enc_pw, dec_pw = bfs(id_emb, id_feature_map)
    kernels = {}
    for i in range(5):
        kernels[f"Encoder.{i}.0.weight"] = enc_dw[i]
        kernels[f"Encoder.{i}.1.weight"] = enc_pw[i]
    for j in range(4):
        kernels[f"Decoder.{j}.0.weight"] = dec_dw[j]
        kernels[f"Decoder.{j}.1.weight"] = dec_pw[j]
    return idn_apply(kernels, None, bfs.final, bfs.mask, data, detach_mask_input, tap)
