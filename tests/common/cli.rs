//! Running the `fswap` binary and the Python tooling from CLI tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `python3 ARGS` in the repository root; panics with its stderr on failure.
pub fn python(args: &[&str]) {
    let o = Command::new("python3")
        .args(args)
        .current_dir(root())
        .output()
        .expect("python3");
    assert!(
        o.status.success(),
        "python3 {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs the binary `exe` (a test's `env!("CARGO_BIN_EXE_fswap")`) on Vulkan with `args`.
pub fn fswap(exe: &str, args: &[&str]) -> Output {
    Command::new(exe)
        .args(["--backend", "vulkan"])
        .args(args)
        .output()
        .expect("run fswap")
}

/// stdout then stderr, as text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
