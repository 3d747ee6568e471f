#!/usr/bin/env python3
"""CPU baseline of one training step of faceswap's "Lightweight" / "Original" autoencoders, for
BENCHMARKS.md beside ``fswap``'s GPU step (issue 7: 64x64, batch 16).

Developer tooling only (needs torch):

    python3 tools/bench_faceswap_cpu.py [--model lightweight original] [--batch 16] [--size 64]
                                        [--iters N] [--warmup W] [--threads T]

What is timed: one step of the pair as faceswap trains it — faces A (batch N) -> encoder -> decoder
A, faces B (batch N) -> encoder -> decoder B, loss MSE(A', A) + MSE(B', B), backward — in PyTorch
eager, float32, NCHW (``AE32`` below: the weights permuted once from the file layout to NCHW
flatten and PyTorch pixel-shuffle order, exactly what the engine does), with and without an Adam
step (lr 5e-5, eps 1e-7). The engine's figure (``cargo test --release --test models_faceswap_ae --
--ignored --nocapture bench``) is forward + backward of the same graph (its optimiser is a separate
kernel family).

Before timing, ``AE32`` is checked against the float64 channels_last reference
(``tools/reference/faceswap_ae.py``) on 2 faces: max |diff| <= 1e-4.

Weights: HeUniform / Glorot-uniform draws from ``numpy.random.RandomState(0)`` (values do not
change the timing). Each configuration runs ``--warmup`` untimed steps, then ``--iters`` timed
ones; the median and minimum ms per step are printed. Threads: ``torch.set_num_threads(T)``
(default: all logical CPUs).
"""

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import faceswap_inputs as fi  # noqa: E402


def random_state(model, size, seed=0):
    rs = np.random.RandomState(seed)
    state = {}
    for name, shape, kind in sorted(fi.tensor_specs(model, size, False)):
        if name.endswith(".bias"):
            a = rs.uniform(-0.1, 0.1, shape)
        elif kind == "linear":
            lim = np.sqrt(6.0 / (shape[0] + shape[1]))
            a = rs.uniform(-lim, lim, shape)
        else:
            lim = np.sqrt(6.0 / int(np.prod(shape[1:])))
            a = rs.uniform(-lim, lim, shape)
        state[name] = a.astype(np.float32)
    return state


def build(torch, model, size, state):
    import torch.nn.functional as F
    from torch import nn

    convs, e, bc, f_enc, dec = fi.arch(model)
    b = size // 16
    side = size >> len(convs)

    def shuffle_rows(w):  # file row q*F + f -> engine row 4f + q
        f = w.shape[0] // 4
        idx = [(j % 4) * f + j // 4 for j in range(w.shape[0])]
        return w[idx]

    def same(x, k, s):
        h = x.shape[2]
        out = -(-h // s)
        total = max((out - 1) * s + k - h, 0)
        return F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))

    class AE32(nn.Module):
        def __init__(self):
            super().__init__()
            p = {}
            for k, v in state.items():
                t = torch.from_numpy(v.copy())
                layer = k.rsplit(".", 1)[0]
                if "upscale" in layer:
                    t = shuffle_rows(t)
                elif layer.endswith("face_out"):
                    t = t.flip(0)  # BGR -> RGB output
                elif k == "encoder.conv1.weight":
                    t = t.flip(1)  # RGB input
                elif k == "encoder.dense1.weight":  # columns (h*W + w)*C + c -> c*HW + h*W + w
                    t = t.reshape(e, side, side, convs[-1]).permute(0, 3, 1, 2).reshape(e, -1)
                elif layer == "encoder.dense2":  # rows likewise
                    t = t.reshape(b, b, bc, -1).permute(2, 0, 1, 3).reshape(t.shape)
                p[k.replace(".", "__")] = nn.Parameter(t.contiguous())
            self.p = nn.ParameterDict(p)

        def w(self, k):
            return self.p[k.replace(".", "__")]

        def conv(self, x, name, k, s):
            return F.conv2d(same(x, k, s), self.w(f"{name}.weight"), self.w(f"{name}.bias"), stride=s)

        def upscale(self, x, name):
            return F.pixel_shuffle(F.leaky_relu(self.conv(x, name, 3, 1), 0.1), 2)

        def encoder(self, x):
            for i in range(len(convs)):
                x = F.leaky_relu(self.conv(x, f"encoder.conv{i + 1}", 5, 2), 0.1)
            x = F.linear(x.flatten(1), self.w("encoder.dense1.weight"), self.w("encoder.dense1.bias"))
            x = F.linear(x, self.w("encoder.dense2.weight"), self.w("encoder.dense2.bias"))
            return self.upscale(x.reshape(-1, bc, b, b), "encoder.upscale")

        def decoder(self, side_, z):
            for i in range(3):
                z = self.upscale(z, f"decoder_{side_}.upscale{i + 1}")
            return torch.sigmoid(self.conv(z, f"decoder_{side_}.face_out", 5, 1))

    return AE32()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", nargs="+", default=["lightweight", "original"],
                    choices=["lightweight", "original"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("torch is not installed: pip install -r tools/requirements.txt", file=sys.stderr)
        return 2
    from reference.faceswap_ae import FaceswapAE

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, {args.size}x{args.size}, batch {args.batch} per side")
    rs = np.random.RandomState(1)
    for model in args.model:
        state = random_state(model, args.size)
        net = build(torch, model, args.size, state)
        # correctness: against the float64 channels_last reference
        ref = FaceswapAE(state)
        x = rs.uniform(0, 1, [2, 3, args.size, args.size])
        with torch.no_grad():
            want = ref.forward(torch.from_numpy(x))
            xt = torch.from_numpy(x.astype(np.float32))
            z = net.encoder(xt)
            for s in ("a", "b"):
                d = float((net.decoder(s, z).double() - want[f"face_{s}"]).abs().max())
                if d > 1e-4:
                    print(f"{model}: float32 module differs from the reference by {d:.2e}",
                          file=sys.stderr)
                    return 1
        fa = torch.from_numpy(rs.uniform(0, 1, [args.batch, 3, args.size, args.size])
                              .astype(np.float32))
        fb = torch.from_numpy(rs.uniform(0, 1, [args.batch, 3, args.size, args.size])
                              .astype(np.float32))
        opt = torch.optim.Adam(net.parameters(), lr=5e-5, eps=1e-7)

        def step(adam):
            opt.zero_grad(set_to_none=True)
            a = net.decoder("a", net.encoder(fa))
            b = net.decoder("b", net.encoder(fb))
            loss = torch.nn.functional.mse_loss(a, fa) + torch.nn.functional.mse_loss(b, fb)
            loss.backward()
            if adam:
                opt.step()

        for adam in (False, True):
            for _ in range(args.warmup):
                step(adam)
            times = []
            for _ in range(args.iters):
                t = time.perf_counter()
                step(adam)
                times.append((time.perf_counter() - t) * 1e3)
            what = "forward + backward + Adam" if adam else "forward + backward"
            print(f"{model:12s} {what:26s} median {statistics.median(times):8.1f} ms/step, "
                  f"min {min(times):8.1f} ms ({sum(p.numel() for p in net.parameters()) / 1e6:.2f}M "
                  "parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
