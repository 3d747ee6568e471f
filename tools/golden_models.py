#!/usr/bin/env python3
"""Whole-model goldens for ArcFace and MobileFaceSwap, and for MobileFSGAN and its MobileFaceNet-512,
from the float64 PyTorch reference.

Run by developers only (needs torch; see tools/requirements.txt), when the reference, the seeds or
the checkpoint generator change:

    python3 tools/golden_models.py [--out tests/fixtures/models] [--keep DIR] [--only mobilefaceswap|mobilefsgan]

``--only mobilefsgan`` (function ``mobilefsgan_goldens``): the PyTorch zip checkpoints of
``random_checkpoint.py --model mobilefsgan --seed 4`` / ``--model mobilefacenet --seed 5`` read by
``torch.load`` itself, the reference of ``tools/reference/mobilefsgan.py`` in eval mode, and
``mobilefsgan_golden`` (batch 2 at 64x96, a different identity per sample), ``mobilefsgan256_golden``
(batch 1 at 256x256), ``mobilefacenet512_golden`` (two faces, and the [26:230] -> 112 crop of the 256
target with its embedding). Their metadata also records ``negative_controls`` (how far images256
moves when the reference makes each plausible mistake: sigmoid attention, BN folded across the zero
padding, half-pixel or zero-padded upsampling, 1 + sigma, the residual on the fused features,
train-mode statistics; each must exceed 0.1) and ``fp16_emulated_max_err`` (the reference with every
module output rounded to float16). The rest of this text describes the MobileFaceSwap group.

Steps:
1. Runs ``tools/random_checkpoint.py`` (NumPy only) with the command lines in CHECKPOINTS to write
   the seeded Paddle-format checkpoints (not committed: CI regenerates them with the same commands,
   and the sha256 recorded in each fixture's metadata says whether it got the same bytes).
2. Draws the inputs from ``numpy.random.RandomState(INPUT_SEED)``, rounded to float16:
   ``face`` [2,3,112,112] ~ N(0,1) clipped to +-3 (an already-normalised ArcFace input), then
   ``target`` [2,3,224,224] ~ U(0,1).
3. ArcFace (depths 1,1,1,1) on ``face``: ``id_embedding_raw`` (bn3 output), ``id_embedding``
   (L2-normalised by plain division), ``id_feature_map`` [2,512,7,7].
4. MobileFaceSwap, injected with sample 0's identity: the reference's own ArcFace outputs, rounded
   to float16 (``id_embedding`` [1,512], ``id_feature_map`` [1,512,7,7]) -> the 9 depthwise and 9
   pointwise kernels (UNet names of spec 1.6), rounded to float16; then the UNet built from those
   rounded kernels (and the checkpoint's final.* / mask.*) on ``target`` -> ``swapped``, ``mask``.
   So every stage's stored inputs are exactly what the stage was computed from.
5. Checks that activations stay bounded (fp16-safe) and that mask / swapped are not saturated, and
   writes the fixtures (each < 1 MB; 224x224 batch-2 tensors do not fit one file, hence the split):

   arcface_golden.safetensors                 face, id_embedding, id_embedding_raw, id_feature_map
   mobilefaceswap_golden.safetensors          IIN: id_embedding, id_feature_map, style.*, kernels
   mobilefaceswap_unet_golden.safetensors     target, mask
   mobilefaceswap_swapped_golden.safetensors  swapped, e4

The safetensors files are written by ``write_safetensors`` below (tensors in a fixed order, JSON
with sorted keys), so running the script twice writes identical bytes.
"""

import argparse
import hashlib
import json
import os
import shlex
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from reference import ArcFace, BuildFaceSwap, inject, load_paddle_state, load_pdparams  # noqa: E402
from reference import unet_forward  # noqa: E402
from reference.arcface import l2_normalize  # noqa: E402
from reference.mobilefaceswap import UNet  # noqa: E402

ARCFACE_DEPTHS = [1, 1, 1, 1]
MFS_SEED = 1
ARC_SEED = 2
INPUT_SEED = 3
FORMAT = "fswap-model-golden/1"

# {out} is the path of the checkpoint to write; the commands run from the repository root
CHECKPOINTS = {
    "mobilefaceswap": {
        "command": f"python3 tools/random_checkpoint.py --model mobilefaceswap --seed {MFS_SEED} {{out}}",
        "file": f"mobilefaceswap_seed{MFS_SEED}.pdparams",
    },
    "arcface": {
        "command": "python3 tools/random_checkpoint.py --model arcface --arcface-depths "
                   f"{','.join(map(str, ARCFACE_DEPTHS))} --seed {ARC_SEED} {{out}}",
        "file": f"arcface_d{''.join(map(str, ARCFACE_DEPTHS))}_seed{ARC_SEED}.pdparams",
    },
}

FSG_SEED = 4
MFN_SEED = 5
FSG_INPUT_SEED = 6
CHECKPOINTS["mobilefsgan"] = {
    "command": f"python3 tools/random_checkpoint.py --model mobilefsgan --seed {FSG_SEED} {{out}}",
    "file": f"mobilefsgan_seed{FSG_SEED}.pth",
}
CHECKPOINTS["mobilefacenet"] = {
    "command": f"python3 tools/random_checkpoint.py --model mobilefacenet --seed {MFN_SEED} {{out}}",
    "file": f"mobilefacenet512_seed{MFN_SEED}.pth",
}
# which checkpoints each group of fixtures needs
GROUPS = {"mobilefaceswap": ["mobilefaceswap", "arcface"], "mobilefsgan": ["mobilefsgan", "mobilefacenet"]}

PRECISION = ("Inputs are stored exactly (they are float16 values). Outputs stored as F16 carry a "
             "rounding error <= 2^-11 relative (half an ulp) on top of the float64 result; F32 "
             "outputs <= 2^-24. Checkpoint values are float16-exact float32, so an fp16 engine "
             "reads exactly the reference's weights.")


# --------------------------------------------------------------------------------------------
# files


_DT = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}


def write_safetensors(path, tensors, metadata):
    """Deterministic safetensors writer: `tensors` is a list of (name, ndarray) in file order."""
    header, offset, blobs = {}, 0, []
    for name, a in tensors:
        a = np.ascontiguousarray(a)
        assert a.dtype in _DT, (name, a.dtype)
        assert offset % a.dtype.itemsize == 0, name  # keep every tensor aligned to its dtype
        b = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": _DT[a.dtype], "shape": list(a.shape),
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


def f16(t):
    """float64 tensor -> float16 ndarray (round to nearest even)."""
    return t.detach().to(torch.float64).numpy().astype(np.float16)


def f32(t):
    return t.detach().to(torch.float64).numpy().astype(np.float32)


def f16_exact(a):
    """float16-rounded values as a float64 torch tensor."""
    return torch.from_numpy(np.asarray(a, dtype=np.float16).astype(np.float64))


# --------------------------------------------------------------------------------------------
# activation statistics


class Recorder:
    """Forward hooks on every leaf module: max |x| and rms of each output (shared modules, such as
    IRBlock.prelu, report each call under the same name; the larger max is kept)."""

    def __init__(self):
        self.stats = {}
        self.handles = []

    def attach(self, model, tag):
        for name, m in model.named_modules():
            if any(True for _ in m.children()):
                continue

            def hook(mod, inp, out, key=f"{tag}:{name}"):
                if not isinstance(out, torch.Tensor):
                    return
                mx, rms = out.abs().max().item(), out.pow(2).mean().sqrt().item()
                old = self.stats.get(key)
                self.stats[key] = (max(mx, old[0]), max(rms, old[1])) if old else (mx, rms)

            self.handles.append(m.register_forward_hook(hook))

    def add(self, key, t):
        self.stats[key] = (t.abs().max().item(), t.pow(2).mean().sqrt().item())

    def detach(self):
        for h in self.handles:
            h.remove()
        self.handles = []

    def compact(self):
        return {k: [float(f"{mx:.4g}"), float(f"{rms:.4g}")] for k, (mx, rms) in self.stats.items()}


# --------------------------------------------------------------------------------------------


def make_checkpoints(work, models):
    out = {}
    for model in models:
        c = CHECKPOINTS[model]
        path = os.path.join(work, c["file"])
        cmd = shlex.split(c["command"].format(out=shlex.quote(path)))
        cmd[0] = sys.executable
        subprocess.run(cmd, cwd=ROOT, check=True)
        with open(path, "rb") as f:
            data = f.read()
        out[model] = {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    return out


def checkpoint_meta(ck, model):
    state = load_pdparams(ck[model]["path"])
    return {"model": model, "command": CHECKPOINTS[model]["command"],
            "sha256": ck[model]["sha256"], "bytes": ck[model]["bytes"], "tensors": len(state)}


def flat_checkpoint_meta(ck, models):
    """The same facts as flat metadata keys (no JSON parsing needed in a test)."""
    out = {}
    for m in models:
        out[f"{m}_pdparams_command"] = CHECKPOINTS[m]["command"]
        out[f"{m}_pdparams_sha256"] = ck[m]["sha256"]
        out[f"{m}_pdparams_bytes"] = ck[m]["bytes"]
    return out


def mobilefaceswap_goldens(args, ck):
    # inputs ------------------------------------------------------------------------------
    rs = np.random.RandomState(INPUT_SEED)
    face = np.clip(rs.standard_normal((2, 3, 112, 112)), -3.0, 3.0).astype(np.float16)
    target = rs.uniform(0.0, 1.0, (2, 3, 224, 224)).astype(np.float16)

    # ArcFace -----------------------------------------------------------------------------
    rec_arc = Recorder()
    arc = ArcFace(ARCFACE_DEPTHS).double().eval()
    arc_state = load_pdparams(ck["arcface"]["path"])
    load_paddle_state(arc, arc_state)
    rec_arc.attach(arc, "arcface")
    emb_raw, fmap = arc.features(f16_exact(face))
    emb = l2_normalize(emb_raw)
    rec_arc.detach()
    rec_arc.add("arcface:id_embedding", emb)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2, dtype=torch.float64))

    # MobileFaceSwap: IIN -----------------------------------------------------------------
    rec_mfs = Recorder()
    bfs = BuildFaceSwap().double().eval()
    mfs_state = load_pdparams(ck["mobilefaceswap"]["path"])
    assert len(mfs_state) == 167
    load_paddle_state(bfs, mfs_state)
    id_emb16, id_map16 = f16(emb[:1]), f16(fmap[:1])
    z, fm = f16_exact(id_emb16), f16_exact(id_map16)
    rec_mfs.attach(bfs, "iin")
    unet_state = inject(bfs, z, fm)
    styles = bfs.styles(z)
    rec_mfs.detach()

    kernel_names = []  # file order: E0..E4 (DW, PW), D0..D3 (DW, PW)
    for i in range(5):
        kernel_names += [f"Encoder.{i}.0.weight", f"Encoder.{i}.1.weight"]
    for j in range(4):
        kernel_names += [f"Decoder.{j}.0.weight", f"Decoder.{j}.1.weight"]
    kernels16 = {k: f16(unet_state[k]) for k in kernel_names}
    for k in kernel_names:
        rec_mfs.add(f"kernel:{k}", unet_state[k])
    for j in range(4):  # demodulated rows have unit norm
        w = unet_state[f"Decoder.{j}.1.weight"].flatten(1)
        assert torch.allclose(w.norm(dim=1), torch.ones(w.shape[0], dtype=torch.float64))

    # MobileFaceSwap: IDN with the float16 kernels ------------------------------------------
    unet_state16 = dict(unet_state)
    unet_state16.update({k: f16_exact(v) for k, v in kernels16.items()})
    unet = UNet().double().eval()
    load_paddle_state(unet, unet_state16)
    rec_mfs.attach(unet, "unet")
    swapped, mask, e4 = unet(f16_exact(target), return_e4=True)
    rec_mfs.detach()
    # the functional entry point gives the same result
    s2, m2 = unet_forward(unet_state16, f16_exact(target))
    assert torch.equal(s2, swapped) and torch.equal(m2, mask)

    # sanity: bounded, not saturated ------------------------------------------------------
    stats = {**rec_arc.stats, **rec_mfs.stats}
    worst = max(stats.items(), key=lambda kv: kv[1][0])
    print(f"largest activation: {worst[0]} max|x| {worst[1][0]:.4g}")
    assert worst[1][0] < 100.0, worst
    tiny = [k for k, (mx, rms) in stats.items() if rms < 1e-2]
    assert not tiny, tiny
    m = mask.numpy()
    s = swapped.numpy()
    print(f"mask: min {m.min():.4f} max {m.max():.4f} mean {m.mean():.4f} std {m.std():.4f}")
    print(f"swapped: min {s.min():.4f} max {s.max():.4f} mean {s.mean():.4f}; "
          f"mean |swapped - target| {np.abs(s - target.astype(np.float64)).mean():.4f}")
    assert m.min() < 0.1 and m.max() > 0.6 and m.std() > 0.05, "mask saturated / flat"
    assert ((s > 0.01) & (s < 0.99)).mean() > 0.9, "swapped saturated"
    print(f"id_embedding cos(sample0, sample1) = {float((emb[0] * emb[1]).sum()):.4f}")

    # write ---------------------------------------------------------------------------------
    common = {
        "format": FORMAT,
        "generator": "tools/golden_models.py (float64 PyTorch reference in tools/reference)",
        "precision": PRECISION,
        "input_seed": INPUT_SEED,
        "inputs": "numpy.random.RandomState(input_seed): face = clip(standard_normal((2,3,112,112)), "
                  "-3, 3); then target = uniform(0, 1, (2,3,224,224)); both rounded to float16",
    }
    arc_ck = json.dumps([checkpoint_meta(ck, "arcface")], sort_keys=True)
    mfs_ck = json.dumps([checkpoint_meta(ck, "arcface"), checkpoint_meta(ck, "mobilefaceswap")],
                        sort_keys=True)
    sizes = {}

    name = "arcface_golden.safetensors"
    sizes[name] = write_safetensors(os.path.join(args.out, name), [
        ("id_embedding", f32(emb)),
        ("id_embedding_raw", f32(emb_raw)),
        ("id_feature_map", f32(fmap)),
        ("face", face),
    ], {**common,
        "model": "arcface",
        "arcface_depths": json.dumps(ARCFACE_DEPTHS),
        "seed": ARC_SEED,
        "checkpoints": arc_ck,
        **flat_checkpoint_meta(ck, ["arcface"]),
        "tensors": json.dumps({
            "face": "F16 [2,3,112,112] input (already normalised)",
            "id_embedding_raw": "F32 [2,512] bn3 output (before L2 normalisation)",
            "id_embedding": "F32 [2,512] id_embedding_raw / ||id_embedding_raw||_2 (no epsilon)",
            "id_feature_map": "F32 [2,512,7,7] head BN2d output (dropout = identity)",
        }, sort_keys=True),
        "activations": json.dumps(rec_arc.compact(), sort_keys=True)})

    mfs_meta = {**common,
                "model": "mobilefaceswap",
                "arcface_depths": json.dumps(ARCFACE_DEPTHS),
                "seed": MFS_SEED,
                "arcface_seed": ARC_SEED,
                "checkpoints": mfs_ck,
                **flat_checkpoint_meta(ck, ["arcface", "mobilefaceswap"]),
                "activations": json.dumps(rec_mfs.compact(), sort_keys=True)}

    name = "mobilefaceswap_golden.safetensors"
    style_items = [(f"style.{k}", f32(v)) for k, v in styles.items()]
    sizes[name] = write_safetensors(os.path.join(args.out, name), style_items + [
        ("id_embedding", id_emb16),
        ("id_feature_map", id_map16),
    ] + [(k, kernels16[k]) for k in kernel_names], {**mfs_meta, "tensors": json.dumps({
        "id_embedding": "F16 [1,512] IIN input: arcface_golden id_embedding[0:1] rounded to f16",
        "id_feature_map": "F16 [1,512,7,7] IIN input: arcface_golden id_feature_map[0:1] rounded",
        "style.EncoderModulation.i / style.DecoderModulation.j":
            "F32 [1,Cin] s = style(id_embedding), before the +1 (debug aid)",
        "Encoder.i.0.weight": "F16 [C,1,4,4] predicted depthwise kernel of E0..E4 (C = 3,32,64,128,256)",
        "Encoder.i.1.weight": "F16 [Cout,Cin,1,1] modulated+demodulated pointwise kernel of E0..E4",
        "Decoder.j.0.weight": "F16 [C,1,3,3] predicted depthwise kernel of D0..D3 (C = 512,512,256,128)",
        "Decoder.j.1.weight": "F16 [Cout,Cin,1,1] modulated+demodulated pointwise kernel of D0..D3",
        "note": "kernels are the float64 results rounded to f16; the UNet goldens were computed "
                "from exactly these rounded kernels; all UNet encoder/decoder biases are 0",
    }, sort_keys=True)})

    name = "mobilefaceswap_unet_golden.safetensors"
    sizes[name] = write_safetensors(os.path.join(args.out, name), [
        ("target", target),
        ("mask", f16(mask)),
    ], {**mfs_meta, "tensors": json.dumps({
        "target": "F16 [2,3,224,224] UNet input, RGB in [0,1]",
        "mask": "F16 [2,1,224,224] UNet mask output (sigmoid)",
        "note": "UNet = the kernels of mobilefaceswap_golden.safetensors + final.*/mask.* of the "
                "checkpoint; swapped is in mobilefaceswap_swapped_golden.safetensors",
    }, sort_keys=True)})

    name = "mobilefaceswap_swapped_golden.safetensors"
    sizes[name] = write_safetensors(os.path.join(args.out, name), [
        ("swapped", f16(swapped)),
        ("e4", f16(e4)),
    ], {**mfs_meta, "tensors": json.dumps({
        "swapped": "F16 [2,3,224,224] UNet output for target of mobilefaceswap_unet_golden",
        "e4": "F16 [2,512,7,7] last encoder stage output (after LeakyReLU; the mask branch input)",
    }, sort_keys=True)})

    for n, sz in sizes.items():
        print(f"{os.path.join(args.out, n)}: {sz} bytes")
        assert sz < 1_000_000, n


# --------------------------------------------------------------------------------------------
# MobileFSGAN


def torch_checkpoint(path):
    """A torch zip checkpoint read by torch itself (an independent reader of the file the engine's
    exporter converts), ``module.`` prefix stripped."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def torch_checkpoint_meta(ck, model):
    return {"model": model, "command": CHECKPOINTS[model]["command"], "sha256": ck[model]["sha256"],
            "bytes": ck[model]["bytes"], "tensors": len(torch_checkpoint(ck[model]["path"]))}


def flat_torch_meta(ck, models):
    out = {}
    for m in models:
        out[f"{m}_pth_command"] = CHECKPOINTS[m]["command"]
        out[f"{m}_pth_sha256"] = ck[m]["sha256"]
        out[f"{m}_pth_bytes"] = ck[m]["bytes"]
    return out


class Quirk:
    """Temporarily replaces `attr` of `cls` (a plausible implementation mistake, for the negative
    controls: each must move the output by much more than the engine's tolerance)."""

    def __init__(self, cls, attr, value):
        self.cls, self.attr, self.value = cls, attr, value

    def __enter__(self):
        self.old = getattr(self.cls, self.attr)
        setattr(self.cls, self.attr, self.value)

    def __exit__(self, *exc):
        setattr(self.cls, self.attr, self.old)


def fsg_negative_controls(gen, target, emb, want):
    """max |images256 - want| for each mistaken reading of the spec."""
    import torch.nn.functional as F
    from reference import mobilefsgan as R

    def bn_eval(bn, x):
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)

    def fsg_sigmoid(self, h, attr):
        a = torch.sigmoid(self.conv_attention(h))
        return self.basic_block(a * h + (1.0 - a) * attr)

    def down_folded(self, x):
        # BN folded into the zero-padded conv: the padding holds bn(0) = beta - mean*k, not 0
        k = self.normalize.weight / torch.sqrt(self.normalize.running_var + self.normalize.eps)
        s = (self.normalize.bias - self.normalize.running_mean * k)[None, :, None, None]
        xp = F.pad(bn_eval(self.normalize, x) - s, (1, 1, 1, 1)) + s
        return R._act(F.conv2d(xp, self.conv.weight, None, 2, 0))

    def up_half_pixel(self, x):
        y = F.interpolate(self.normalize(x), scale_factor=2, mode="bilinear", align_corners=False)
        return R._act(self.conv(self.pad(y)))

    def up_zero_pad(self, x):
        return R._act(F.conv2d(self.upsample(self.normalize(x)), self.conv.weight, None, 1, 1))

    def id_one_plus(self, x, e):
        mu = self.fc_mean(e)[:, :, None, None]
        sigma = self.fc_var(e)[:, :, None, None]
        m = self.normalize(x) * (1.0 + sigma) + mu
        return self.conv3x3(R._act(self.conv1x1(R._act(m))))

    def dec_fused_residual(gen_dec):
        # residual added to the fused features f instead of the pre-fusion h
        def fwd(self, h, attrs):
            x256_0, x256_1, x256_2, x128_0, x128_1, x128_2, x128_3, x64_0, x64_1, x64_2, x64_3, x64_4 = attrs
            def blk(name, h, a):
                b = getattr(self, name)
                att = b.conv_attention(h)
                f = att * h + (1 - att) * a
                return f + b.basic_block(f)
            for name, a in zip(R.DECODER_BLOCKS[:5], (x64_4, x64_3, x64_2, x64_1, x64_0)):
                h = blk(name, h, a)
            i64 = self.image64_output(h)
            h = self.up128(h)
            for name, a in zip(R.DECODER_BLOCKS[5:9], (x128_3, x128_2, x128_1, x128_0)):
                h = blk(name, h, a)
            i128 = self.image128_output(h)
            h = self.up256(h)
            for name, a in zip(R.DECODER_BLOCKS[9:], (x256_2, x256_1, x256_0)):
                h = blk(name, h, a)
            return self.image256_output(h), i128, i64
        return fwd

    controls = {
        "sigmoid_attention": Quirk(R.DecoderBlock, "forward", fsg_sigmoid),
        "bn_folded_across_zero_padding": Quirk(R.Downsample, "forward", down_folded),
        "upsample_align_corners_false": Quirk(R.Upsample, "forward", up_half_pixel),
        "upsample_zero_padding": Quirk(R.Upsample, "forward", up_zero_pad),
        "identity_scale_one_plus_sigma": Quirk(R.IdentityEncoderBlock, "forward", id_one_plus),
        "residual_adds_fused_features": Quirk(R.Decoder, "forward", dec_fused_residual(None)),
    }
    out = {}
    for name, q in controls.items():
        with q:
            got = gen(target, emb)[0]
        out[name] = float((got - want).abs().max())
    import copy

    trained = copy.deepcopy(gen).train()  # batch statistics (a train-mode forward updates the copy's running stats)
    out["train_mode_batch_statistics"] = float((trained(target, emb)[0] - want).abs().max())
    for name, q in controls.items():  # the quirks are undone and the running statistics untouched
        assert torch.equal(gen(target, emb)[0], want), name
    return out


def fp16_emulated(gen, target, emb):
    """The forward with every leaf module's output rounded to float16 (the engine stores every
    activation in fp16): the size of error an fp16 engine makes, independent of the engine."""
    handles = []
    for _, m in gen.named_modules():
        if any(True for _ in m.children()):
            continue
        handles.append(m.register_forward_hook(lambda mod, inp, out: out.half().double()))
    try:
        return gen(target.half().double(), emb.half().double())
    finally:
        for h in handles:
            h.remove()


def mobilefsgan_goldens(args, ck):
    from reference.mobilefsgan import EncoderDecoder, MobileFaceNet512, crop_resize_112, load_state

    gen = EncoderDecoder().double()
    load_state(gen, torch_checkpoint(ck["mobilefsgan"]["path"]))
    gen.eval()
    mfn = MobileFaceNet512().double()
    load_state(mfn, torch_checkpoint(ck["mobilefacenet"]["path"]))
    mfn.eval()

    rs = np.random.RandomState(FSG_INPUT_SEED)

    def unit(n):
        e = rs.standard_normal((n, 512))
        return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float16)

    target = rs.uniform(-1.0, 1.0, (2, 3, 64, 96)).astype(np.float16)
    emb = unit(2)
    target256 = rs.uniform(-1.0, 1.0, (1, 3, 256, 256)).astype(np.float16)
    emb256 = unit(1)
    face = rs.uniform(-1.0, 1.0, (2, 3, 112, 112)).astype(np.float16)

    rec = Recorder()
    rec.attach(gen, "mobilefsgan")
    out = gen(f16_exact(target), f16_exact(emb))
    out256 = gen(f16_exact(target256), f16_exact(emb256))
    rec.detach()
    rec.attach(mfn, "mobilefacenet")
    mfn_raw = mfn.raw(f16_exact(face))
    mfn_emb = mfn(f16_exact(face))
    crop = crop_resize_112(f16_exact(target256))
    crop_emb = mfn(crop)
    rec.detach()
    assert torch.allclose(mfn_emb.norm(dim=1), torch.ones(2, dtype=torch.float64))

    # style (debug aid): sigma(e), mu(e) of every identity block, in the engine's order
    styles = []
    for b in ["b256_down", "b128_down", "b64_down", "b32_down", "b16_down", "b8_down", "b16_up", "b32_up", "b64_up"]:
        blk = getattr(gen.identity_encoder, b)
        styles += [blk.fc_var(f16_exact(emb)), blk.fc_mean(f16_exact(emb))]
    style = torch.cat(styles, dim=1)

    # sanity: bounded activations, outputs neither saturated nor flat
    worst = max(rec.stats.items(), key=lambda kv: kv[1][0])
    print(f"largest activation: {worst[0]} max|x| {worst[1][0]:.4g}")
    assert worst[1][0] < 1000.0, worst  # fp16-safe (65504) with a wide margin
    tiny = [k for k, (mx, rms) in rec.stats.items() if rms < 1e-2]
    assert not tiny, tiny
    for name, t in zip(("images256", "images128", "images64"), out[:3]):
        a = t.numpy()
        sat = float((np.abs(a) > 0.98).mean())
        print(f"{name}: min {a.min():.3f} max {a.max():.3f} std {a.std():.3f} saturated {sat:.3f}")
        assert a.std() > 0.1 and sat < 0.1, name

    # the quirks the tolerance must be able to see, and the fp16 error scale
    controls = fsg_negative_controls(gen, f16_exact(target), f16_exact(emb), out[0])
    emu = fp16_emulated(gen, f16_exact(target), f16_exact(emb))
    emu_err = {n: float((a - b).abs().max()) for n, a, b in zip(("images256", "images128", "images64"), emu[:3], out[:3])}
    emu256 = fp16_emulated(gen, f16_exact(target256), f16_exact(emb256))
    emu256_err = {n: float((a - b).abs().max())
                  for n, a, b in zip(("images256", "images128", "images64"), emu256[:3], out256[:3])}
    print("negative controls (max |images256 - golden|):", json.dumps(controls, indent=1))
    print("fp16-emulated max error:", emu_err, "at 256:", emu256_err)
    assert max(emu_err.values()) < 5e-3 and max(emu256_err.values()) < 5e-3, "too sensitive to fp16 rounding"
    assert min(controls.values()) > 0.1, controls  # 5x the 2e-2 bar

    common = {
        "format": FORMAT,
        "generator": "tools/golden_models.py --only mobilefsgan (float64 PyTorch reference, "
                     "tools/reference/mobilefsgan.py, eval mode: running statistics)",
        "precision": "Inputs are float16 values stored exactly; F16 outputs carry <= 2^-11 relative rounding "
                     "on top of the float64 result. Checkpoint values are float16-exact float32.",
        "input_seed": FSG_INPUT_SEED,
        "inputs": "numpy.random.RandomState(input_seed), in this order: target = uniform(-1,1,(2,3,64,96)); "
                  "id_embedding = unit rows of standard_normal((2,512)); target256 = uniform(-1,1,(1,3,256,256)); "
                  "id_embedding256 = unit rows of standard_normal((1,512)); face = uniform(-1,1,(2,3,112,112)); "
                  "all rounded to float16",
        "checkpoints": json.dumps([torch_checkpoint_meta(ck, "mobilefsgan"), torch_checkpoint_meta(ck, "mobilefacenet")],
                                  sort_keys=True),
        **flat_torch_meta(ck, ["mobilefsgan", "mobilefacenet"]),
        "activations": json.dumps(rec.compact(), sort_keys=True),
    }
    sizes = {}
    name = "mobilefsgan_golden.safetensors"
    sizes[name] = write_safetensors(os.path.join(args.out, name), [
        ("target", target),
        ("id_embedding", emb),
        ("images256", f16(out[0])),
        ("images128", f16(out[1])),
        ("images64", f16(out[2])),
        ("style", f32(style)),
    ], {**common, "model": "mobilefsgan",
        "negative_controls": json.dumps(controls, sort_keys=True),
        "fp16_emulated_max_err": json.dumps(emu_err, sort_keys=True),
        "tensors": json.dumps({
            "target": "F16 [2,3,64,96] generator input in [-1,1] (H, W multiples of 32)",
            "id_embedding": "F16 [2,512] per-sample source embedding (unit before rounding)",
            "images256 / images128 / images64": "F16 [2,3,64,96] / [2,3,32,48] / [2,3,16,24] tanh heads",
            "style": "F32 [2,1152] sigma(e), mu(e) (64 each) of identity blocks b256_down .. b64_up",
            "negative_controls": "max |images256 - golden| when the reference makes each listed mistake",
            "fp16_emulated_max_err": "max error of the reference with every module output rounded to f16",
        }, sort_keys=True)})

    name = "mobilefsgan256_golden.safetensors"
    sizes[name] = write_safetensors(os.path.join(args.out, name), [
        ("target", target256),
        ("id_embedding", emb256),
        ("images256", f16(out256[0])),
        ("images128", f16(out256[1])),
        ("images64", f16(out256[2])),
    ], {**common, "model": "mobilefsgan",
        "fp16_emulated_max_err": json.dumps(emu256_err, sort_keys=True),
        "tensors": json.dumps({
        "target": "F16 [1,3,256,256] generator input in [-1,1] (the trained size)",
        "id_embedding": "F16 [1,512]",
        "images256 / images128 / images64": "F16 [1,3,256,256] / [1,3,128,128] / [1,3,64,64]",
    }, sort_keys=True)})

    name = "mobilefacenet512_golden.safetensors"
    sizes[name] = write_safetensors(os.path.join(args.out, name), [
        ("face", face),
        ("id_embedding", f32(mfn_emb)),
        ("id_embedding_raw", f32(mfn_raw)),
        ("crop112", f32(crop)),
        ("crop_embedding", f32(crop_emb)),
    ], {**common, "model": "mobilefacenet", "tensors": json.dumps({
        "face": "F16 [2,3,112,112] input in [-1,1]",
        "id_embedding_raw": "F32 [2,512] BatchNorm1d output",
        "id_embedding": "F32 [2,512] id_embedding_raw / ||id_embedding_raw||_2",
        "crop112": "F32 [1,3,112,112] crop_resize_112(target256 of mobilefsgan256_golden): rows/cols "
                   "[26:230], bilinear align_corners=True to 112",
        "crop_embedding": "F32 [1,512] the unit embedding of crop112",
    }, sort_keys=True)})
    for n, sz in sizes.items():
        print(f"{os.path.join(args.out, n)}: {sz} bytes")
        assert sz < 1_500_000, n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "models"))
    ap.add_argument("--keep", help="write the checkpoints here (default: a temporary directory)")
    ap.add_argument("--only", choices=["all"] + list(GROUPS), default="all",
                    help="regenerate one group of fixtures (default: all)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    os.makedirs(args.out, exist_ok=True)

    tmp = None
    work = args.keep
    if work is None:
        tmp = tempfile.TemporaryDirectory()
        work = tmp.name
    os.makedirs(work, exist_ok=True)
    groups = list(GROUPS) if args.only == "all" else [args.only]
    ck = make_checkpoints(work, [m for g in groups for m in GROUPS[g]])
    for m, v in ck.items():
        print(f"{m}: {v['path']} sha256 {v['sha256']} ({v['bytes']} bytes)")
    if "mobilefaceswap" in groups:
        mobilefaceswap_goldens(args, ck)
    if "mobilefsgan" in groups:
        mobilefsgan_goldens(args, ck)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
