#!/usr/bin/env python3
"""Reference 3DDFA_V2 landmarks (MobileNet x0.5, 120x120) for the sample photos, from the official
pipeline of spec alignment.md A.2 re-implemented in tools/reference/tddfa.py (PyTorch float32 network,
numpy float64 post-processing) with the real weights and bases read in place from ../shared/data.

Developer tooling only (needs torch and numpy; OpenCV and Pillow when available):

    python3 tools/landmarks_reference.py [--data ../shared/data] [--out tests/fixtures/landmarks_reference.json]
        [--manifest weights/3ddfa_mb05.json] [--bfm-out 3ddfa_bfm68.safetensors]

Per face it writes the box used (the FaceBoxes reference boxes of ../shared/data/README.md), the roi,
the crop rectangle, the network's raw outputs (62 normalised params, 136 fc_lm values), the
de-normalised params, the 68 points (image px x, y, z), the fc_lm head's 68 points, the 5 points and
the pose (yaw, pitch, roll, degrees). Images are decoded as the official code does (cv2.imread, BGR)
when OpenCV is importable, else with Pillow (libjpeg as well); the crop is resized with cv2.resize
INTER_LINEAR when OpenCV is importable, else with the numpy INTER_LINEAR of the reference module. The
JSON records which. It also reports how far the numpy resize (what the engine implements) moves the
points, and a least-squares fit of the fc_lm head against the BFM points (its crop-pixel convention).
"""

import argparse
import json
import os
import re
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from reference import tddfa as T  # noqa: E402

# FaceBoxes boxes from ../shared/data/README.md (x1, y1, x2, y2), image pixels.
FACES = [
    ("trump_hillary.jpg", [228.9, 103.1, 466.1, 390.7]),
    ("trump_hillary.jpg", [1040.4, 122.0, 1257.8, 428.4]),
    ("JianzhuGuo.jpg", [119.6, 93.5, 290.7, 312.4]),
    ("test2.jpg", [179.1, 68.1, 266.3, 189.9]),
]


def read_bgr(path):
    try:
        import cv2

        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(path)
        return img, f"cv2.imread {cv2.__version__}"
    except ImportError:
        from PIL import Image
        import PIL

        rgb = np.asarray(Image.open(path).convert("RGB"))
        return np.ascontiguousarray(rgb[:, :, ::-1]), f"Pillow {PIL.__version__}"


# Synthetic crop check: an RGB test card (x, y, channel formula), crops from these boxes resized by
# the reference resize (cv2 when importable) and summarised; the engine recomputes them bit-exactly.
SYNTH_W, SYNTH_H = 300, 220
SYNTH_BOXES = [
    [50.0, 40.0, 250.0, 200.0],
    [-30.0, 100.0, 90.0, 240.0],
    [140.0, 60.0, 170.0, 90.0],
    [100.5, 50.5, 176.5, 126.5],
]


def synthetic_rgb():
    y, x = np.mgrid[0:SYNTH_H, 0:SYNTH_W]
    ch = [(x * (7 + c) + y * (13 + 2 * c) + ((x * y) % 31) * c + 50 * c) % 256 for c in range(3)]
    return np.stack(ch, -1).astype(np.uint8)


def crop_summary(bgr):
    v = bgr.astype(np.int64).reshape(-1)
    return {
        "sum": int(v.sum()),
        "wsum": int((v * (np.arange(v.size) % 1009 + 1)).sum()),
        "samples": [int(t) for t in v[::97]],
    }


def r(v, nd=4):
    return [round(float(x), nd) for x in np.asarray(v).reshape(-1)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "landmarks_reference.json"))
    ap.add_argument("--manifest", default=None, help="also write the weights manifest here")
    ap.add_argument("--bfm-out", default=None, help="also write 3ddfa_bfm68.safetensors here")
    a = ap.parse_args()

    d3 = os.path.join(a.data, "3ddfa")
    ck = torch.load(os.path.join(d3, "mb05_120x120.pth"), map_location="cpu", weights_only=True)
    state = ck["state_dict"]
    model = T.load_state(T.MobileNetTDDFA(), state)
    from safetensors.numpy import load_file

    ms = load_file(os.path.join(d3, "param_mean_std_62d_120x120.safetensors"))
    mean, std = ms["mean"], ms["std"]
    bases = T.load_bases(*(os.path.join(d3, f) for f in ("u_base.txt", "w_shp_base.txt", "w_exp_base.txt")))

    if a.manifest:
        with open(a.manifest, "w") as f:
            json.dump(T.manifest(), f, indent=1)
            f.write("\n")
        print(f"wrote {a.manifest}")
    if a.bfm_out:
        from safetensors.numpy import save_file

        u, w_shp, w_exp = bases
        save_file(
            {
                "param_mean": mean.astype(np.float32),
                "param_std": std.astype(np.float32),
                "u_base": u.astype(np.float32),
                "w_shp_base": w_shp.astype(np.float32),
                "w_exp_base": w_exp.astype(np.float32),
            },
            a.bfm_out,
            metadata={"source": "3DDFA c++/weights/*_base.txt + 3DDFA_V2 param_mean_std_62d_120x120"},
        )
        print(f"wrote {a.bfm_out}")

    faces, decoder, resizer = [], None, None
    worst_numpy = 0.0
    fit_rows = []
    for name, box in FACES:
        img, decoder = read_bgr(os.path.join(a.data, "photos", name))
        # Boxes are float32 as FaceBoxes returns them (and as the engine takes them); the roi is
        # computed in float64 from those values.
        roi = T.roi_from_box([float(np.float32(v)) for v in box])
        c = T.crop(img, roi)
        small, resizer = T.resize_120(c)
        with torch.no_grad():
            p_n, lm = model(T.normalise(small))
        p_n, lm = p_n[0].numpy(), lm[0].numpy()
        param = T.denormalise(p_n, mean, std)
        pts = T.decode(param, roi, bases)
        lm_pts = T.lm_head_points(lm, roi)
        yaw, pitch, roll = T.pose(param)

        # What the engine's numpy-equivalent resize changes.
        alt = T.resize_bilinear_u8(c)
        with torch.no_grad():
            q_n, _ = model(T.normalise(alt))
        q = T.decode(T.denormalise(q_n[0].numpy(), mean, std), roi, bases)
        dpx = int(np.abs(alt.astype(int) - small.astype(int)).max())
        dpt = float(np.abs(q[:2] - pts[:2]).max())
        worst_numpy = max(worst_numpy, dpt)

        # fc_lm convention: least squares of BFM crop points against the raw outputs.
        cp = T.crop_points(param, bases)
        v = lm.astype(np.float64).reshape(2, 68)
        for k in range(2):
            A = np.stack([v[k], np.ones(68)], 1)
            (sc, off), *_ = np.linalg.lstsq(A, cp[k], rcond=None)
            rms = float(np.sqrt(np.mean((A @ [sc, off] - cp[k]) ** 2)))
            fit_rows.append((name, "xy"[k], sc, off, rms))
        dlm = float(np.abs(lm_pts - pts[:2]).max())

        sx, sy, ex, ey = [int(round(x)) for x in roi]
        print(
            f"{name} box {box}: roi {r(roi, 3)} crop {ex - sx}x{ey - sy}; yaw {yaw:.2f} pitch {pitch:.2f} "
            f"roll {roll:.2f}; numpy resize: max pixel diff {dpx}, max point shift {dpt:.3f} px; "
            f"fc_lm vs BFM max {dlm:.2f} px"
        )
        faces.append(
            {
                "image": name,
                "box": box,
                "roi": r(roi, 6),
                "crop": [sx, sy, ex, ey],
                "out62": [float(f"{x:.9g}") for x in p_n],
                "lm136": [float(f"{x:.9g}") for x in lm],
                "param": [float(f"{x:.9g}") for x in param],
                "pts68": [r(pts[:, j], 4) for j in range(68)],
                "lm68": [r(lm_pts[:, j], 4) for j in range(68)],
                "pts5": [r(p, 4) for p in T.five_points(pts)],
                "pose": {"yaw": round(yaw, 4), "pitch": round(pitch, 4), "roll": round(roll, 4)},
            }
        )
    for name, k, sc, off, rms in fit_rows:
        print(f"fc_lm fit {name} {k}: crop px = {sc:.3f} * v + {off:.3f} (rms {rms:.3f} crop px)")
    print(f"numpy INTER_LINEAR vs {resizer}: max point shift {worst_numpy:.3f} px")

    synth_bgr = synthetic_rgb()[:, :, ::-1]
    synth = []
    for box in SYNTH_BOXES:
        roi = T.roi_from_box([float(np.float32(v)) for v in box])
        out, _ = T.resize_120(T.crop(synth_bgr, roi))
        assert (out == T.resize_bilinear_u8(T.crop(synth_bgr, roi))).all(), "numpy resize differs from cv2"
        synth.append({"box": box, "crop": [int(round(v)) for v in roi], **crop_summary(out)})

    doc = {
        "what": "3DDFA_V2 mb05 120x120 reference landmarks (tools/landmarks_reference.py)",
        "weights": "mb05_120x120.pth (module.fc_param, module.fc_lm)",
        "mean_std": "param_mean_std_62d_120x120",
        "bases": "3DDFA c++/weights u_base.txt, w_shp_base.txt, w_exp_base.txt",
        "decoder": decoder,
        "resize": resizer,
        "torch": torch.__version__,
        "units": "image pixels; pts68 rows are x, y, z (z: depth scaled by the roi, min subtracted); "
        "pose in degrees",
        "pts5_order": "eye (mean 36-41), eye (mean 42-47), nose tip 30, mouth corners 48, 54",
        "lm_convention": "fc_lm: 68 x then 68 y, crop px = 60 * v + 60, mapped like pts68",
        "faces": faces,
        "synthetic": {
            "size": [SYNTH_W, SYNTH_H],
            "rgb": "(x*(7+c) + y*(13+2c) + ((x*y) % 31)*c + 50c) % 256, c = 0 (R), 1 (G), 2 (B)",
            "summary": "crop BGR HWC flattened v: sum, sum of v*(i % 1009 + 1), every 97th value",
            "crops": synth,
        },
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    text = json.dumps(doc, indent=1)
    # One line per innermost number list: a readable, diffable fixture.
    text = re.sub(r"\[[-0-9.,\se]*\]", lambda m: re.sub(r"\s+", " ", m.group(0)).replace("[ ", "[").replace(" ]", "]"), text)
    with open(a.out, "w") as f:
        f.write(text + "\n")
    print(f"wrote {a.out} ({os.path.getsize(a.out)} bytes)")


if __name__ == "__main__":
    main()
