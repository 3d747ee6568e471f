"""3DDFA_V2 MobileNet x0.5 (120x120) face alignment, reference implementation (developer tooling only).

Written from ``/work/shared/spec/alignment.md`` section A.2 (not from the engine), float32 like the
official pipeline (PyTorch eval mode), post-processing in float64 numpy:

* ``MobileNetTDDFA``: conv1 3x3/s2 + BN + ReLU, 13 depthwise-separable blocks (3x3 depthwise + BN +
  ReLU, 1x1 + BN + ReLU, no residuals), global average pool, two heads ``fc_param`` (62) and
  ``fc_lm`` (136). ``load_state(model, state)`` takes the checkpoint's ``module.``-prefixed names.
* ``roi_from_box``: parse_roi_box_from_bbox (A.2.3 step 2).
* ``crop``: crop_img (A.2.3 step 4): rounded roi (Python round, half to even), black padding.
* ``resize_bilinear_u8``: a plain-numpy INTER_LINEAR with OpenCV's fixed-point arithmetic (half-pixel
  centres, edge clamp, 11-bit weights), the interpolation the engine implements; the reference
  pipeline itself uses cv2.resize when OpenCV is importable (``resize_120``).
* ``normalise``: (x - 127.5) / 128 on the BGR channels, CHW.
* ``decode``: de-normalise the 62 params, 68 sparse 3-D points from the BFM bases, map to image
  pixels (similar_transform, A.2.4 step 5).
* ``pose``: P2sRt + matrix2angle (A.2.4 step 8), degrees (yaw, pitch, roll).
* ``lm_head_points``: the fc_lm head's 68 points in image pixels (crop px = 60 * v + 60, then the
  same roi scaling as the 3-D points).
* ``five_points``: eye centres (mean of 36-41 and 42-47), nose tip (30), mouth corners (48, 54).
* ``manifest()``: the weights manifest (weights/3ddfa_mb05.json), names without ``module.``.
"""

import math

import numpy as np
import torch
from torch import nn

SIZE = 120
BN_EPS = 1e-5
WIDEN = 0.5
PREFIX = "module."

# (name, cin, cout, stride) at width x1.0; x0.5 halves the channels.
BLOCKS = [
    ("dw2_1", 32, 64, 1),
    ("dw2_2", 64, 128, 2),
    ("dw3_1", 128, 128, 1),
    ("dw3_2", 128, 256, 2),
    ("dw4_1", 256, 256, 1),
    ("dw4_2", 256, 512, 2),
    ("dw5_1", 512, 512, 1),
    ("dw5_2", 512, 512, 1),
    ("dw5_3", 512, 512, 1),
    ("dw5_4", 512, 512, 1),
    ("dw5_5", 512, 512, 1),
    ("dw5_6", 512, 1024, 2),
    ("dw6", 1024, 1024, 1),
]


def _c(ch, widen=WIDEN):
    return int(ch * widen)


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise (pad 1, given stride, no bias) + BN + ReLU, then 1x1 (no bias) + BN + ReLU."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv_dw = nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False)
        self.bn_dw = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.conv_sep = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn_sep = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x):
        x = torch.relu(self.bn_dw(self.conv_dw(x)))
        return torch.relu(self.bn_sep(self.conv_sep(x)))


class MobileNetTDDFA(nn.Module):
    """MobileNet-V1 regressor with both heads; ``forward`` returns (params62_normalised, lm136)."""

    def __init__(self, widen=WIDEN):
        super().__init__()
        self.conv1 = nn.Conv2d(3, _c(32, widen), 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_c(32, widen), eps=BN_EPS)
        for name, cin, cout, s in BLOCKS:
            setattr(self, name, DepthwiseSeparable(_c(cin, widen), _c(cout, widen), s))
        self.fc_param = nn.Linear(_c(1024, widen), 62)
        self.fc_lm = nn.Linear(_c(1024, widen), 136)

    def features(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        for name, *_ in BLOCKS:
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3))

    def forward(self, x):
        f = self.features(x)
        return self.fc_param(f), self.fc_lm(f)


def load_state(model, state):
    """Loads a checkpoint state dict (``module.`` prefixed, torch tensors or numpy arrays) strictly;
    ``num_batches_tracked`` is ignored (eval mode never reads it)."""
    sd = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        if not k.startswith(PREFIX):
            raise KeyError(f"{k}: expected the '{PREFIX}' prefix")
        sd[k[len(PREFIX):]] = torch.as_tensor(np.asarray(v))
    own = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    missing, extra = sorted(own - set(sd)), sorted(set(sd) - own)
    if missing or extra:
        raise KeyError(f"missing {missing[:5]}, unexpected {extra[:5]}")
    model.load_state_dict(sd, strict=False)
    model.eval()
    return model


def manifest():
    """Every tensor the engine reads, with PyTorch shapes, named as tools/export.py writes them (the
    checkpoint's ``module.`` prefix removed; the engine accepts the prefixed names as well)."""
    t = {}

    def bn(p, c):
        for k in ("weight", "bias", "running_mean", "running_var"):
            t[f"{p}.{k}"] = {"shape": [c], "kind": "bn"}

    t["conv1.weight"] = {"shape": [_c(32), 3, 3, 3], "kind": "conv"}
    bn("bn1", _c(32))
    for name, cin, cout, _ in BLOCKS:
        ci, co = _c(cin), _c(cout)
        t[f"{name}.conv_dw.weight"] = {"shape": [ci, 1, 3, 3], "kind": "conv"}
        bn(f"{name}.bn_dw", ci)
        t[f"{name}.conv_sep.weight"] = {"shape": [co, ci, 1, 1], "kind": "conv"}
        bn(f"{name}.bn_sep", co)
    for head, n in (("fc_param", 62), ("fc_lm", 136)):
        t[f"{head}.weight"] = {"shape": [n, _c(1024)], "kind": "linear"}
        t[f"{head}.bias"] = {"shape": [n], "kind": "linear"}
    return {
        "model": "3ddfa_mb05",
        "source": "cleardusk/3DDFA_V2 weights/mb05_120x120.pth (MobileNet-V1 x0.5, heads fc_param and fc_lm)",
        "names": "state-dict names without the checkpoint's DataParallel 'module.' prefix (as tools/export.py "
        "writes them); the engine also accepts every name with the prefix (the .pth keys unchanged)",
        "input": {
            "crop": {
                "shape": ["N", 3, SIZE, SIZE],
                "colour": "BGR",
                "note": "roi from the detection box, cropped with black padding, bilinear to 120x120",
            }
        },
        "output": {
            "param": {"shape": ["N", 62], "note": "normalised: multiply by param_std, add param_mean"},
            "lm": {"shape": ["N", 136], "note": "68 x then 68 y, crop px = 60 * v + 60"},
        },
        "normalisation": {"inside_network": "x = (pixel - 127.5) / 128", "mean": [127.5] * 3, "std": [128.0] * 3},
        "tensors": t,
    }


# ----------------------------------------------------------------------------------------------
# Pre-processing


def roi_from_box(box):
    """parse_roi_box_from_bbox: centre shifted down by 0.14 of the mean side, side int(1.58 x)."""
    left, top, right, bottom = [float(v) for v in box[:4]]
    old = (right - left + bottom - top) / 2
    cx = right - (right - left) / 2.0
    cy = bottom - (bottom - top) / 2.0 + old * 0.14
    side = int(old * 1.58)
    x0, y0 = cx - side / 2, cy - side / 2
    return [x0, y0, x0 + side, y0 + side]


def crop(img, roi):
    """crop_img: the roi rounded half-to-even (Python ``round``), black outside the image."""
    h, w = img.shape[:2]
    sx, sy, ex, ey = [int(round(v)) for v in roi]
    out = np.zeros((ey - sy, ex - sx) + img.shape[2:], dtype=np.uint8)
    ix0, iy0, ix1, iy1 = max(sx, 0), max(sy, 0), min(ex, w), min(ey, h)
    if ix1 > ix0 and iy1 > iy0:
        out[iy0 - sy:iy1 - sy, ix0 - sx:ix1 - sx] = img[iy0:iy1, ix0:ix1]
    return out


def _taps(src, dst, clamp):
    """Per destination index: the two source indices and their 11-bit weights, as cv2 INTER_LINEAR
    computes them: scale = 1 / (dst / src), f = float32((d + 0.5) * scale - 0.5), s = floor(f),
    weights round((1 - f) * 2048) and round(f * 2048) each (half to even). Horizontally (``clamp``)
    a tap left of 0 or at/after the last pixel becomes (edge pixel, weight 2048); vertically the
    weights stay and only the two row indices are clipped into the image."""
    scale = 1.0 / (dst / src)
    i0 = np.zeros(dst, dtype=np.int64)
    c0 = np.zeros(dst, dtype=np.int64)
    c1 = np.zeros(dst, dtype=np.int64)
    for d in range(dst):
        f = np.float32((d + 0.5) * scale - 0.5)
        s = int(math.floor(f))
        f = np.float32(f - np.float32(s))
        if clamp and s < 0:
            s, f = 0, np.float32(0)
        if clamp and s >= src - 1:
            s, f = src - 1, np.float32(0)
        i0[d] = s
        c0[d] = int(np.rint(np.float32(np.float32(1) - f) * np.float32(2048)))
        c1[d] = int(np.rint(f * np.float32(2048)))
    return np.clip(i0, 0, src - 1), np.clip(i0 + 1, 0, src - 1), c0, c1


def resize_bilinear_u8(img, size=SIZE):
    """INTER_LINEAR for uint8 HWC with OpenCV's fixed-point arithmetic: horizontal taps weighted in
    1/2048 into int rows, then vertically ((b0 * (r0 >> 4)) >> 16) + ((b1 * (r1 >> 4)) >> 16),
    plus 2, >> 2 (bit-exact with cv2.resize on the photos and the synthetic card)."""
    h, w = img.shape[:2]
    xi0, xi1, xc0, xc1 = _taps(w, size, True)
    yi0, yi1, yc0, yc1 = _taps(h, size, False)
    a = img.astype(np.int64)
    rows = a[:, xi0] * xc0[None, :, None] + a[:, xi1] * xc1[None, :, None]
    v = ((yc0[:, None, None] * (rows[yi0] >> 4)) >> 16) + ((yc1[:, None, None] * (rows[yi1] >> 4)) >> 16)
    return ((v + 2) >> 2).clip(0, 255).astype(np.uint8)


def resize_120(img):
    """cv2.resize(..., (120, 120), INTER_LINEAR) as the official code; the numpy version if no cv2.
    Returns (resized, which)."""
    try:
        import cv2
    except ImportError:
        return resize_bilinear_u8(img), "numpy INTER_LINEAR"
    return cv2.resize(img, dsize=(SIZE, SIZE), interpolation=cv2.INTER_LINEAR), f"cv2 {cv2.__version__}"


def normalise(bgr_u8):
    """HWC uint8 BGR -> [1, 3, 120, 120] float32, (x - 127.5) / 128."""
    x = torch.from_numpy(bgr_u8.transpose(2, 0, 1).copy()).float()
    return ((x - 127.5) / 128.0).unsqueeze(0)


# ----------------------------------------------------------------------------------------------
# Post-processing


def load_bases(u_path, w_shp_path, w_exp_path):
    """The 68-landmark BFM bases from the 3DDFA c++ text files: u (204,), w_shp (204,40), w_exp (204,10)."""
    u = np.loadtxt(u_path, dtype=np.float64).reshape(-1)
    w_shp = np.loadtxt(w_shp_path, dtype=np.float64)
    w_exp = np.loadtxt(w_exp_path, dtype=np.float64)
    assert u.shape == (204,) and w_shp.shape == (204, 40) and w_exp.shape == (204, 10)
    return u, w_shp, w_exp


def denormalise(out62, mean, std):
    return np.asarray(out62, np.float64) * np.asarray(std, np.float64) + np.asarray(mean, np.float64)


def decode(param, roi, bases, size=SIZE):
    """62 de-normalised params -> (3, 68) points in image pixels (x, y) and depth z (similar_transform)."""
    u, w_shp, w_exp = bases
    p = np.asarray(param, np.float64)
    P = p[:12].reshape(3, 4)
    R, t = P[:, :3], P[:, 3:]
    s = (u + w_shp @ p[12:52] + w_exp @ p[52:62]).reshape(3, -1, order="F")
    pts = R @ s + t
    pts[0] -= 1
    pts[2] -= 1
    pts[1] = size - pts[1]
    sx, sy, ex, ey = roi
    scx, scy = (ex - sx) / size, (ey - sy) / size
    pts[0] = pts[0] * scx + sx
    pts[1] = pts[1] * scy + sy
    pts[2] *= (scx + scy) / 2
    pts[2] -= pts[2].min()
    return pts


def crop_points(param, bases, size=SIZE):
    """The 68 points in 120x120 crop pixels (before the roi mapping), as similar_transform flips them."""
    u, w_shp, w_exp = bases
    p = np.asarray(param, np.float64)
    P = p[:12].reshape(3, 4)
    s = (u + w_shp @ p[12:52] + w_exp @ p[52:62]).reshape(3, -1, order="F")
    pts = P[:, :3] @ s + P[:, 3:]
    return np.stack([pts[0] - 1, size - pts[1]])


def lm_head_points(lm136, roi, size=SIZE):
    """fc_lm: 68 x then 68 y, each (crop px - 60) / 60; mapped to image pixels like the 3-D points."""
    v = np.asarray(lm136, np.float64).reshape(2, 68)
    c = v * (size / 2) + size / 2
    sx, sy, ex, ey = roi
    return np.stack([c[0] * (ex - sx) / size + sx, c[1] * (ey - sy) / size + sy])


def pose(param):
    """P2sRt + matrix2angle of 3DDFA_V2 utils/pose.py: (yaw, pitch, roll) in degrees."""
    P = np.asarray(param[:12], np.float64).reshape(3, 4)
    r1, r2 = P[0, :3], P[1, :3]
    r1 = r1 / np.linalg.norm(r1)
    r2 = r2 / np.linalg.norm(r2)
    R = np.stack([r1, r2, np.cross(r1, r2)])
    if R[2, 0] > 0.998:
        x, y, z = math.pi / 2, math.atan2(-R[0, 1], -R[0, 2]), 0.0
    elif R[2, 0] < -0.998:
        x, y, z = -math.pi / 2, math.atan2(R[0, 1], R[0, 2]), 0.0
    else:
        x = math.asin(R[2, 0])
        y = math.atan2(R[2, 1] / math.cos(x), R[2, 2] / math.cos(x))
        z = math.atan2(R[1, 0] / math.cos(x), R[0, 0] / math.cos(x))
    return [math.degrees(x), math.degrees(y), math.degrees(z)]


def five_points(pts68):
    """(5, 2): image-left eye centre (36-41), image-right eye centre (42-47), nose tip (30),
    image-left mouth corner (48), image-right mouth corner (54): the SCRFD / ArcFace order."""
    p = np.asarray(pts68, np.float64)[:2].T
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])
