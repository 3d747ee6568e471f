//! The GPU swap stage (warp in, IDN, mask post-processing, warp back, composite) vs the same steps
//! done in f64 on the host from the IDN's own outputs, on every storage path.
mod common;

use common::reference::{filter_ref, warp_ref};
use common::{assert_close, contexts, label, Rng};
use fswap::face::align::{arcface_template, invert, lstsq_affine};
use fswap::face::paste::{border_fade, PasteStage};
use fswap::models::mobilefaceswap::{statics, Injection, SIZE};
use fswap::models::random::random_weights;
use fswap::weights::Manifest;
use fswap::Tensor;

#[test]
fn paste_stage_matches_host_reference() {
    let w = random_weights(&Manifest::builtin("mobilefaceswap").unwrap(), 11);
    let mut rng = Rng::new(61);
    let (h, wd) = (150, 190);
    let frame = rng.vec(3 * h * wd, 0.0, 1.0);
    // A face whose landmarks sit off-centre, rotated: the fit maps it onto the 224 template.
    let pts = [
        [70.0, 60.0],
        [105.0, 66.0],
        [86.0, 85.0],
        [70.0, 103.0],
        [99.0, 108.0],
    ];
    let m = lstsq_affine(&pts, &arcface_template(SIZE)).unwrap();
    for ctx in contexts() {
        let inj = Injection::new(ctx, &w).unwrap();
        let emb: Vec<f32> = (0..512).map(|i| ((i % 7) as f32 - 3.0) / 40.0).collect();
        inj.embedding.write_f32(ctx, &emb).unwrap();
        inj.feature_map
            .write_f32(ctx, &rng.vec(512 * 49, -1.0, 1.0))
            .unwrap();
        inj.plan.run(ctx).unwrap();
        let ft = Tensor::from_f32(ctx, [1, 3, h, wd], &frame, "frame").unwrap();
        let out = Tensor::new(ctx, [1, 3, h, wd], "out").unwrap();
        let stage = PasteStage::new(ctx, &inj.identity, &statics(&w), &ft, &out).unwrap();
        stage.set_alignment(ctx, &m).unwrap();
        stage.plan.run(ctx).unwrap();
        let got = out.to_f32(ctx).unwrap();
        // Host reference from the GPU's own crop, IDN output and mask (each checked elsewhere).
        let crop = stage.idn.target.to_f32(ctx).unwrap();
        let want_crop = warp_ref(&frame, 3, h, wd, &invert(&m).unwrap(), SIZE, SIZE);
        assert_close(
            &crop,
            &want_crop,
            2e-3,
            2e-3,
            &format!("crop {}", label(ctx)),
        );
        let swapped = stage.idn.swapped.to_f32(ctx).unwrap();
        let mask = stage.idn.mask.to_f32(ctx).unwrap();
        let mut mk: Vec<f32> = mask
            .iter()
            .map(|&v| if v > 0.001 { 1.0 } else { v })
            .collect();
        for (op, r, v) in [
            ("max", 5, false),
            ("max", 5, true),
            ("min", 5, false),
            ("min", 5, true),
            ("min", 5, false),
            ("min", 5, true),
            ("mean", 3, false),
            ("mean", 3, true),
        ] {
            // Each GPU pass stores fp16: round the reference the same way between passes.
            mk = filter_ref(&mk, SIZE, SIZE, op, r, v)
                .iter()
                .map(|&x| common::f16r(x as f32))
                .collect();
        }
        let fade = border_fade();
        let mk: Vec<f32> = mk
            .iter()
            .zip(&fade)
            .map(|(a, b)| common::f16r(a * common::f16r(*b)))
            .collect();
        let gen_full = warp_ref(&swapped, 3, SIZE, SIZE, &m, h, wd);
        let mask_full = warp_ref(&mk, 1, SIZE, SIZE, &m, h, wd);
        let plane = h * wd;
        let want: Vec<f64> = (0..3 * plane)
            .map(|i| {
                let mv = mask_full[i % plane];
                gen_full[i] * mv + frame[i] as f64 * (1.0 - mv)
            })
            .collect();
        // fp16 storage of the warped images and mask (2^-11 each) on values in [0, 1].
        assert_close(&got, &want, 4e-3, 0.0, &format!("composite {}", label(ctx)));
        let covered = mask_full.iter().filter(|&&v| v > 0.5).count();
        assert!(
            covered > 500,
            "the pasted face covers {covered} px: the mask must not be empty"
        );
    }
}

#[test]
fn source_identity_glue_matches_host_preprocessing() {
    // Warp + resize + ImageNet normalisation on the GPU vs the same on the host fed to ArcFace.
    use common::reference::bilinear;
    use fswap::eval::{eval, Tensors};
    use fswap::face::identity::{source_identity, MEAN, STD};
    use fswap::weights::{HostTensor, Weights};
    let arc = random_weights(
        &fswap::models::arcface::manifest([1, 1, 1, 1], &Weights::default()),
        12,
    );
    let mfs = random_weights(&Manifest::builtin("mobilefaceswap").unwrap(), 13);
    let mut rng = Rng::new(62);
    let (h, wd) = (160, 200);
    let frame = rng.vec(3 * h * wd, 0.0, 1.0);
    let pts = [
        [80.0, 70.0],
        [120.0, 72.0],
        [100.0, 95.0],
        [84.0, 118.0],
        [117.0, 117.0],
    ];
    let m = lstsq_affine(&pts, &arcface_template(SIZE)).unwrap();
    let crop = warp_ref(&frame, 3, h, wd, &invert(&m).unwrap(), SIZE, SIZE);
    let crop16: Vec<f64> = crop
        .iter()
        .map(|&v| common::f16r(v as f32) as f64)
        .collect();
    let small = bilinear(&crop16, 3, SIZE, SIZE, 112, 112, false);
    let face: Vec<f32> = small
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            common::f16r(
                ((common::f16r(v as f32) as f64 - MEAN[i / (112 * 112)] as f64)
                    / STD[i / (112 * 112)] as f64) as f32,
            )
        })
        .collect();
    let ctx = &contexts()[0];
    let want = eval(
        ctx,
        "arcface",
        &arc,
        &Tensors::from([(
            "face".to_string(),
            HostTensor::new(vec![1, 3, 112, 112], face),
        )]),
    )
    .unwrap();
    let ft = Tensor::from_f32(ctx, [1, 3, h, wd], &frame, "frame").unwrap();
    let (_, emb) = source_identity(ctx, &arc, &mfs, &ft, &pts).unwrap();
    let got = emb.to_f32(ctx).unwrap();
    let want: Vec<f64> = want["id_embedding"]
        .data
        .iter()
        .map(|&v| v as f64)
        .collect();
    // Same network on inputs that differ by fp16 rounding order only.
    assert_close(&got, &want, 5e-3, 0.0, "source embedding");
}
