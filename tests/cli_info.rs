//! The `fswap` binary end to end: `info` on each backend and storage path, errors as one line and
//! exit code 1 (never a panic), and `bench --json`.

use std::process::{Command, Output};

use serde_json::Value;

/// Runs `fswap args...` with no `FSWAP_*` variables inherited, plus `env`.
fn fswap(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fswap"));
    cmd.args(args);
    for k in ["FSWAP_BACKEND", "FSWAP_ADAPTER", "FSWAP_STORAGE"] {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run the fswap binary")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts success and returns stdout.
fn ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = fswap(args, env);
    assert!(
        out.status.success(),
        "fswap {args:?} {env:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Asserts exit code 1 with an `error: ` line containing every string of `needles`, and no panic.
fn fails(args: &[&str], env: &[(&str, &str)], needles: &[&str]) -> String {
    let out = fswap(args, env);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "fswap {args:?} {env:?} should exit 1\nstderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "fswap {args:?} panicked:\n{stderr}"
    );
    // Mesa may print its own `error: XDG_RUNTIME_DIR ...` lines; ours names what was wrong.
    let ours = stderr
        .lines()
        .find(|l| l.starts_with("error: ") && needles.iter().all(|n| l.contains(n)));
    assert!(
        ours.is_some(),
        "fswap {args:?}: no `error: ` line containing {needles:?} in:\n{stderr}"
    );
    stderr
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("invalid JSON ({e}):\n{s}"))
}

/// Whether a GL adapter exists (llvmpipe through EGL); CI must have one.
fn have_gl() -> bool {
    if std::env::var("FSWAP_TEST_GL").as_deref() == Ok("0") {
        return false;
    }
    let out = fswap(&["--backend", "gl", "info", "--json"], &[]);
    if !out.status.success() {
        assert!(
            std::env::var("CI").is_err(),
            "no GL adapter in CI:\n{}",
            text(&out.stderr)
        );
        eprintln!("note: no GL adapter; GL CLI checks skipped");
        return false;
    }
    true
}

#[test]
fn info_vulkan_uses_native_f16_on_lavapipe() {
    let out = ok(&["--backend", "vulkan", "info"], &[]);
    assert!(out.contains("adapters:"), "{out}");
    assert!(
        out.contains("llvmpipe") || out.contains("lavapipe"),
        "no lavapipe adapter:\n{out}"
    );
    assert!(out.contains("storage:  f16"), "{out}");
    assert!(out.contains("SHADER_F16"), "{out}");
    assert!(out.contains("max_storage_buffer_binding_size"), "{out}");

    let v = json(&ok(&["--backend", "vulkan", "info", "--json"], &[]));
    let dev = &v["device"];
    assert_eq!(dev["backend"], "vulkan", "{v:#}");
    assert_eq!(dev["storage"], "f16", "{v:#}");
    assert!(
        dev["storage_reason"]
            .as_str()
            .unwrap()
            .contains("SHADER_F16"),
        "{v:#}"
    );
    assert!(dev["name"].as_str().unwrap().contains("llvmpipe"), "{v:#}");
    assert!(dev["driver"].is_string() && dev["driver_info"].is_string());
    assert!(dev["timestamps"].is_boolean());
    let features: Vec<&str> = dev["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(features.contains(&"SHADER_F16"), "{features:?}");
    for limit in [
        "max_storage_buffer_binding_size",
        "max_buffer_size",
        "max_storage_buffers_per_shader_stage",
        "max_compute_workgroup_storage_size",
        "max_compute_invocations_per_workgroup",
        "max_compute_workgroups_per_dimension",
    ] {
        assert!(
            dev["limits"][limit].as_u64().is_some_and(|l| l > 0),
            "{limit}: {v:#}"
        );
    }
    let adapters = v["adapters"].as_array().unwrap();
    assert!(!adapters.is_empty());
    for (i, a) in adapters.iter().enumerate() {
        assert_eq!(a["index"], i as u64);
        assert_eq!(a["backend"], "vulkan", "--backend filters the list: {a}");
        for key in [
            "name",
            "device_type",
            "driver",
            "driver_info",
            "shader_f16",
            "subgroup",
            "timestamp_query",
        ] {
            assert!(!a[key].is_null(), "adapter lacks {key}: {a}");
        }
    }
    assert_eq!(adapters[0]["shader_f16"], true, "{v:#}");
}

#[test]
fn info_vulkan_packed_when_forced() {
    let v = json(&ok(
        &[
            "--backend",
            "vulkan",
            "--storage",
            "packed",
            "info",
            "--json",
        ],
        &[],
    ));
    assert_eq!(v["device"]["storage"], "packed", "{v:#}");
    assert!(
        v["device"]["storage_reason"]
            .as_str()
            .unwrap()
            .contains("forced"),
        "{v:#}"
    );
    // The same through the environment, and the human output.
    let out = ok(
        &["info"],
        &[("FSWAP_BACKEND", "vulkan"), ("FSWAP_STORAGE", "packed")],
    );
    assert!(out.contains("storage:  packed"), "{out}");
    assert!(out.contains("backend:  vulkan"), "{out}");
}

#[test]
fn info_gl_is_packed() {
    if !have_gl() {
        return;
    }
    let out = ok(&["--backend", "gl", "info"], &[]);
    assert!(out.contains("storage:  packed"), "{out}");
    let v = json(&ok(&["--backend", "gl", "info", "--json"], &[]));
    assert_eq!(v["device"]["backend"], "gl", "{v:#}");
    assert_eq!(v["device"]["storage"], "packed", "{v:#}");
    assert!(
        v["device"]["storage_reason"]
            .as_str()
            .unwrap()
            .contains("lacks SHADER_F16"),
        "{v:#}"
    );
    // Native f16 cannot be forced where the adapter lacks it.
    fails(
        &["--backend", "gl", "--storage", "f16", "info"],
        &[],
        &["SHADER_F16"],
    );
}

#[test]
fn unknown_backend_is_a_one_line_error() {
    let stderr = fails(&["--backend", "nosuch", "info"], &[], &["nosuch"]);
    assert!(stderr.contains("vulkan"), "lists the valid names: {stderr}");
    fails(&["info"], &[("FSWAP_BACKEND", "nosuch")], &["nosuch"]);
    fails(&["--storage", "fp8", "info"], &[], &["fp8"]);
}

#[test]
fn bad_adapter_index_is_a_clear_error() {
    fails(
        &["--backend", "vulkan", "--adapter", "99", "info"],
        &[],
        &["adapter index 99"],
    );
    fails(&["info"], &[("FSWAP_ADAPTER", "99")], &["adapter index 99"]);
    fails(&["--adapter", "first", "info"], &[], &["first"]);
}

#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    let out = fswap(&["frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: "),
        "{}",
        text(&out.stderr)
    );
    let out = fswap(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    for word in ["info", "bench", "--backend", "--adapter", "--storage"] {
        assert!(text(&out.stdout).contains(word), "{word} not in --help");
    }
}

#[test]
fn bench_conv_json() {
    let v = json(&ok(
        &[
            "--backend",
            "vulkan",
            "bench",
            "--family",
            "conv",
            "--iters",
            "2",
            "--json",
        ],
        &[],
    ));
    assert!(v["adapter"].as_str().unwrap().contains("llvmpipe"), "{v:#}");
    assert_eq!(v["backend"], "vulkan");
    assert_eq!(v["storage"], "f16");
    let timing = v["timing"].as_str().unwrap();
    assert!(timing == "gpu" || timing == "wall", "{timing}");
    let results = v["results"].as_array().unwrap();
    assert!(results.len() >= 3, "{v:#}");
    for r in results {
        assert_eq!(r["family"], "conv");
        assert!(r["name"].as_str().is_some_and(|n| !n.is_empty()));
        assert_eq!(r["iters"], 2);
        assert_eq!(r["timing"], timing);
        let n = r["dispatches"].as_u64().unwrap();
        assert!(n >= 1, "{r}");
        let per = r["per_dispatch"].as_array().unwrap();
        assert_eq!(per.len() as u64, n, "{r}");
        for d in per {
            assert!(
                d["label"].as_str().is_some_and(|l| l.starts_with("conv")),
                "{r}"
            );
            // A time per dispatch with GPU timestamps, none with wall timing.
            assert_eq!(d["micros"].is_f64(), timing == "gpu", "{r}");
        }
        assert!(r["micros"].as_f64().is_some_and(|t| t > 0.0), "{r}");
        assert!(r["flops"].as_u64().is_some_and(|f| f > 0), "{r}");
        assert!(r["bytes"].as_u64().is_some_and(|b| b > 0), "{r}");
        let (gflops, gbps) = (r["gflops"].as_f64().unwrap(), r["gbps"].as_f64().unwrap());
        let secs = r["micros"].as_f64().unwrap() * 1e-6;
        let want = r["flops"].as_u64().unwrap() as f64 / secs * 1e-9;
        assert!((gflops - want).abs() <= 1e-6 * want, "{r}");
        assert!(gbps > 0.0, "{r}");
    }
}

#[test]
fn bench_unknown_family_lists_the_families() {
    fails(
        &["--backend", "vulkan", "bench", "--family", "nosuch"],
        &[],
        &["nosuch", "conv"],
    );
    fails(&["bench", "--iters", "0"], &[], &["--iters"]);
}
