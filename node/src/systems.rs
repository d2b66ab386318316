//! Which Nix systems this machine builds natively, and which through binfmt_misc emulation.
//!
//! Native: the kernel's machine (`uname -m` as `std::env::consts::ARCH`) mapped to a Nix system,
//! plus the 32-bit sibling the CPU runs directly (`i686-linux` on `x86_64-linux`, as Nix's default
//! `extra-platforms`). Emulated: every enabled `/proc/sys/fs/binfmt_misc` entry whose ELF magic
//! names another machine (typically `qemu-<arch>` entries from `qemu-user-static`/`binfmt-support`)
//! and that has the `F` flag: the kernel opened its interpreter when it was registered, so it runs
//! inside a build's mount namespace, where the host's `/usr/bin` does not exist (an entry without
//! `F` would fail every sandboxed build, so it is not counted). The node's `emulated_systems`
//! setting narrows the detected set ([`Systems::restrict_emulated`]). Attestations and failures
//! made for an emulated system are marked as such (docs/emulation.md).

use std::collections::BTreeSet;
use std::path::Path;

/// The systems a node can build, split by how.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Systems {
    /// Built by the CPU itself.
    pub native: BTreeSet<String>,
    /// Built through a binfmt_misc interpreter (QEMU user mode); never also in `native`.
    pub emulated: BTreeSet<String>,
}

impl Systems {
    /// Whether `system` can be built here, natively or emulated.
    pub fn supports(&self, system: &str) -> bool {
        self.native.contains(system) || self.emulated.contains(system)
    }

    /// Whether a build for `system` here runs under emulation.
    pub fn is_emulated(&self, system: &str) -> bool {
        !self.native.contains(system) && self.emulated.contains(system)
    }

    /// Keep only the emulated systems in `allowed` (`None`: keep all, the default; an empty list:
    /// none). Returns the allowed systems binfmt_misc cannot run here (so the caller can warn).
    pub fn restrict_emulated(&mut self, allowed: Option<&[String]>) -> Vec<String> {
        let Some(allowed) = allowed else { return Vec::new() };
        let missing = allowed.iter().filter(|s| !self.supports(s)).cloned().collect();
        self.emulated.retain(|s| allowed.contains(s));
        missing
    }
}

/// The default binfmt_misc mount point.
pub const BINFMT_MISC_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// Detect this machine's systems (reads `/proc/sys/fs/binfmt_misc`; an unmounted binfmt_misc
/// simply means no emulated systems).
pub fn detect() -> Systems {
    detect_with(std::env::consts::ARCH, Path::new(BINFMT_MISC_DIR))
}

/// [`detect`] with the machine and the binfmt_misc directory as parameters (for tests).
pub fn detect_with(arch: &str, binfmt_dir: &Path) -> Systems {
    let mut native = BTreeSet::new();
    if let Some(sys) = nix_system_for_arch(arch) {
        native.insert(sys.to_string());
    }
    match arch {
        "x86_64" => {
            native.insert("i686-linux".to_string());
        }
        "aarch64" => {
            // Most aarch64 CPUs run 32-bit ARM code, but not all (e.g. Apple, some Neoverse):
            // leave armv7l to binfmt_misc detection.
        }
        _ => {}
    }
    let mut emulated = BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir(binfmt_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == "register" || name == "status" {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
            if let Some(sys) = parse_binfmt_entry(&name, &text)
                && !native.contains(&sys)
            {
                emulated.insert(sys);
            }
        }
    }
    Systems { native, emulated }
}

/// Map `uname -m` style machine names to Nix systems.
pub fn nix_system_for_arch(arch: &str) -> Option<&'static str> {
    Some(match arch {
        "x86_64" => "x86_64-linux",
        "x86" | "i386" | "i486" | "i586" | "i686" => "i686-linux",
        "aarch64" | "arm64" => "aarch64-linux",
        "arm" | "armv7l" | "armv7" => "armv7l-linux",
        "armv6l" => "armv6l-linux",
        "riscv64" => "riscv64-linux",
        "powerpc64le" | "ppc64le" => "powerpc64le-linux",
        "powerpc64" | "ppc64" => "powerpc64-linux",
        "s390x" => "s390x-linux",
        "mips64el" => "mips64el-linux",
        "loongarch64" => "loongarch64-linux",
        _ => return None,
    })
}

/// Parse one binfmt_misc entry: `enabled`, then `interpreter ...`, `flags: ...`, `offset N`,
/// `magic HEX`, `mask HEX`. Returns the Nix system it emulates, from the ELF header in `magic`
/// (EI_CLASS, EI_DATA, e_machine) or, failing that, from a `qemu-<arch>` entry name; `None` for a
/// disabled entry or one without the `F` flag (its interpreter is not reachable in the sandbox).
pub fn parse_binfmt_entry(name: &str, text: &str) -> Option<String> {
    let mut lines = text.lines();
    if lines.next()?.trim() != "enabled" {
        return None;
    }
    let mut magic = None;
    let mut offset = None;
    let mut fix_binary = false;
    for line in text.lines() {
        if let Some(f) = line.strip_prefix("flags:") {
            fix_binary = f.contains('F');
        } else if let Some(m) = line.strip_prefix("magic ") {
            magic = hex::decode(m.trim()).ok();
        } else if let Some(o) = line.strip_prefix("offset ") {
            offset = o.trim().parse::<usize>().ok();
        }
    }
    if !fix_binary {
        return None;
    }
    if let (Some(magic), Some(0)) = (magic, offset)
        && let Some(sys) = system_from_elf_magic(&magic)
    {
        return Some(sys.to_string());
    }
    name.strip_prefix("qemu-").and_then(nix_system_for_arch).map(str::to_string)
}

/// The Nix system an ELF header prefix (at least 20 bytes) is for.
pub fn system_from_elf_magic(magic: &[u8]) -> Option<&'static str> {
    if magic.len() < 20 || &magic[..4] != b"\x7fELF" {
        return None;
    }
    let class64 = magic[4] == 2;
    let little = magic[5] == 1;
    let machine =
        if little { u16::from_le_bytes([magic[18], magic[19]]) } else { u16::from_be_bytes([magic[18], magic[19]]) };
    Some(match (machine, class64, little) {
        (0x3e, true, true) => "x86_64-linux",
        (0x03, false, true) => "i686-linux",
        (0xb7, true, true) => "aarch64-linux",
        (0x28, false, true) => "armv7l-linux",
        (0xf3, true, true) => "riscv64-linux",
        (0x15, true, true) => "powerpc64le-linux",
        (0x15, true, false) => "powerpc64-linux",
        (0x16, true, false) => "s390x-linux",
        (0x08, true, true) => "mips64el-linux",
        (0x102, true, true) => "loongarch64-linux",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AARCH64: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n";
    const RISCV: &str = "enabled\ninterpreter /usr/bin/qemu-riscv64-static\nflags: F\noffset 0\nmagic 7f454c460201010000000000000000000200f300\nmask ffffffffffffff00fffffffffffffffffeffffff\n";

    #[test]
    fn parses_qemu_entries() {
        assert_eq!(parse_binfmt_entry("qemu-aarch64", AARCH64).as_deref(), Some("aarch64-linux"));
        assert_eq!(parse_binfmt_entry("whatever", RISCV).as_deref(), Some("riscv64-linux"));
        assert_eq!(parse_binfmt_entry("qemu-aarch64", &AARCH64.replace("enabled", "disabled")), None);
        // Without F the interpreter would be looked up inside the sandbox, where it is not.
        assert_eq!(parse_binfmt_entry("qemu-aarch64", &AARCH64.replace("flags: POCF", "flags: OC")), None);
        assert_eq!(
            parse_binfmt_entry("python3.11", "enabled\ninterpreter /usr/bin/python3\noffset 0\nmagic 0d0a\n"),
            None
        );
    }

    #[test]
    fn detects_from_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("qemu-aarch64"), AARCH64).unwrap();
        std::fs::write(dir.path().join("qemu-riscv64"), RISCV).unwrap();
        std::fs::write(dir.path().join("status"), "enabled\n").unwrap();
        // An x86_64 entry on an x86_64 host is not emulation.
        std::fs::write(
            dir.path().join("qemu-x86_64"),
            "enabled\ninterpreter /q\noffset 0\nmagic 7f454c4602010100000000000000000002003e00\n",
        )
        .unwrap();
        let s = detect_with("x86_64", dir.path());
        assert_eq!(s.native, ["i686-linux", "x86_64-linux"].map(String::from).into());
        assert_eq!(s.emulated, ["aarch64-linux", "riscv64-linux"].map(String::from).into());
        assert!(s.is_emulated("aarch64-linux") && !s.is_emulated("x86_64-linux"));
        let none = detect_with("x86_64", &dir.path().join("missing"));
        assert!(none.emulated.is_empty());
        let mut only = s.clone();
        assert_eq!(only.restrict_emulated(Some(&["aarch64-linux".into(), "s390x-linux".into()])), ["s390x-linux"]);
        assert_eq!(only.emulated, ["aarch64-linux".to_string()].into());
        let mut off = s.clone();
        off.restrict_emulated(Some(&[]));
        assert!(off.emulated.is_empty() && off.native == s.native);
        let mut all = s.clone();
        all.restrict_emulated(None);
        assert_eq!(all, s);
    }
}
