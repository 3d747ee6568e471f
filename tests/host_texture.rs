//! The host-texture example runs headless (on lavapipe in CI) and changes the face region only.

use std::process::Command;

#[test]
fn host_texture_example_runs_headless() {
    // cargo test builds examples next to the test binaries' parent directory.
    let exe = std::env::current_exe().unwrap();
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples");
    let bin = dir.join(format!("host_texture{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        // `cargo test --test host_texture` alone does not build examples; a full `cargo test` does.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "--example", "host_texture"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(st.success(), "building the example failed");
    }
    assert!(bin.exists(), "example not built at {}", bin.display());
    let out = std::env::temp_dir().join(format!("fswap-host-{}.png", std::process::id()));
    let o = Command::new(&bin)
        .arg(&out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "example failed:\n{log}");
    assert!(log.contains("pixels changed by the swap"), "{log}");
    let img = image::open(&out).unwrap().to_rgb8();
    let _ = std::fs::remove_file(&out);
    assert_eq!(
        (img.width(), img.height()),
        (413, 551),
        "the JianzhuGuo photo's size"
    );
    // Far corners lie outside the pasted face: untouched.
    let orig = image::open(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/data/photos/JianzhuGuo.jpg"),
    )
    .unwrap()
    .to_rgb8();
    for (x, y) in [(2, 2), (410, 2), (2, 548), (410, 548)] {
        assert_eq!(
            img.get_pixel(x, y),
            orig.get_pixel(x, y),
            "pixel ({x}, {y}) changed"
        );
    }
}
