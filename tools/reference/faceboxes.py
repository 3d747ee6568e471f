#!/usr/bin/env python3
"""Independent float64 PyTorch reference of FaceBoxes and its official pipeline (developer tooling).

Written from ``/work/shared/spec/alignment.md`` section A.3 (3DDFA_V2 ``FaceBoxes/``: the network of
zisianw/FaceBoxes.PyTorch, ``FaceBoxes.__call__``, ``utils/prior_box.py``, ``utils/box_utils.py``
and the Fast R-CNN ``cpu_nms``), not from the engine, so it shares no code with
``src/models/faceboxes.rs`` / ``src/face/detect.rs``. Never on the runtime path.

* ``FaceBoxesNet``: ``forward(x) -> (loc [N, P, 4], conf logits [N, P, 2])`` (softmax is applied by
  ``detect``, as the official ``phase == "test"`` network does inside).
* ``load_state(net, state)``: strict load of the official state dict (PyTorch names).
* ``network_size(h, w)``: the official resize rule (h <= 720, then w <= 1080).
* ``resize_linear(img, w, h)``: OpenCV ``cv2.resize`` INTER_LINEAR on uint8 (11-bit fixed point
  coefficients, half-pixel centres, no antialiasing; the SIMD row rounding of OpenCV 4).
* ``preprocess(bgr)``, ``prior_boxes(h, w)``, ``decode(loc, priors)``, ``cpu_nms(dets, thresh)``,
  ``detect(net, bgr)`` -> rows ``[x1, y1, x2, y2, score]`` in image pixels, score descending.

CLI (the image as an ``.npy`` HxWx3 uint8 array, RGB unless ``--bgr``; there is no JPEG decoder in
the tool requirements, so the engine's decoded pixels are what gets compared):

    python3 tools/reference/faceboxes.py WEIGHTS.safetensors IMAGE.npy [--bgr] [--dump OUT.npz]

prints the detections as JSON; ``--dump`` also writes the network input and the raw loc / conf.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-5
MAX_HEIGHT, MAX_WIDTH = 720, 1080
MEANS_BGR = (104.0, 117.0, 123.0)
STEPS = (32, 64, 128)
MIN_SIZES = ((32, 64, 128), (256,), (512,))
VARIANCES = (0.1, 0.2)
CONFIDENCE_THRESHOLD = 0.05
TOP_K = 5000
NMS_THRESHOLD = 0.3
KEEP_TOP_K = 750
VIS_THRESHOLD = 0.5


class BasicConv2d(nn.Module):
    """conv (no bias) -> BN -> ReLU."""

    def __init__(self, cin, cout, k, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class CRelu(nn.Module):
    """conv (no bias) -> BN -> cat(x, -x) -> ReLU."""

    def __init__(self, cin, cout, k, stride, padding):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(torch.cat([x, -x], 1))


class Inception(nn.Module):
    """Four branches of 32 channels each on a 128-channel input, concatenated in this order."""

    def __init__(self):
        super().__init__()
        self.branch1x1 = BasicConv2d(128, 32, 1)
        self.branch1x1_2 = BasicConv2d(128, 32, 1)
        self.branch3x3_reduce = BasicConv2d(128, 24, 1)
        self.branch3x3 = BasicConv2d(24, 32, 3, padding=1)
        self.branch3x3_reduce_2 = BasicConv2d(128, 24, 1)
        self.branch3x3_2 = BasicConv2d(24, 32, 3, padding=1)
        self.branch3x3_3 = BasicConv2d(32, 32, 3, padding=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b2 = self.branch1x1_2(F.avg_pool2d(x, 3, stride=1, padding=1))  # count_include_pad=True
        b3 = self.branch3x3(self.branch3x3_reduce(x))
        b4 = self.branch3x3_3(self.branch3x3_2(self.branch3x3_reduce_2(x)))
        return torch.cat([b1, b2, b3, b4], 1)


class FaceBoxesNet(nn.Module):
    """FaceBoxes (Zhang et al. 2017) as in FaceBoxes.PyTorch, 2 classes."""

    def __init__(self):
        super().__init__()
        self.conv1 = CRelu(3, 24, 7, 4, 3)
        self.conv2 = CRelu(48, 64, 5, 2, 2)
        self.inception1 = Inception()
        self.inception2 = Inception()
        self.inception3 = Inception()
        self.conv3_1 = BasicConv2d(128, 128, 1)
        self.conv3_2 = BasicConv2d(128, 256, 3, stride=2, padding=1)
        self.conv4_1 = BasicConv2d(256, 128, 1)
        self.conv4_2 = BasicConv2d(128, 256, 3, stride=2, padding=1)
        self.loc = nn.Sequential(nn.Conv2d(128, 21 * 4, 3, padding=1), nn.Conv2d(256, 4, 3, padding=1),
                                 nn.Conv2d(256, 4, 3, padding=1))
        self.conf = nn.Sequential(nn.Conv2d(128, 21 * 2, 3, padding=1), nn.Conv2d(256, 2, 3, padding=1),
                                  nn.Conv2d(256, 2, 3, padding=1))

    def forward(self, x):
        x = F.max_pool2d(self.conv1(x), 3, stride=2, padding=1)
        x = F.max_pool2d(self.conv2(x), 3, stride=2, padding=1)
        s1 = self.inception3(self.inception2(self.inception1(x)))
        s2 = self.conv3_2(self.conv3_1(s1))
        s3 = self.conv4_2(self.conv4_1(s2))
        n = x.shape[0]
        loc = [head(s).permute(0, 2, 3, 1).reshape(n, -1) for head, s in zip(self.loc, (s1, s2, s3))]
        conf = [head(s).permute(0, 2, 3, 1).reshape(n, -1) for head, s in zip(self.conf, (s1, s2, s3))]
        return torch.cat(loc, 1).view(n, -1, 4), torch.cat(conf, 1).view(n, -1, 2)


def load_state(net, state):
    """Copies the official state dict (name -> array) into `net` as float64, strictly: every
    parameter and BN buffer must be present with its exact shape, and every float key is used
    (integer ``num_batches_tracked`` entries are ignored)."""
    own = net.state_dict()
    used = set()
    with torch.no_grad():
        for name, t in own.items():
            if name.endswith("num_batches_tracked"):
                continue
            if name not in state:
                raise KeyError(f"missing key {name}")
            v = torch.from_numpy(np.array(state[name], dtype=np.float64, copy=True))
            if tuple(v.shape) != tuple(t.shape):
                raise ValueError(f"{name}: shape {tuple(v.shape)}, module wants {tuple(t.shape)}")
            t.copy_(v)
            used.add(name)
    extra = [k for k in state if k not in used and not k.endswith("num_batches_tracked")]
    if extra:
        raise KeyError(f"unexpected keys {extra}")
    return net.double().eval()


def network_size(h, w):
    """(net_h, net_w, scale): the official rule, in Python floats (IEEE doubles)."""
    scale = 1.0
    if h > MAX_HEIGHT:
        scale = MAX_HEIGHT / h
    if w * scale > MAX_WIDTH:
        scale *= MAX_WIDTH / (w * scale)
    if scale == 1:
        return h, w, scale
    return int(scale * h), int(scale * w), scale


def _linear_taps(src, dst):
    """OpenCV's source index and 11-bit coefficient pair per destination index (downscale or equal)."""
    s = 1.0 / (dst / src)  # cv2: inv_scale = dst / src, scale = 1 / inv_scale, doubles
    idx = np.zeros(dst, dtype=np.int64)
    coef = np.zeros((dst, 2), dtype=np.int64)
    for d in range(dst):
        f = np.float32((d + 0.5) * s - 0.5)
        i = math.floor(f)
        f = np.float32(f - np.float32(i))
        if i < 0:
            i, f = 0, np.float32(0)
        if i >= src - 1:
            i, f = src - 1, np.float32(0)
        idx[d] = i
        # saturate_cast<short>(float) rounds half to even, as np.rint does
        coef[d] = [int(np.rint((np.float32(1) - f) * np.float32(2048))), int(np.rint(f * np.float32(2048)))]
    return idx, coef


def resize_linear(img, w, h):
    """cv2.resize(img, (w, h)) with INTER_LINEAR for a uint8 HxWxC image (no 2x fast path)."""
    sh, sw = img.shape[:2]
    if (sh, sw) == (h, w):
        return img.copy()
    xi, xc = _linear_taps(sw, w)
    yi, yc = _linear_taps(sh, h)
    src = img.astype(np.int64)
    xi1 = np.minimum(xi + 1, sw - 1)
    # horizontal pass: exact integers in units of 1/2048
    rows = src[:, xi, :] * xc[None, :, 0, None] + src[:, xi1, :] * xc[None, :, 1, None]
    yi1 = np.minimum(yi + 1, sh - 1)
    r0 = rows[yi] >> 4
    r1 = rows[yi1] >> 4
    b0 = yc[:, 0, None, None]
    b1 = yc[:, 1, None, None]
    # vertical pass as OpenCV's vector path: mul_hi of the >>4 rows, then a rounding >>2
    v = ((r0 * b0) >> 16) + ((r1 * b1) >> 16)
    return np.clip((v + 2) >> 2, 0, 255).astype(np.uint8)


def preprocess(bgr):
    """BGR uint8 HxWx3 -> (float64 [1, 3, h, w] tensor after resize and mean subtraction, scale)."""
    h, w = bgr.shape[:2]
    nh, nw, scale = network_size(h, w)
    img = bgr if scale == 1 else resize_linear(bgr, nw, nh)
    x = img.astype(np.float64) - np.array(MEANS_BGR)
    return torch.from_numpy(x.transpose(2, 0, 1).copy()).unsqueeze(0), scale


def prior_boxes(h, w):
    """[P, 4] (cx, cy, w, h) normalised by the network input size, in the network's output order."""
    out = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        fh, fw = math.ceil(h / step), math.ceil(w / step)
        for i in range(fh):
            for j in range(fw):
                for m in sizes:
                    sw, sh = m / w, m / h
                    if m == 32:
                        offs = (0.0, 0.25, 0.5, 0.75)
                    elif m == 64:
                        offs = (0.0, 0.5)
                    else:
                        offs = (0.5,)
                    for oy in offs:
                        for ox in offs:
                            out.append(((j + ox) * step / w, (i + oy) * step / h, sw, sh))
    return np.array(out, dtype=np.float64)


def decode(loc, priors):
    c = priors[:, :2] + loc[:, :2] * VARIANCES[0] * priors[:, 2:]
    s = priors[:, 2:] * np.exp(loc[:, 2:] * VARIANCES[1])
    return np.concatenate([c - s / 2, c + s / 2], 1)


def cpu_nms(dets, thresh):
    """Fast R-CNN greedy NMS: areas with +1, suppress when IoU >= thresh (keeps IoU < thresh)."""
    x1, y1, x2, y2, scores = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    suppressed = np.zeros(len(dets), dtype=bool)
    for a, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[a + 1:]:
            if suppressed[j]:
                continue
            w = max(0.0, min(x2[i], x2[j]) - max(x1[i], x1[j]) + 1)
            h = max(0.0, min(y2[i], y2[j]) - max(y1[i], y1[j]) + 1)
            inter = w * h
            if inter / (areas[i] + areas[j] - inter) >= thresh:
                suppressed[j] = True
    return keep


def postprocess(loc, conf_logits, net_h, net_w, scale):
    """Official post-processing of one image's raw outputs -> [K, 5] rows, score descending."""
    priors = prior_boxes(net_h, net_w)
    if len(priors) != len(loc):
        raise ValueError(f"{len(loc)} predictions for {len(priors)} priors")
    boxes = decode(loc, priors) * np.array([net_w, net_h, net_w, net_h]) / scale
    e = np.exp(conf_logits - conf_logits.max(1, keepdims=True))
    scores = e[:, 1] / e.sum(1)
    inds = np.where(scores > CONFIDENCE_THRESHOLD)[0]
    boxes, scores = boxes[inds], scores[inds]
    order = scores.argsort(kind="stable")[::-1][:TOP_K]
    dets = np.hstack([boxes[order], scores[order, None]])
    dets = dets[cpu_nms(dets, NMS_THRESHOLD)][:KEEP_TOP_K]
    return dets[dets[:, 4] > VIS_THRESHOLD]


def detect(net, bgr, dump=None):
    x, scale = preprocess(bgr)
    with torch.no_grad():
        loc, conf = net(x)
    loc, conf = loc[0].numpy(), conf[0].numpy()
    if dump is not None:
        dump.update(input=x.numpy(), loc=loc, conf=conf)
    return postprocess(loc, conf, x.shape[2], x.shape[3], scale)


def main():
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from fswap_tools.safetensors_io import read_safetensors

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("weights")
    ap.add_argument("image", help=".npy HxWx3 uint8")
    ap.add_argument("--bgr", action="store_true", help="the array is BGR (default RGB)")
    ap.add_argument("--dump", help="write input, loc, conf to this .npz")
    a = ap.parse_args()
    st = read_safetensors(a.weights)
    state = {k: st.array(k) for k in st.names()}
    net = load_state(FaceBoxesNet(), state)
    img = np.load(a.image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        sys.exit(f"{a.image}: expected HxWx3 uint8, got {img.shape} {img.dtype}")
    bgr = img if a.bgr else img[:, :, ::-1]
    dump = {} if a.dump else None
    dets = detect(net, np.ascontiguousarray(bgr), dump)
    if a.dump:
        np.savez(a.dump, **dump)
    print(json.dumps([[round(float(v), 3) for v in d] for d in dets]))


if __name__ == "__main__":
    main()
