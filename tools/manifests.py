#!/usr/bin/env python3
"""Writes the model manifests in weights/ (one JSON per model) from the architecture tables of
../shared/spec. Run by developers when an architecture changes; the JSON files are committed and are
what both `tools/export.py --check` and the engine's loader read.

Manifest format:
  {"model": NAME, "input": {...}, "normalisation": {...}, "alignment": {...} (optional),
   "tensors": {NAME: {"shape": [...], "kind": "conv"|"linear"|"bn"|"prelu"|"other", "dtype": "float"}}}
Linear shapes are PyTorch's [out, in]; a Paddle export records `fswap.linear_layout = in_out` and the
loader transposes. A manifest with "template": true (ArcFace, whose stage depths are read from the
weights) describes its tensors by pattern instead of listing them.
"""
import json
import os
import sys

ARCFACE_112 = [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]


def bn(t, prefix, c):
    for k in ("weight", "bias", "_mean", "_variance"):
        t[f"{prefix}.{k}"] = {"shape": [c], "kind": "bn"}


def conv(t, prefix, cout, cin_g, k, bias=True):
    t[f"{prefix}.weight"] = {"shape": [cout, cin_g, k, k], "kind": "conv"}
    if bias:
        t[f"{prefix}.bias"] = {"shape": [cout], "kind": "conv"}


def final_and_mask(t):
    conv(t, "final.1", 8, 32, 1)
    bn(t, "final.2", 8)
    conv(t, "final.4", 3, 8, 3)
    bn(t, "final.5", 3)
    conv(t, "final.7", 3, 3, 3)
    chans = [512, 128, 64, 32, 8, 2]
    for i in range(5):
        conv(t, f"mask.{i}.1", chans[i], 1, 3)
        conv(t, f"mask.{i}.2", chans[i + 1], chans[i], 1)
        bn(t, f"mask.{i}.3", chans[i + 1])
    conv(t, "mask.5", 1, 2, 3)


ENC = [3, 32, 64, 128, 256, 512]
DEC_IN = [512, 512, 256, 128]
DEC_OUT = [256, 128, 64, 32]

IDN_IO = {
    "input": {"target": {"shape": ["N", 3, 224, 224], "range": [0, 1], "colour": "RGB"}},
    "output": {"swapped": {"shape": ["N", 3, 224, 224], "range": [0, 1]},
               "mask": {"shape": ["N", 1, 224, 224], "range": [0, 1]}},
    "normalisation": {"inside_network": "x = (target - 0.5) / 0.5", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    "alignment": {"size": 224, "template_112": ARCFACE_112, "scale": 2.0, "transform": "least-squares 6-DoF affine"},
}


def mobilefaceswap():
    t = {}
    for i in range(5):
        cin, cout = ENC[i], ENC[i + 1]
        t[f"EncoderModulation.{i}.weight"] = {"shape": [cout, cin, 1, 1], "kind": "conv"}
        t[f"EncoderModulation.{i}.style.weight"] = {"shape": [cin, 512], "kind": "linear"}
        t[f"EncoderModulation.{i}.style.bias"] = {"shape": [cin], "kind": "linear"}
    for j in range(4):
        cin, cout = DEC_IN[j], DEC_OUT[j]
        t[f"DecoderModulation.{j}.weight"] = {"shape": [cout, cin, 1, 1], "kind": "conv"}
        t[f"DecoderModulation.{j}.style.weight"] = {"shape": [cin, 512], "kind": "linear"}
        t[f"DecoderModulation.{j}.style.bias"] = {"shape": [cin], "kind": "linear"}
    conv(t, "predictor.first", 512, 512, 4)
    conv(t, "predictor.first_decoder", 512, 512, 2)
    bn(t, "predictor.norm", 512)
    bn(t, "predictor.decoder_norm", 512)
    enc_chain = [512, 256, 128, 64, 32, 3]
    for k in range(5):
        cin, cout = enc_chain[k], enc_chain[k + 1]
        conv(t, f"predictor.encoder.{k}.conv", cout, cin, 3)
        bn(t, f"predictor.encoder.{k}.norm", cout)
        conv(t, f"predictor.encoder.{k}.weight", cout, cout, 3)
    dec_chain = [512, 512, 512, 256, 128]
    for k in range(4):
        cin, cout = dec_chain[k], dec_chain[k + 1]
        conv(t, f"predictor.decoder.{k}.conv", cout, cin, 3)
        bn(t, f"predictor.decoder.{k}.norm", cout)
        conv(t, f"predictor.decoder.{k}.weight", cout, cout, 3)
    final_and_mask(t)
    m = {"model": "mobilefaceswap", "source": "Seanseattle/MobileFaceSwap BuildFaceSwap (IIN + final + mask)"}
    m.update(IDN_IO)
    m["input"] = dict(IDN_IO["input"], id_embedding={"shape": [1, 512], "note": "L2-normalised ArcFace embedding"},
                      id_feature_map={"shape": [1, 512, 7, 7], "note": "ArcFace pre-FC map"})
    m["tensors"] = t
    return m


def idn():
    t = {}
    for i in range(5):
        cin, cout = ENC[i], ENC[i + 1]
        conv(t, f"Encoder.{i}.0", cin, 1, 4)
        conv(t, f"Encoder.{i}.1", cout, cin, 1)
    for j in range(4):
        cin, cout = DEC_IN[j], DEC_OUT[j]
        conv(t, f"Decoder.{j}.0", cin, 1, 3)
        conv(t, f"Decoder.{j}.1", cout, cin, 1)
    final_and_mask(t)
    for name, spec in t.items():
        if name.startswith(("Encoder.", "Decoder.")) and name.endswith(".bias"):
            spec["optional"] = True  # always zero in the official model; absent means zero
    m = {"model": "idn", "source": "MobileFaceSwap UNet (per-frame IDN) with injected kernels; also a saved fswap Identity"}
    m.update(IDN_IO)
    m["tensors"] = t
    return m


def arcface():
    return {
        "model": "arcface",
        "source": "IR-SE ResNet (foamliu/InsightFace-v2 lineage, Paddle port in MobileFaceSwap)",
        "template": True,
        "input": {"face": {"shape": ["N", 3, 112, 112], "colour": "RGB",
                           "note": "aligned 112 crop, /255, then ImageNet mean/std"}},
        "output": {"id_embedding": {"shape": ["N", 512], "note": "L2-normalised"},
                   "id_feature_map": {"shape": ["N", 512, 7, 7]}},
        "normalisation": {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "alignment": {"size": 112, "template_112": ARCFACE_112},
        "stages": {"channels": [64, 128, 256, 512], "strides": [1, 2, 2, 2], "depths": "read from layer{s}.{b}.* keys"},
        "tensors": {
            "conv1.weight": {"shape": [64, 3, 3, 3], "kind": "conv"},
            "bn1.*": {"shape": [64], "kind": "bn"},
            "prelu._weight": {"shape": [1], "kind": "prelu"},
            "layer{s}.{b}.bn0.*": {"shape": ["Cin"], "kind": "bn"},
            "layer{s}.{b}.conv1.weight": {"shape": ["Cin", "Cin", 3, 3], "kind": "conv"},
            "layer{s}.{b}.bn1.*": {"shape": ["Cin"], "kind": "bn"},
            "layer{s}.{b}.prelu._weight": {"shape": ["1 or Cin"], "kind": "prelu"},
            "layer{s}.{b}.conv2.weight": {"shape": ["C", "Cin", 3, 3], "kind": "conv"},
            "layer{s}.{b}.bn2.*": {"shape": ["C"], "kind": "bn"},
            "layer{s}.{b}.se.fc.0.weight": {"shape": ["C/16", "C"], "kind": "linear"},
            "layer{s}.{b}.se.fc.0.bias": {"shape": ["C/16"], "kind": "linear"},
            "layer{s}.{b}.se.fc.1._weight": {"shape": ["1 or C/16"], "kind": "prelu"},
            "layer{s}.{b}.se.fc.2.weight": {"shape": ["C", "C/16"], "kind": "linear"},
            "layer{s}.{b}.se.fc.2.bias": {"shape": ["C"], "kind": "linear"},
            "layer{s}.0.downsample.0.weight": {"shape": ["C", "Cin", 1, 1], "kind": "conv", "note": "stages 2-4"},
            "layer{s}.0.downsample.1.*": {"shape": ["C"], "kind": "bn"},
            "bn2.*": {"shape": [512], "kind": "bn"},
            "fc.weight": {"shape": [512, 25088], "kind": "linear"},
            "fc.bias": {"shape": [512], "kind": "linear"},
            "bn3.*": {"shape": [512], "kind": "bn"},
        },
    }


def faceboxes():
    """FaceBoxes (alignment.md A.3): PyTorch names, BN buffers as running_mean / running_var."""
    t = {}

    def basic(prefix, cout, cin, k):
        t[f"{prefix}.conv.weight"] = {"shape": [cout, cin, k, k], "kind": "conv"}
        for key in ("weight", "bias", "running_mean", "running_var"):
            t[f"{prefix}.bn.{key}"] = {"shape": [cout], "kind": "bn"}

    basic("conv1", 24, 3, 7)
    basic("conv2", 64, 48, 5)
    for i in (1, 2, 3):
        p = f"inception{i}"
        basic(f"{p}.branch1x1", 32, 128, 1)
        basic(f"{p}.branch1x1_2", 32, 128, 1)
        basic(f"{p}.branch3x3_reduce", 24, 128, 1)
        basic(f"{p}.branch3x3", 32, 24, 3)
        basic(f"{p}.branch3x3_reduce_2", 24, 128, 1)
        basic(f"{p}.branch3x3_2", 32, 24, 3)
        basic(f"{p}.branch3x3_3", 32, 32, 3)
    basic("conv3_1", 128, 128, 1)
    basic("conv3_2", 256, 128, 3)
    basic("conv4_1", 128, 256, 1)
    basic("conv4_2", 256, 128, 3)
    for j, (cin, anchors) in enumerate(((128, 21), (256, 1), (256, 1))):
        conv(t, f"loc.{j}", 4 * anchors, cin, 3)
        conv(t, f"conf.{j}", 2 * anchors, cin, 3)
    return {
        "model": "faceboxes",
        "source": "3DDFA_V2 FaceBoxes (zisianw/FaceBoxes.PyTorch), FaceBoxesProd.pth",
        "input": {"image": {"shape": [1, 3, "H", "W"], "colour": "BGR", "range": [0, 255],
                            "note": "resized so H <= 720, then W <= 1080 (cv2 INTER_LINEAR), minus the means"}},
        "output": {"loc": {"shape": [1, "P", 4], "note": "offsets to the priors, variances [0.1, 0.2]"},
                   "conf": {"shape": [1, "P", 2], "note": "logits; score = softmax class 1"}},
        "normalisation": {"mean": [104, 117, 123], "std": [1, 1, 1], "colour": "BGR"},
        "priors": {"steps": [32, 64, 128], "min_sizes": [[32, 64, 128], [256], [512]], "clip": False,
                   "variance": [0.1, 0.2]},
        "postprocess": {"confidence_threshold": 0.05, "top_k": 5000, "nms_threshold": 0.3,
                        "keep_top_k": 750, "vis_threshold": 0.5},
        "tensors": t,
    }


def mobilefacenet128():
    t = {}

    def bn(p, c):
        for k in ("weight", "bias", "running_mean", "running_var"):
            t[f"{p}.{k}"] = {"shape": [c], "kind": "bn"}

    def cv(p, cout, cin_g, k):
        t[f"{p}.weight"] = {"shape": [cout, cin_g, k, k], "kind": "conv"}

    cv("conv1.0", 64, 3, 3); bn("conv1.1", 64)
    cv("dw_conv.depthwise", 64, 1, 3); bn("dw_conv.bn1", 64)
    cv("dw_conv.pointwise", 64, 64, 1); bn("dw_conv.bn2", 64)
    i, cin = 0, 64
    for e, c, n, s in [(2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1)]:
        for _ in range(n):
            h = cin * e
            cv(f"features.{i}.conv.0.0", h, cin, 1); bn(f"features.{i}.conv.0.1", h)
            cv(f"features.{i}.conv.1.0", h, 1, 3); bn(f"features.{i}.conv.1.1", h)
            cv(f"features.{i}.conv.2", c, h, 1); bn(f"features.{i}.conv.3", c)
            i, cin = i + 1, c
    cv("conv2.0", 512, 128, 1); bn("conv2.1", 512)
    cv("gdconv.depthwise", 512, 1, 7); bn("gdconv.bn", 512)
    cv("conv3", 128, 512, 1); t["conv3.bias"] = {"shape": [128], "kind": "conv"}
    bn("bn", 128)
    return {"model": "mobilefacenet128",
            "source": "MobileFaceNet-128, MobileNetV2-style (foamliu/MobileFaceNet @ a6cc903, PyTorch; spec identity.md); int64 num_batches_tracked counters are ignored",
            "input": {"face": {"shape": ["N", 3, 112, 112], "colour": "RGB",
                               "note": "aligned 112 crop, /255, then ImageNet mean/std (the engine's input is already normalised)"}},
            "output": {"id_embedding": {"shape": ["N", 128], "note": "L2-normalised (final BN output / its L2 norm)"}},
            "normalisation": {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
            "alignment": {"size": 112, "template_112": ARCFACE_112},
            "tensors": t}


def mobilefsgan():
    """MobileFSGAN generator EncoderDecoder(64, 512) (spec mobilefsgan.md section 2): 323 float
    tensors (the 42 int64 num_batches_tracked counters are not listed; the loader ignores them)."""
    t, c = {}, 64

    def tbn(p, affine=True):
        for k in (("weight", "bias") if affine else ()) + ("running_mean", "running_var"):
            t[f"{p}.{k}"] = {"shape": [c], "kind": "bn"}

    def attribute(p):
        tbn(f"{p}.normalize")
        conv(t, f"{p}.conv1x1", c, c, 1)
        conv(t, f"{p}.conv3x3", c, c, 3, bias=False)

    def identity(p):
        tbn(f"{p}.normalize", affine=False)
        for fc in ("fc_mean", "fc_var"):
            t[f"{p}.{fc}.weight"] = {"shape": [c, 512], "kind": "linear"}
            t[f"{p}.{fc}.bias"] = {"shape": [c], "kind": "linear"}
        conv(t, f"{p}.conv1x1", c, c, 1)
        conv(t, f"{p}.conv3x3", c, c, 3, bias=False)

    def resample(p, k):
        tbn(f"{p}.normalize")
        conv(t, f"{p}.conv", c, c, k, bias=False)

    conv(t, "encoder_head.conv_image", c, 3, 3)
    conv(t, "encoder_head.conv1x1", c, c, 1)
    conv(t, "encoder_head.conv3x3", c, c, 3, bias=False)
    for b in ("b256_down", "b128_down", "b64_down", "b32_down", "b16_down", "b8_down", "b16_up", "b32_up", "b64_up"):
        identity(f"identity_encoder.{b}")
    for d in ("down128", "down64", "down32", "down16", "down8"):
        resample(f"identity_encoder.{d}", 4)
    for u in ("up16", "up32", "up64"):
        resample(f"identity_encoder.{u}", 3)
    for b in ("b256_1", "b256_2", "b128_1", "b128_2", "b128_3", "b64_1", "b64_2", "b64_3", "b64_4"):
        attribute(f"attribute_encoder.{b}")
    for d in ("downsample128", "downsample64"):
        resample(f"attribute_encoder.{d}", 4)
    for b in ("b64_4", "b64_3", "b64_2", "b64_1", "b64_0", "b128_3", "b128_2", "b128_1", "b128_0",
              "b256_2", "b256_1", "b256_0"):
        conv(t, f"decoder.{b}.conv_attention", 1, c, 1)
        attribute(f"decoder.{b}.basic_block")
    for u in ("up128", "up256"):
        resample(f"decoder.{u}", 3)
    for h in ("image64_output", "image128_output", "image256_output"):
        conv(t, f"decoder.{h}.conv", 3, c, 3)
    assert len(t) == 365 - 42, len(t)
    return {
        "model": "mobilefsgan",
        "source": "HoiM/MobileFSGAN @ 478175b modules/EncoderDecoder.py EncoderDecoder(64, 512) (spec mobilefsgan.md); "
                  "main.py's DDP checkpoints prefix every key with 'module.', which tools/export.py removes; int64 "
                  "num_batches_tracked counters are ignored",
        "input": {"target": {"shape": ["N", 3, "H", "W"], "range": [-1, 1], "colour": "RGB",
                             "note": "aligned 256x256 crop (H, W multiples of 32), (pixel/255 - 0.5) / 0.5"},
                  "id_embedding": {"shape": ["N", 512],
                                   "note": "L2-normalised 512-d MobileFaceNet embedding of the source (model mobilefacenet)"}},
        "output": {"images256": {"shape": ["N", 3, "H", "W"], "range": [-1, 1], "note": "the swapped face (tanh)"},
                   "images128": {"shape": ["N", 3, "H/2", "W/2"], "range": [-1, 1]},
                   "images64": {"shape": ["N", 3, "H/4", "W/4"], "range": [-1, 1]}},
        "normalisation": {"scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "alignment": {"size": 256, "template_112": ARCFACE_112, "scale": 204 / 112, "offset": 26,
                      "transform": "least-squares 6-DoF affine",
                      "note": "inferred, not in the official repo (spec section 4): the ArcFace 112 template scaled "
                              "by 204/112 and shifted by 26 px"},
        "tensors": t,
    }


def mobilefacenet():
    """MobileFSGAN's identity model: TreB1eN MobileFaceNet(512) (spec mobilefsgan.md section 3.1),
    283 float tensors (50 num_batches_tracked counters not listed)."""
    t = {}

    def tbn(p, ch):
        for k in ("weight", "bias", "running_mean", "running_var"):
            t[f"{p}.{k}"] = {"shape": [ch], "kind": "bn"}

    def block(p, cin, cout, k, groups=1, prelu=True):
        t[f"{p}.conv.weight"] = {"shape": [cout, cin // groups, k, k], "kind": "conv"}
        tbn(f"{p}.bn", cout)
        if prelu:
            t[f"{p}.prelu.weight"] = {"shape": [cout], "kind": "prelu"}

    def depth_wise(p, cin, cout, g):
        block(f"{p}.conv", cin, g, 1)
        block(f"{p}.conv_dw", g, g, 3, groups=g)
        block(f"{p}.project", g, cout, 1, prelu=False)

    block("conv1", 3, 64, 3)
    block("conv2_dw", 64, 64, 3, groups=64)
    depth_wise("conv_23", 64, 64, 128)
    for i in range(4):
        depth_wise(f"conv_3.model.{i}", 64, 64, 128)
    depth_wise("conv_34", 64, 128, 256)
    for i in range(6):
        depth_wise(f"conv_4.model.{i}", 128, 128, 256)
    depth_wise("conv_45", 128, 128, 512)
    for i in range(2):
        depth_wise(f"conv_5.model.{i}", 128, 128, 256)
    block("conv_6_sep", 128, 512, 1)
    block("conv_6_dw", 512, 512, 7, groups=512, prelu=False)
    t["linear.weight"] = {"shape": [512, 512], "kind": "linear"}
    tbn("bn", 512)
    assert len(t) == 333 - 50, len(t)
    return {
        "model": "mobilefacenet",
        "source": "MobileFaceNet(512) of TreB1eN/InsightFace_Pytorch as used (RGB input) by HoiM/MobileFSGAN "
                  "(params/RGB_model_mobilefacenet.pth; spec mobilefsgan.md 3.1); int64 num_batches_tracked "
                  "counters are ignored",
        "input": {"face": {"shape": ["N", 3, 112, 112], "range": [-1, 1], "colour": "RGB",
                           "note": "from a 256 MobileFSGAN crop: rows/cols [26:230], bilinear align_corners=True to 112"}},
        "output": {"id_embedding": {"shape": ["N", 512], "note": "BatchNorm1d output / its L2 norm"}},
        "normalisation": {"scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "crop": {"256": [26, 230], "128": [13, 115], "64": [7, 57], "resize": "bilinear align_corners=True to 112"},
        "tensors": t,
    }


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "weights")
    for m in (mobilefaceswap(), idn(), arcface(), faceboxes(), mobilefsgan(), mobilefacenet()):
        path = os.path.join(out, m["model"] + ".json")
        with open(path + ".tmp", "w") as f:
            json.dump(m, f, indent=1)
            f.write("\n")
        os.replace(path + ".tmp", path)
        print(path, len(m["tensors"]), "tensors" if not m.get("template") else "patterns")


if __name__ == "__main__":
    main()
