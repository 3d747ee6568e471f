#!/usr/bin/env python3
"""Golden embeddings of MobileFaceNet-128 with the real weights, from the float64 PyTorch reference.

Run by developers only (needs torch and ../shared/data; see tools/requirements.txt), when the
reference, the inputs or the weights change:

    python3 tools/identity_reference.py [--data ../shared/data] [--out tests/fixtures/models]

Writes ``mobilefacenet128_golden.safetensors`` (< 1 MB, deterministic bytes):

* ``pixels`` F16 [5, 3, 112, 112]: RGB pixel values (integers 0..255, exact in f16), NCHW:
  0. seeded noise: ``numpy.random.RandomState(NOISE_SEED).randint(0, 256)``;
  1-4. face crops of the photos in ``data/photos`` around the reference FaceBoxes boxes of
     ``data/README.md`` (``CROPS`` below), by ``crop`` below: a square of side
     ``SCALE * max(box w, box h)`` centred on the box centre, resampled to 112x112 by averaging a
     4x4 grid of bilinear samples per output pixel (edge pixels repeated outside the image), rounded
     to integers. The JPEGs are decoded by ``decode_jpeg`` below (baseline, numpy only; chroma
     upsampled by repetition, so values may differ from libjpeg's by a few levels).
  This is a simple crop, not the 5-point template alignment of the spec: good enough for goldens.
* ``face`` is not stored: the network input is ``f16(normalize(pixels))`` (x/255, then ImageNet
  mean/std, rounded to float16), what the engine computes from ``pixels`` and uploads; the reference
  ran on exactly those float16 values, in float64.
* ``id_embedding_raw`` F32 [5, 128]: the final BN's output; ``id_embedding`` F32 [5, 128]: it
  divided by its L2 norm; ``id_embedding_flip`` F32 [5, 128]: the L2-normalised embeddings of the
  horizontally mirrored inputs (``face[..., ::-1]``; a same-identity pair for selection tests).

Metadata records the crops, the weights' sha256, the activation ranges (max |x| per layer, all far
inside fp16) and the pairwise cosines.
"""

import argparse
import hashlib
import json
import os
import struct
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from reference import mobilefacenet as mfn  # noqa: E402

FORMAT = "fswap-model-golden/1"
NOISE_SEED = 11
SCALE = 1.0
SIZE = 112
SUPERSAMPLE = 4
WEIGHTS = "identity/mobilefacenet_128.pt"
WEIGHTS_ST = "identity/mobilefacenet_128.safetensors"
# (photo, FaceBoxes box x1 y1 x2 y2 in image pixels, as data/README.md gives them)
CROPS = [
    ("trump_hillary.jpg", (228.9, 103.1, 466.1, 390.7)),
    ("trump_hillary.jpg", (1040.4, 122.0, 1257.8, 428.4)),
    ("JianzhuGuo.jpg", (119.6, 93.5, 290.7, 312.4)),
    ("test2.jpg", (179.1, 68.1, 266.3, 189.9)),
]


# --------------------------------------------------------------------------------------------
# baseline JPEG (SOF0, Huffman, 8-bit, interleaved scan, optional restart intervals)

ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27,
    20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58,
    59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63])


def _huffman_table(counts, symbols):
    """16-bit lookahead table: entry = (code length << 8) | symbol, 0 where no code starts."""
    table = np.zeros(1 << 16, dtype=np.int32)
    code, k = 0, 0
    for length in range(1, 17):
        for _ in range(counts[length - 1]):
            lo = code << (16 - length)
            table[lo:lo + (1 << (16 - length))] = (length << 8) | symbols[k]
            code += 1
            k += 1
        code <<= 1
    return table.tolist()


def _extend(v, s):
    return v - (1 << s) + 1 if v < (1 << (s - 1)) else v


def _decode_segment(data, comps, mcus, dc_tables, ac_tables, out, pos):
    """Decodes `mcus` MCUs of entropy-coded bytes `data` (stuffing removed) into `out[c]` lists of
    64 zigzag-ordered coefficients; `pos` is the MCU index where the segment starts."""
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    bits = np.concatenate([bits, np.zeros(48, dtype=np.uint8)]).astype(np.int64)
    n = len(bits) - 32
    win = np.zeros(n, dtype=np.int64)
    for i in range(16):
        win |= bits[i:i + n] << (15 - i)
    win = win.tolist()
    p = 0
    pred = [0] * len(comps)
    for _ in range(mcus):
        for ci, (h, v, _, td, ta) in enumerate(comps):
            dc, ac = dc_tables[td], ac_tables[ta]
            for _ in range(h * v):
                block = [0] * 64
                e = dc[win[p]]
                if e == 0:
                    raise ValueError(f"bad DC code at MCU {pos}")
                p += e >> 8
                s = e & 255
                diff = _extend(win[p] >> (16 - s), s) if s else 0
                p += s
                pred[ci] += diff
                block[0] = pred[ci]
                k = 1
                while k < 64:
                    e = ac[win[p]]
                    if e == 0:
                        raise ValueError(f"bad AC code at MCU {pos}")
                    p += e >> 8
                    rs = e & 255
                    r, s = rs >> 4, rs & 15
                    if s == 0:
                        if r != 15:
                            break
                        k += 16
                        continue
                    k += r
                    block[k] = _extend(win[p] >> (16 - s), s)
                    p += s
                    k += 1
                out[ci].append(block)
        pos += 1
        if p > len(bits) - 48:
            raise ValueError("entropy data ran out")
    return pos


def decode_jpeg(path):
    """RGB uint8 [H, W, 3] of a baseline JPEG (numpy only)."""
    d = open(path, "rb").read()
    if d[:2] != b"\xff\xd8":
        raise ValueError(f"{path}: not a JPEG")
    i = 2
    qt, dc_t, ac_t, restart = {}, {}, {}, 0
    frame = None
    while True:
        while d[i] != 0xFF or d[i + 1] == 0xFF:
            i += 1
        marker = d[i + 1]
        length = struct.unpack(">H", d[i + 2:i + 4])[0]
        seg = d[i + 4:i + 2 + length]
        if marker == 0xDB:
            j = 0
            while j < len(seg):
                pq, tq = seg[j] >> 4, seg[j] & 15
                if pq:
                    qt[tq] = np.frombuffer(seg[j + 1:j + 129], dtype=">u2").astype(np.int64)
                    j += 129
                else:
                    qt[tq] = np.frombuffer(seg[j + 1:j + 65], dtype=np.uint8).astype(np.int64)
                    j += 65
        elif marker == 0xC4:
            j = 0
            while j < len(seg):
                tc, th = seg[j] >> 4, seg[j] & 15
                counts = list(seg[j + 1:j + 17])
                syms = list(seg[j + 17:j + 17 + sum(counts)])
                (ac_t if tc else dc_t)[th] = _huffman_table(counts, syms)
                j += 17 + sum(counts)
        elif marker == 0xC0:
            height, width, nf = struct.unpack(">HHB", seg[1:6])
            if seg[0] != 8:
                raise ValueError(f"{path}: {seg[0]}-bit samples")
            frame = {seg[6 + 3 * k]: (seg[7 + 3 * k] >> 4, seg[7 + 3 * k] & 15, seg[8 + 3 * k])
                     for k in range(nf)}
            order = [seg[6 + 3 * k] for k in range(nf)]
        elif marker in (0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            raise ValueError(f"{path}: only baseline JPEG is supported (SOF {marker:#x})")
        elif marker == 0xDD:
            restart = struct.unpack(">H", seg[:2])[0]
        elif marker == 0xDA:
            ns = seg[0]
            sel = [(seg[1 + 2 * k], seg[2 + 2 * k] >> 4, seg[2 + 2 * k] & 15) for k in range(ns)]
            if frame is None or ns != len(frame) or [s[0] for s in sel] != order:
                raise ValueError(f"{path}: only one interleaved scan is supported")
            i += 2 + length
            break
        i += 2 + length
    comps = [(*frame[cid][:2], frame[cid][2], td, ta) for cid, td, ta in sel]
    hmax = max(c[0] for c in comps)
    vmax = max(c[1] for c in comps)
    mx, my = -(-width // (8 * hmax)), -(-height // (8 * vmax))
    total = mx * my
    # entropy-coded segments: unstuff FF00, split at RSTn, stop at any other marker
    segments, cur, j = [], bytearray(), i
    while True:
        k = d.index(b"\xff", j)
        cur += d[j:k]
        nxt = d[k + 1]
        if nxt == 0x00:
            cur.append(0xFF)
            j = k + 2
        elif 0xD0 <= nxt <= 0xD7:
            segments.append(bytes(cur))
            cur = bytearray()
            j = k + 2
        elif nxt == 0xFF:
            j = k + 1
        else:
            segments.append(bytes(cur))
            break
    out = [[] for _ in comps]
    pos = 0
    per = restart if restart else total
    for seg_data in segments:
        if pos >= total:
            break
        pos = _decode_segment(seg_data, comps, min(per, total - pos), dc_t, ac_t, out, pos)
    if pos != total:
        raise ValueError(f"{path}: decoded {pos} of {total} MCUs")
    # dequantise, de-zigzag, IDCT, assemble the planes, upsample, convert
    u = np.arange(8)
    c = np.where(u == 0, np.sqrt(0.5), 1.0)
    a = 0.5 * c[None, :] * np.cos((2 * u[:, None] + 1) * u[None, :] * np.pi / 16)  # [x, u]
    planes = []
    for ci, (h, v, tq, _, _) in enumerate(comps):
        coef = np.array(out[ci], dtype=np.float64) * qt[tq][None, :]
        nat = np.zeros_like(coef)
        nat[:, ZIGZAG] = coef
        blocks = np.einsum("xu,buv,yv->bxy", a, nat.reshape(-1, 8, 8), a) + 128.0
        blocks = blocks.reshape(my, mx, v, h, 8, 8).transpose(0, 2, 4, 1, 3, 5)
        plane = blocks.reshape(my * v * 8, mx * h * 8)
        plane = np.repeat(np.repeat(plane, vmax // v, axis=0), hmax // h, axis=1)
        planes.append(plane[:height, :width])
    y, cb, cr = planes[0], planes[1] - 128.0, planes[2] - 128.0
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# crops


def crop(img, box, scale=SCALE, size=SIZE, ss=SUPERSAMPLE):
    """[3, size, size] float64 pixel values: the square of side scale*max(w, h) centred on `box`,
    each output pixel the mean of ss x ss bilinear samples (edge-clamped), rounded."""
    x1, y1, x2, y2 = box
    side = scale * max(x2 - x1, y2 - y1)
    x0, y0 = (x1 + x2) / 2 - side / 2, (y1 + y2) / 2 - side / 2
    step = side / size
    offs = (np.arange(ss) + 0.5) / ss
    gx = x0 + (np.arange(size)[:, None] + offs[None, :]).reshape(-1) * step - 0.5
    gy = y0 + (np.arange(size)[:, None] + offs[None, :]).reshape(-1) * step - 0.5
    h, w = img.shape[:2]
    im = img.astype(np.float64)

    def taps(g, n):
        f = np.floor(g)
        t = g - f
        i0 = np.clip(f.astype(np.int64), 0, n - 1)
        i1 = np.clip(f.astype(np.int64) + 1, 0, n - 1)
        return i0, i1, t

    yi0, yi1, ty = taps(gy, h)
    xi0, xi1, tx = taps(gx, w)
    rows = im[yi0] * (1 - ty)[:, None, None] + im[yi1] * ty[:, None, None]
    samp = rows[:, xi0] * (1 - tx)[None, :, None] + rows[:, xi1] * tx[None, :, None]
    out = samp.reshape(size, ss, size, ss, 3).mean(axis=(1, 3))
    return np.round(out).transpose(2, 0, 1)


# --------------------------------------------------------------------------------------------
# files


def write_safetensors(path, tensors, metadata):
    """Deterministic writer: `tensors` is a list of (name, ndarray) in file order."""
    dt = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}
    header, offset, blobs = {}, 0, []
    for name, a in tensors:
        a = np.ascontiguousarray(a)
        b = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dt[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    h = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    h += b" " * (-len(h) % 8)
    data = struct.pack("<Q", len(h)) + h + b"".join(blobs)
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def activation_ranges(net, x):
    """max |x| of every leaf module's output (and of each block's output)."""
    stats, handles = {}, []
    for name, m in net.named_modules():
        if name == "" or (any(True for _ in m.children()) and not name.startswith("features.")):
            continue

        def hook(mod, inp, out, key=name):
            stats[key] = max(stats.get(key, 0.0), out.abs().max().item())

        handles.append(m.register_forward_hook(hook))
    net(x)
    for h in handles:
        h.remove()
    return stats


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.path.join(os.path.dirname(ROOT), "shared", "data"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "models"))
    ap.add_argument("--png", help="also write the input crops as PPM files into this directory")
    args = ap.parse_args()
    torch.set_grad_enabled(False)

    rs = np.random.RandomState(NOISE_SEED)
    pixels = [rs.randint(0, 256, (3, SIZE, SIZE)).astype(np.float64)]
    images = {}
    for photo, box in CROPS:
        if photo not in images:
            images[photo] = decode_jpeg(os.path.join(args.data, "photos", photo))
            print(f"{photo}: {images[photo].shape[1]}x{images[photo].shape[0]}")
        pixels.append(crop(images[photo], box))
    pixels = np.stack(pixels).astype(np.float16)
    if args.png:
        os.makedirs(args.png, exist_ok=True)
        for k, p in enumerate(pixels):
            with open(os.path.join(args.png, f"face{k}.ppm"), "wb") as f:
                f.write(f"P6 {SIZE} {SIZE} 255\n".encode())
                f.write(p.astype(np.uint8).transpose(1, 2, 0).tobytes())

    face = mfn.normalize(pixels.astype(np.float64)).astype(np.float16)
    x = torch.from_numpy(face.astype(np.float64))
    pt = os.path.join(args.data, WEIGHTS)
    net = mfn.load(pt)
    # the safetensors copy (what the engine reads) holds the same tensors
    st = mfn.load_state(os.path.join(args.data, WEIGHTS_ST))
    for k, v in mfn.load_state(pt).items():
        assert torch.equal(v, st[k]), k
    raw = net(x)
    emb = mfn.l2_normalize(raw)
    emb_flip = net.embed(torch.flip(x, dims=[3]))
    ranges = activation_ranges(net, x)
    for k, v in activation_ranges(net, torch.flip(x, dims=[3])).items():
        ranges[k] = max(ranges[k], v)
    worst = max(ranges.items(), key=lambda kv: kv[1])
    print(f"largest activation: {worst[0]} max|x| {worst[1]:.4g}")
    assert worst[1] < 1000.0, worst
    cos = (emb @ emb.T).numpy()
    cos_flip = (emb * emb_flip).sum(dim=1).numpy()
    np.set_printoptions(precision=3, suppress=True)
    print("cosine between inputs:\n", cos)
    print("cosine with the mirrored input:", cos_flip)
    print("raw embedding norms:", raw.norm(dim=1).numpy())

    meta = {
        "format": FORMAT,
        "model": "mobilefacenet128",
        "generator": "tools/identity_reference.py (float64 PyTorch reference in "
                     "tools/reference/mobilefacenet.py)",
        "weights": WEIGHTS,
        "weights_sha256": sha256(pt),
        "weights_safetensors_sha256": sha256(os.path.join(args.data, WEIGHTS_ST)),
        "noise_seed": NOISE_SEED,
        "crops": json.dumps([{"sample": k + 1, "photo": p, "box": b, "scale": SCALE,
                              "supersample": SUPERSAMPLE} for k, (p, b) in enumerate(CROPS)]),
        "normalisation": json.dumps({"scale": 1 / 255, "mean": mfn.MEAN, "std": mfn.STD}),
        "tensors": json.dumps({
            "pixels": "F16 [5,3,112,112] RGB 0..255: 0 seeded noise, 1-4 the crops",
            "id_embedding_raw": "F32 [5,128] final BN output of f16(normalize(pixels))",
            "id_embedding": "F32 [5,128] id_embedding_raw / its L2 norm",
            "id_embedding_flip": "F32 [5,128] L2-normalised embedding of the mirrored inputs",
        }, sort_keys=True),
        "activations_max_abs": json.dumps({k: float(f"{v:.4g}") for k, v in ranges.items()},
                                          sort_keys=True),
        "cosines": json.dumps([[float(f"{c:.4f}") for c in row] for row in cos]),
        "cosines_flip": json.dumps([float(f"{c:.4f}") for c in cos_flip]),
    }
    name = "mobilefacenet128_golden.safetensors"
    path = os.path.join(args.out, name)
    size = write_safetensors(path, [
        ("id_embedding", emb.numpy().astype(np.float32)),
        ("id_embedding_flip", emb_flip.numpy().astype(np.float32)),
        ("id_embedding_raw", raw.numpy().astype(np.float32)),
        ("pixels", pixels),
    ], meta)
    print(f"{path}: {size} bytes")
    assert size < 1_000_000


if __name__ == "__main__":
    main()
