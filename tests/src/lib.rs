//! Helpers for the end-to-end tests: where the built binaries and firmware
//! are, how to run a capture, and how to read its tables back.
//!
//! The tests drive the real thing: `qemu-system-*` loading the real
//! `libtrace_shim.so`, the real `trace-collector` process, and the Parquet it
//! wrote, read back with polars. Build everything first with
//! `cargo build --release --workspace` (`scripts/test.sh` does).

pub mod guest;
pub mod processes;
pub mod qmp;

use anyhow::{bail, Result};
use polars::prelude::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// `target/release`, found from this test binary (`target/release/deps/…`).
pub fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

fn built(name: &str) -> PathBuf {
    let p = release_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --release --workspace` first (scripts/test.sh does)",
        p.display()
    );
    p
}

pub fn collector() -> PathBuf {
    built("trace-collector")
}

pub fn query() -> PathBuf {
    built("trace-query")
}

pub fn shim() -> PathBuf {
    built("libtrace_shim.so")
}

/// tests/firmware in the checkout being tested. Taken from the environment
/// `cargo test` gives the test binary, not from the path compiled in: with a
/// target directory shared between clones (as .ci/run does), an unchanged
/// test binary built from another clone is reused, and its compiled-in path
/// may no longer exist.
pub fn firmware_sources() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.join("firmware").is_dir())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("firmware")
}

/// Builds the test firmware (tests/firmware) once per test binary.
pub fn firmware(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let out = release_dir().join("firmware");
        let src = firmware_sources();
        let status = Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(&src)
            .arg(format!("OUT={}", out.display()))
            .status()
            .expect("make is needed to build the test firmware");
        assert!(
            status.success(),
            "building the test firmware failed (run scripts/setup.sh for the toolchains)"
        );
        out
    });
    dir.join(name)
}

/// One of QEMU's own plugins (`execlog`, `mem`), built once (cached) from
/// the installed QEMU's source by scripts/qemu-execlog.sh.
pub fn qemu_plugin(which: &str) -> PathBuf {
    script_path(
        "qemu-execlog.sh",
        &[which],
        "what scripts/setup.sh installs",
    )
}

/// Runs the checkout's `scripts/<script> args` and returns the path it
/// prints; `needs` says what it needs, should it fail.
pub fn script_path(script: &str, args: &[&str], needs: &str) -> PathBuf {
    let script = firmware_sources().join("../../scripts").join(script);
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} {} failed (it needs {needs}):\n{}",
        script.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A fresh, empty directory for one test's capture.
pub fn capture_dir(test: &str) -> PathBuf {
    let d = release_dir().join("test-captures").join(test);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.parent().unwrap()).unwrap();
    d
}

/// A copy of the capture `src` in a fresh `capture_dir(test)`, to damage.
pub fn copy_capture(src: &Path, test: &str) -> PathBuf {
    let dst = capture_dir(test);
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(src)
        .arg(&dst)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -r {} {}",
        src.display(),
        dst.display()
    );
    dst
}

/// Pids of the live QEMUs whose command line has the argument `marker` (a
/// `-name` a test gave them, so that it can find and kill its own). A
/// zombie's command line is empty: it does not count.
pub fn qemus_with(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let mut args = cmd.split(|&b| b == 0);
        let qemu = args
            .next()
            .is_some_and(|a| String::from_utf8_lossy(a).contains("qemu-system"));
        if qemu && args.any(|a| a == marker.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// `trace-query ARGS`: (exited 0, stdout, stderr); fails the test on a
/// panic.
pub fn run_query<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String, String) {
    let o = Command::new(query()).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr,
    )
}

/// QEMU command line for the Cortex-M3 firmware (prints `Hello\n`, exits 0).
pub fn m3_qemu() -> Vec<String> {
    lm3s6965evb_qemu("m3.elf")
}

/// QEMU command line for one of the Cortex-M3 firmware images.
pub fn lm3s6965evb_qemu(firmware_name: &str) -> Vec<String> {
    lm3s6965evb_command(&firmware(firmware_name), "stdio")
}

/// QEMU command line for the Cortex-M3 firmware `elf`, its UART to
/// `serial` (a `-serial` backend: `stdio`, `null`, ...).
pub fn lm3s6965evb_command(elf: &Path, serial: &str) -> Vec<String> {
    [
        "qemu-system-arm",
        "-M",
        "lm3s6965evb",
        "-nographic",
        "-monitor",
        "none",
        "-serial",
        serial,
        "-semihosting-config",
        "enable=on,target=native",
        "-kernel",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([elf.display().to_string()])
    .collect()
}

/// QEMU command line for the two-vCPU AArch64 firmware.
pub fn a64_qemu() -> Vec<String> {
    let fw = firmware("a64.elf");
    [
        "qemu-system-aarch64",
        "-M",
        "virt,gic-version=2",
        "-cpu",
        "cortex-a53",
        "-smp",
        "2",
        "-nographic",
        "-nic",
        "none",
        "-monitor",
        "none",
        "-semihosting-config",
        "enable=on,target=native",
        "-kernel",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([fw.display().to_string()])
    .collect()
}

/// `trace-collector run --out DIR <args> -- <qemu>`; fails the test with the
/// collector's output if it does not exit 0.
pub fn run_capture(out: &Path, args: &[&str], qemu: &[String]) -> Output {
    let output = Command::new(collector())
        .arg("run")
        .arg("--out")
        .arg(out)
        .args(args)
        .arg("--")
        .args(qemu)
        .output()
        .expect("cannot start trace-collector");
    assert!(
        output.status.success(),
        "trace-collector run failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// All parts of one table, in file order. `insn`, which the collector does
/// not write, is the view trace-query builds from `block_exec` and `code`.
pub fn table(capture: &Path, name: &str) -> Result<DataFrame> {
    if name == "insn" && !capture.join("insn").is_dir() {
        let cap = trace_analyzers::capture_dir::Capture::open(capture)?;
        if !cap.has_table("insn") {
            bail!("capture {} has no table {name}", capture.display());
        }
        return cap.collect(cap.scan("insn")?);
    }
    let dir = capture.join(name);
    if !dir.is_dir() {
        bail!("capture {} has no table {name}", capture.display());
    }
    let glob = format!("{}/*.parquet", dir.display());
    let df = LazyFrame::scan_parquet(PlRefPath::new(glob.as_str()), ScanArgsParquet::default())?
        .collect();
    anyhow::Context::with_context(df, || format!("reading table {name}"))
}

/// Only the columns `names` of a table (all its parts): for tables too
/// large to read whole.
pub fn columns(capture: &Path, name: &str, names: &[&str]) -> Result<DataFrame> {
    let glob = format!("{}/{name}/*.parquet", capture.display());
    let columns: Vec<Expr> = names.iter().map(|n| col(*n)).collect();
    let df = LazyFrame::scan_parquet(PlRefPath::new(glob.as_str()), ScanArgsParquet::default())?
        .select(columns)
        .collect();
    anyhow::Context::with_context(df, || format!("reading table {name}"))
}

/// Every distinct (pc, bytes, disas) of a capture's `code` table.
pub fn code_rows(capture: &Path) -> std::collections::BTreeSet<(u64, Vec<u8>, String)> {
    let code = columns(capture, "code", &["pc", "bytes", "disas"]).unwrap();
    let pc = u64s(&code, "pc");
    let bytes = code.column("bytes").unwrap().binary().unwrap();
    let disas = code.column("disas").unwrap().str().unwrap();
    (0..code.height())
        .map(|i| {
            (
                pc[i],
                bytes.get(i).unwrap().to_vec(),
                disas.get(i).unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The values of `df`'s UInt64 column `name` (a column without nulls).
pub fn u64s(df: &DataFrame, name: &str) -> Vec<u64> {
    df.column(name)
        .unwrap()
        .u64()
        .unwrap()
        .into_no_null_iter()
        .collect()
}

/// One row of `mem` or `mmio`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub vcpu: u32,
    pub icount: u64,
    pub pc: u64,
    pub store: bool,
    pub vaddr: u64,
    pub paddr: u64,
    pub size: u8,
    pub value: Option<u64>,
    pub asid: u64,
    pub device: Option<String>,
}

/// The rows of `mem` or `mmio`, ordered by (vcpu, icount) with ties kept in
/// file order (several accesses of one instruction).
pub fn accesses(capture: &Path, name: &str) -> Result<Vec<Access>> {
    let df = table(capture, name)?;
    let n = df.height();
    let vcpu = df.column("vcpu")?.u32()?.clone();
    let icount = df.column("icount")?.u64()?.clone();
    let pc = df.column("pc")?.u64()?.clone();
    let ty = df.column("type")?.str()?.clone();
    let vaddr = df.column("vaddr")?.u64()?.clone();
    let paddr = df.column("paddr")?.u64()?.clone();
    let size = df.column("size")?.u8()?.clone();
    let value = df.column("value")?.u64()?.clone();
    let asid = df.column("asid")?.u64()?.clone();
    let device = df.column("device")?.str()?.clone();
    let mut rows: Vec<Access> = (0..n)
        .map(|i| Access {
            vcpu: vcpu.get(i).unwrap(),
            icount: icount.get(i).unwrap(),
            pc: pc.get(i).unwrap(),
            store: match ty.get(i) {
                Some("W") => true,
                Some("R") => false,
                other => panic!("type column holds {other:?}"),
            },
            vaddr: vaddr.get(i).unwrap(),
            paddr: paddr.get(i).unwrap(),
            size: size.get(i).unwrap(),
            value: value.get(i),
            asid: asid.get(i).unwrap(),
            device: device.get(i).map(str::to_string),
        })
        .collect();
    rows.sort_by_key(|a| (a.vcpu, a.icount)); // stable: file order within an instruction
    Ok(rows)
}

/// `stats` as (name, vcpu, value) triples.
pub fn stats(capture: &Path) -> Result<Vec<(String, Option<u32>, u64)>> {
    let df = table(capture, "stats")?;
    let name = df.column("name")?.str()?.clone();
    let vcpu = df.column("vcpu")?.u32()?.clone();
    let value = df.column("value")?.u64()?.clone();
    Ok((0..df.height())
        .map(|i| {
            (
                name.get(i).unwrap().to_string(),
                vcpu.get(i),
                value.get(i).unwrap(),
            )
        })
        .collect())
}

/// The value of stat `name` for `vcpu`.
pub fn stat(capture: &Path, name: &str, vcpu: Option<u32>) -> u64 {
    let all = stats(capture).unwrap();
    all.iter()
        .find(|(n, v, _)| n == name && *v == vcpu)
        .map(|(_, _, value)| *value)
        .unwrap_or_else(|| panic!("no stat {name} for vcpu {vcpu:?} in {all:?}"))
}

/// One line of QEMU's execlog: what it says before its accesses, and each
/// access as (load or store, physical address, device).
pub type ExeclogLine = (String, Vec<(String, String, String)>);

pub fn parse_execlog_line(line: &str) -> ExeclogLine {
    let close = line
        .match_indices('"')
        .nth(1)
        .unwrap_or_else(|| panic!("not an execlog line: {line:?}"))
        .0;
    let (insn, rest) = line.split_at(close + 1);
    let fields: Vec<&str> = rest.split(", ").skip(1).collect();
    assert_eq!(fields.len() % 3, 0, "{line:?}");
    let accesses = fields
        .chunks(3)
        .map(|a| (a[0].to_string(), a[1].to_string(), a[2].to_string()))
        .collect();
    (insn.to_string(), accesses)
}

/// Whether `ours` (`trace-query execlog`) says what QEMU's execlog line
/// `theirs` says: the same but for the device names, which ours takes from
/// the capture's `device` column: named from QEMU's memory map where the
/// plugin API cannot name a region (`anonXXXXXXXX`), and the well-known
/// short name where QEMU's says little (`apic-msi` is `lapic`,
/// `trace_format::memory_map::SHORT_NAMES`).
pub fn same_execlog_line(theirs: &str, ours: &str) -> bool {
    same_execlog_line_with(theirs, ours, |_, _| false)
}

/// [`same_execlog_line`], where ours may also name a device as QEMU's memory
/// map `map` names the address (read from QEMU when the log was): QEMU's
/// plugin API can name a region the guest mapped since its translation
/// wrongly (x86's MMCONFIG as `pc.ram`), the collector names it from the
/// map.
pub fn same_execlog_line_by_map(
    theirs: &str,
    ours: &str,
    map: &trace_format::memory_map::MemoryMap,
) -> bool {
    same_execlog_line_with(theirs, ours, |paddr, o| {
        let addr = u64::from_str_radix(paddr.trim_start_matches("0x"), 16).ok();
        addr.and_then(|a| map.region(a))
            .is_some_and(|r| o == trace_format::memory_map::short_name(&r.name).unwrap_or(&r.name))
    })
}

/// The comparison, with `named_by_map(paddr, ours)`: another name ours may
/// give the access at `paddr`.
fn same_execlog_line_with(
    theirs: &str,
    ours: &str,
    named_by_map: impl Fn(&str, &str) -> bool,
) -> bool {
    let ((t_insn, t_acc), (o_insn, o_acc)) = (parse_execlog_line(theirs), parse_execlog_line(ours));
    let same_device = |t: &str, o: &str| {
        t == o || t.starts_with("anon") || trace_format::memory_map::short_name(t) == Some(o)
    };
    t_insn == o_insn
        && t_acc.len() == o_acc.len()
        && t_acc.iter().zip(&o_acc).all(|(t, o)| {
            t.0 == o.0 && t.1 == o.1 && (same_device(&t.2, &o.2) || named_by_map(&t.1, &o.2))
        })
}
