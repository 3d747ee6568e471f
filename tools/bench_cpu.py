#!/usr/bin/env python3
"""CPU baselines for the per-frame networks (MobileFaceSwap's IDN, MobileFSGAN's generator), for
BENCHMARKS.md.

Developer tooling only (needs torch; the ONNX Runtime rows also need ``onnxruntime`` and ``onnx``):

    python3 tools/bench_cpu.py [--model idn|mobilefsgan] [--batch 1 8] [--iters N] [--threads T] [--warmup W]

``--model mobilefsgan`` times the MobileFSGAN generator at 256x256 instead (see "MobileFSGAN" below);
the rest of this text describes the default, ``--model idn``.

What is timed
-------------
The injected UNet of spec section 1 (``/work/shared/spec/mobilefaceswap.md``): input normalisation,
the 5 encoder and 4 decoder depthwise-separable stages, the ``final`` RGB head, the ``mask`` branch
and the in-network blend ``out * m + (1 - m) * data``, at 224x224, float32, returning
``(swapped, mask)``. The identity is already baked into the weights (the IIN is not timed).

Weights: ``tools/random_checkpoint.py`` (model mobilefaceswap, seed 1; the same generator CI uses)
-> the float64 reference ``BuildFaceSwap`` -> ``reference.inject`` with a seeded identity
(``numpy.random.RandomState(2)``: a unit-norm 512-d embedding and an N(0,1) 512x7x7 feature map)
-> the 92 UNet tensors. They are loaded into ``IDN32`` below, a float32 ``nn.Module`` written from
the spec (the 18 dynamic convs are bias-free, since the injection leaves their biases at zero).
Before anything is timed, its output is checked against the float64 reference ``unet_forward``
(max |diff| <= 1e-4 for swapped and mask), so the timed network is the right one.

Frameworks
----------
(a) PyTorch eager, float32, ``torch.inference_mode()``, ``torch.set_num_threads(T)``.
(b) ONNX Runtime, CPUExecutionProvider: the same float32 module exported by ``torch.onnx.export``
    (TorchScript exporter, opset 17, fixed batch, constant folding); bilinear x2 upsampling with
    align_corners=True becomes ``Resize`` with ``coordinate_transformation_mode=align_corners``
    (checked in the graph). Session: ``intra_op_num_threads = T``, ``inter_op_num_threads = 1``,
    sequential execution, ``ORT_ENABLE_ALL`` graph optimisations. Its output is checked against
    the PyTorch float32 module (<= 1e-4) before timing.

Each (framework, batch) runs ``--warmup`` untimed iterations, then at least 20 timed iterations
(batch 1; at least 5 for batch >= 8), each timed with ``time.perf_counter``; the table reports the
median (and the minimum) ms per batch and the median ms per frame. Default threads: all logical
CPUs (``os.cpu_count()``).

MobileFSGAN
-----------
``--model mobilefsgan``: the float64 reference ``tools/reference/mobilefsgan.EncoderDecoder`` (written
from the spec) cast to float32, eval mode (running statistics), loaded from
``tools/random_checkpoint.py --model mobilefsgan --seed 4`` (the goldens' checkpoint, built in
memory), wrapped to take the target [N,3,256,256] in [-1,1] and a fixed unit embedding per sample
and to return the three heads (images256, images128, images64), as the engine computes them; its
nine fc_var/fc_mean pairs (0.6 MMAC) run inside the timed forward, where the engine runs them once
per identity. Checked against the float64 reference at 64x96, batch 2 (max |diff| <= 1e-3) before
timing; ONNX Runtime gets the same module exported (5 Resize nodes, linear / align_corners, and
reflect Pads checked in the graph), checked against PyTorch (<= 1e-3). Default batch: 1.

Exit status: 0 when every row was measured; 2 when torch is missing, or when onnxruntime/onnx are
missing (the PyTorch rows are still printed, with a message saying how to install them); 1 when a
correctness check fails.
"""

import argparse
import io
import os
import platform
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

MFS_SEED = 1  # tools/random_checkpoint.py --model mobilefaceswap --seed 1
IDENTITY_SEED = 2
INPUT_SEED = 3
SIZE = 224
OPSET = 17
TOL_REF = 1e-4  # float32 module vs float64 reference
TOL_ORT = 1e-4  # ONNX Runtime vs float32 module
MIN_ITERS_SMALL = 20  # batch < 8
MIN_ITERS_LARGE = 5  # batch >= 8


def _missing(pkg, hint):
    print(f"bench_cpu: {pkg} is not installed ({hint}).", file=sys.stderr)


try:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as e:  # pragma: no cover - depends on the environment
    _missing(getattr(e, "name", None) or "torch/numpy",
             "this benchmark needs torch and numpy: pip install torch numpy")
    sys.exit(2)


# --------------------------------------------------------------------------------------------
# the float32 IDN (spec section 1), loaded from the 92 Paddle-named UNet tensors

ENC_CH = [3, 32, 64, 128, 256, 512]
DEC_IN = [512, 512, 256, 128]
DEC_OUT = [256, 128, 64, 32]
MASK_CH = [512, 128, 64, 32, 8, 2]
LEAKY = 0.1
BN_EPS = 1e-5


def _up(x):
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)


class _Stage(nn.Module):
    """Bias-free DW conv -> bias-free PW conv (the injected encoder/decoder convs)."""

    def __init__(self, c, cout, k, stride, pad):
        super().__init__()
        self.dw = nn.Conv2d(c, c, k, stride=stride, padding=pad, groups=c, bias=False)
        self.pw = nn.Conv2d(c, cout, 1, bias=False)

    def forward(self, x):
        return F.leaky_relu(self.pw(self.dw(x)), LEAKY)


class _MaskBlock(nn.Module):
    """up2 -> DW 3x3 (bias) -> PW 1x1 (bias) -> BN -> LReLU."""

    def __init__(self, a, b):
        super().__init__()
        self.dw = nn.Conv2d(a, a, 3, padding=1, groups=a)
        self.pw = nn.Conv2d(a, b, 1)
        self.bn = nn.BatchNorm2d(b, eps=BN_EPS)

    def forward(self, x):
        return F.leaky_relu(self.bn(self.pw(self.dw(_up(x)))), LEAKY)


class IDN32(nn.Module):
    """The static per-identity IDN: data [N,3,224,224] RGB in [0,1] -> (swapped, mask)."""

    def __init__(self):
        super().__init__()
        self.enc = nn.ModuleList([_Stage(a, b, 4, 2, 1) for a, b in zip(ENC_CH[:-1], ENC_CH[1:])])
        self.dec = nn.ModuleList([_Stage(a, b, 3, 1, 1) for a, b in zip(DEC_IN, DEC_OUT)])
        c = DEC_OUT[-1]
        self.f1, self.f2 = nn.Conv2d(c, c // 4, 1), nn.BatchNorm2d(c // 4, eps=BN_EPS)
        self.f4, self.f5 = nn.Conv2d(c // 4, 3, 3, padding=1), nn.BatchNorm2d(3, eps=BN_EPS)
        self.f7 = nn.Conv2d(3, 3, 3, padding=1)
        self.mask = nn.ModuleList([_MaskBlock(a, b) for a, b in zip(MASK_CH[:-1], MASK_CH[1:])])
        self.mask5 = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, data):
        x = (data - 0.5) / 0.5
        skips = []
        for st in self.enc:
            x = st(x)
            skips.append(x)  # e0..e4
        m = skips[4]
        for blk in self.mask:
            m = blk(m)
        m = torch.sigmoid(self.mask5(m))
        y = skips[4]
        for j, st in enumerate(self.dec):
            y = st(_up(y))
            if j < 3:
                y = torch.cat([y, skips[3 - j]], dim=1)  # e3, e2, e1 (e0 is never a skip)
        y = _up(y)
        y = F.leaky_relu(self.f2(self.f1(y)), LEAKY)
        y = F.leaky_relu(self.f5(self.f4(y)), LEAKY)
        out = (torch.tanh(self.f7(y)) + 1.0) / 2.0
        return out * m + (1.0 - m) * data, m

    @torch.no_grad()
    def load_unet_state(self, st):
        """Loads the 92 UNet tensors (spec 1.6 names); every key must be used exactly once."""
        used = set()

        def t(key, shape):
            v = st[key]
            v = v.detach().to(torch.float32) if isinstance(v, torch.Tensor) else torch.tensor(
                np.asarray(v), dtype=torch.float32)
            if tuple(v.shape) != tuple(shape):
                raise ValueError(f"{key}: shape {tuple(v.shape)}, module wants {tuple(shape)}")
            used.add(key)
            return v

        def conv(m, key):
            m.weight.copy_(t(key + ".weight", m.weight.shape))
            if m.bias is not None:
                m.bias.copy_(t(key + ".bias", m.bias.shape))

        def bn(m, key):
            m.weight.copy_(t(key + ".weight", m.weight.shape))
            m.bias.copy_(t(key + ".bias", m.bias.shape))
            m.running_mean.copy_(t(key + "._mean", m.running_mean.shape))
            m.running_var.copy_(t(key + "._variance", m.running_var.shape))

        for name, stages in (("Encoder", self.enc), ("Decoder", self.dec)):
            for i, s in enumerate(stages):
                for k, m in (("0", s.dw), ("1", s.pw)):
                    conv(m, f"{name}.{i}.{k}")
                    b = t(f"{name}.{i}.{k}.bias", (m.out_channels,))
                    if b.abs().max().item() != 0.0:
                        raise ValueError(f"{name}.{i}.{k}.bias is not zero; IDN32 drops it")
        conv(self.f1, "final.1")
        bn(self.f2, "final.2")
        conv(self.f4, "final.4")
        bn(self.f5, "final.5")
        conv(self.f7, "final.7")
        for i, blk in enumerate(self.mask):
            conv(blk.dw, f"mask.{i}.1")
            conv(blk.pw, f"mask.{i}.2")
            bn(blk.bn, f"mask.{i}.3")
        conv(self.mask5, "mask.5")
        extra = sorted(set(st) - used)
        if extra or len(used) != 92:
            raise KeyError(f"{len(used)} keys used; unused: {extra[:10]}")


# --------------------------------------------------------------------------------------------
# weights and checks


def build_unet_state():
    """The 92 float64 UNet tensors: random checkpoint (seed 1) + seeded identity -> inject."""
    import random_checkpoint
    from reference import BuildFaceSwap, inject, load_paddle_state

    ck = random_checkpoint.build("mobilefaceswap", MFS_SEED)
    bfs = BuildFaceSwap().double().eval()
    load_paddle_state(bfs, ck)
    rs = np.random.RandomState(IDENTITY_SEED)
    z = rs.standard_normal((1, 512))
    z /= np.linalg.norm(z)
    fmap = rs.standard_normal((1, 512, 7, 7))
    return inject(bfs, torch.from_numpy(z), torch.from_numpy(fmap))


def make_input(batch):
    rs = np.random.RandomState(INPUT_SEED)
    return torch.from_numpy(rs.uniform(0.0, 1.0, (batch, 3, SIZE, SIZE)).astype(np.float32))


def max_diff(a, b):
    return float((torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64))
                 .abs().max())


def check_against_reference(model, unet_state):
    from reference import unet_forward

    img = make_input(2)
    with torch.inference_mode():
        s32, m32 = model(img)
    s64, m64 = unet_forward(unet_state, img.double())
    ds, dm = max_diff(s32, s64), max_diff(m32, m64)
    print(f"check: float32 IDN vs float64 reference unet_forward (batch 2): "
          f"max|d swapped| {ds:.2e}, max|d mask| {dm:.2e} (tol {TOL_REF:g}); "
          f"mask range [{float(m64.min()):.3f}, {float(m64.max()):.3f}]")
    if not (ds <= TOL_REF and dm <= TOL_REF):
        print("bench_cpu: the float32 module does not match the reference; not timing it.",
              file=sys.stderr)
        sys.exit(1)
    if float(m64.min()) > 0.99 or float(m64.max()) < 0.01:
        print("bench_cpu: warning: the mask is saturated with these weights", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# MobileFSGAN

FSG_SEED = 4  # tools/random_checkpoint.py --model mobilefsgan --seed 4 (tools/golden_models.py)
FSG_SIZE = 256
TOL_FSG = 1e-3


class FSG32(nn.Module):
    """The reference generator in float32 with fixed per-sample embeddings: target -> the 3 heads."""

    def __init__(self, batch):
        super().__init__()
        import random_checkpoint
        from reference.mobilefsgan import EncoderDecoder, load_state

        gen = EncoderDecoder().double()
        load_state(gen, {k: torch.from_numpy(v) for k, v in
                         random_checkpoint.build("mobilefsgan", FSG_SEED).items()})
        self.ref = gen.eval()
        self.gen = EncoderDecoder().float().eval()
        self.gen.load_state_dict(gen.state_dict())
        rs = np.random.RandomState(IDENTITY_SEED)
        e = rs.standard_normal((batch, 512))
        self.register_buffer("emb", torch.from_numpy(e / np.linalg.norm(e, axis=1, keepdims=True)).float())
        # eval as a whole: torch.onnx.export restores the wrapper's mode recursively afterwards
        self.eval()

    def forward(self, target):
        return self.gen(target, self.emb)[:3]


def fsg_input(batch, h=FSG_SIZE, w=FSG_SIZE):
    rs = np.random.RandomState(INPUT_SEED)
    return torch.from_numpy(rs.uniform(-1.0, 1.0, (batch, 3, h, w)).astype(np.float32))


def check_fsg(model_for):
    m = model_for(2)
    x = fsg_input(2, 64, 96)
    with torch.inference_mode():
        o32 = m(x)
        o64 = m.ref(x.double(), m.emb.double())[:3]
    d = max(max_diff(a, b) for a, b in zip(o32, o64))
    print(f"check: float32 MobileFSGAN vs float64 reference (64x96, batch 2): max|d| {d:.2e} (tol {TOL_FSG:g})")
    if not d <= TOL_FSG:
        print("bench_cpu: the float32 module does not match the reference; not timing it.", file=sys.stderr)
        sys.exit(1)


# --------------------------------------------------------------------------------------------
# timing


def iters_for(batch, requested):
    floor = MIN_ITERS_LARGE if batch >= 8 else MIN_ITERS_SMALL
    if requested is None:
        return 30 if batch < 8 else 10
    return max(requested, floor)


def time_it(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts), min(ts)


def bench_torch(model, batch, threads, warmup, iters, make=None):
    torch.set_num_threads(threads)
    x = (make or make_input)(batch)

    def run():
        with torch.inference_mode():
            model(x)

    return time_it(run, warmup, iters)


def export_onnx(model, batch, fsgan=False):
    """ONNX bytes of `model` at a fixed batch (opset 17, TorchScript exporter)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, ((fsg_input if fsgan else make_input)(batch),), buf, opset_version=OPSET,
                          input_names=["data"],
                          output_names=["images256", "images128", "images64"] if fsgan else ["swapped", "mask"],
                          do_constant_folding=True, dynamo=False)
    data = buf.getvalue()
    import onnx

    g = onnx.load_from_string(data)
    onnx.checker.check_model(g)
    resizes = [n for n in g.graph.node if n.op_type == "Resize"]
    if fsgan:
        pads = [n for n in g.graph.node if n.op_type == "Pad"]
        for n in pads:
            mode = {a.name: a for a in n.attribute}.get("mode")
            if mode is None or mode.s != b"reflect":
                raise RuntimeError(f"Pad node {n.name} is not reflect")
        if len(resizes) != 5 or len(pads) != 5:
            raise RuntimeError(f"expected 5 Resize and 5 Pad nodes, got {len(resizes)} and {len(pads)}")
    for n in resizes:
        attrs = {a.name: a for a in n.attribute}
        ctm = attrs.get("coordinate_transformation_mode")
        mode = attrs.get("mode")
        if ctm is None or ctm.s != b"align_corners" or mode is None or mode.s != b"linear":
            raise RuntimeError(f"Resize node {n.name} is not linear/align_corners")
    # 4 decoder + 1 final + 5 mask upsamplings; the exporter merges up2(e4), which D0 and mask.0
    # both compute, into one node (9)
    if not fsgan and len(resizes) not in (9, 10):
        raise RuntimeError(f"expected 9 or 10 Resize nodes, got {len(resizes)}")
    return data


def ort_session(onnx_bytes, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_bytes, sess_options=so, providers=["CPUExecutionProvider"])


def bench_ort_fsgan(model, batch, threads, warmup, iters):
    sess = ort_session(export_onnx(model, batch, fsgan=True), threads)
    x = fsg_input(batch)
    feed = {"data": x.numpy()}
    got = sess.run(None, feed)
    torch.set_num_threads(threads)
    with torch.inference_mode():
        want = model(x)
    d = max(max_diff(a, b) for a, b in zip(got, want))
    print(f"check: ONNX Runtime vs PyTorch float32 MobileFSGAN (batch {batch}): max|d| {d:.2e} (tol {TOL_FSG:g})")
    if not d <= TOL_FSG:
        print("bench_cpu: ONNX Runtime output does not match PyTorch; not timing it.", file=sys.stderr)
        sys.exit(1)
    return time_it(lambda: sess.run(None, feed), warmup, iters)


def bench_ort(model, batch, threads, warmup, iters):
    sess = ort_session(export_onnx(model, batch), threads)
    x = make_input(batch)
    feed = {"data": x.numpy()}
    s_ort, m_ort = sess.run(None, feed)
    torch.set_num_threads(threads)
    with torch.inference_mode():
        s_pt, m_pt = model(x)
    ds, dm = max_diff(s_ort, s_pt), max_diff(m_ort, m_pt)
    print(f"check: ONNX Runtime vs PyTorch float32 (batch {batch}): max|d swapped| {ds:.2e}, "
          f"max|d mask| {dm:.2e} (tol {TOL_ORT:g})")
    if not (ds <= TOL_ORT and dm <= TOL_ORT):
        print("bench_cpu: ONNX Runtime output does not match PyTorch; not timing it.",
              file=sys.stderr)
        sys.exit(1)
    return time_it(lambda: sess.run(None, feed), warmup, iters)


# --------------------------------------------------------------------------------------------
# machine description


def cpu_description():
    model, fam, mod, cores_per_socket, sockets = None, None, None, None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k, v = k.strip(), v.strip()
                if k == "model name" and model is None:
                    model = v
                elif k == "cpu family" and fam is None:
                    fam = v
                elif k == "model" and mod is None:
                    mod = v
                elif k == "cpu cores" and cores_per_socket is None:
                    cores_per_socket = v
                elif k == "physical id":
                    sockets.add(v)
    except OSError:
        pass
    model = model or platform.processor() or "unknown CPU"
    extra = f" (family {fam}, model {mod})" if fam and mod else ""
    phys = ""
    if cores_per_socket:
        phys = f", {int(cores_per_socket) * max(1, len(sockets))} physical cores"
    return f"{model}{extra}, {os.cpu_count()} logical CPUs{phys}"


# --------------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["idn", "mobilefsgan"], default="idn",
                    help="idn: MobileFaceSwap's per-frame network at 224 (default); mobilefsgan: the "
                         "MobileFSGAN generator at 256")
    ap.add_argument("--batch", type=int, nargs="+", default=None,
                    help="batch sizes (default 1 8 for idn, 1 for mobilefsgan)")
    ap.add_argument("--iters", type=int, default=None,
                    help="timed iterations per row (default 30 for batch < 8, 10 for batch >= 8; "
                         f"never fewer than {MIN_ITERS_SMALL} / {MIN_ITERS_LARGE})")
    ap.add_argument("--warmup", type=int, default=3, help="untimed iterations per row (default 3)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="intra-op threads for both frameworks (default: all logical CPUs)")
    args = ap.parse_args(argv)
    if args.batch is None:
        args.batch = [1, 8] if args.model == "idn" else [1]
    if min(args.batch) < 1 or args.threads < 1 or args.warmup < 0:
        ap.error("--batch and --threads must be positive, --warmup non-negative")

    ort_missing = []
    for pkg in ("onnxruntime", "onnx"):
        try:
            __import__(pkg)
        except ImportError:
            ort_missing.append(pkg)
    if ort_missing:
        _missing(" and ".join(ort_missing),
                 "pip install onnxruntime onnx; the ONNX Runtime rows are skipped")

    torch.set_num_threads(args.threads)
    if args.model == "mobilefsgan":
        return main_fsgan(args, ort_missing)
    unet_state = build_unet_state()
    model = IDN32().eval()
    model.load_unet_state(unet_state)
    for p in model.parameters():
        p.requires_grad_(False)
    check_against_reference(model, unet_state)

    rows = []
    for b in args.batch:
        n = iters_for(b, args.iters)
        med, mn = bench_torch(model, b, args.threads, args.warmup, n)
        rows.append(("PyTorch eager fp32", torch.__version__, b, args.threads, n, med, mn))
        if not ort_missing:
            import onnxruntime as ort

            med, mn = bench_ort(model, b, args.threads, args.warmup, n)
            rows.append((f"ONNX Runtime CPU fp32 (opset {OPSET})", ort.__version__, b,
                         args.threads, n, med, mn))

    print()
    print(f"CPU: {cpu_description()}")
    vers = f"Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}"
    if not ort_missing:
        import onnx
        import onnxruntime as ort

        vers += f", onnxruntime {ort.__version__}, onnx {onnx.__version__}"
    print(f"Software: {vers}; {platform.system()} {platform.release()}")
    print(f"Network: MobileFaceSwap IDN (injected UNet + final + mask + blend), "
          f"{SIZE}x{SIZE}, float32, seeded random weights (checkpoint seed {MFS_SEED}, "
          f"identity seed {IDENTITY_SEED}); warm-up {args.warmup}")
    print()
    hdr = ("framework", "version", "batch", "threads", "iters", "median ms/batch",
           "min ms/batch", "median ms/frame")
    lines = [hdr] + [(f, v, str(b), str(t), str(n), f"{med:.2f}", f"{mn:.2f}", f"{med / b:.2f}")
                     for f, v, b, t, n, med, mn in rows]
    w = [max(len(r[i]) for r in lines) for i in range(len(hdr))]
    print("| " + " | ".join(h.ljust(w[i]) for i, h in enumerate(hdr)) + " |")
    print("|" + "|".join("-" * (w[i] + 2) for i in range(len(hdr))) + "|")
    for r in lines[1:]:
        print("| " + " | ".join(c.ljust(w[i]) if i < 2 else c.rjust(w[i])
                                for i, c in enumerate(r)) + " |")
    if ort_missing:
        print(f"\nONNX Runtime rows skipped: {' and '.join(ort_missing)} not installed "
              "(pip install onnxruntime onnx).")
        return 2
    return 0


def main_fsgan(args, ort_missing):
    torch.set_grad_enabled(False)
    check_fsg(FSG32)
    rows = []
    for b in args.batch:
        model = FSG32(b)
        n = iters_for(b, args.iters) if args.iters is not None else (10 if b < 8 else 5)
        med, mn = bench_torch(model, b, args.threads, args.warmup, n, make=fsg_input)
        rows.append(("PyTorch eager fp32", torch.__version__, b, args.threads, n, med, mn))
        if not ort_missing:
            import onnxruntime as ort

            med, mn = bench_ort_fsgan(model, b, args.threads, args.warmup, n)
            rows.append((f"ONNX Runtime CPU fp32 (opset {OPSET})", ort.__version__, b,
                         args.threads, n, med, mn))
    print()
    print(f"CPU: {cpu_description()}")
    print(f"Software: Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}; "
          f"{platform.system()} {platform.release()}")
    print(f"Network: MobileFSGAN generator (3 heads), {FSG_SIZE}x{FSG_SIZE}, float32, eval mode, seeded random "
          f"weights (checkpoint seed {FSG_SEED}); warm-up {args.warmup}")
    print()
    print("| framework | version | batch | threads | iters | median ms/batch | min ms/batch | median ms/frame |")
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    for f, v, b, t, n, med, mn in rows:
        print(f"| {f} | {v} | {b} | {t} | {n} | {med:.1f} | {mn:.1f} | {med / b:.1f} |")
    return 2 if ort_missing else 0


if __name__ == "__main__":
    sys.exit(main())
