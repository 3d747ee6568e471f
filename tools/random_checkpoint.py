#!/usr/bin/env python3
"""Seeded random checkpoints in the official formats (NumPy only; runs in CI): Paddle ``.pdparams``
for MobileFaceSwap and its ArcFace, PyTorch zip ``.pth`` for MobileFSGAN and its MobileFaceNet-512.

    python3 tools/random_checkpoint.py --model mobilefaceswap --seed 1 OUT.pdparams
    python3 tools/random_checkpoint.py --model arcface --arcface-depths 1,1,1,1 --seed 2 OUT.pdparams
    python3 tools/random_checkpoint.py --model mobilefsgan --seed 4 OUT.pth
    python3 tools/random_checkpoint.py --model mobilefacenet --seed 5 OUT.pth

The PyTorch files (``torch_dumps``) are what ``torch.save(state_dict)`` writes: a zip (stored, fixed
timestamps, written byte by byte below so the sha256 does not depend on the Python version) holding
``archive/data.pkl`` (protocol 2: an OrderedDict of ``torch._utils._rebuild_tensor_v2`` records over
persistent-id storages), ``archive/byteorder``, ``archive/data/<key>`` and ``archive/version``;
``torch.load(..., weights_only=True)`` reads them. The MobileFSGAN generator's keys carry the
``module.`` prefix of the official DDP checkpoints; int64 ``num_batches_tracked`` counters are
included. Value scales for those two models are described above ``mobilefsgan_spec()``.

The model checkpoints are too big to commit (the ArcFace FC alone is 25088 x 512). CI regenerates
them with this script, and ``tests/fixtures/models/*_golden.safetensors`` record the sha256 of the
file each command writes, so a test can confirm it got the checkpoint the goldens were computed
from.

File format
-----------
Exactly what ``pickle.dump(state_dict, f, protocol=4)`` writes for a dict ``name -> numpy float32
C-contiguous ndarray`` under NumPy 1.x, which is what ``paddle.save`` wrote for the official
checkpoints (PaddlePaddle 2.1): PROTO 4, 64 KiB FRAMEs, MEMOIZE/BINGET, STACK_GLOBAL, arrays as
``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')`` + BUILD state
``(1, shape, dtype('float32'), False, raw little-endian bytes)``; payloads of 64 KiB or more are
written outside frames (BINBYTES). The stream is emitted by the small writer below rather than by
``pickle``, so the bytes (hence the sha256) depend neither on the NumPy version (NumPy 2 would
write ``numpy._core.multiarray``) nor on the Python version. ``pickle.load`` reads it back under
NumPy 1 and 2. The writer reproduces CPython's protocol-4 output byte for byte (checked against
``pickle.dumps`` with the module name as NumPy 2 spells it).

``--structured-names`` also appends the ``"StructuredToParameterName@@"`` entry that
``paddle.save`` adds to real files (a dict structured name -> Paddle parameter name, both str);
a loader must skip it. It is off by default, and the goldens use the default.

Values
------
One ``numpy.random.RandomState(seed)`` (the legacy generator, whose stream NumPy keeps frozen) is
drawn from in the key order listed by ``mobilefaceswap_spec()`` / ``arcface_spec()`` (the Paddle
``state_dict`` order). Every value is then rounded to float16 and stored as float32, so the
engine's fp16 copy is lossless and a float64 reference computed from the file sees exactly what the
GPU reads. Scales keep every activation O(1) (checked with ``tools/reference`` by
``tools/golden_models.py``):

* conv / Linear weights ~ N(0, gain^2 / fan_in) (fan_in = in/groups * kh * kw; Linear: in);
* conv / Linear biases ~ U(-0.1, 0.1);
* BN: weight ~ U(0.8, 1.2), bias ~ U(-0.1, 0.1), _mean ~ U(-0.1, 0.1), _variance ~ U(0.8, 1.2);
* PReLU ``_weight`` ~ U(0.15, 0.35) (each PReLU its own slope, so a swapped PReLU shows);
* ``*Modulation.i.weight`` ~ N(0, 1/Cin) (demodulation normalises it anyway);
* ``*Modulation.i.style.weight`` ~ N(0, 0.15^2): the style input is a unit vector, so
  s = style(z) has std 0.15 and (1 + s) stays within about [0.4, 1.6];
* gains (the constants below ``STYLE_DIM``): ~1.4 before (P/Leaky)ReLUs; ``predictor.*.conv``
  1.8 (at 4x4 / 3x3 the zero padding drops many taps); ``predictor.{encoder,decoder}.k.weight``
  (the convs whose outputs *are* the depthwise kernels) 0.25 / 0.35, so the predicted kernels
  neither blow the IDN up nor let it vanish (the IDN has no normalisation: every DW stage
  multiplies the activation scale by roughly the kernel's norm); ``final.7`` 2 and ``mask.5`` 4
  (tanh / sigmoid inputs of O(1), so neither output saturates); ``mask.t.2`` 2 (the branch
  narrows to 8 and 2 channels); ArcFace ``conv2`` 0.7 / sqrt(blocks in the stage) so the
  residual sums stay O(1) at the official depth too.

Key names
---------
mobilefaceswap: the 167 keys of spec section 2.5 (``BuildFaceSwap`` state dict).

arcface (IR-SE ResNet of foamliu/InsightFace-v2 as ported to Paddle; spec 2.1), for depths
[d1, d2, d3, d4] at planes 64, 128, 256, 512:

* stem: ``conv1.weight`` [64,3,3,3] (no bias), ``bn1.{weight,bias,_mean,_variance}`` [64],
  ``prelu._weight`` [1];
* block ``layer{s}.{b}`` (s = 1..4, b = 0..d_s-1), inplanes I (= planes of the previous stage for
  b = 0, else P), planes P:
  ``bn0.*`` [I]; ``conv1.weight`` [I,I,3,3] (stride 1, no bias); ``bn1.*`` [I];
  ``prelu._weight`` [1] (used twice: after bn1 and after the residual add);
  ``conv2.weight`` [P,I,3,3] (block stride, no bias); ``bn2.*`` [P];
  only b = 0 of stages 2-4: ``downsample.0.weight`` [P,I,1,1] (stride 2, no bias),
  ``downsample.1.*`` [P] (BN);
  ``se.fc.0.weight`` [P, P/16] (Linear, Paddle [in,out]), ``se.fc.0.bias`` [P/16],
  ``se.fc.1._weight`` [1] (PReLU), ``se.fc.2.weight`` [P/16, P], ``se.fc.2.bias`` [P]
  (``se.fc.3`` is the sigmoid; ``se.avg_pool`` has no parameters);
* head: ``bn2.*`` [512] (BN2d), ``fc.weight`` [25088, 512] (Paddle Linear [in,out]),
  ``fc.bias`` [512], ``bn3.*`` [512] (BatchNorm1D).

Depths [3,4,23,3] give the official 691 keys and 52,193,215 learnable parameters.
"""

import argparse
import hashlib
import struct
import sys

import numpy as np

# --------------------------------------------------------------------------------------------
# key schemas: ordered lists of (name, shape, init); init is understood by generate()


def _bn(prefix, c):
    return [
        (f"{prefix}.weight", (c,), ("uniform", 0.8, 1.2)),
        (f"{prefix}.bias", (c,), ("uniform", -0.1, 0.1)),
        (f"{prefix}._mean", (c,), ("uniform", -0.1, 0.1)),
        (f"{prefix}._variance", (c,), ("uniform", 0.8, 1.2)),
    ]


def _conv(prefix, cout, cin_g, kh, kw, gain=1.0, bias=True):
    out = [(f"{prefix}.weight", (cout, cin_g, kh, kw), ("normal", gain / np.sqrt(cin_g * kh * kw)))]
    if bias:
        out.append((f"{prefix}.bias", (cout,), ("uniform", -0.1, 0.1)))
    return out


def _linear(prefix, cin, cout, std=None, gain=1.0, bias=True):
    """Paddle Linear: weight [in, out]."""
    std = gain / np.sqrt(cin) if std is None else std
    out = [(f"{prefix}.weight", (cin, cout), ("normal", std))]
    if bias:
        out.append((f"{prefix}.bias", (cout,), ("uniform", -0.1, 0.1)))
    return out


def _prelu(prefix):
    return [(f"{prefix}._weight", (1,), ("uniform", 0.15, 0.35))]


ENC_CH = [3, 32, 64, 128, 256, 512]
DEC_IN = [512, 512, 256, 128]
DEC_OUT = [256, 128, 64, 32]
MASK_CH = [512, 128, 64, 32, 8, 2]
STYLE_DIM = 512

# gains (see the module docstring); leaky-ReLU / PReLU layers use ~sqrt(2)
RELU_GAIN = 1.4
BLOCK_GAIN = 1.8  # predictor ConvBlock.conv: at 4x4 / 3x3 zero padding drops many taps
ENC_KERNEL_GAIN = 0.25  # predictor.encoder.k.weight: 4x4 depthwise kernels
DEC_KERNEL_GAIN = 0.35  # predictor.decoder.k.weight: 3x3 depthwise kernels
FINAL_GAIN = 2.0  # final.7 (tanh input)
MASK_PW_GAIN = 2.0  # mask.t.2: the branch narrows to 8 and 2 channels, where LReLU loses a lot
MASK_GAIN = 4.0  # mask.5 (sigmoid input)
STYLE_STD = 0.15


def _mod2weight(prefix, cin, cout):
    return [(f"{prefix}.weight", (cout, cin, 1, 1), ("normal", 1.0 / np.sqrt(cin)))] + _linear(
        f"{prefix}.style", STYLE_DIM, cin, std=STYLE_STD
    )


def _convblock(prefix, cin, cout, kernel_gain):
    return (
        _conv(f"{prefix}.conv", cout, cin, 3, 3, gain=BLOCK_GAIN)
        + _bn(f"{prefix}.norm", cout)
        + _conv(f"{prefix}.weight", cout, cout, 3, 3, gain=kernel_gain)
    )


def mobilefaceswap_spec():
    """The 167 (name, shape, init) of the BuildFaceSwap state dict, in Paddle state_dict order."""
    s = []
    for i in range(5):
        s += _mod2weight(f"EncoderModulation.{i}", ENC_CH[i], ENC_CH[i + 1])
    for j in range(4):
        s += _mod2weight(f"DecoderModulation.{j}", DEC_IN[j], DEC_OUT[j])
    p = "predictor"
    s += _conv(f"{p}.first", STYLE_DIM, STYLE_DIM, 4, 4, gain=RELU_GAIN)
    s += _conv(f"{p}.first_decoder", STYLE_DIM, STYLE_DIM, 2, 2, gain=RELU_GAIN)
    s += _bn(f"{p}.decoder_norm", STYLE_DIM)
    s += _bn(f"{p}.norm", STYLE_DIM)
    enc = (ENC_CH[:-1] + [STYLE_DIM])[::-1]  # 512, 256, 128, 64, 32, 3
    for k in range(5):
        s += _convblock(f"{p}.encoder.{k}", enc[k], enc[k + 1], ENC_KERNEL_GAIN)
    dec = [STYLE_DIM] + DEC_IN  # 512, 512, 512, 256, 128
    for k in range(4):
        s += _convblock(f"{p}.decoder.{k}", dec[k], dec[k + 1], DEC_KERNEL_GAIN)
    c = DEC_OUT[-1]
    s += _conv("final.1", c // 4, c, 1, 1, gain=RELU_GAIN) + _bn("final.2", c // 4)
    s += _conv("final.4", 3, c // 4, 3, 3, gain=RELU_GAIN) + _bn("final.5", 3)
    s += _conv("final.7", 3, 3, 3, 3, gain=FINAL_GAIN)
    for t in range(5):
        a, b = MASK_CH[t], MASK_CH[t + 1]
        s += _conv(f"mask.{t}.1", a, 1, 3, 3, gain=1.0)  # depthwise
        s += _conv(f"mask.{t}.2", b, a, 1, 1, gain=MASK_PW_GAIN)
        s += _bn(f"mask.{t}.3", b)
    s += _conv("mask.5", 1, 2, 3, 3, gain=MASK_GAIN)
    assert len(s) == 167, len(s)
    return s


def arcface_spec(depths):
    """(name, shape, init) of the Paddle IR-SE ResNet state dict for `depths`, in state_dict order."""
    s = _conv("conv1", 64, 3, 3, 3, gain=RELU_GAIN, bias=False) + _bn("bn1", 64) + _prelu("prelu")
    inplanes = 64
    for st, (planes, n) in enumerate(zip([64, 128, 256, 512], depths), start=1):
        stride = 1 if st == 1 else 2
        for b in range(n):
            p = f"layer{st}.{b}"
            s += _bn(f"{p}.bn0", inplanes)
            s += _conv(f"{p}.conv1", inplanes, inplanes, 3, 3, gain=RELU_GAIN, bias=False)
            s += _bn(f"{p}.bn1", inplanes)
            s += _prelu(f"{p}.prelu")
            # the residual branch is scaled down (more in deep stages) so the sum stays O(1)
            s += _conv(f"{p}.conv2", planes, inplanes, 3, 3, gain=0.7 / np.sqrt(n), bias=False)
            s += _bn(f"{p}.bn2", planes)
            if b == 0 and (stride != 1 or inplanes != planes):
                s += _conv(f"{p}.downsample.0", planes, inplanes, 1, 1, gain=1.0, bias=False)
                s += _bn(f"{p}.downsample.1", planes)
            r = planes // 16
            s += _linear(f"{p}.se.fc.0", planes, r, gain=RELU_GAIN)
            s += _prelu(f"{p}.se.fc.1")
            s += _linear(f"{p}.se.fc.2", r, planes, gain=1.0)
            inplanes = planes
    s += _bn("bn2", 512)
    s += _linear("fc", 512 * 7 * 7, 512, gain=1.0)
    s += _bn("bn3", 512)
    return s


# MobileFSGAN (PyTorch checkpoints; spec mobilefsgan.md sections 1-3.1) ---------------------------
#
# Generator ``EncoderDecoder(64, 512)``: the 365 state-dict entries of spec section 2 in registration
# order, int64 ``num_batches_tracked`` counters included, written as ``main.py`` saves them from the
# DDP wrapper: a torch zip checkpoint whose keys carry the ``module.`` prefix. Identity model: the
# TreB1eN ``MobileFaceNet(512)`` state dict (333 entries, plain keys).
#
# Values (the generator has no normalisation on its residual stream, so the residual branches are
# scaled down to keep the 9 + 12 residual sums O(1) in fp16):
# * BN: weight ~ U(0.6, 1.4), bias ~ U(-0.3, 0.3), running_mean ~ U(-0.5, 0.5), running_var ~
#   U(0.5, 2): far from identity, so a batch norm folded across a zero padding, or a missing one,
#   shows at the borders; every variance positive;
# * convs ~ N(0, gain^2 / fan_in): 1.4 before LeakyReLU/PReLU, FSG_BRANCH_GAIN on the last conv of a
#   residual branch, FSG_HEAD_GAIN on the tanh heads; biases ~ U(-0.1, 0.1);
# * identity blocks: fc_var (the raw scale sigma(e)) weight ~ N(0, 0.5^2), so sigma(e) of a unit e
#   has std 0.5 around its bias ~ U(0.5, 1.5); fc_mean weight ~ N(0, 0.3^2), bias ~ U(-0.2, 0.2);
# * conv_attention: weight ~ N(0, 0.6^2 / 64), bias ~ U(0.2, 0.8): the raw attention a spreads
#   over roughly [-0.5, 1.5], both sides of [0, 1], as an unsquashed map may;
# * MobileFaceNet: PReLU slopes ~ U(0.15, 0.35) per channel, BN running_mean ~ U(-0.3, 0.3),
#   running_var ~ U(0.5, 1.5), residual projections gain 0.7 / sqrt(blocks).

FSG_C = 64
FSG_EMB = 512
FSG_BRANCH_GAIN = 0.5
FSG_HEAD_GAIN = 0.3
FSG_UP_GAIN = 1.0  # Upsample convs (1.4 compounds over the 5 of them)
FSG_ATT_GAIN = 0.15  # the attention is linear in h and multiplies h: keep its h-dependent part small
FSG_COUNT = 10000  # num_batches_tracked (ignored by every reader; any int64)


def _torch_bn(prefix, c, affine=True, mean=0.5, var=(0.5, 2.0), weight=(0.6, 1.4), bias=0.3):
    out = []
    if affine:
        out += [(f"{prefix}.weight", (c,), ("uniform", weight[0], weight[1])),
                (f"{prefix}.bias", (c,), ("uniform", -bias, bias))]
    out += [(f"{prefix}.running_mean", (c,), ("uniform", -mean, mean)),
            (f"{prefix}.running_var", (c,), ("uniform", var[0], var[1])),
            (f"{prefix}.num_batches_tracked", (), ("count", FSG_COUNT))]
    return out


def _fsg_attribute_block(p):
    return (_torch_bn(f"{p}.normalize", FSG_C)
            + _conv(f"{p}.conv1x1", FSG_C, FSG_C, 1, 1, gain=RELU_GAIN)
            + _conv(f"{p}.conv3x3", FSG_C, FSG_C, 3, 3, gain=FSG_BRANCH_GAIN, bias=False))


def _fsg_identity_block(p):
    return (_torch_bn(f"{p}.normalize", FSG_C, affine=False)
            + [(f"{p}.fc_mean.weight", (FSG_C, FSG_EMB), ("normal", 0.3)),
               (f"{p}.fc_mean.bias", (FSG_C,), ("uniform", -0.2, 0.2)),
               (f"{p}.fc_var.weight", (FSG_C, FSG_EMB), ("normal", 0.5)),
               (f"{p}.fc_var.bias", (FSG_C,), ("uniform", 0.5, 1.5))]
            + _conv(f"{p}.conv1x1", FSG_C, FSG_C, 1, 1, gain=RELU_GAIN)
            + _conv(f"{p}.conv3x3", FSG_C, FSG_C, 3, 3, gain=FSG_BRANCH_GAIN, bias=False))


def _fsg_down(p):
    return _torch_bn(f"{p}.normalize", FSG_C) + _conv(f"{p}.conv", FSG_C, FSG_C, 4, 4, gain=RELU_GAIN, bias=False)


def _fsg_up(p):
    return _torch_bn(f"{p}.normalize", FSG_C) + _conv(f"{p}.conv", FSG_C, FSG_C, 3, 3, gain=FSG_UP_GAIN, bias=False)


def _fsg_decoder_block(p):
    return ([(f"{p}.conv_attention.weight", (1, FSG_C, 1, 1), ("normal", FSG_ATT_GAIN / np.sqrt(FSG_C))),
             (f"{p}.conv_attention.bias", (1,), ("uniform", 0.2, 0.8))]
            + _fsg_attribute_block(f"{p}.basic_block"))


def _fsg_head(p):
    return _conv(f"{p}.conv", 3, FSG_C, 3, 3, gain=FSG_HEAD_GAIN)


def mobilefsgan_spec():
    """The 365 (name, shape, init) of the EncoderDecoder(64, 512) state dict, in its order."""
    s = (_conv("encoder_head.conv_image", FSG_C, 3, 3, 3, gain=RELU_GAIN)
         + _conv("encoder_head.conv1x1", FSG_C, FSG_C, 1, 1, gain=RELU_GAIN)
         + _conv("encoder_head.conv3x3", FSG_C, FSG_C, 3, 3, gain=1.0, bias=False))
    ie = "identity_encoder"
    s += _fsg_identity_block(f"{ie}.b256_down")
    for lvl in (128, 64, 32, 16, 8):
        s += _fsg_down(f"{ie}.down{lvl}") + _fsg_identity_block(f"{ie}.b{lvl}_down")
    for lvl in (16, 32, 64):
        s += _fsg_up(f"{ie}.up{lvl}") + _fsg_identity_block(f"{ie}.b{lvl}_up")
    ae = "attribute_encoder"
    s += _fsg_attribute_block(f"{ae}.b256_1") + _fsg_attribute_block(f"{ae}.b256_2")
    s += _fsg_down(f"{ae}.downsample128")
    for k in (1, 2, 3):
        s += _fsg_attribute_block(f"{ae}.b128_{k}")
    s += _fsg_down(f"{ae}.downsample64")
    for k in (1, 2, 3, 4):
        s += _fsg_attribute_block(f"{ae}.b64_{k}")
    d = "decoder"
    for k in (4, 3, 2, 1, 0):
        s += _fsg_decoder_block(f"{d}.b64_{k}")
    s += _fsg_head(f"{d}.image64_output") + _fsg_up(f"{d}.up128")
    for k in (3, 2, 1, 0):
        s += _fsg_decoder_block(f"{d}.b128_{k}")
    s += _fsg_head(f"{d}.image128_output") + _fsg_up(f"{d}.up256")
    for k in (2, 1, 0):
        s += _fsg_decoder_block(f"{d}.b256_{k}")
    s += _fsg_head(f"{d}.image256_output")
    assert len(s) == 365, len(s)
    return s


def _mfn_bn(prefix, c):
    return _torch_bn(prefix, c, mean=0.3, var=(0.5, 1.5), weight=(0.8, 1.2), bias=0.2)


def _mfn_conv_block(p, cin, cout, k, groups=1):
    return (_conv(f"{p}.conv", cout, cin // groups, k, k, gain=RELU_GAIN, bias=False) + _mfn_bn(f"{p}.bn", cout)
            + [(f"{p}.prelu.weight", (cout,), ("uniform", 0.15, 0.35))])


def _mfn_linear_block(p, cin, cout, k, groups=1, gain=1.0):
    return _conv(f"{p}.conv", cout, cin // groups, k, k, gain=gain, bias=False) + _mfn_bn(f"{p}.bn", cout)


def _mfn_depth_wise(p, cin, cout, groups, gain=1.0):
    return (_mfn_conv_block(f"{p}.conv", cin, groups, 1)
            + _mfn_conv_block(f"{p}.conv_dw", groups, groups, 3, groups=groups)
            + _mfn_linear_block(f"{p}.project", groups, cout, 1, gain=gain))


def mobilefacenet512_spec():
    """The 333 (name, shape, init) of TreB1eN's MobileFaceNet(512) state dict, in its order."""
    s = _mfn_conv_block("conv1", 3, 64, 3) + _mfn_conv_block("conv2_dw", 64, 64, 3, groups=64)
    s += _mfn_depth_wise("conv_23", 64, 64, 128)
    for name, c, n, g in (("conv_3", 64, 4, 128), ("conv_34", None, None, None), ("conv_4", 128, 6, 256),
                          ("conv_45", None, None, None), ("conv_5", 128, 2, 256)):
        if name == "conv_34":
            s += _mfn_depth_wise("conv_34", 64, 128, 256)
        elif name == "conv_45":
            s += _mfn_depth_wise("conv_45", 128, 128, 512)
        else:
            for b in range(n):
                s += _mfn_depth_wise(f"{name}.model.{b}", c, c, g, gain=0.7 / np.sqrt(n))
    s += _mfn_conv_block("conv_6_sep", 128, 512, 1)
    s += _mfn_linear_block("conv_6_dw", 512, 512, 7, groups=512)
    s += [("linear.weight", (512, 512), ("normal", 1.0 / np.sqrt(512)))]
    s += _mfn_bn("bn", 512)
    assert len(s) == 333, len(s)
    return s


def generate(spec, seed):
    """dict name -> float32 ndarray (fp16-exact values), drawn in spec order from RandomState(seed);
    ``("count", n)`` entries are int64 scalars (no draw)."""
    rs = np.random.RandomState(seed)
    out = {}
    for name, shape, init in spec:
        assert name not in out, name
        if init[0] == "count":
            out[name] = np.array(init[1], dtype=np.int64)
            continue
        if init[0] == "normal":
            v = rs.standard_normal(shape) * init[1]
        elif init[0] == "uniform":
            v = rs.uniform(init[1], init[2], shape)
        else:
            raise ValueError(init)
        out[name] = np.ascontiguousarray(v.astype(np.float16).astype(np.float32))
    return out


# --------------------------------------------------------------------------------------------
# deterministic protocol-4 pickle writer (mirrors CPython's pickle for these object types)

_FRAME_TARGET = 64 * 1024


class _Global:
    def __init__(self, module, name):
        self.module, self.name = module, name


class PickleWriter:
    """Writes dicts of str -> (float32 ndarray | str | dict) exactly as CPython's protocol-4
    pickler does, with NumPy's ndarray/dtype reductions spelled with `numpy_core` as the
    module of `_reconstruct` (NumPy 1: "numpy.core.multiarray")."""

    def __init__(self, numpy_core="numpy.core.multiarray"):
        self.out = bytearray()
        self.frame = bytearray()
        self.memo = {}
        self._alive = []
        self.reconstruct = _Global(numpy_core, "_reconstruct")
        self.ndarray = _Global("numpy", "ndarray")
        self.dtype_cls = _Global("numpy", "dtype")
        self.b_b = b"b"  # NumPy reuses one b'b' object: memoised once
        self.dtypes = {}  # numpy dtype str -> sentinel (one dtype object per type, as NumPy)

    # framing -------------------------------------------------------------------------------
    def _commit(self, force=False):
        if len(self.frame) >= _FRAME_TARGET or force:
            if len(self.frame) >= 4:
                self.out += b"\x95" + struct.pack("<Q", len(self.frame))
            self.out += self.frame
            self.frame = bytearray()

    def _w(self, b):
        self.frame += b

    def _large(self, header, payload):
        self._commit(force=True)
        self.out += header
        self.out += payload

    # memo ----------------------------------------------------------------------------------
    def _memoize(self, key):
        assert key not in self.memo
        self.memo[key] = len(self.memo)
        self._w(b"\x94")

    def _get(self, idx):
        self._w(b"h" + struct.pack("<B", idx) if idx < 256 else b"j" + struct.pack("<I", idx))

    # save ----------------------------------------------------------------------------------
    def save(self, obj):
        self._commit()
        self._alive.append(obj)  # keeps ids unique while the memo lives (CPython's memo does too)
        key = self._key(obj)
        if key is not None and key in self.memo:
            self._get(self.memo[key])
            return
        if obj is None:
            self._w(b"N")
        elif obj is True:
            self._w(b"\x88")
        elif obj is False:
            self._w(b"\x89")
        elif isinstance(obj, int):
            if 0 <= obj <= 0xFF:
                self._w(b"K" + struct.pack("<B", obj))
            elif 0 <= obj <= 0xFFFF:
                self._w(b"M" + struct.pack("<H", obj))
            elif -0x80000000 <= obj <= 0x7FFFFFFF:
                self._w(b"J" + struct.pack("<i", obj))
            else:
                raise ValueError(obj)
        elif isinstance(obj, str):
            e = obj.encode("utf-8")
            if len(e) <= 0xFF:
                self._w(b"\x8c" + struct.pack("<B", len(e)) + e)
            elif len(e) >= _FRAME_TARGET:
                self._large(b"X" + struct.pack("<I", len(e)), e)
            else:
                self._w(b"X" + struct.pack("<I", len(e)) + e)
            self._memoize(key)
        elif isinstance(obj, (bytes, bytearray, memoryview)):
            n = len(obj)
            if n <= 0xFF:
                self._w(b"C" + struct.pack("<B", n) + bytes(obj))
            elif n > 0xFFFFFFFF:
                self._large(b"\x8e" + struct.pack("<Q", n), obj)
            elif n >= _FRAME_TARGET:
                self._large(b"B" + struct.pack("<I", n), obj)
            else:
                self._w(b"B" + struct.pack("<I", n) + bytes(obj))
            self._memoize(key)
        elif isinstance(obj, tuple):
            self._tuple(obj)
        elif isinstance(obj, _Global):
            self.save(obj.module)
            self.save(obj.name)
            self._w(b"\x93")
            self._memoize(key)
        elif isinstance(obj, dict):
            self._w(b"}")
            self._memoize(key)
            self._setitems(list(obj.items()))
        elif isinstance(obj, np.ndarray):
            self._ndarray(obj)
        elif isinstance(obj, _Dtype):
            self._reduce(self.dtype_cls, (obj.code, False, True), key,
                         (3, obj.byteorder, None, None, None, -1, -1, 0))
        else:
            raise TypeError(type(obj))

    def _key(self, obj):
        if obj is None or isinstance(obj, (bool, int)):
            return None
        if isinstance(obj, str):
            return ("str", obj)  # equal strings are one interned object in CPython's pickles here
        if obj is self.b_b:
            return ("b_b",)
        return ("obj", id(obj))  # fresh object: tuple, dict, ndarray, bytes

    def _tuple(self, t):
        if not t:
            self._w(b")")
            return
        if len(t) <= 3:
            for e in t:
                self.save(e)
            self._w({1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(t)])
        else:
            self._w(b"(")
            for e in t:
                self.save(e)
            self._w(b"t")
        self._memoize(self._key(t))

    def _reduce(self, func, args, key, state):
        self.save(func)
        self.save(args)
        self._w(b"R")
        self._memoize(key)
        self.save(state)
        self._w(b"b")

    def _setitems(self, items):
        # CPython's C pickler (batch_dict_exact): one item -> SETITEM; otherwise batches of
        # 1000 as MARK ... SETITEMS, and a batch that came out full is followed by another
        # (possibly empty) one.
        if not items:
            return
        if len(items) == 1:
            self.save(items[0][0])
            self.save(items[0][1])
            self._w(b"s")
            return
        start = 0
        while True:
            batch = items[start:start + 1000]
            start += len(batch)
            self._w(b"(")
            for k, v in batch:
                self.save(k)
                self.save(v)
            self._w(b"u")
            if len(batch) < 1000:
                break

    def _ndarray(self, a):
        assert a.flags.c_contiguous and a.dtype.isnative and a.dtype.kind in "fiu", a.dtype
        dt = self.dtypes.setdefault(a.dtype.str, _Dtype(a.dtype))
        args = (self.ndarray, tuple([0]), self.b_b)  # a fresh (0,) per array, as NumPy
        shape = tuple(int(x) for x in a.shape)
        data = a.tobytes()
        state = (1, shape, dt, False, data)
        self._alive.append(a)
        self._reduce(self.reconstruct, args, ("obj", id(a)), state)

    def dumps(self, obj):
        self.out += b"\x80\x04"
        self.save(obj)
        self._w(b".")
        self._commit(force=True)
        return bytes(self.out)


class _Dtype:
    def __init__(self, dt):
        self.code = dt.kind + str(dt.itemsize)  # 'f4', as numpy.dtype.__reduce__ gives
        self.byteorder = "|" if dt.itemsize == 1 else "<"


# --------------------------------------------------------------------------------------------
# deterministic torch zip checkpoint writer (what ``torch.save(state_dict, f)`` writes, minus its
# 64-byte record alignment and serialization id, which no reader needs)


def _torch_pickle(state):
    """Protocol-2 ``data.pkl`` of an OrderedDict name -> tensor; every tensor is
    ``torch._utils._rebuild_tensor_v2(persistent_id(('storage', torch.FloatStorage | LongStorage,
    key, 'cpu', numel)), 0, size, stride, False, OrderedDict())`` over its own storage ``key``."""
    out = bytearray(b"\x80\x02")

    def glob(module, name):
        out.extend(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def string(v):
        b = v.encode("utf-8")
        out.extend(b"X" + struct.pack("<I", len(b)) + b)

    def integer(v):
        assert 0 <= v < 2 ** 31, v
        out.extend(b"J" + struct.pack("<i", v))

    def int_tuple(t):
        out.extend(b"(")
        for v in t:
            integer(v)
        out.extend(b"t")

    glob("collections", "OrderedDict")
    out.extend(b")R")
    storages = []
    if state:
        out.extend(b"(")
        for key, (name, a) in enumerate(state.items()):
            string(name)
            glob("torch._utils", "_rebuild_tensor_v2")
            out.extend(b"(")
            out.extend(b"(")  # persistent id tuple
            string("storage")
            glob("torch", {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}[a.dtype])
            string(str(key))
            string("cpu")
            integer(a.size)
            out.extend(b"tQ")
            integer(0)
            int_tuple(a.shape)
            int_tuple(tuple(int(np.prod(a.shape[i + 1:], dtype=np.int64)) for i in range(a.ndim)))
            out.extend(b"\x89")  # requires_grad False
            glob("collections", "OrderedDict")
            out.extend(b")R")
            out.extend(b"tR")
            storages.append((str(key), np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()))
        out.extend(b"u")
    out.extend(b".")
    return bytes(out), storages


def _zip_stored(files):
    """A zip archive (no compression, fixed 1980-01-01 timestamps) of (name, bytes), byte for byte
    the same on every Python version."""
    import zlib

    body, central = bytearray(), bytearray()
    date, time_ = (0 << 9) | (1 << 5) | 1, 0
    for name, data in files:
        n = name.encode()
        crc = zlib.crc32(data) & 0xFFFFFFFF
        offset = len(body)
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, time_, date, crc, len(data), len(data), len(n), 0)
        body += n + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, (3 << 8) | 20, 20, 0, 0, time_, date, crc,
                               len(data), len(data), len(n), 0, 0, 0, 0, 0o100644 << 16, offset)
        central += n
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(files), len(files), len(central), len(body), 0)
    return bytes(body + central + end)


def torch_dumps(state, prefix="archive"):
    """The bytes of a torch zip checkpoint of `state` (dict name -> float32/int64 ndarray)."""
    pkl, storages = _torch_pickle(state)
    files = [(f"{prefix}/data.pkl", pkl), (f"{prefix}/byteorder", b"little")]
    files += [(f"{prefix}/data/{k}", raw) for k, raw in storages]
    files.append((f"{prefix}/version", b"3\n"))
    return _zip_stored(files)


def paddle_dumps(state, structured_names=False, numpy_core="numpy.core.multiarray"):
    """The .pdparams bytes of `state` (dict name -> float32 ndarray)."""
    obj = dict(state)
    if structured_names:
        obj["StructuredToParameterName@@"] = {k: f"param_{i}.w_0" for i, k in enumerate(state)}
    return PickleWriter(numpy_core).dumps(obj)


# --------------------------------------------------------------------------------------------


TORCH_MODELS = ("mobilefsgan", "mobilefacenet")


def build(model, seed, depths=(1, 1, 1, 1)):
    if model == "mobilefsgan":
        return generate(mobilefsgan_spec(), seed)
    if model == "mobilefacenet":
        return generate(mobilefacenet512_spec(), seed)
    if model == "mobilefaceswap":
        return generate(mobilefaceswap_spec(), seed)
    if model == "arcface":
        return generate(arcface_spec(list(depths)), seed)
    raise ValueError(model)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True,
                    choices=["mobilefaceswap", "arcface", "mobilefsgan", "mobilefacenet"],
                    help="mobilefaceswap, arcface: Paddle .pdparams; mobilefsgan (generator, keys "
                         "prefixed 'module.' as main.py's DDP checkpoints), mobilefacenet (512-d identity "
                         "model): PyTorch zip .pth")
    ap.add_argument("--arcface-depths", default="1,1,1,1",
                    help="blocks per stage, comma separated (official: 3,4,23,3)")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--structured-names", action="store_true",
                    help='append the "StructuredToParameterName@@" entry paddle.save writes')
    ap.add_argument("out")
    args = ap.parse_args(argv)
    depths = [int(x) for x in args.arcface_depths.split(",")]
    if len(depths) != 4 or min(depths) < 1:
        ap.error("--arcface-depths needs four positive integers")
    state = build(args.model, args.seed, depths)
    if args.model in TORCH_MODELS:
        if args.structured_names:
            ap.error("--structured-names is for Paddle checkpoints")
        prefix = "module." if args.model == "mobilefsgan" else ""
        data = torch_dumps({prefix + k: v for k, v in state.items()})
    else:
        data = paddle_dumps(state, args.structured_names)
    with open(args.out, "wb") as f:
        f.write(data)
    n = sum(v.size for v in state.values())
    print(f"{args.out}: {len(state)} tensors, {n} floats, {len(data)} bytes, "
          f"sha256 {hashlib.sha256(data).hexdigest()}", file=sys.stderr)


if __name__ == "__main__":
    main()
