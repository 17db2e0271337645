//! CPU compatibility. A replacement node is often another instance type: an app restored on a
//! CPU that lacks an instruction-set extension it used (glibc picks its string functions by
//! CPUID once, at start) dies later of SIGILL, and another xsave layout makes CRIU fail.
//!
//! CRIU records the CPU at dump (`cpuinfo.img`, asked for with `cpu_cap`) and checks an image
//! against the running CPU (`cpuinfo check`). crik asks for both, checks before any restore,
//! and, when CRIU refuses, names what is missing. crik's own comparison follows CRIU's:
//! the instruction features CRIU's x86 check covers (`x86_ins_capability_mask` in CRIU 4.2's
//! `criu/arch/x86/cpu.c`, names as in /proc/cpuinfo), the FPU features, the xsave feature mask
//! and the xsave sizes.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::criu::images::{self, ImageError};
use crate::layout::CPUINFO_IMAGE;
use criu_proto::cpuinfo::{cpuinfo_x86_entry::Vendor, Cpuinfo_entry, Cpuinfo_x86_entry};

/// CRIU's `cpu_cap` bits (criu/include/cr_options.h).
const CPU_CAP_FPU: u32 = 1 << 0;
const CPU_CAP_INS: u32 = 1 << 2;
/// What crik has CRIU record at dump and check before a restore: FPU/xsave compatibility and
/// instruction features (not the strict "every CPUID bit equal", which no two instance types pass).
pub const CPU_CAPS: u32 = CPU_CAP_FPU | CPU_CAP_INS;

/// The checkpoint's CPU, in its manifest, for people and `crik inspect` (CRIU's cpuinfo.img
/// is what the check reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuRecord {
    /// `x86_64`, `aarch64`, ...
    pub arch: String,
    pub vendor: String,
    pub model: String,
    /// The instruction features CRIU checks that this CPU had.
    pub features: Vec<String>,
    pub xfeatures_mask: u64,
    pub xsave_size: u32,
    /// A digest of what the kernel says of the CPU (/proc/cpuinfo's model name and flags) and of
    /// the kernel release: the same on a node of the same type, where CRIU's check (a process
    /// start, tens of ms on the restore's critical path) is then skipped.
    #[serde(default)]
    pub fingerprint: String,
}

/// This node's CPU fingerprint (see [`CpuRecord::fingerprint`]); empty when unreadable.
pub fn fingerprint() -> String {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else { return String::new() };
    fingerprint_of(&info, &crate::host::kernel_release())
}

fn fingerprint_of(cpuinfo: &str, kernel: &str) -> String {
    // The first CPU's entry: model and flags are the same on every core of a node.
    let first = cpuinfo.split("\n\n").next().unwrap_or("");
    let field = |name: &str| {
        first.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    let (model, flags) =
        (field("model name").unwrap_or_default(), field("flags").or(field("Features")).unwrap_or_default());
    if flags.is_empty() {
        return String::new();
    }
    format!("{:08x}", crc32fast::hash(format!("{model}\n{flags}\n{kernel}").as_bytes()))
}

/// The x86 entry of a cpuinfo image, if the images hold one.
pub fn read_x86(images: &Path) -> Result<Option<Cpuinfo_x86_entry>, ImageError> {
    let path = images.join(CPUINFO_IMAGE);
    if !path.exists() {
        return Ok(None);
    }
    let entry: Cpuinfo_entry = images::read_one(&path)?;
    Ok(entry.x86_entry.into_iter().next())
}

/// The record of the CPU described in `images` (x86 only; elsewhere the architecture alone).
pub fn record(images: &Path) -> Result<CpuRecord, ImageError> {
    let arch = std::env::consts::ARCH.to_string();
    Ok(match read_x86(images)? {
        Some(x) => CpuRecord {
            arch,
            vendor: match x.vendor_id() {
                Vendor::INTEL => "Intel".into(),
                Vendor::AMD => "AMD".into(),
                Vendor::UNKNOWN => "unknown".into(),
            },
            model: format!(
                "{} (family {}, model {}, stepping {})",
                x.model_id(),
                x.cpu_family(),
                x.model(),
                x.stepping()
            ),
            features: INSTRUCTION_FEATURES.iter().filter(|f| has(&x, f)).map(|(_, _, n)| n.to_string()).collect(),
            xfeatures_mask: x.xfeatures_mask(),
            xsave_size: x.xsave_size(),
            fingerprint: fingerprint(),
        },
        None => CpuRecord {
            arch,
            vendor: String::new(),
            model: String::new(),
            features: Vec::new(),
            xfeatures_mask: 0,
            xsave_size: 0,
            fingerprint: fingerprint(),
        },
    })
}

fn has(x: &Cpuinfo_x86_entry, &(word, bit, _): &(usize, u32, &str)) -> bool {
    x.capability.get(word).is_some_and(|w| w & (1 << bit) != 0)
}

/// What the checkpoint's CPU (`then`) had that this one (`now`) lacks, as CRIU's check sees it.
/// Empty: compatible.
pub fn missing(then: &Cpuinfo_x86_entry, now: &Cpuinfo_x86_entry) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in FPU_FEATURES.iter().chain(INSTRUCTION_FEATURES.iter()) {
        if has(then, f) && !has(now, f) && !out.iter().any(|n| n == f.2) {
            out.push(f.2.to_string());
        }
    }
    let extra = then.xfeatures_mask() & !now.xfeatures_mask();
    if extra != 0 {
        out.push(format!("xsave features {extra:#x}"));
    }
    if then.xsave_size() != now.xsave_size() {
        out.push(format!("xsave size {} (here {})", then.xsave_size(), now.xsave_size()));
    }
    if then.xsave_size_max() != now.xsave_size_max() {
        out.push(format!("xsave max size {} (here {})", then.xsave_size_max(), now.xsave_size_max()));
    }
    out
}

/// The FPU features CRIU's FPU check requires (word, bit, name).
const FPU_FEATURES: [(usize, u32, &str); 4] = [(0, 0, "fpu"), (0, 24, "fxsr"), (4, 27, "osxsave"), (10, 3, "xsaves")];

/// (capability word, bit, /proc/cpuinfo name) of every instruction feature in CRIU 4.2's
/// `x86_ins_capability_mask`, with the bit numbers of compel's `uapi/asm/cpu.h`.
#[rustfmt::skip]
const INSTRUCTION_FEATURES: [(usize, u32, &str); 74] = [
    (0, 0, "fpu"), (0, 4, "tsc"), (0, 8, "cx8"), (0, 11, "sep"), (0, 15, "cmov"), (0, 19, "clflush"),
    (0, 23, "mmx"), (0, 24, "fxsr"), (0, 25, "sse"), (0, 26, "sse2"), (1, 11, "syscall"), (1, 22, "mmxext"),
    (1, 27, "rdtscp"), (1, 30, "3dnowext"), (1, 31, "3dnow"), (3, 16, "rep_good"), (3, 20, "nopl"), (4, 0, "pni"),
    (4, 1, "pclmulqdq"), (4, 3, "monitor"), (4, 9, "ssse3"), (4, 13, "cx16"), (4, 19, "sse4_1"), (4, 20, "sse4_2"),
    (4, 22, "movbe"), (4, 23, "popcnt"), (4, 25, "aes"), (4, 26, "xsave"), (4, 27, "osxsave"), (4, 28, "avx"),
    (4, 29, "f16c"), (4, 30, "rdrand"), (6, 5, "abm"), (6, 6, "sse4a"), (6, 7, "misalignsse"),
    (6, 8, "3dnowprefetch"), (6, 11, "xop"), (6, 16, "fma4"), (6, 21, "tbm"), (9, 0, "fsgsbase"), (9, 3, "bmi1"),
    (9, 4, "hle"), (9, 5, "avx2"), (9, 8, "bmi2"), (9, 9, "erms"), (9, 11, "rtm"), (9, 14, "mpx"),
    (9, 16, "avx512f"), (9, 17, "avx512dq"), (9, 18, "rdseed"), (9, 19, "adx"), (9, 23, "clflushopt"),
    (9, 26, "avx512pf"), (9, 27, "avx512er"), (9, 28, "avx512cd"), (9, 29, "sha_ni"), (9, 30, "avx512bw"),
    (9, 31, "avx512vl"), (10, 0, "xsaveopt"), (10, 1, "xsavec"), (10, 2, "xgetbv1"), (11, 1, "avx512vbmi"),
    (11, 6, "avx512_vbmi2"), (11, 8, "gfni"), (11, 9, "vaes"), (11, 10, "vpclmulqdq"), (11, 11, "avx512_vnni"),
    (11, 12, "avx512_bitalg"), (11, 13, "tme"), (11, 14, "avx512_vpopcntdq"), (11, 22, "rdpid"), (13, 0, "clzero"),
    (18, 2, "avx512_4vnniw"), (18, 3, "avx512_4fmaps"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(words: &[(usize, u32)], xfeatures: u64, xsave: u32) -> Cpuinfo_x86_entry {
        let mut e = Cpuinfo_x86_entry::new();
        e.capability = vec![0; 24];
        for &(w, b) in words {
            e.capability[w] |= 1 << b;
        }
        (e.xfeatures_mask, e.xsave_size, e.xsave_size_max) = (Some(xfeatures), Some(xsave), Some(xsave));
        e
    }

    #[test]
    fn missing_names_instruction_features_and_xsave_differences() {
        let here = cpu(&[(0, 0), (9, 5), (9, 16)], 0b111, 832);
        assert!(missing(&here, &here).is_empty());
        // A richer destination is fine.
        assert!(missing(&cpu(&[(9, 5)], 0b11, 832), &here).is_empty());
        let then = cpu(&[(0, 0), (9, 5), (9, 16), (9, 26), (11, 8)], 0b1111, 1088);
        assert_eq!(
            missing(&then, &here),
            vec![
                "avx512pf",
                "gfni",
                "xsave features 0x8",
                "xsave size 1088 (here 832)",
                "xsave max size 1088 (here 832)"
            ]
        );
        // Bits outside CRIU's check (e.g. a mitigation flag in word 7) are not a reason.
        assert!(missing(&cpu(&[(0, 0), (9, 5), (9, 16), (7, 2)], 0b111, 832), &here).is_empty());
        assert_eq!(missing(&cpu(&[(10, 3)], 0, 832), &cpu(&[], 0, 832)), vec!["xsaves"]);
        assert_eq!(missing(&cpu(&[(0, 0)], 0, 832), &cpu(&[], 0, 832)), vec!["fpu"], "named once");
    }

    #[test]
    fn fingerprints_follow_model_flags_and_kernel() {
        let info =
            "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2\n\nprocessor\t: 1\nflags\t\t: other\n";
        let a = fingerprint_of(info, "6.18");
        assert_eq!(a.len(), 8);
        assert_eq!(a, fingerprint_of(info, "6.18"));
        assert_ne!(a, fingerprint_of(info, "6.19"), "another kernel");
        assert_ne!(a, fingerprint_of(&info.replace("avx2", "avx512f"), "6.18"), "other flags");
        assert_eq!(fingerprint_of("processor\t: 0\n", "6.18"), "", "nothing to go by");
        assert!(!fingerprint().is_empty(), "this machine's /proc/cpuinfo");
    }

    #[test]
    fn the_feature_table_has_one_name_per_bit() {
        let mut bits: Vec<(usize, u32)> = INSTRUCTION_FEATURES.iter().map(|&(w, b, _)| (w, b)).collect();
        bits.sort();
        bits.dedup();
        assert_eq!(bits.len(), INSTRUCTION_FEATURES.len());
        assert!(INSTRUCTION_FEATURES.iter().all(|(_, b, n)| *b < 32 && !n.is_empty()));
    }
}
