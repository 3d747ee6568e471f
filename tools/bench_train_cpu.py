#!/usr/bin/env python3
"""PyTorch CPU baseline for the engine's MobileFaceSwap distillation step (BENCHMARKS.md):
injection network + IDN at 224, per-sample identities, alpha-weighted L1 to a teacher output,
backward, Adam. The same work `cargo run --release --example profile -- train B` profiles on the
GPU (there: batch folded into grouped dynamic convolutions; here: one forward per sample, as a
PyTorch implementation without grouped dynamic kernels would run it).

    python3 tools/bench_train_cpu.py --batch 1 8 --steps 3 [--threads N]

Needs torch (tooling only; never on the runtime path, never in CI).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference.mobilefaceswap import BuildFaceSwap, swap_apply  # noqa: E402


def step(model, opt, emb, fmap, target, teacher, alpha):
    opt.zero_grad(set_to_none=True)
    loss = 0.0
    for i in range(target.shape[0]):
        out, _mask = swap_apply(model, emb[i:i + 1], fmap[i:i + 1], target[i:i + 1])
        loss = loss + alpha[i] * (out - teacher[i:i + 1]).abs().mean()
    loss = loss / target.shape[0]
    loss.backward()
    opt.step()
    return float(loss.detach())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = BuildFaceSwap().float()
    model.eval()  # batch norm on running statistics, as the engine's default
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for b in a.batch:
        emb = torch.nn.functional.normalize(torch.randn(b, 512), dim=1)
        fmap = torch.randn(b, 512, 7, 7)
        target = torch.rand(b, 3, 224, 224)
        teacher = torch.rand(b, 3, 224, 224)
        alpha = torch.rand(b)
        step(model, opt, emb, fmap, target, teacher, alpha)  # warm-up
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step(model, opt, emb, fmap, target, teacher, alpha)
        ms = (time.perf_counter() - t0) / a.steps * 1e3
        print(f"batch {b}: {ms:.1f} ms per step ({ms / b:.1f} ms per sample)")


if __name__ == "__main__":
    main()
