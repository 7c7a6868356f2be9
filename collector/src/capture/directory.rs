//! The capture directory: refusing to mix two captures, clearing an old one
//! on `--overwrite`, and `capture.json`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::write::tables::Table;

pub use trace_format::{CaptureJson, FORMAT_VERSION};

/// Files of a capture besides the table directories.
const CAPTURE_FILES: [&str; 2] = ["capture.json", "mtree.txt"];

/// What in `dir` belongs to a capture.
fn capture_entries(dir: &Path) -> Vec<PathBuf> {
    CAPTURE_FILES
        .iter()
        .copied()
        .chain(Table::ALL.iter().map(|t| t.name()))
        .map(|n| dir.join(n))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect()
}

/// Creates `dir` if needed, and refuses it if it holds a capture, unless
/// `overwrite` (then `clear` removes it, once the capture can start) or
/// `append` (then the capture continues it, see `append`).
pub fn check(dir: &Path, overwrite: bool, append: bool) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("--out {}: exists and is not a directory", dir.display());
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create --out directory {}", dir.display()))?;
    check_writable(dir)?;
    let old = capture_entries(dir);
    if !old.is_empty() && !overwrite && !append {
        bail!(
            "--out {} already holds a capture ({}): choose another directory, pass --overwrite to replace it, or --append (attach) to continue it",
            dir.display(),
            old.iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

/// Fails unless we can create (and remove) a file in `dir`: a read-only
/// file system or a directory we may not write in is an error before QEMU is
/// started or released, not after.
fn check_writable(dir: &Path) -> Result<()> {
    let probe = dir.join(format!(".trace-collector-probe.{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .with_context(|| format!("cannot write in --out directory {}", dir.display()))?;
    std::fs::remove_file(&probe).with_context(|| format!("cannot remove {}", probe.display()))
}

/// Removes an old capture's files from `dir` (nothing else).
pub fn clear(dir: &Path) -> Result<()> {
    for p in capture_entries(dir) {
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.with_context(|| format!("cannot remove the old capture's {}", p.display()))?;
    }
    Ok(())
}

/// Writes `path` through a temporary file and a rename: readers see the old
/// or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let written = std::fs::write(&tmp, bytes)
        .with_context(|| format!("cannot write {}", tmp.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
        });
    if written.is_err() {
        // A partial file (disk full) must not stay behind, using the space.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Space set aside in the capture directory for the final capture.json: if
/// the disk fills up, the capture ends with an error, and the metadata that
/// says so must still fit. Removed (freeing the space) before that last
/// write, and on drop.
pub struct SpaceReserve(Option<PathBuf>);

impl SpaceReserve {
    const BYTES: usize = 64 << 10;

    /// Sets the space aside (nothing when the disk is already too full).
    pub fn new(dir: &Path) -> SpaceReserve {
        let path = dir.join(".trace-collector-reserve");
        match std::fs::write(&path, vec![0u8; Self::BYTES]) {
            Ok(()) => SpaceReserve(Some(path)),
            Err(_) => {
                let _ = std::fs::remove_file(&path);
                SpaceReserve(None)
            }
        }
    }

    /// Frees the space.
    pub fn release(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for SpaceReserve {
    fn drop(&mut self) {
        self.release();
    }
}

/// Writing `capture.json` (its type is the format's: `trace_format::CaptureJson`).
pub trait WriteCaptureJson {
    /// Writes it into capture directory `dir`, atomically.
    fn write(&self, dir: &Path) -> Result<()>;
}

impl WriteCaptureJson for CaptureJson {
    fn write(&self, dir: &Path) -> Result<()> {
        write_atomic(&dir.join("capture.json"), self.to_text().as_bytes())
    }
}

/// QEMU's command line, from /proc/<pid>/cmdline.
pub fn qemu_command(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut args: Vec<String> = raw
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if args.last().is_some_and(|a| a.is_empty()) {
        args.pop();
    }
    args
}

/// Pointer width of the guest, from the QEMU binary's name (the first
/// argument, else the executable): 64 for the 64-bit targets, 32 for the
/// other `qemu-system-*`, `None` for a name we cannot read.
pub fn guest_pointer_bits(command: &[String], exe: Option<&Path>) -> Option<u32> {
    let names = command
        .first()
        .map(PathBuf::from)
        .into_iter()
        .chain(exe.map(Path::to_path_buf));
    for path in names {
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let Some(target) = name.strip_prefix("qemu-system-") else {
            continue;
        };
        let bits64 = [
            "aarch64",
            "x86_64",
            "riscv64",
            "ppc64",
            "s390x",
            "loongarch64",
            "sparc64",
        ]
        .contains(&target)
            || target.starts_with("mips64");
        return Some(if bits64 { 64 } else { 32 });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn pointer_bits_from_the_binary_name() {
        let c = |s: &str| vec![s.to_string(), "-M".into()];
        assert_eq!(
            guest_pointer_bits(&c("/usr/bin/qemu-system-aarch64"), None),
            Some(64)
        );
        assert_eq!(guest_pointer_bits(&c("qemu-system-x86_64"), None), Some(64));
        assert_eq!(
            guest_pointer_bits(&c("qemu-system-mips64el"), None),
            Some(64)
        );
        assert_eq!(guest_pointer_bits(&c("qemu-system-arm"), None), Some(32));
        assert_eq!(
            guest_pointer_bits(&c("qemu-system-riscv32"), None),
            Some(32)
        );
        assert_eq!(guest_pointer_bits(&c("./my-qemu"), None), None);
        assert_eq!(
            guest_pointer_bits(&c("./my-qemu"), Some(Path::new("/opt/qemu-system-riscv64"))),
            Some(64)
        );
        assert_eq!(guest_pointer_bits(&[], None), None);
    }

    #[test]
    fn refuses_an_old_capture_unless_overwrite() {
        let t = TempDir::new("out");
        let out = t.0.join("cap");
        check(&out, false, false).unwrap(); // created
        assert!(out.is_dir());
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        check(&out, false, false).unwrap(); // unrelated files are fine
        std::fs::create_dir_all(out.join("mem")).unwrap();
        std::fs::write(out.join("mem/part-000000.parquet"), "x").unwrap();
        std::fs::write(out.join("capture.json"), "{}").unwrap();
        let e = check(&out, false, false).unwrap_err().to_string();
        assert!(
            e.contains("--overwrite") && e.contains("--append") && e.contains("capture.json"),
            "{e}"
        );
        check(&out, false, true).unwrap();
        check(&out, true, false).unwrap();
        clear(&out).unwrap();
        assert!(!out.join("mem").exists() && !out.join("capture.json").exists());
        assert!(
            out.join("notes.txt").exists(),
            "only the capture's files are removed"
        );
        // A file where the directory should be.
        let file = t.0.join("file");
        std::fs::write(&file, "").unwrap();
        assert!(check(&file, true, false).is_err());
    }
}
