//! Every kernel shader, on both storage paths: naga parse + validate, translation to SPIR-V, MSL and
//! HLSL SM 6.2, and at most 8 storage buffers (the WebGPU / mobile per-stage limit). Needs no GPU.

use fswap::gpu::shader::{self, INCLUDES, SOURCES};
use fswap::{Error, StoragePath};

const PATHS: [StoragePath; 2] = [StoragePath::F16, StoragePath::Packed];

/// `maxStorageBuffersPerShaderStage` in WebGPU's default limits and on many phones.
const MAX_STORAGE_BUFFERS: usize = 8;

/// Shaders with entry points: everything in `SOURCES` except the include-only files.
fn kernels() -> Vec<&'static str> {
    SOURCES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !INCLUDES.contains(name))
        .collect()
}

#[test]
fn every_kernel_validates_and_translates_on_both_paths() {
    let names = kernels();
    assert!(!names.is_empty(), "SOURCES lists no kernel shader");
    let mut failures = Vec::new();
    for name in &names {
        for path in PATHS {
            match shader::validate(name, path) {
                Ok((module, _)) => {
                    if module.entry_points.is_empty() {
                        failures.push(format!(
                            "{name} ({path}): no entry point (include-only files belong in INCLUDES)"
                        ));
                    }
                    let n = shader::storage_buffer_count(&module);
                    if n > MAX_STORAGE_BUFFERS {
                        failures.push(format!(
                            "{name} ({path}): {n} storage buffers, over the limit of {MAX_STORAGE_BUFFERS}"
                        ));
                    }
                }
                Err(e) => failures.push(e.to_string()),
            }
            if let Err(e) = shader::translate_all(name, path) {
                failures.push(e.to_string());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} shader check(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn includes_are_listed_sources() {
    for inc in INCLUDES {
        assert!(
            shader::source(inc).is_some(),
            "INCLUDES names '{inc}', which is not in SOURCES"
        );
    }
}

#[test]
fn every_wgsl_file_on_disk_is_in_sources() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut on_disk = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.extension().and_then(|e| e.to_str()) == Some("wgsl") {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("UTF-8 file name")
                .to_string();
            on_disk.push(stem);
        }
    }
    assert!(!on_disk.is_empty(), "no .wgsl files in {}", dir.display());
    let missing: Vec<&String> = on_disk
        .iter()
        .filter(|stem| shader::source(stem).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "shaders/ holds {missing:?}, missing from fswap::gpu::shader::SOURCES: \
         add them there so they are checked and can be loaded"
    );
    // And the other way round: SOURCES only names files that exist, with the text on disk.
    for (name, text) in SOURCES {
        let file = dir.join(format!("{name}.wgsl"));
        let disk = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("SOURCES names '{name}' but {}: {e}", file.display()));
        assert_eq!(
            disk.as_str(),
            *text,
            "{} differs from the text in SOURCES",
            file.display()
        );
    }
}

#[test]
fn unknown_shader_is_a_shader_error_naming_it() {
    for path in PATHS {
        match shader::preprocess("no_such", path) {
            Err(Error::Shader {
                name,
                path: p,
                message,
            }) => {
                assert_eq!(name, "no_such");
                assert_eq!(p, path.name());
                assert!(!message.is_empty());
            }
            Err(other) => panic!("expected Error::Shader, got {other:?}"),
            Ok(_) => panic!("preprocess of an unknown shader succeeded"),
        }
        match shader::validate("no_such", path) {
            Err(e) => assert!(e.to_string().contains("no_such"), "{e}"),
            Ok(_) => panic!("validate of an unknown shader succeeded"),
        }
    }
}

#[test]
fn preprocessing_declares_the_storage_path() {
    for name in kernels() {
        let f16 = shader::preprocess(name, StoragePath::F16).expect("f16");
        let packed = shader::preprocess(name, StoragePath::Packed).expect("packed");
        assert!(
            f16.starts_with("enable f16;"),
            "{name}: f16 text lacks `enable f16;`"
        );
        assert!(
            !packed.contains("enable f16"),
            "{name}: packed text enables f16"
        );
        for text in [&f16, &packed] {
            assert!(
                !text.lines().any(|l| {
                    let t = l.trim_start();
                    t.starts_with("#include") || t.starts_with("#storage")
                }),
                "{name}: a directive survived preprocessing"
            );
        }
    }
}
