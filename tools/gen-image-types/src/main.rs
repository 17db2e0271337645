//! Regenerates `src/image_types/` from `proto/criu/*.proto` (CRIU's `images/` at the tag named
//! in `proto/criu/VERSION`):
//!
//! ```text
//! cargo run -p crik-gen-image-types
//! ```
//!
//! The output is committed, as rust-criu does with its RPC types, so building crik needs
//! neither protoc nor this generator; a test checks that the committed files are what this
//! generator makes of the vendored protos.

use std::path::{Path, PathBuf};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = root.join("src/image_types");
    if let Err(e) = generate(&root.join("proto/criu"), &out) {
        eprintln!("crik-gen-image-types: {e:#}");
        std::process::exit(1);
    }
    eprintln!("wrote {}", out.display());
}

/// Generates one Rust module per proto file of `protos` into `out` (replacing what is there).
pub fn generate(protos: &Path, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(protos)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    inputs.retain(|p| p.extension().is_some_and(|x| x == "proto"));
    inputs.sort();
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    std::fs::create_dir_all(out)?;
    protobuf_codegen::Codegen::new()
        .pure()
        .include(protos)
        .inputs(&inputs)
        // Plain structs and parsers, without reflection descriptors: crik only reads images.
        .customize(protobuf_codegen::Customize::default().lite_runtime(true).gen_mod_rs(true))
        .out_dir(out)
        .run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed `src/image_types/` must be exactly what the vendored protos generate.
    #[test]
    fn committed_types_match_the_vendored_protos() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let tmp = std::env::temp_dir().join(format!("crik-image-types-{}", std::process::id()));
        generate(&root.join("proto/criu"), &tmp).unwrap();
        let committed = root.join("src/image_types");
        let names = |d: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(d).unwrap().flatten().map(|e| e.file_name()).collect();
            v.sort();
            v
        };
        assert_eq!(names(&tmp), names(&committed), "run `cargo run -p crik-gen-image-types`");
        for name in names(&tmp) {
            let (a, b) = (std::fs::read(tmp.join(&name)).unwrap(), std::fs::read(committed.join(&name)).unwrap());
            assert!(
                a == b,
                "{} differs from the generator's output: run `cargo run -p crik-gen-image-types`",
                name.to_string_lossy()
            );
        }
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
