"""Independent float64 PyTorch reference of faceswap's "Lightweight" and "Original" autoencoders.

Written from the spec (``/work/shared/spec/alignment.md`` part B.2: lightweight.py, original.py,
nn_blocks.py), not from the engine: it runs faceswap's own **channels_last** semantics explicitly,
on NHWC tensors and on **BGR** images (faceswap's model ``color_order``), with the weights exactly
as the file stores them. The engine instead permutes the weights once at load and runs NCHW / RGB;
the goldens compare the two.

* Conv2DBlock: Conv2D(k=5, strides=2, padding='same') + bias, LeakyReLU(0.1). Keras 'same':
  out = ceil(in / s), total padding max((out - 1)*s + k - in, 0), floor(total/2) before and the
  rest after (even sizes at k5 s2: 1 before, 2 after).
* UpscaleBlock(F): Conv2D(4F, k=3, 'same') + bias, LeakyReLU(0.1), PixelShuffler(2):
  NHWC (n, h, w, 4F) -> reshape (n, h, w, 2, 2, F) -> transpose (0, 1, 3, 2, 4, 5) -> reshape
  (n, 2h, 2w, F).
* Flatten (NHWC, so feature (h*W + w)*C + c) -> Dense(E) -> Dense(H*W*C) -> Reshape((H, W, C)).
* Conv2DOutput: Conv2D(k=5, 'same') + bias, then sigmoid.

File layout read here (``tools/faceswap_inputs.py``): conv weights [cout, cin, kh, kw] (= Keras
kernel (kh, kw, cin, cout) transposed (3, 2, 0, 1)), dense weights [out, in]; channel orders are
faceswap's own (so nothing is permuted here).

``FaceswapAE(state)``: configuration read from the state dict (model, size, mask branch, lowmem);
``forward(face_rgb_nchw, tap=None) -> {"face_a", "face_b"[, "mask_a", "mask_b"]}`` in the engine's
convention (RGB, NCHW); ``tap(name, tensor) -> tensor`` is called on every intermediate the engine
materialises (for the fp16-storage model of tools/golden_faceswap.py).
"""

import numpy as np
import torch
import torch.nn.functional as F

LEAKY = 0.1


def _same_pads(size, k, s):
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def conv_same_nhwc(x, w, b, stride):
    """Keras Conv2D(padding='same') on NHWC ``x`` with a [cout, cin, kh, kw] kernel."""
    k = w.shape[2]
    pt, pb = _same_pads(x.shape[1], k, stride)
    pl, pr = _same_pads(x.shape[2], k, stride)
    y = F.conv2d(F.pad(x.permute(0, 3, 1, 2), (pl, pr, pt, pb)), w, b, stride=stride)
    return y.permute(0, 2, 3, 1)


def pixel_shuffler_nhwc(x, r=2):
    """faceswap PixelShuffler, channels_last."""
    n, h, w, c = x.shape
    oc = c // (r * r)
    x = x.reshape(n, h, w, r, r, oc).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h * r, w * r, oc)


class FaceswapAE:
    """Parameters are float64 leaf tensors in ``self.params`` (file names, file layouts)."""

    def __init__(self, state):
        self.params = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)).clone()
                       for k, v in state.items()}
        p = self.params
        self.lowmem = "encoder.conv4.weight" not in p and "encoder.upscale.weight" in p \
            and p["encoder.upscale.weight"].shape[0] == 2048
        self.model = "original" if p["encoder.upscale.weight"].shape[0] == 2048 else "lightweight"
        self.n_convs = 4 if "encoder.conv4.weight" in p else 3
        self.learn_mask = "decoder_a.mask_out.weight" in p
        c_last = p[f"encoder.conv{self.n_convs}.weight"].shape[0]
        flat = p["encoder.dense1.weight"].shape[1]
        side = int(round((flat // c_last) ** 0.5))
        assert side * side * c_last == flat
        self.size = side << self.n_convs
        self.bottleneck = 1024 if self.model == "original" else 512
        self.dec_filters = [256, 128, 64] if self.model == "original" else [512, 256, 128]

    def requires_grad_(self, flag=True):
        for t in self.params.values():
            t.requires_grad_(flag)
        return self

    def _block(self, x, prefix, stride, tap):
        p = self.params
        z = conv_same_nhwc(x, p[f"{prefix}.weight"], p[f"{prefix}.bias"], stride)
        z = tap(f"{prefix}:conv", z)
        return tap(f"{prefix}:act", F.leaky_relu(z, LEAKY))

    def _upscale(self, x, prefix, tap):
        return tap(f"{prefix}:shuffle", pixel_shuffler_nhwc(self._block(x, prefix, 1, tap)))

    def encoder(self, x, tap):
        """NHWC BGR [N, S, S, 3] -> NHWC [N, S/8, S/8, F]."""
        p = self.params
        for i in range(self.n_convs):
            x = self._block(x, f"encoder.conv{i + 1}", 2, tap)
        n = x.shape[0]
        x = x.reshape(n, -1)  # Flatten, channels_last order
        x = tap("encoder.dense1", x @ p["encoder.dense1.weight"].t() + p["encoder.dense1.bias"])
        x = tap("encoder.dense2", x @ p["encoder.dense2.weight"].t() + p["encoder.dense2.bias"])
        b = self.size // 16
        x = x.reshape(n, b, b, self.bottleneck)  # Reshape((S/16, S/16, C))
        return self._upscale(x, "encoder.upscale", tap)

    def decoder(self, side, z, tap):
        """NHWC latent -> {face: NHWC BGR [N, S, S, 3], mask: NHWC [N, S, S, 1]}."""
        p = self.params
        out = {}
        branches = [("upscale", "face_out", "face")]
        if self.learn_mask:
            branches.append(("mask_upscale", "mask_out", "mask"))
        for up, o, key in branches:
            h = z
            for i in range(3):
                h = self._upscale(h, f"decoder_{side}.{up}{i + 1}", tap)
            y = conv_same_nhwc(h, p[f"decoder_{side}.{o}.weight"], p[f"decoder_{side}.{o}.bias"], 1)
            y = tap(f"decoder_{side}.{o}:conv", y)
            out[key] = tap(f"decoder_{side}.{o}:sigmoid", torch.sigmoid(y))
        return out

    def forward(self, face_rgb_nchw, tap=None):
        """Engine convention in and out: RGB NCHW in [0, 1]."""
        tap = tap or (lambda _name, t: t)
        bgr = face_rgb_nchw.flip(1).permute(0, 2, 3, 1)  # faceswap feeds BGR, NHWC
        z = self.encoder(bgr, tap)
        out = {}
        for side in ("a", "b"):
            d = self.decoder(side, z, tap)
            out[f"face_{side}"] = d["face"].permute(0, 3, 1, 2).flip(1)  # BGR NHWC -> RGB NCHW
            if "mask" in d:
                out[f"mask_{side}"] = d["mask"].permute(0, 3, 1, 2)
        return out
