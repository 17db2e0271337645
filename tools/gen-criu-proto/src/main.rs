//! Regenerates `crates/criu-proto/src/generated/` from crik's view of CRIU's protos
//! (`crates/criu-proto/proto/crik/`):
//!
//! ```text
//! cargo run -p crik-gen-criu-proto
//! ```
//!
//! The output is committed, so building crik needs neither protoc nor this generator. The
//! tests check that the committed files are what this generator makes, and that crik's view
//! agrees with CRIU's own protos (`crates/criu-proto/proto/upstream/`, vendored verbatim): every
//! field crik declares is CRIU's field (name, number, type, label, default), every enum is
//! CRIU's whole, and the messages crik writes whole are CRIU's whole.

use std::path::{Path, PathBuf};

fn main() {
    let root = crate_dir();
    let out = root.join("src/generated");
    if let Err(e) = generate(&root.join("proto/crik"), &out) {
        eprintln!("crik-gen-criu-proto: {e:#}");
        std::process::exit(1);
    }
    eprintln!("wrote {}", out.display());
}

/// `crates/criu-proto/`.
fn crate_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crates/criu-proto")
}

fn protos_in(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    inputs.retain(|p| p.extension().is_some_and(|x| x == "proto"));
    inputs.sort();
    Ok(inputs)
}

/// Generates one Rust module per proto file of `protos` into `out` (replacing what is there).
pub fn generate(protos: &Path, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let inputs = protos_in(protos)?;
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    std::fs::create_dir_all(out)?;
    protobuf_codegen::Codegen::new()
        .pure()
        .include(protos)
        .inputs(&inputs)
        // Plain structs and parsers, without reflection descriptors.
        .customize(protobuf_codegen::Customize::default().lite_runtime(true).gen_mod_rs(true))
        .out_dir(out)
        .run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use protobuf::descriptor::{DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto};

    use super::*;

    /// The committed `src/generated/` must be exactly what crik's protos generate.
    #[test]
    fn committed_code_matches_crik_protos() {
        let root = crate_dir();
        let tmp = std::env::temp_dir().join(format!("crik-criu-proto-{}", std::process::id()));
        generate(&root.join("proto/crik"), &tmp).unwrap();
        let committed = root.join("src/generated");
        let names = |d: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(d).unwrap().flatten().map(|e| e.file_name()).collect();
            v.sort();
            v
        };
        assert_eq!(names(&tmp), names(&committed), "run `cargo run -p crik-gen-criu-proto`");
        for name in names(&tmp) {
            let (a, b) = (std::fs::read(tmp.join(&name)).unwrap(), std::fs::read(committed.join(&name)).unwrap());
            assert!(a == b, "{name:?} differs: run `cargo run -p crik-gen-criu-proto`");
        }
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    fn parse(dir: &Path) -> Vec<FileDescriptorProto> {
        protobuf_parse::Parser::new()
            .pure()
            .include(dir)
            .inputs(protos_in(dir).unwrap())
            .parse_and_typecheck()
            .unwrap()
            .file_descriptors
    }

    /// Every message and enum of a set of files, by full name (".core_entry.march").
    #[derive(Default)]
    struct Types {
        messages: BTreeMap<String, DescriptorProto>,
        enums: BTreeMap<String, EnumDescriptorProto>,
        file_of: BTreeMap<String, String>,
    }

    impl Types {
        fn of(files: &[FileDescriptorProto]) -> Types {
            let mut t = Types::default();
            for f in files {
                for m in &f.message_type {
                    t.add_message(f.name(), "", m);
                }
                for e in &f.enum_type {
                    t.enums.insert(format!(".{}", e.name()), e.clone());
                }
            }
            t
        }
        fn add_message(&mut self, file: &str, scope: &str, m: &DescriptorProto) {
            let name = format!("{scope}.{}", m.name());
            for n in &m.nested_type {
                self.add_message(file, &name, n);
            }
            for e in &m.enum_type {
                self.enums.insert(format!("{name}.{}", e.name()), e.clone());
            }
            self.file_of.insert(name.clone(), file.to_string());
            self.messages.insert(name, m.clone());
        }
    }

    /// What makes a field the same on the wire and to its getters.
    fn signature(f: &FieldDescriptorProto) -> (String, i32, String, String, String, String) {
        (
            f.name().to_string(),
            f.number(),
            format!("{:?}", f.type_()),
            f.type_name().to_string(),
            format!("{:?}", f.label()),
            f.default_value().to_string(),
        )
    }

    /// Files crik writes messages of whole (its page server's pagemap images; a test rewrites
    /// a CPU record) or that it copies as they are.
    const WHOLE: [&str; 3] = ["pagemap.proto", "cpuinfo.proto", "pstree.proto"];

    #[test]
    fn crik_protos_agree_with_criu_protos() {
        let root = crate_dir();
        let (crik, criu) =
            (Types::of(&parse(&root.join("proto/crik"))), Types::of(&parse(&root.join("proto/upstream"))));
        for (name, m) in &crik.messages {
            let theirs = criu.messages.get(name).unwrap_or_else(|| panic!("{name} is not a message of CRIU's"));
            for f in &m.field {
                let same = theirs.field.iter().find(|t| t.number() == f.number());
                assert_eq!(same.map(signature), Some(signature(f)), "{name}.{} differs from CRIU's", f.name());
            }
            if WHOLE.contains(&crik.file_of[name].as_str()) {
                assert_eq!(m.field.len(), theirs.field.len(), "{name} must be CRIU's whole");
            }
        }
        for (name, e) in &crik.enums {
            let theirs = criu.enums.get(name).unwrap_or_else(|| panic!("{name} is not an enum of CRIU's"));
            let values = |e: &EnumDescriptorProto| -> Vec<(String, i32)> {
                e.value.iter().map(|v| (v.name().to_string(), v.number())).collect()
            };
            assert_eq!(values(e), values(theirs), "enum {name} must be CRIU's whole");
        }
    }
}
