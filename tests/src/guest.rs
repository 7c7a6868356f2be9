//! What the OS-guest tests (tests/tests/x86_64.rs, riscv64.rs) share: the
//! guest a script fetches, a `trace-collector run` of it as a child, QEMU's
//! execlog and mem plugins' log of a window compared with the capture, and
//! a whole boot counted by QEMU's mem plugin in the same run.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use trace_format::memory_map::{short_name, MemoryMap};

use crate::processes::{self, wait_until, Reaper};
use crate::qmp::Qmp;
use crate::{
    collector, columns, parse_execlog_line, qemu_plugin, query, run_query,
    same_execlog_line_by_map, script_path, stat, u64s,
};

/// The guest's files: `scripts/<script>` fetches them once, then caches
/// them, and prints their directory.
pub fn guest(script: &str) -> PathBuf {
    script_path(script, &[], "apt-get and the network the first time")
}

/// A Linux guest: `qemu` booting `kernel` and `initrd.cpio.gz` of `files`
/// (a guest script's directory) with the board options `board`, its console
/// on `console`, no network, no monitor.
pub struct LinuxGuest<'a> {
    pub qemu: &'a str,
    pub board: &'a [&'a str],
    pub console: &'a str,
    pub files: PathBuf,
    pub kernel: &'a str,
}

impl LinuxGuest<'_> {
    /// Its QEMU command line, tagged with `marker` (`-name`), with a QMP
    /// socket for the test at `qmp` if any, then `extra`.
    pub fn command(&self, marker: &str, qmp: Option<&Path>, extra: &[String]) -> Vec<String> {
        let mut cmd: Vec<String> = [self.qemu, "-name", marker]
            .iter()
            .chain(self.board)
            .chain(&["-nographic", "-nic", "none", "-monitor", "none"])
            .map(|s| s.to_string())
            .collect();
        cmd.extend([
            "-append".to_string(),
            format!("console={} quiet panic=-1 rdinit=/init", self.console),
            "-kernel".to_string(),
            self.files.join(self.kernel).display().to_string(),
            "-initrd".to_string(),
            self.files.join("initrd.cpio.gz").display().to_string(),
        ]);
        if let Some(qmp) = qmp {
            cmd.extend([
                "-qmp".to_string(),
                format!("unix:{},server=on,wait=off", qmp.display()),
            ]);
        }
        cmd.extend(extra.iter().cloned());
        cmd
    }
}

/// `trace-collector run --out DIR --events EVENTS -- QEMU` as a child, its
/// stdout (QEMU's console) to `DIR.stdout`.
pub fn start_run(dir: &Path, events: &str, qemu: &[String]) -> processes::Proc {
    let mut cmd = vec![
        collector().display().to_string(),
        "run".to_string(),
        "--out".to_string(),
        dir.display().to_string(),
        "--events".to_string(),
        events.to_string(),
        "--".to_string(),
    ];
    cmd.extend(qemu.iter().cloned());
    processes::spawn(
        &cmd,
        &processes::log(dir),
        Some(&dir.with_extension("stdout")),
        false,
    )
}

/// Waits for the collector `run` to finish; fails the test unless it
/// exited 0.
pub fn finish(run: &mut processes::Proc) {
    let status = run.wait(Duration::from_secs(600));
    assert!(
        status.success(),
        "trace-collector run: {status}\n{}",
        run.stderr()
    );
}

/// `trace-query ARGS` with its stdout into `out` (outputs too large for a
/// String); fails the test if it fails.
pub fn query_to_file(args: &[&str], out: &Path) {
    let status = Command::new(query())
        .args(args)
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::process::Stdio::inherit())
        .status()
        .unwrap();
    assert!(status.success(), "trace-query {args:?}: {status}");
}

/// A one-column SQL answer of `trace-query` (CSV, header dropped), as u64s.
pub fn query_u64s(dir: &Path, sql: &str) -> Vec<u64> {
    let d = dir.display().to_string();
    let (ok, out, err) = run_query(&["--trace", &d, "--format", "csv", sql]);
    assert!(ok, "{sql}: {err}");
    out.lines()
        .skip(1)
        .map(|l| l.parse().unwrap_or_else(|_| panic!("{sql}: {l:?}")))
        .collect()
}

/// Follows QEMU's execlog log as it grows: whether it reached a line of
/// the 64-bit kernel (`0, 0xffffffff8...`, on x86-64 and RISC-V 64 alike),
/// and how many lines came after.
pub struct LogWatch {
    file: Option<std::fs::File>,
    path: PathBuf,
    tail: Vec<u8>,
    /// execlog's lines since the kernel's first, once seen.
    kernel_lines: Option<u64>,
}

impl LogWatch {
    pub fn new(path: &Path) -> LogWatch {
        LogWatch {
            file: None,
            path: path.to_path_buf(),
            tail: Vec::new(),
            kernel_lines: None,
        }
    }

    /// Reads what was appended; true once the log holds about `lines` of
    /// execlog's lines from the kernel's first on.
    pub fn kernel_lines_at_least(&mut self, lines: u64) -> bool {
        if self.file.is_none() {
            self.file = std::fs::File::open(&self.path).ok();
        }
        let Some(f) = self.file.as_mut() else {
            return false;
        };
        let mut new = Vec::new();
        f.read_to_end(&mut new).unwrap();
        // execlog's lines (vCPU 0's), not the mem plugin's.
        let newlines = |b: &[u8]| b.windows(4).filter(|w| w == b"\n0, ").count() as u64;
        match self.kernel_lines.as_mut() {
            Some(n) => *n += newlines(&new),
            None => {
                const NEEDLE: &[u8] = b"\n0, 0xffffffff8";
                let mut window = std::mem::take(&mut self.tail);
                window.extend_from_slice(&new);
                match window.windows(NEEDLE.len()).position(|w| w == NEEDLE) {
                    Some(at) => self.kernel_lines = Some(newlines(&window[at + 1..])),
                    None => {
                        self.tail = window[window.len().saturating_sub(NEEDLE.len())..].to_vec()
                    }
                }
            }
        }
        self.kernel_lines.is_some_and(|n| n >= lines)
    }
}

/// A guest run under QEMU's execlog (`reg=REG`) and mem
/// (`print-accesses=true`) plugins, logging into one file, and captured
/// (`mem,mmio,insn`) in the same QEMU, stopped over QMP once execlog has
/// logged about 200k lines of the kernel's virtual addresses.
pub struct ExeclogRun {
    pub dir: PathBuf,
    /// QEMU's log (both plugins').
    pub log: PathBuf,
    /// `trace-query execlog`'s output.
    pub ours: PathBuf,
    /// `info registers` when QEMU stopped.
    pub registers: String,
    /// QEMU's memory map when it stopped.
    pub map: MemoryMap,
}

/// Runs `name`'s guest (`qemu(marker, qmp socket, extra options)`) as
/// [`ExeclogRun`] says.
pub fn execlog_run(
    name: &str,
    qemu: impl Fn(&str, Option<&Path>, &[String]) -> Vec<String>,
    reg: &str,
) -> ExeclogRun {
    let dir = crate::capture_dir(name);
    let log = dir.with_extension("qemu-execlog.log");
    let ours = dir.with_extension("ours.log");
    let sock = dir.with_extension("qmp");
    for p in [&log, &ours, &sock] {
        let _ = std::fs::remove_file(p);
    }
    let marker = processes::marker(name);
    let _reaper = Reaper(marker.clone());
    let qemu = qemu(
        &marker,
        Some(&sock),
        &[
            "-plugin".into(),
            format!("{},reg={reg}", qemu_plugin("execlog").display()),
            "-plugin".into(),
            format!("{},print-accesses=true", qemu_plugin("mem").display()),
            "-d".into(),
            "plugin".into(),
            "-D".into(),
            log.display().to_string(),
        ],
    );
    let mut run = start_run(&dir, "mem,mmio,insn", &qemu);
    let mut qmp = Qmp::connect(&sock, Duration::from_secs(30));
    let mut watch = LogWatch::new(&log);
    wait_until(
        Duration::from_secs(600),
        "QEMU's execlog to reach the kernel's virtual addresses",
        || {
            std::thread::sleep(Duration::from_millis(100));
            watch.kernel_lines_at_least(200_000)
        },
    );
    qmp.execute("stop", serde_json::json!({}));
    let registers = qmp.hmp("info registers");
    let map = MemoryMap::parse(&qmp.hmp("info mtree -f")).unwrap();
    qmp.quit();
    finish(&mut run);
    let d = dir.display().to_string();
    query_to_file(&["execlog", "--trace", &d], &ours);
    ExeclogRun {
        dir,
        log,
        ours,
        registers,
        map,
    }
}

/// One access as QEMU's mem plugin prints it: pc, virtual and physical
/// address, size in bytes, store, value.
pub type PrintedAccess = (u64, u64, u64, u8, bool, u128);

/// A window of one vCPU's run that QEMU's execlog plugin (with `reg=REG`)
/// and mem plugin (`print-accesses=true`) logged into one file, compared
/// with `trace-query execlog`'s output.
pub struct ExeclogWindow {
    /// Lines (instructions), all equal.
    pub lines: u64,
    /// QEMU's first line (the `, REG -> ...` suffix taken off).
    pub first: Option<String>,
    /// (line index, value after that instruction) of each change of REG
    /// execlog reported.
    pub reg_changes: Vec<(u64, u64)>,
    /// The mem plugin's accesses, in order.
    pub accesses: Vec<PrintedAccess>,
}

impl ExeclogWindow {
    /// REG's value before instruction `icount` (0 before its first change).
    pub fn reg_at(&self, icount: u64) -> u64 {
        let i = self.reg_changes.partition_point(|&(at, _)| at < icount);
        if i == 0 {
            0
        } else {
            self.reg_changes[i - 1].1
        }
    }
}

/// Compares QEMU's log `log` (execlog with `reg=REG`, and the mem plugin's
/// lines, taken out) with ours line for line (`same_execlog_line_by_map`,
/// with QEMU's memory map `map` when the log stopped), QEMU's
/// lines ending with `, REG -> 0x<16 digits>` where the register changed
/// during that instruction; `each(insn, accesses)` sees every QEMU line.
pub fn compare_execlogs(
    log: &Path,
    ours: &Path,
    reg: &str,
    map: &MemoryMap,
    mut each: impl FnMut(&str, &[(String, String, String)]),
) -> ExeclogWindow {
    // Both of QEMU's plugins write to the log: the mem plugin's lines (a
    // header, then `0x<pc>,<symbol>,0x<vaddr>,0x<paddr>,<bits>,<load or
    // store>,0x<value>` per access, as it happens) are taken out first.
    let mut accesses: Vec<PrintedAccess> = Vec::new();
    let mut theirs_lines = BufReader::new(std::fs::File::open(log).unwrap())
        .lines()
        .map(|l| l.unwrap())
        .filter(|l| {
            if l.starts_with("insn_vaddr,") {
                return false;
            }
            if !l.starts_with("0x") {
                return true;
            }
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 7, "{l}");
            let hex = |s: &str| u128::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            let bits: u8 = f[4].parse().unwrap();
            accesses.push((
                hex(f[0]) as u64,
                hex(f[2]) as u64,
                hex(f[3]) as u64,
                bits / 8,
                f[5] == "store",
                hex(f[6]),
            ));
            false
        });
    let mut ours_lines = BufReader::new(std::fs::File::open(ours).unwrap())
        .lines()
        .map(|l| l.unwrap());
    let suffix = format!(", {reg} -> 0x");
    let mut reg_changes = Vec::new();
    let mut n = 0u64;
    let mut first = None;
    loop {
        let (t, o) = (theirs_lines.next(), ours_lines.next());
        let (t, o) = match (t, o) {
            (None, None) => break,
            (Some(t), Some(o)) => (t, o),
            (t, o) => panic!("after {n} equal lines, QEMU's log has {t:?}, ours {o:?}"),
        };
        let t = match t.rsplit_once(&suffix) {
            Some((line, value)) => {
                reg_changes.push((n, u64::from_str_radix(value, 16).unwrap()));
                line.to_string()
            }
            None => t,
        };
        assert!(
            same_execlog_line_by_map(&t, &o, map),
            "line {}:\n QEMU: {t}\n ours: {o}",
            n + 1
        );
        if first.is_none() {
            first = Some(t.clone());
        }
        let (insn, acc) = parse_execlog_line(&t);
        each(&insn, &acc);
        n += 1;
    }
    drop(theirs_lines);
    ExeclogWindow {
        lines: n,
        first,
        reg_changes,
        accesses,
    }
}

/// The capture `dir` of the window against QEMU's logs of it: every `mem`
/// row's `asid` is the register's value execlog reported before that
/// instruction, the last one `reg_at_stop` (the monitor's, once QEMU was
/// stopped); none lost; and every `mem` row, in order, is the access QEMU's
/// mem plugin printed (pc, addresses, size, load or store, value, 16-byte
/// ones whole).
pub fn check_window_accesses(dir: &Path, window: &ExeclogWindow, reg_at_stop: u64) {
    assert!(window.reg_changes.len() >= 2, "{:?}", window.reg_changes);
    let mem = columns(dir, "mem", &["icount", "asid"]).unwrap();
    let (icounts, asids) = (u64s(&mem, "icount"), u64s(&mem, "asid"));
    assert!(icounts.len() > 1_000_000, "{} mem rows", icounts.len());
    let mut last = (0, 0);
    for (&icount, &asid) in icounts.iter().zip(&asids) {
        assert_eq!(asid, window.reg_at(icount), "the access at icount {icount}");
        last = last.max((icount, asid));
    }
    let (last_change, final_value) = *window.reg_changes.last().unwrap();
    assert!(last.0 > last_change);
    assert_eq!((last.1, final_value), (reg_at_stop, reg_at_stop));
    assert_eq!(stat(dir, "events_lost", Some(0)), 0);

    let mem = columns(
        dir,
        "mem",
        &["pc", "type", "vaddr", "paddr", "size", "value", "value_hi"],
    )
    .unwrap();
    let (pc, vaddr, paddr) = (u64s(&mem, "pc"), u64s(&mem, "vaddr"), u64s(&mem, "paddr"));
    let size = mem.column("size").unwrap().u8().unwrap();
    let ty = mem.column("type").unwrap().str().unwrap();
    let value = mem.column("value").unwrap().u64().unwrap();
    let value_hi = mem.column("value_hi").unwrap().u64().unwrap();
    assert_eq!(window.accesses.len(), mem.height(), "accesses");
    for (i, theirs) in window.accesses.iter().enumerate() {
        let value =
            u128::from(value.get(i).unwrap()) | u128::from(value_hi.get(i).unwrap_or(0)) << 64;
        let ours = (
            pc[i],
            vaddr[i],
            paddr[i],
            size.get(i).unwrap(),
            ty.get(i) == Some("W"),
            value,
        );
        assert_eq!(
            &ours, theirs,
            "access {i} (pc, vaddr, paddr, size, store, value)"
        );
    }
}

/// A whole boot, to the guest's power-off, captured (`mem`, `mmio`) with
/// QEMU's mem plugin counting in the same run.
pub struct Boot {
    pub dir: PathBuf,
    /// QEMU's mem plugin's counts: RAM and I/O accesses.
    pub ram: u64,
    pub io: u64,
    /// `info registers` and `info mtree -f` once the guest powered off.
    pub registers: String,
    pub mtree: String,
}

/// The boot's capture `dir` holds exactly what QEMU's mem plugin counted in
/// the same boot: `ram + io` `mem` rows and `io` `mmio` rows, and vCPU 0
/// lost none.
pub fn assert_rows_are_qemus(dir: &Path, ram: u64, io: u64) {
    assert_eq!(stat(dir, "rows.mem", None), ram + io);
    assert_eq!(stat(dir, "rows.mmio", None), io);
    assert_eq!(stat(dir, "events_lost", Some(0)), 0);
}

/// Every `mmio` row of `dir` against QEMU's memory map after the boot,
/// `map_after`: its address is in an I/O region, `region` is that region's
/// name, `device` its short name (else the name), and the plugin API named
/// it. Returns each row's region name, in row order.
pub fn mmio_regions_from_the_map(dir: &Path, map_after: &MemoryMap) -> Vec<String> {
    let mmio = columns(dir, "mmio", &["paddr", "region", "device", "plugin_device"]).unwrap();
    let paddr = u64s(&mmio, "paddr");
    let region = mmio.column("region").unwrap().str().unwrap();
    let device = mmio.column("device").unwrap().str().unwrap();
    let plugin = mmio.column("plugin_device").unwrap().str().unwrap();
    let mut names = Vec::with_capacity(paddr.len());
    for (i, &a) in paddr.iter().enumerate() {
        let after = map_after
            .region(a)
            .unwrap_or_else(|| panic!("{a:#x} is in no region of {map_after:?}"));
        assert_eq!(after.kind, "i/o", "{a:#x}: {after:?}");
        let name = after.name.as_str();
        assert_eq!(region.get(i), Some(name), "{a:#x}");
        assert_eq!(
            device.get(i),
            Some(short_name(name).unwrap_or(name)),
            "{a:#x}"
        );
        assert!(plugin.get(i).is_some(), "{a:#x}");
        names.push(name.to_string());
    }
    names
}

/// Boots a guest: `qemu(marker, qmp socket, extra options)` is its QEMU
/// command line, given the mem plugin, `-no-shutdown` (QEMU is kept after
/// the power-off to ask its monitor, then ended) and `extra`; checks that
/// the console shows `workload_line`.
pub fn boot(
    name: &str,
    qemu: impl Fn(&str, Option<&Path>, &[String]) -> Vec<String>,
    extra: &[&str],
    workload_line: &str,
) -> Boot {
    let dir = crate::capture_dir(name);
    let counts = dir.with_extension("qemu-mem.log");
    let sock = dir.with_extension("qmp");
    for p in [&counts, &sock] {
        let _ = std::fs::remove_file(p);
    }
    let marker = processes::marker(name);
    let _reaper = Reaper(marker.clone());
    let mut options: Vec<String> = vec![
        "-no-shutdown".into(),
        "-plugin".into(),
        format!("{},callback=true,haddr=true", qemu_plugin("mem").display()),
        "-d".into(),
        "plugin".into(),
        "-D".into(),
        counts.display().to_string(),
    ];
    options.extend(extra.iter().map(|s| s.to_string()));
    let qemu = qemu(&marker, Some(&sock), &options);
    let mut run = start_run(&dir, "mem,mmio", &qemu);
    let mut qmp = Qmp::connect(&sock, Duration::from_secs(30));
    wait_until(Duration::from_secs(900), "the guest's power-off", || {
        std::thread::sleep(Duration::from_millis(200));
        qmp.status() == "shutdown"
    });
    let registers = qmp.hmp("info registers");
    let mtree = qmp.hmp("info mtree -f");
    qmp.quit();
    finish(&mut run);
    let console = std::fs::read_to_string(dir.with_extension("stdout")).unwrap();
    assert!(console.contains(workload_line), "{console}");
    // QEMU's mem plugin prints `mem accesses: N` (RAM) and `io accesses: M`.
    let text = std::fs::read_to_string(&counts).unwrap();
    let count = |what: &str| -> u64 {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(what))
            .unwrap_or_else(|| panic!("no {what:?} in {text}"));
        line.trim().parse().unwrap()
    };
    let _ = std::fs::remove_file(&counts);
    Boot {
        ram: count("mem accesses:"),
        io: count("io accesses:"),
        dir,
        registers,
        mtree,
    }
}
