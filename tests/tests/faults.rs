//! Reliability under faults, against the real QEMU, shim and collector:
//! processes are killed for real, and every test checks exact facts about
//! what was kept and what was lost (tests/firmware/README.md, "Cortex-M3 loop
//! firmware", gives the accesses these counts come from). Nothing here can
//! hang: every wait has a deadline, and the guards kill what a test started
//! (by pid, and every QEMU whose command line holds the test's marker) even
//! when it fails.
//!
//! The tests run one at a time (each keeps a QEMU and a collector busy).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use polars::prelude::*;
use trace_schema::chunk;
use trace_schema::ring::RELEASE_EVERY;
use trace_tests::processes::*;
use trace_tests::*;

// ------------------------------------------------------------------ helpers

static SERIAL: Mutex<()> = Mutex::new(());

/// One test at a time: each runs a CPU-bound QEMU plus a collector.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Part size for the tests that kill things: many parts exist after a moment.
const PART_ROWS: u64 = 10_000;
/// Bytes of one access record in a chunk (trace_schema::chunk).
const ACCESS_BYTES: u64 = chunk::MEM_ACCESS_WORDS as u64 * 8;
/// Most accesses the shim's default 16 MiB event ring holds.
const RING_RECORDS: u64 = (16 << 20) / ACCESS_BYTES;
/// Most accesses a collector holds consumed but not released in a ring
/// (trace_schema::ring::RELEASE_EVERY, 64 KiB, reached in the middle of a chunk).
const UNRELEASED_RECORDS: u64 = (RELEASE_EVERY + chunk::CHUNK_BYTES as u64) / ACCESS_BYTES + 1;
/// Rows a full `mem` part holds beyond `PART_ROWS` at most: parts end
/// between chunks.
const PART_SLACK: u64 = chunk::MAX_ACCESSES as u64;

/// A QEMU running `elf` with the shim (`overflow=block`, `wait=on`: it waits
/// for the collector).
fn start_qemu(elf: &Path, marker: &str, dir: &Path) -> Proc {
    start_qemu_recording(elf, marker, dir, "mem+mmio")
}

/// `start_qemu` with the shim recording `events`, and `idle=count`: after a
/// collector dies the shim stays instrumented and counts every event it
/// cannot deliver, so that these tests can check the gaps exactly (by
/// default it drops its instrumentation instead:
/// `collector_killed_leaves_qemu_free_and_says_the_gap_is_uncounted`).
fn start_qemu_recording(elf: &Path, marker: &str, dir: &Path, events: &str) -> Proc {
    start_qemu_with(elf, marker, dir, &format!("events={events},idle=count"))
}

/// A QEMU running `elf` with the shim's `options` and `overflow=block,wait=on`.
fn start_qemu_with(elf: &Path, marker: &str, dir: &Path, options: &str) -> Proc {
    let mut cmd = loop_qemu(elf, marker, "null");
    cmd.push("-plugin".into());
    cmd.push(format!(
        "{},{options},overflow=block,wait=on",
        shim().display()
    ));
    spawn(&cmd, &dir.with_extension("qemu.log"), None, true)
}

/// `trace-collector run --out DIR --quiet <extra> -- <qemu>`, stderr to `log`.
fn start_run(
    dir: &Path,
    log: &Path,
    extra: &[&str],
    qemu: &[String],
    stdout: Option<&Path>,
) -> Proc {
    let mut cmd = vec![
        collector().display().to_string(),
        "run".into(),
        "--out".into(),
        dir.display().to_string(),
        "--quiet".into(),
    ];
    cmd.extend(extra.iter().map(|s| s.to_string()));
    cmd.push("--".into());
    cmd.extend(qemu.iter().cloned());
    spawn(&cmd, log, stdout, false)
}

/// Waits until `dir`'s `mem` has `n` parts; fails at once if the collector
/// `c` exits meanwhile.
fn wait_for_parts(c: &mut Proc, dir: &Path, n: usize) {
    wait_for_table_parts(c, dir, "mem", n)
}

/// Attaches a collector writing `PART_ROWS`-row parts into `dir` with one
/// encoder thread, lets it write 3 parts of `table`, then SIGKILLs it and
/// reaps it (as a shell would). Returns it, for its pid.
fn collector_killed_after_parts(qemu: &Proc, dir: &Path, table: &str) -> Proc {
    let rows = PART_ROWS.to_string();
    let mut c = start_attach(
        qemu.pid(),
        dir,
        &log(dir),
        &["--part-rows", &rows, "--threads", "1"],
    );
    wait_for_table_parts(&mut c, dir, table, 3);
    c.signal(Signal::SIGKILL);
    c.wait(Duration::from_secs(10));
    c
}

fn wait_for_table_parts(c: &mut Proc, dir: &Path, table: &str, n: usize) {
    wait_until(
        Duration::from_secs(60),
        &format!("{n} {table} parts"),
        || {
            assert!(c.alive(), "the collector exited: {}", c.stderr());
            parts(dir, table).len() >= n
        },
    );
}

/// The finished parts of a table (`part-*.parquet`), in order; temporary
/// files (`.part-*.tmp`) are not parts.
fn parts(dir: &Path, table: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir.join(table)) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("part-") && n.ends_with(".parquet")
        })
        .collect();
    v.sort();
    v
}

/// Temporary files left in a table's directory.
fn temporaries(dir: &Path, table: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir.join(table)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect()
}

const MEM_COLUMNS: [&str; 12] = [
    "vcpu", "icount", "pc", "type", "vaddr", "paddr", "size", "value", "value_hi", "asid", "io",
    "device",
];

/// Reads every part of `table` on its own with polars: each must be a valid
/// Parquet file with the table's columns. A `mem` part holds `PART_ROWS`
/// rows, or up to a chunk more (with `all_full`, the last too): parts end
/// between chunks. Returns the rows.
fn check_parts(dir: &Path, table: &str, all_full: bool) -> u64 {
    let ps = parts(dir, table);
    let mut rows = 0;
    for (i, p) in ps.iter().enumerate() {
        let file = std::fs::File::open(p).unwrap();
        let df = ParquetReader::new(file)
            .finish()
            .unwrap_or_else(|e| panic!("part {} is not valid Parquet: {e}", p.display()));
        if table == "mem" {
            let names: Vec<String> = df
                .get_column_names()
                .iter()
                .map(|c| c.to_string())
                .collect();
            assert_eq!(names, MEM_COLUMNS, "{}", p.display());
        }
        if table == "mem" && (all_full || i + 1 < ps.len()) {
            let n = df.height() as u64;
            assert!(
                (PART_ROWS..PART_ROWS + PART_SLACK).contains(&n),
                "{}: {n} rows",
                p.display()
            );
        }
        rows += df.height() as u64;
    }
    rows
}

/// `dir`'s capture.json, after checking that the capture is complete and
/// ended the way `end` says.
fn finished_capture(dir: &Path, end: &str) -> serde_json::Value {
    let j = capture_json(dir);
    assert_eq!(
        (j["complete"].as_bool(), j["end"].as_str()),
        (Some(true), Some(end)),
        "{j}"
    );
    j
}

fn capture_json(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("capture.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The index of an m3loop-0 access in the firmware's access sequence, from
/// the icount of its instruction (README: accesses at icount 3 and 5, then
/// iteration k's five at 11 + 10k + {0, 1, 2, 4, 6}). Panics on an icount
/// that makes no access: the capture would hold a row the firmware never made.
fn seq(icount: u64) -> u64 {
    match icount {
        3 => 0,
        5 => 1,
        i if i >= 11 => {
            let (k, off) = ((i - 11) / 10, (i - 11) % 10);
            let j = match off {
                0 => 0,
                1 => 1,
                2 => 2,
                4 => 3,
                6 => 4,
                _ => panic!("icount {i}: m3loop makes no access there"),
            };
            2 + 5 * k + j
        }
        i => panic!("icount {i}: m3loop makes no access there"),
    }
}

/// Accesses m3loop-0 has made once `f` instructions were executed.
fn accesses_before(f: u64) -> u64 {
    let setup = (f > 3) as u64 + (f > 5) as u64;
    if f <= 11 {
        return setup;
    }
    let (k, r) = ((f - 11) / 10, (f - 11) % 10);
    setup + 5 * k + [0, 1, 2, 4, 6].iter().filter(|&&o| o < r).count() as u64
}

/// The access sequence numbers of a capture's `mem` rows, sorted.
fn mem_seqs(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = u64s(&table(dir, "mem").unwrap(), "icount")
        .into_iter()
        .map(seq)
        .collect();
    v.sort_unstable();
    v
}

/// The MMIO access number (0, 1: the SysTick setup stores; 2 + k: iteration
/// k's SysTick CVR load) of m3loop-0's access at `icount`.
fn mmio_seq(icount: u64) -> u64 {
    match icount {
        3 => 0,
        5 => 1,
        i if i >= 17 && (i - 17) % 10 == 0 => 2 + (i - 17) / 10,
        i => panic!("icount {i}: m3loop makes no MMIO access there"),
    }
}

/// The MMIO access numbers of a capture's `mmio` rows, sorted.
fn mmio_seqs(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = u64s(&table(dir, "mmio").unwrap(), "icount")
        .into_iter()
        .map(mmio_seq)
        .collect();
    v.sort_unstable();
    v
}

/// Maximal runs of consecutive numbers, as (first, last).
fn runs(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in seqs {
        match out.last_mut() {
            Some((_, last)) if s == *last + 1 => *last = s,
            Some((_, last)) => {
                assert!(s > *last, "access {s} is in the capture twice");
                out.push((s, s));
            }
            None => out.push((s, s)),
        }
    }
    out
}

/// Asserts `dir`'s `mem` holds exactly the accesses 0..n of m3loop-0, no
/// gap, no duplicate; returns n.
fn assert_prefix(dir: &Path) -> u64 {
    let seqs = mem_seqs(dir);
    let r = runs(&seqs);
    assert_eq!(r.len(), 1, "mem has gaps: {r:?}");
    assert_eq!(r[0].0, 0, "mem does not start at the first access");
    seqs.len() as u64
}

// More fields of the shared segment (see `trace_tests::processes`).
/// The commit record (schema/src/commit.rs): the current slot (1-based), then
/// per slot the parts written per table, and vCPU 0's per-slot, per-table
/// record counts (after its six counters). Table 0 is `mem`.
const COMMIT_SLOT: u64 = 1104;
const COMMIT_PARTS: u64 = 1112;
const COMMITTED_EVENTS_0: u64 = 4096 + 512 + 48;

/// (parts of `mem` written, vCPU 0's records whose `mem` rows they hold),
/// from the commit record in QEMU `pid`'s segment.
fn committed_mem(pid: u32) -> (u64, u64) {
    let slot = shm_read(pid, COMMIT_SLOT, 4);
    assert!(slot == 1 || slot == 2, "commit slot {slot}");
    let s = slot - 1;
    (
        shm_read(pid, COMMIT_PARTS + s * 5 * 8, 8),
        shm_read(pid, COMMITTED_EVENTS_0 + s * 5 * 8, 8),
    )
}

/// Asserts the shim keeps running after its collector died: DETACHED,
/// `holder` in `collector_pid` (a killed collector's pid stays until the
/// next attach takes over), its lost-event counter growing (still
/// instrumented, so that the next collector learns exactly what it missed).
fn assert_runs_detached(qemu: u32, holder: u32) {
    wait_until(Duration::from_secs(10), "the shim to notice", || {
        shm_read(qemu, STATE, 4) == DETACHED
    });
    assert_eq!(shm_read(qemu, COLLECTOR_PID, 4), holder as u64);
    let before = shm_read(qemu, EVENTS_LOST_0, 8);
    wait_until(
        Duration::from_secs(10),
        "the guest to make progress",
        || shm_read(qemu, EVENTS_LOST_0, 8) > before + 1000,
    );
}

fn assert_no_panic(stderr: &str) {
    assert!(!stderr.contains("panicked"), "a panic:\n{stderr}");
}

/// Interrupts the collector `c` (SIGINT) that holds `qemu`'s attach: it
/// must exit 0 without a panic and leave QEMU running. Returns its stderr.
fn interrupt_collector_of_running_qemu(c: &mut Proc, qemu: &mut Proc) -> String {
    c.signal(Signal::SIGINT);
    let st = c.wait(Duration::from_secs(10));
    let stderr = c.stderr();
    assert!(st.success(), "{st}: {stderr}");
    assert!(qemu.alive());
    assert_no_panic(&stderr);
    stderr
}

/// A tmpfs mounted for one test, unmounted on drop; None (with a note) where
/// mounting is not permitted.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, options: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Mount(at.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "note: cannot mount a tmpfs ({}): skipping this part",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("note: cannot run mount ({e}): skipping this part");
                None
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

// -------------------------------------------------------------------- tests

/// The collector is SIGKILLed mid-capture (`overflow=block`): QEMU is not
/// held (the shim notices, detaches and counts what it cannot deliver), the
/// parts already written are valid and hold a gap-free prefix of the
/// accesses, and a second collector attached to the same QEMU gets new
/// events, with the span it missed counted exactly as
/// `events_lost_before_attach`.
#[test]
fn collector_killed_mid_capture() {
    let _one = serial();
    let m = marker("collector-killed");
    let _reaper = Reaper(m.clone());
    let d1 = capture_dir("faults-collector-killed-1");
    let d2 = capture_dir("faults-collector-killed-2");
    let mut qemu = start_qemu(&m3loop(0), &m, &d1);
    let c1 = collector_killed_after_parts(&qemu, &d1, "mem");
    assert!(qemu.alive(), "QEMU died with the collector");

    // The first capture: valid parts, a gap-free prefix, marked incomplete.
    assert!(
        temporaries(&d1, "mem").len() + temporaries(&d1, "mmio").len() <= 2,
        "one encoder writes one part at a time, and one waits to be renamed"
    );
    let rows1 = check_parts(&d1, "mem", true);
    check_parts(&d1, "mmio", false);
    let written1 = assert_prefix(&d1);
    assert_eq!(written1, rows1);
    // What the killed collector recorded as written, read before the next
    // one attaches: its first parts, and exactly the rows in them.
    let (committed_parts, committed) = committed_mem(qemu.pid());
    let mem_parts = parts(&d1, "mem");
    assert!(committed_parts as usize <= mem_parts.len() && committed_parts > 0);
    let committed_rows: u64 = mem_parts[..committed_parts as usize]
        .iter()
        .map(|p| {
            ParquetReader::new(std::fs::File::open(p).unwrap())
                .finish()
                .unwrap()
                .height() as u64
        })
        .sum();
    assert_eq!(committed, committed_rows);
    let j = capture_json(&d1);
    assert_eq!(j["complete"], false);
    assert!(
        !d1.join("stats").exists(),
        "stats are written at the end only"
    );
    assert!(j["tables"]["mem"].as_u64().unwrap() <= rows1);
    let q = Command::new(query())
        .arg("--trace")
        .arg(&d1)
        .args(["--format", "csv", "select count(*) as n from mem"])
        .output()
        .unwrap();
    assert!(q.status.success());
    assert_eq!(String::from_utf8_lossy(&q.stdout), format!("n\n{rows1}\n"));
    assert!(String::from_utf8_lossy(&q.stderr).contains("incomplete"));

    // QEMU runs on: the shim saw the collector die (its ring was full), and
    // counts every access it cannot deliver.
    assert_runs_detached(qemu.pid(), c1.pid());

    // A second collector gets new events at once.
    let mut c2 = start_attach(qemu.pid(), &d2, &log(&d2), &["--part-rows", "100000"]);
    wait_for_parts(&mut c2, &d2, 4);
    let stderr = interrupt_collector_of_running_qemu(&mut c2, &mut qemu);
    finished_capture(&d2, "interrupted");
    let before = stat(&d2, "events_lost_before_attach", Some(0));
    let lost = stat(&d2, "events_lost", Some(0));
    assert!(before > 0, "the accesses made while detached are counted");
    assert!(stderr.contains(&format!("events lost before we attached: {before}")));

    // What it holds: the full ring the first collector left (A), then
    // exactly `before + lost` missing accesses, then the new ones (B).
    let seqs = mem_seqs(&d2);
    let r = runs(&seqs);
    assert_eq!(r.len(), 2, "runs of consecutive accesses: {r:?}");
    let ((a0, a1), (b0, b1)) = (r[0], r[1]);
    assert_eq!(b0 - a1 - 1, before + lost, "the gap is the lost span");
    assert!(a1 - a0 < RING_RECORDS, "A is at most what one ring held");
    assert!(b1 > b0, "new events");
    // Between the two captures: the first collector had drained records
    // into memory that it did not write (at most the batch being filled,
    // two queued and one being written), or had written records it had not
    // yet released in the ring (at most the 64 KiB a drain holds before it
    // releases), which the second then drains again.
    let (hole, overlap) = (a0.saturating_sub(written1), written1.saturating_sub(a0));
    eprintln!(
        "first capture: accesses 0..{written1}; second: {a0}..={a1}, then \
         {b0}..={b1}; lost while detached: {before} + {lost}; never written: \
         {hole}; captured twice: {overlap}"
    );
    assert!(hole <= 4 * (PART_ROWS + PART_SLACK), "{hole}");
    assert!(overlap <= UNRELEASED_RECORDS, "{overlap}");
    // The second collector counts exactly what the first drained and did not
    // record as written: from its commit to where the ring was released.
    let died = stat(&d2, "events_lost_collector_died.mem", Some(0));
    assert_eq!(died, a0 - committed, "hole {hole}");
}

/// With `events=mmio` a RAM access is not an event: while no collector is
/// attached the shim counts as lost only the MMIO accesses it could not
/// deliver (it used to count every access). A collector is killed, a second
/// one attached: the gap between the SysTick reads the second finds in the
/// ring and its new ones is exactly what its stats count as lost.
#[test]
fn mmio_only_capture_counts_only_mmio_accesses_as_lost() {
    let _one = serial();
    let m = marker("mmio-lost");
    let _reaper = Reaper(m.clone());
    let d1 = capture_dir("faults-mmio-lost-1");
    let d2 = capture_dir("faults-mmio-lost-2");
    let mut qemu = start_qemu_recording(&m3loop(0), &m, &d1, "mmio");
    let c1 = collector_killed_after_parts(&qemu, &d1, "mmio");
    assert_runs_detached(qemu.pid(), c1.pid());

    let rows = PART_ROWS.to_string();
    let mut c2 = start_attach(qemu.pid(), &d2, &log(&d2), &["--part-rows", &rows]);
    wait_for_table_parts(&mut c2, &d2, "mmio", 3);
    interrupt_collector_of_running_qemu(&mut c2, &mut qemu);
    finished_capture(&d2, "interrupted");
    let before = stat(&d2, "events_lost_before_attach", Some(0));
    let lost = stat(&d2, "events_lost", Some(0));
    let seqs = mmio_seqs(&d2);
    let r = runs(&seqs);
    assert_eq!(r.len(), 2, "runs of consecutive MMIO accesses: {r:?}");
    let ((a0, a1), (b0, b1)) = (r[0], r[1]);
    eprintln!("second capture: {a0}..={a1}, then {b0}..={b1}; lost: {before} + {lost}");
    assert!(
        before > 0,
        "the MMIO accesses made while detached are counted"
    );
    assert_eq!(b0 - a1 - 1, before + lost, "the gap is the lost span");
}

/// The collector is SIGKILLed mid-capture and a new one continues the same
/// directory (`attach --append`): the capture then holds every access the
/// firmware made exactly once, except exactly those its stats count as lost.
#[test]
fn collector_killed_then_capture_appended() {
    let _one = serial();
    let m = marker("collector-killed-append");
    let _reaper = Reaper(m.clone());
    let d = capture_dir("faults-collector-killed-append");
    let mut qemu = start_qemu(&m3loop(0), &m, &d);
    let c1 = collector_killed_after_parts(&qemu, &d, "mem");
    assert_runs_detached(qemu.pid(), c1.pid());

    // Without --append the directory is refused; with it, continued.
    let refused = start_attach(qemu.pid(), &d, &d.with_extension("refused.log"), &[])
        .wait(Duration::from_secs(10));
    assert_eq!(refused.code(), Some(1));
    let first_parts = parts(&d, "mem").len();
    let log2 = d.with_extension("append.log");
    let rows = PART_ROWS.to_string();
    let mut c2 = start_attach(qemu.pid(), &d, &log2, &["--part-rows", &rows, "--append"]);
    wait_for_parts(&mut c2, &d, first_parts + 3);
    let stderr = interrupt_collector_of_running_qemu(&mut c2, &mut qemu);

    let j = finished_capture(&d, "interrupted");
    assert_eq!(j["collector_pids"].as_array().unwrap().len(), 2, "{j}");
    let rows = check_parts(&d, "mem", false);
    check_parts(&d, "mmio", false);
    assert!(temporaries(&d, "mem").is_empty() && temporaries(&d, "mmio").is_empty());
    assert_eq!(j["tables"]["mem"], rows);

    // Every access once (`runs` fails on a duplicate), from the first; the
    // ones missing are exactly those counted: drained by the killed
    // collector and never committed, then lost while no collector ran.
    let seqs = mem_seqs(&d);
    let r = runs(&seqs);
    let died = stat(&d, "events_lost_collector_died.mem", Some(0));
    let before = stat(&d, "events_lost_before_attach", Some(0));
    let lost = stat(&d, "events_lost", Some(0));
    eprintln!("runs {r:?}; died {died}, before {before}, lost {lost}");
    assert_eq!(seqs[0], 0);
    let last = *seqs.last().unwrap();
    assert_eq!(seqs.len() as u64 + died + before + lost, last + 1);
    assert!(before > 0, "accesses were lost while detached");
    assert!(r.len() <= 3, "{r:?}");
    if died > 0 {
        assert_eq!(
            r[1].0 - r[0].1 - 1,
            died,
            "the first gap is the unwritten span"
        );
    }
    assert!(stderr.contains(&format!("events lost before we attached: {before}")));
    // The MMIO rows too: each access at most once.
    let mut mmio: Vec<u64> = u64s(&table(&d, "mmio").unwrap(), "icount")
        .into_iter()
        .map(seq)
        .collect();
    mmio.sort_unstable();
    runs(&mmio);

    // trace-query says what is missing.
    let q = Command::new(query())
        .arg("--trace")
        .arg(&d)
        .args(["--format", "csv", "select count(*) as n from mem"])
        .output()
        .unwrap();
    assert!(q.status.success());
    assert_eq!(String::from_utf8_lossy(&q.stdout), format!("n\n{rows}\n"));
    let warnings = String::from_utf8_lossy(&q.stderr);
    assert!(
        warnings.contains("(stats: events_lost_before_attach)"),
        "{warnings}"
    );
    assert_eq!(
        warnings.contains("(stats: events_lost_collector_died.mem)"),
        died > 0,
        "{warnings}"
    );
}

/// By default (`idle` not `count`) a QEMU whose collector is killed runs
/// free again: the shim notices, detaches it and drops its
/// instrumentation, and stops counting what it cannot deliver. The next
/// collector, appending, says so (stderr, `stats`' `events_lost_uncounted`,
/// trace-query's warning), and the capture still holds each access at most
/// once, from the first.
#[test]
fn collector_killed_leaves_qemu_free_and_says_the_gap_is_uncounted() {
    let _one = serial();
    let m = marker("collector-killed-free");
    let _reaper = Reaper(m.clone());
    let d = capture_dir("faults-collector-killed-free");
    let mut qemu = start_qemu_with(&m3loop(0), &m, &d, "events=mem+mmio");
    let c1 = collector_killed_after_parts(&qemu, &d, "mem");
    // Detached, then free: nothing instrumented, nothing counted.
    wait_until(
        Duration::from_secs(10),
        "the shim to drop its instrumentation",
        || shm_read(qemu.pid(), INSTRUMENTED_EVENTS, 4) == 0,
    );
    assert_eq!(shm_read(qemu.pid(), STATE, 4), DETACHED);
    assert_eq!(shm_read(qemu.pid(), COLLECTOR_PID, 4), c1.pid() as u64);
    let lost = shm_read(qemu.pid(), EVENTS_LOST_0, 8);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        shm_read(qemu.pid(), EVENTS_LOST_0, 8),
        lost,
        "not counted any more"
    );

    let first_parts = parts(&d, "mem").len();
    let rows = PART_ROWS.to_string();
    let mut c2 = start_attach(
        qemu.pid(),
        &d,
        &d.with_extension("append.log"),
        &["--part-rows", &rows, "--append"],
    );
    wait_for_parts(&mut c2, &d, first_parts + 2);
    let stderr = interrupt_collector_of_running_qemu(&mut c2, &mut qemu);
    assert!(
        stderr.contains("the shim stopped counting the events it could not deliver"),
        "{stderr}"
    );
    finished_capture(&d, "interrupted");
    assert_eq!(stat(&d, "events_lost_uncounted", None), 1);
    let seqs = mem_seqs(&d);
    runs(&seqs); // fails on an access captured twice
    assert_eq!(seqs[0], 0);
    let (ok, _, warnings) = run_query(&["--trace", d.to_str().unwrap(), "select 1"]);
    assert!(ok);
    assert!(
        warnings.contains("(stats: events_lost_uncounted)"),
        "{warnings}"
    );
    assert_runs_free(qemu.pid());
}

/// The same with instructions: after a kill and `--append`, every
/// instruction is in `insn` at most once, from the first.
#[test]
fn collector_killed_then_insn_capture_appended() {
    let _one = serial();
    let m = marker("collector-killed-append-insn");
    let _reaper = Reaper(m.clone());
    let d = capture_dir("faults-collector-killed-append-insn");
    let mut qemu = start_qemu_recording(&m3loop(0), &m, &d, "insn");
    collector_killed_after_parts(&qemu, &d, "block_exec");
    let first_parts = parts(&d, "block_exec").len();
    let log2 = d.with_extension("append.log");
    let rows = PART_ROWS.to_string();
    let mut c2 = start_attach(qemu.pid(), &d, &log2, &["--part-rows", &rows, "--append"]);
    wait_for_table_parts(&mut c2, &d, "block_exec", first_parts + 3);
    interrupt_collector_of_running_qemu(&mut c2, &mut qemu);

    let insn = table(&d, "insn").unwrap();
    let mut icounts = u64s(&insn, "icount");
    icounts.sort_unstable();
    let r = runs(&icounts); // fails on an instruction captured twice
    eprintln!("insn runs {r:?}");
    assert_eq!(icounts[0], 0);
    assert!(r.len() <= 3, "{r:?}");
    let code = table(&d, "code").unwrap();
    assert!(code.height() > 0);
    // Every block of a written block_exec part had its code rows written
    // before it: the firmware's blocks, all described before the first part,
    // are known to the second collector, and every instruction has its pc.
    let no_pc = insn.column("pc").unwrap().null_count();
    let unknown = stat(&d, "blocks_unknown", None);
    assert_eq!(
        (no_pc, unknown),
        (0, 0),
        "{no_pc} rows without pc, {unknown} blocks unknown"
    );
    let died = stat(&d, "events_lost_collector_died.block_exec", Some(0));
    let before = stat(&d, "events_lost_before_attach", Some(0));
    eprintln!("died {died}, before {before}, rows without pc {no_pc}, blocks unknown {unknown}");
}

/// QEMU is SIGKILLed mid-capture: the collector drains what was published,
/// finishes the capture (`end: qemu_died`), says so, exits 0 within seconds
/// and removes the segment QEMU left.
fn qemu_killed(run: bool) {
    let _one = serial();
    let name = if run { "run" } else { "attach" };
    let m = marker(&format!("qemu-killed-{name}"));
    let _reaper = Reaper(m.clone());
    let dir = capture_dir(&format!("faults-qemu-killed-{name}"));
    let rows = PART_ROWS.to_string();
    let mut qemu_proc = None;
    let mut c = if run {
        let qemu = loop_qemu(&m3loop(0), &m, "null");
        start_run(&dir, &log(&dir), &["--part-rows", &rows], &qemu, None)
    } else {
        let q = start_qemu(&m3loop(0), &m, &dir);
        let c = start_attach(q.pid(), &dir, &log(&dir), &["--part-rows", &rows]);
        qemu_proc = Some(q);
        c
    };
    wait_for_parts(&mut c, &dir, 2);
    let qemu_pid = capture_json(&dir)["qemu_pid"].as_u64().unwrap() as u32;
    assert_eq!(qemus_with(&m), vec![qemu_pid]);
    kill(Pid::from_raw(qemu_pid as i32), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    if let Some(q) = qemu_proc.as_mut() {
        q.wait(Duration::from_secs(10));
    }
    let st = c.wait(Duration::from_secs(30));
    let took = killed.elapsed();
    let stderr = c.stderr();
    assert!(st.success(), "{st}: {stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_no_panic(&stderr);
    assert!(stderr.contains("QEMU exited without finishing"), "{stderr}");
    assert!(stderr.contains("capture written to"), "{stderr}");

    let j = finished_capture(&dir, "qemu_died");
    let exit = j["qemu_exit"].as_str().unwrap();
    assert!(exit.contains("QEMU exited without finishing"), "{exit}");
    if run {
        assert!(exit.contains("killed by signal 9 (SIGKILL)"), "{exit}");
    }
    assert!(!segment_path(qemu_pid).exists(), "the segment was removed");
    assert!(qemus_with(&m).is_empty());

    // Everything the shim published is there: a gap-free prefix, in valid parts.
    let rows = check_parts(&dir, "mem", false);
    check_parts(&dir, "mmio", false);
    assert!(temporaries(&dir, "mem").is_empty() && temporaries(&dir, "mmio").is_empty());
    assert_eq!(assert_prefix(&dir), rows);
    assert_eq!(j["tables"]["mem"], rows);
    assert_eq!(stat(&dir, "events", Some(0)), rows);
    assert_eq!(stat(&dir, "events_lost", Some(0)), 0);
}

#[test]
fn qemu_killed_mid_capture_run() {
    qemu_killed(true);
}

#[test]
fn qemu_killed_mid_capture_attach() {
    qemu_killed(false);
}

/// The collector of a `run` is SIGKILLed (no handler of its own runs): its
/// QEMU is stopped too, by the kernel (parent-death signal), within seconds,
/// and its segment is removed; the parts written stay valid.
#[test]
fn run_collector_killed_stops_its_qemu() {
    let _one = serial();
    let m = marker("run-collector-killed");
    let _reaper = Reaper(m.clone());
    let dir = capture_dir("faults-run-collector-killed");
    let rows = PART_ROWS.to_string();
    let qemu = loop_qemu(&m3loop(0), &m, "null");
    let mut c = start_run(&dir, &log(&dir), &["--part-rows", &rows], &qemu, None);
    wait_for_parts(&mut c, &dir, 2);
    let qemu_pid = capture_json(&dir)["qemu_pid"].as_u64().unwrap() as u32;
    assert_eq!(qemus_with(&m), vec![qemu_pid]);
    c.signal(Signal::SIGKILL);
    c.wait(Duration::from_secs(10));
    wait_until(Duration::from_secs(10), "QEMU to exit", || {
        qemus_with(&m).is_empty()
    });
    assert!(
        !segment_path(qemu_pid).exists(),
        "QEMU shut down cleanly and removed its segment"
    );
    let written = check_parts(&dir, "mem", true);
    assert_eq!(assert_prefix(&dir), written);
    assert_eq!(capture_json(&dir)["complete"], false);
}

/// A QEMU SIGKILLed while no collector is attached cannot remove its
/// segment; the next QEMU that loads the shim does.
#[test]
fn a_killed_qemu_s_segment_is_removed_by_the_next_one() {
    let _one = serial();
    let m = marker("stale-segment");
    let _reaper = Reaper(m.clone());
    let dir = capture_dir("faults-stale-segment");
    let mut first = start_qemu(&m3loop(0), &m, &dir);
    let stale = segment_path(first.pid());
    wait_until(Duration::from_secs(10), "the first segment", || {
        stale.exists()
    });
    first.signal(Signal::SIGKILL);
    first.wait(Duration::from_secs(10));
    assert!(stale.exists(), "nothing ran in QEMU to remove it");

    let second = start_qemu(&m3loop(0), &m, &dir.with_extension("second"));
    let fresh = segment_path(second.pid());
    wait_until(Duration::from_secs(10), "the second segment", || {
        fresh.exists()
    });
    assert!(!stale.exists(), "the second QEMU removed the stale segment");
}

/// SIGINT or SIGTERM to `attach`: it detaches, finishes the capture
/// (`end: interrupted`), prints the summary, exits 0; QEMU runs on.
fn signal_attach(sig: Signal) {
    let _one = serial();
    let m = marker(&format!("signal-attach-{sig}"));
    let _reaper = Reaper(m.clone());
    let dir = capture_dir(&format!("faults-signal-attach-{sig}"));
    // The default idle: once detached, QEMU runs free.
    let mut qemu = start_qemu_with(&m3loop(0), &m, &dir, "events=mem+mmio");
    let rows = PART_ROWS.to_string();
    let mut c = start_attach(qemu.pid(), &dir, &log(&dir), &["--part-rows", &rows]);
    wait_for_parts(&mut c, &dir, 1);
    c.signal(sig);
    let sent = Instant::now();
    let st = c.wait(Duration::from_secs(30));
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
    let stderr = c.stderr();
    assert!(st.success(), "{st}: {stderr}");
    assert_no_panic(&stderr);
    assert!(stderr.contains("capture written to"), "{stderr}");
    assert!(
        stderr.contains("still running (the collector detached)"),
        "{stderr}"
    );
    assert!(stderr.contains("events lost: none"), "{stderr}");
    // No --qmp: it says what it could not name.
    assert!(
        stderr.contains("without --qmp, MMIO rows carry the plugin API's device names"),
        "{stderr}"
    );

    let j = finished_capture(&dir, "interrupted");
    assert_eq!(j["qemu_exit"], "still running (the collector detached)");
    let rows = check_parts(&dir, "mem", false);
    assert_eq!(assert_prefix(&dir), rows);
    assert_eq!(stat(&dir, "events", Some(0)), rows);
    assert_eq!(stat(&dir, "events_lost", Some(0)), 0);

    assert!(qemu.alive(), "QEMU runs on");
    assert_runs_free(qemu.pid());
}

#[test]
fn sigint_to_attach_detaches() {
    signal_attach(Signal::SIGINT);
}

#[test]
fn sigterm_to_attach_detaches() {
    signal_attach(Signal::SIGTERM);
}

/// `qemu-system-... & trace-collector attach --pid $!`: the collector may
/// look at the process before the shell's child has exec'd QEMU (its command
/// line is still the shell's). It must wait, not refuse it (it used to).
#[test]
fn attach_to_a_child_that_has_not_exec_d_qemu_yet() {
    let _one = serial();
    let m = marker("not-exec-d");
    let _reaper = Reaper(m.clone());
    let dir = capture_dir("faults-not-exec-d");
    let mut qemu = loop_qemu(&m3loop(0), &m, "null");
    qemu.push(format!("{},events=mmio,wait=on", shim().display()));
    assert!(!qemu.iter().any(|a| a.contains("plugin")));
    // The window made wide: the child sleeps before its exec, and its
    // command line says nothing of a plugin until then (the shell makes
    // "-plugin" out of -plu""gin).
    let script = r#"sleep 0.2; exec "$@" -plu""gin "$last""#;
    let last = qemu.pop().unwrap();
    let script = script.replace("$last", &last);
    let mut cmd = vec!["sh".into(), "-c".into(), script, "sh".into()];
    cmd.extend(qemu);
    let q = spawn(&cmd, &dir.with_extension("qemu.log"), None, true);
    let mut c = start_attach(q.pid(), &dir, &log(&dir), &[]);
    wait_until(Duration::from_secs(30), "mmio rows", || {
        assert!(c.alive(), "the collector gave up: {}", c.stderr());
        capture_json_rows(&dir, "mmio") > 0
    });
    c.signal(Signal::SIGINT);
    let st = c.wait(Duration::from_secs(30));
    assert!(st.success(), "{st}: {}", c.stderr());
    let n = stat(&dir, "rows.mmio", None);
    assert!(n > 0);
    // Held from its first instruction (wait=on): every MMIO access of the
    // firmware once, none missing, up to the last one written.
    assert_eq!(runs(&mmio_seqs(&dir)), vec![(0, n - 1)]);
}

/// Rows written so far to `table`, from capture.json (0 before it exists).
fn capture_json_rows(dir: &Path, table: &str) -> u64 {
    std::fs::read_to_string(dir.join("capture.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|j| j["tables"][table].as_u64())
        .unwrap_or(0)
}

/// A signal while `attach` still waits for a starting QEMU to create its
/// segment: it gives up at once (it used to ignore the signal, and then
/// capture until a second one).
#[test]
fn sigint_while_attach_waits_for_the_segment() {
    let _one = serial();
    let m = marker("signal-waiting");
    let _reaper = Reaper(m.clone());
    let dir = capture_dir("faults-signal-waiting");
    // A QEMU that takes 2 s to start: the same pid, a -plugin option from
    // the start, the segment only after the exec.
    let mut qemu = loop_qemu(&m3loop(0), &m, "null");
    qemu.push("-plugin".into());
    qemu.push(format!("{},events=mmio,wait=on", shim().display()));
    let script = format!("sleep 2; exec {}", qemu.join(" "));
    let q = spawn(
        &["sh".into(), "-c".into(), script],
        &dir.with_extension("qemu.log"),
        None,
        true,
    );
    let mut c = start_attach(q.pid(), &dir, &log(&dir), &[]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(c.alive(), "it waits for the segment: {}", c.stderr());
    c.signal(Signal::SIGINT);
    let sent = Instant::now();
    let st = c.wait(Duration::from_secs(30));
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "{:?}",
        sent.elapsed()
    );
    let e = c.stderr();
    assert_eq!(st.code(), Some(1), "{e}");
    assert_no_panic(&e);
    assert!(
        e.contains(&format!(
            "interrupted while waiting for process {} to create its trace segment",
            q.pid()
        )),
        "{e}"
    );
    assert!(!dir.exists(), "no capture was started");
}

/// SIGINT or SIGTERM to `run`: it asks QEMU to exit (SIGTERM), QEMU exits
/// cleanly, and the capture holds every access up to QEMU's last instruction.
fn signal_run(sig: Signal) {
    let _one = serial();
    let m = marker(&format!("signal-run-{sig}"));
    let _reaper = Reaper(m.clone());
    let dir = capture_dir(&format!("faults-signal-run-{sig}"));
    let qemu = loop_qemu(&m3loop(0), &m, "null");
    let rows = PART_ROWS.to_string();
    let mut c = start_run(&dir, &log(&dir), &["--part-rows", &rows], &qemu, None);
    wait_for_parts(&mut c, &dir, 1);
    let qemu_pid = capture_json(&dir)["qemu_pid"].as_u64().unwrap() as u32;
    c.signal(sig);
    let sent = Instant::now();
    let st = c.wait(Duration::from_secs(30));
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
    let stderr = c.stderr();
    assert!(st.success(), "{st}: {stderr}");
    assert_no_panic(&stderr);
    assert!(stderr.contains("asking QEMU to exit"), "{stderr}");
    assert!(stderr.contains("exited with status 0"), "{stderr}");
    assert!(stderr.contains("events lost: none"), "{stderr}");

    let j = finished_capture(&dir, "qemu_exited");
    assert_eq!(j["qemu_exit"], "exited with status 0");
    assert!(qemus_with(&m).is_empty());
    assert!(!segment_path(qemu_pid).exists());

    // Exactly the accesses of the instructions QEMU ran.
    let f = stat(&dir, "final_icount", Some(0));
    let rows = check_parts(&dir, "mem", false);
    assert_eq!(assert_prefix(&dir), rows);
    assert_eq!(rows, accesses_before(f), "final icount {f}");
    assert_eq!(stat(&dir, "events_written", Some(0)), rows);
    assert_eq!(stat(&dir, "events_lost", Some(0)), 0);
}

#[test]
fn sigint_to_run_stops_qemu_cleanly() {
    signal_run(Signal::SIGINT);
}

#[test]
fn sigterm_to_run_stops_qemu_cleanly() {
    signal_run(Signal::SIGTERM);
}

/// A collector stopped (SIGSTOP) for a second holds an `overflow=block`
/// QEMU: nothing is lost, and the time QEMU waited for room is in `stats`
/// and in the summary. The firmware fills the 16 MiB ring within
/// milliseconds, so QEMU waits for most of that second (the one inequality
/// here; the stopped collector sets its lower bound).
#[test]
fn stopped_collector_holds_qemu_and_the_wait_is_counted() {
    let _one = serial();
    let m = marker("stopped");
    let _reaper = Reaper(m.clone());
    let dir = capture_dir("faults-stopped");
    let mut qemu = start_qemu(&m3loop(0), &m, &dir);
    let rows = PART_ROWS.to_string();
    let mut c = start_attach(qemu.pid(), &dir, &log(&dir), &["--part-rows", &rows]);
    wait_for_parts(&mut c, &dir, 2);
    c.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(1));
    c.signal(Signal::SIGCONT);
    let after = parts(&dir, "mem").len();
    wait_for_parts(&mut c, &dir, after + 2);
    let stderr = interrupt_collector_of_running_qemu(&mut c, &mut qemu);

    let rows = check_parts(&dir, "mem", false);
    assert_eq!(
        assert_prefix(&dir),
        rows,
        "nothing lost while it was stopped"
    );
    assert_eq!(stat(&dir, "events_lost", Some(0)), 0);
    let waits = stat(&dir, "full_ring_waits", Some(0));
    let waited = Duration::from_nanos(stat(&dir, "full_ring_wait_ns", Some(0)));
    assert!(waits >= 1);
    assert!(waited >= Duration::from_millis(500), "waited {waited:?}");
    let line = format!(
        "QEMU waited {:.2} s for room in a full ring ({waits} waits, overflow=block)",
        waited.as_secs_f64()
    );
    assert!(stderr.contains(&line), "{line} not in {stderr}");
}

/// `overflow=drop` with the smallest ring: most events are lost, and every
/// one is accounted for: rows + events_lost = the 5N + 8 accesses m3loop-N
/// makes. The summary and trace-query both say so.
#[test]
fn drop_with_a_tiny_ring_accounts_for_every_access() {
    let _one = serial();
    const N: u64 = 200_000;
    let total = 5 * N + 8;
    let m = marker("drop");
    let _reaper = Reaper(m.clone());
    let dir = capture_dir("faults-drop");
    let qemu = loop_qemu(&m3loop(N), &m, "stdio");
    let stdout = dir.with_extension("stdout");
    let mut c = start_run(
        &dir,
        &log(&dir),
        &["--ring-kib", "8", "--overflow", "drop"],
        &qemu,
        Some(&stdout),
    );
    let st = c.wait(Duration::from_secs(120));
    let stderr = c.stderr();
    assert!(st.success(), "{st}: {stderr}");
    assert_eq!(std::fs::read_to_string(&stdout).unwrap(), "done\n");

    let rows = stat(&dir, "rows.mem", None);
    let lost = stat(&dir, "events_lost", Some(0));
    assert_eq!(rows + lost, total, "rows {rows} + lost {lost}");
    assert!(lost > 0, "an 8 KiB ring (two chunks) cannot keep up");
    assert_eq!(check_parts(&dir, "mem", false), rows);
    assert_eq!(stat(&dir, "events", Some(0)), rows);
    assert_eq!(stat(&dir, "events_written", Some(0)), rows);
    // N = 200000 is loaded with movw+movt: 10N + 31 instructions (README).
    assert_eq!(stat(&dir, "final_icount", Some(0)), 10 * N + 31);
    assert_eq!(
        stat(&dir, "full_ring_waits", Some(0)),
        0,
        "drop never waits"
    );
    assert!(!stderr.contains("QEMU waited"), "{stderr}");
    let j = capture_json(&dir);
    assert_eq!(j["events_lost"], lost);
    assert_eq!(j["end"], "qemu_exited");
    // The rows kept are real accesses, each once, in order.
    let icounts = u64s(&table(&dir, "mem").unwrap(), "icount");
    assert!(icounts.windows(2).all(|w| w[0] < w[1]));
    let mmio = stat(&dir, "rows.mmio", None);
    assert!(mmio <= N + 7);

    assert!(
        stderr.contains(&format!("events lost: {lost} (vCPU 0: {lost})")),
        "{stderr}"
    );
    let q = Command::new(query())
        .arg("--trace")
        .arg(&dir)
        .args(["--format", "csv", "select count(*) as n from mem"])
        .output()
        .unwrap();
    assert!(q.status.success());
    assert_eq!(String::from_utf8_lossy(&q.stdout), format!("n\n{rows}\n"));
    let qerr = String::from_utf8_lossy(&q.stderr);
    assert!(
        qerr.contains("warning") && qerr.contains(&format!("{lost} events lost")),
        "{qerr}"
    );
}

/// An output directory that cannot be created or written: a clear error
/// before QEMU starts (`run`) or is released from `wait=on` (`attach`).
#[test]
fn unwritable_output_directory() {
    let _one = serial();
    let m = marker("unwritable");
    let _reaper = Reaper(m.clone());
    let base = capture_dir("faults-unwritable");
    std::fs::create_dir_all(&base).unwrap();
    let qemu = loop_qemu(&m3loop(0), &m, "null");

    let bad = Path::new("/proc/trace-collector-test/cap");
    let mut c = start_run(bad, &base.join("proc.log"), &[], &qemu, None);
    let st = c.wait(Duration::from_secs(30));
    let e = c.stderr();
    assert_eq!(st.code(), Some(1), "{e}");
    assert!(
        e.contains("cannot create --out directory /proc/trace-collector-test/cap"),
        "{e}"
    );
    assert_no_panic(&e);
    assert!(qemus_with(&m).is_empty(), "QEMU was left running");

    // A read-only file system: the directory exists but takes no file.
    let Some(ro) = Mount::tmpfs(&base.join("ro"), "ro,size=64k") else {
        return;
    };
    let mut c = start_run(&ro.0, &base.join("ro.log"), &[], &qemu, None);
    let st = c.wait(Duration::from_secs(30));
    let e = c.stderr();
    assert_eq!(st.code(), Some(1), "{e}");
    assert!(
        e.contains("cannot write in --out directory") && e.contains("Read-only file system"),
        "{e}"
    );
    assert_no_panic(&e);
    assert!(qemus_with(&m).is_empty(), "QEMU was left running");

    // attach: the QEMU waiting for a collector keeps waiting for a good one.
    let mut q = start_qemu(&m3loop(0), &m, &base.join("q"));
    let mut c = start_attach(q.pid(), &ro.0, &base.join("ro-attach.log"), &[]);
    let st = c.wait(Duration::from_secs(30));
    let e = c.stderr();
    assert_eq!(st.code(), Some(1), "{e}");
    assert!(e.contains("Read-only file system"), "{e}");
    assert!(q.alive());
    assert_eq!(shm_read(q.pid(), STATE, 4), WAITING, "QEMU still waits");
}

/// The disk fills up mid-capture: a clear error, exit 1, QEMU stopped, the
/// parts already written valid, no partial part left, capture.json says why.
#[test]
fn disk_full() {
    let _one = serial();
    let m = marker("disk-full");
    let _reaper = Reaper(m.clone());
    let base = capture_dir("faults-disk-full");
    let Some(mnt) = Mount::tmpfs(&base.join("mnt"), "size=1m") else {
        return;
    };
    let dir = mnt.0.join("cap");
    let qemu = loop_qemu(&m3loop(0), &m, "null");
    let rows = PART_ROWS.to_string();
    // The log goes beside the mount, not onto the full disk. Many encoders,
    // as on a large host: one fails while others still finish parts that
    // will never be put in place, and those must be removed too.
    let mut c = start_run(
        &dir,
        &base.join("collector.log"),
        &["--part-rows", &rows, "--threads", "12"],
        &qemu,
        None,
    );
    let st = c.wait(Duration::from_secs(120));
    let e = c.stderr();
    assert_eq!(st.code(), Some(1), "{e}");
    assert_no_panic(&e);
    assert!(e.contains("No space left on device"), "{e}");
    assert!(qemus_with(&m).is_empty(), "QEMU was left running");

    let j = capture_json(&dir);
    assert_eq!(j["complete"], false);
    assert_eq!(j["end"], "error");
    assert!(j["error"]
        .as_str()
        .unwrap()
        .contains("No space left on device"));
    let qemu_pid = j["qemu_pid"].as_u64().unwrap() as u32;
    assert!(!segment_path(qemu_pid).exists());
    let rows = check_parts(&dir, "mem", true);
    assert!(rows >= PART_ROWS, "some parts fit");
    check_parts(&dir, "mmio", true);
    assert!(
        temporaries(&dir, "mem").is_empty() && temporaries(&dir, "mmio").is_empty(),
        "the partial part was removed"
    );
    assert_eq!(assert_prefix(&dir), rows);
}

/// A collector SIGKILLed and not reaped (a zombie, e.g. its parent is busy)
/// must not hold an `overflow=block` QEMU: kill(pid, 0) succeeds on a
/// zombie, so the shim also reads the process state.
#[test]
fn zombie_collector_does_not_hold_qemu() {
    let _one = serial();
    let m = marker("zombie");
    let _reaper = Reaper(m.clone());
    let dir = capture_dir("faults-zombie");
    let qemu = start_qemu(&m3loop(0), &m, &dir);
    let mut c = start_attach(qemu.pid(), &dir, &log(&dir), &[]);
    wait_for_parts(&mut c, &dir, 1);
    c.signal(Signal::SIGKILL);
    // Not reaped: `c` stays a zombie until the end of the test.
    let shim_noticed = (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        shm_read(qemu.pid(), STATE, 4) == DETACHED
    });
    assert!(shim_noticed, "QEMU is held by a dead (zombie) collector");
}

/// `trace-query` over a capture of `dir`, CSV: (exit success, stdout, stderr).
fn query_csv(dir: &Path, sql: &str) -> (bool, String, String) {
    let dir = dir.display().to_string();
    run_query(&["--trace", &dir, "--format", "csv", sql])
}

/// A live capture (issue 20): with parts far too large to fill, only
/// `--flush-every` cuts them, so a query of the running capture sees each
/// table's rows up to a few hundred milliseconds old, each an exact prefix
/// of what the guest did (no gap, no duplicate); the capture, stopped,
/// holds an exact prefix too.
#[test]
fn a_running_capture_is_cut_into_parts_by_time() {
    let _one = serial();
    let m = marker("live-flush");
    let _reaper = Reaper(m.clone());
    let dir = capture_dir("live-flush");
    let qemu = loop_qemu(&m3loop(0), &m, "null");
    let args = ["--flush-every", "300ms", "--part-rows", "100000000"];
    let mut c = start_run(&dir, &log(&dir), &args, &qemu, None);
    wait_for_table_parts(&mut c, &dir, "mmio", 2);
    wait_for_table_parts(&mut c, &dir, "mem", 2);
    // While it runs.
    let n = assert_prefix(&dir);
    let mmio = runs(&mmio_seqs(&dir));
    assert_eq!(mmio.len(), 1, "mmio has gaps: {mmio:?}");
    assert_eq!(mmio[0].0, 0);
    let (ok, out, err) = query_csv(&dir, "select count(*) as n from mmio");
    assert!(ok, "{err}");
    let rows: u64 = out.lines().nth(1).unwrap().parse().unwrap();
    assert!(rows > mmio[0].1, "{rows} rows, {mmio:?} read before");
    assert!(err.contains("is incomplete"), "{err}");
    c.signal(Signal::SIGTERM);
    assert!(c.wait(Duration::from_secs(30)).success(), "{}", c.stderr());
    assert!(assert_prefix(&dir) >= n);
}

/// Without a time cut (`--flush-every 0`) and parts too large to fill, a
/// running capture has no part yet: its tables exist all the same (from
/// capture.json), empty, rather than being "unknown".
#[test]
fn a_running_capture_has_every_table_before_its_first_part() {
    let _one = serial();
    let m = marker("live-empty");
    let _reaper = Reaper(m.clone());
    let dir = capture_dir("live-empty");
    let qemu = loop_qemu(&m3loop(0), &m, "null");
    let args = ["--flush-every", "0", "--part-rows", "100000000"];
    let mut c = start_run(&dir, &log(&dir), &args, &qemu, None);
    wait_until(Duration::from_secs(30), "capture.json", || {
        assert!(c.alive(), "the collector exited: {}", c.stderr());
        dir.join("capture.json").exists()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(parts(&dir, "mmio").is_empty() && parts(&dir, "mem").is_empty());
    for table in ["mem", "mmio"] {
        let (ok, out, err) = query_csv(&dir, &format!("select count(*) as n from {table}"));
        assert!(ok, "{table}: {err}");
        assert_eq!(out, "n\n0\n", "{table}");
    }
    c.signal(Signal::SIGTERM);
    assert!(c.wait(Duration::from_secs(30)).success(), "{}", c.stderr());
    assert!(assert_prefix(&dir) > 0);
}
