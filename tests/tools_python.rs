//! The Python tooling's own tests (tools/tests: checkpoint export, restricted unpickling, atomic
//! writes, the real checkpoints in ../shared/data), run from `cargo test` so the README's one
//! test command covers them. They need python3 with numpy (CI installs it); without them this
//! fails rather than skips.

use std::process::Command;

#[test]
fn python_tool_tests_pass() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "tools/tests"])
        .current_dir(root)
        .output()
        .expect("python3 must be installed (with numpy) to test tools/");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "tools/tests failed:\n{log}");
    let ran = log.lines().find(|l| l.starts_with("Ran ")).unwrap_or("");
    eprintln!("tools/tests: {ran}");
    assert!(!ran.starts_with("Ran 0 "), "no Python test ran:\n{log}");
}
