//! Attach and detach at any time: one QEMU, started with the shim and no
//! collector, captured in windows (`attach --duration`), each with the
//! events its `attach --events` asks for. The guest is m3loop-0, whose
//! accesses are known (tests/firmware/README.md): iteration n stores n to
//! `buf[0]` (0x20000000), and its five accesses are at instructions
//! 10n + {0, 1, 2, 4, 6} from the first (the last, the SysTick CVR load, is
//! the only MMIO one). So each window's rows can be checked against the
//! exact sequence the guest made in it: every access once, none missing,
//! none from outside.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use trace_tests::processes::*;
use trace_tests::*;

/// Offsets, from an iteration's store to `buf[0]`, of its accesses.
const ITERATION_ACCESSES: [u64; 5] = [0, 1, 2, 4, 6];
const INSNS_PER_ITERATION: u64 = 10;
const BUF0: u64 = 0x2000_0000;
const SYST_CVR: u64 = 0xe000_e018;

/// Every access m3loop-0 makes from its first instruction, in order, as
/// (icount, physical address, type): the SysTick setup stores at 3 and 5,
/// then iteration n's five at 11 + 10n + `ITERATION_ACCESSES`.
fn m3loop0_accesses() -> impl Iterator<Item = (u64, u64, String)> {
    let setup = [(3, SYST_CVR - 4, "W"), (5, SYST_CVR - 8, "W")];
    let per_iteration = [
        (BUF0, "W"),
        (BUF0 + 4, "W"),
        (BUF0, "R"),
        (BUF0 + 4, "R"),
        (SYST_CVR, "R"),
    ];
    let iterations = (0u64..).flat_map(move |n| {
        ITERATION_ACCESSES
            .iter()
            .zip(per_iteration)
            .map(move |(off, (a, t))| (11 + INSNS_PER_ITERATION * n + off, a, t))
    });
    setup
        .into_iter()
        .chain(iterations)
        .map(|(i, a, t)| (i, a, t.to_string()))
}

/// The m3loop-0 QEMU with the shim loaded, no collector (`wait=off`).
fn free_qemu(test: &str, shim_options: &str) -> (Proc, Reaper) {
    free_qemu_with(test, shim_options, &[])
}

/// `free_qemu` with more QEMU options.
fn free_qemu_with(test: &str, shim_options: &str, qemu_options: &[&str]) -> (Proc, Reaper) {
    let m = marker(test);
    let reaper = Reaper(m.clone());
    let mut cmd = loop_qemu(&m3loop(0), &m, "null");
    cmd.extend(qemu_options.iter().map(|o| o.to_string()));
    cmd.push("-plugin".into());
    cmd.push(format!("{}{shim_options}", shim().display()));
    let log = capture_dir(&format!("{test}.qemu.log"));
    let qemu = spawn(&cmd, &log, None, true);
    wait_until(Duration::from_secs(10), "the shim's segment", || {
        std::path::Path::new(&format!("/dev/shm/trace-collector.{}", qemu.pid())).exists()
    });
    (qemu, reaper)
}

/// `attach --pid PID --out DIR <extra>` to its end; its stderr.
fn window(pid: u32, dir: &Path, extra: &[&str]) -> String {
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    let mut c = start_attach(pid, dir, &dir.with_extension("log"), extra);
    let st = c.wait(Duration::from_secs(60));
    let stderr = c.stderr();
    assert!(st.success(), "{st}: {stderr}");
    stderr
}

/// `attach --pid PID --out OUT <args>`, which must be refused: its stderr.
fn refused_attach(pid: u32, out: &Path, args: &[&str]) -> String {
    let o = Command::new(collector())
        .args(["attach", "--pid", &pid.to_string(), "--out"])
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{args:?} was not refused");
    err
}

fn capture_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("capture.json")).unwrap()).unwrap()
}

/// A window's mem rows as (icount, paddr, type, value), by icount.
fn mem_rows(dir: &Path) -> Vec<(u64, u64, String, u64)> {
    let df = table(dir, "mem").unwrap();
    let icount = u64s(&df, "icount");
    let paddr = u64s(&df, "paddr");
    let value = u64s(&df, "value");
    let ty: Vec<String> = df
        .column("type")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|t| t.unwrap().to_string())
        .collect();
    let mut rows: Vec<_> = (0..df.height())
        .map(|i| (icount[i], paddr[i], ty[i].clone(), value[i]))
        .collect();
    rows.sort_by_key(|r| r.0);
    rows
}

/// Checks that a window's `mem` rows are exactly the accesses m3loop-0
/// made between its first and last row: every iteration's five, at their
/// instructions, each once, with `buf[0]` stored the iteration's number.
/// Returns the first and last iteration numbers stored.
fn assert_exact_iterations(dir: &Path) -> (u64, u64) {
    let rows = mem_rows(dir);
    let (s0, _, _, n0) = *rows
        .iter()
        .find(|r| r.1 == BUF0 && r.2 == "W")
        .expect("a store to buf[0]");
    // What the guest made from the first row's access to the last one's.
    // (iteration, offset) of the access at `icount`, if it makes one.
    let at = |icount: u64| -> Option<(u64, u64)> {
        let rel = icount as i128 - s0 as i128;
        let per = INSNS_PER_ITERATION as i128;
        let (k, off) = (rel.div_euclid(per), rel.rem_euclid(per) as u64);
        ITERATION_ACCESSES
            .contains(&off)
            .then(|| ((n0 as i128 + k) as u64, off))
    };
    let first = rows[0].0;
    let last = rows.last().unwrap().0;
    let expected: Vec<u64> = (first..=last).filter(|&i| at(i).is_some()).collect();
    let got: Vec<u64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(
        got,
        expected,
        "{}: the accesses of the window",
        dir.display()
    );
    let mut stored = Vec::new();
    for (icount, paddr, ty, value) in &rows {
        let (n, off) = at(*icount).unwrap();
        let want = match off {
            0 => (BUF0, "W"),
            1 => (BUF0 + 4, "W"),
            2 => (BUF0, "R"),
            4 => (BUF0 + 4, "R"),
            _ => (SYST_CVR, "R"),
        };
        assert_eq!((*paddr, ty.as_str()), want, "access at {icount}");
        if off == 0 || off == 2 {
            assert_eq!(*value, n, "buf[0] in iteration {n}");
        }
        if off == 0 {
            stored.push(n);
        }
    }
    (stored[0], *stored.last().unwrap())
}

/// Consecutive `mmio` rows are one iteration apart: none missing inside the
/// window, none twice. Returns how many.
fn assert_one_cvr_load_per_iteration(dir: &Path) -> usize {
    let df = table(dir, "mmio").unwrap();
    let mut icount = u64s(&df, "icount");
    icount.sort_unstable();
    assert!(u64s(&df, "paddr").iter().all(|&p| p == SYST_CVR));
    for w in icount.windows(2) {
        assert_eq!(w[1] - w[0], INSNS_PER_ITERATION, "{}", dir.display());
    }
    icount.len()
}

#[test]
fn windows_with_different_events_on_one_qemu() {
    let (qemu, _reaper) = free_qemu("windows", "");
    let pid = qemu.pid();
    let base = capture_dir("windows");
    // Loaded, no collector: nothing instrumented.
    assert_eq!(shm_read(pid, INSTRUMENTED_EVENTS, 4), 0);

    // A: MMIO only.
    let a = base.join("a");
    window(pid, &a, &["--events", "mmio", "--duration", "1s"]);
    let j = capture_json(&a);
    assert_eq!(j["events"], "mmio");
    assert_eq!(j["end"], "window_ended");
    assert_eq!(j["qemu_exit"], "still running (the collector detached)");
    let tables: Vec<&str> = j["tables"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(tables, ["mmio", "stats"]);
    let w = &j["window"];
    let (t0, t1, t2) = (
        w["attached_at"].as_f64().unwrap(),
        w["instrumented_at"].as_f64().unwrap(),
        w["ended_at"].as_f64().unwrap(),
    );
    assert!(t0 <= t1 && t1 <= t2, "{w}");
    let loads = assert_one_cvr_load_per_iteration(&a);
    assert_eq!(j["tables"]["mmio"], loads as u64);
    assert_runs_free(pid);

    // B: everything.
    let b = base.join("b");
    window(pid, &b, &["--events", "mem,mmio,insn", "--duration", "1s"]);
    assert_eq!(capture_json(&b)["events"], "mem+mmio+insn");
    let (b_first, b_last) = assert_exact_iterations(&b);
    assert_one_cvr_load_per_iteration(&b);
    // Every instruction of the window once: icounts first..=last.
    let insn = u64s(&table(&b, "insn").unwrap(), "icount");
    let (lo, hi) = (insn.iter().min().unwrap(), insn.iter().max().unwrap());
    assert_eq!(
        (hi - lo + 1) as usize,
        insn.len(),
        "instructions missing or twice"
    );
    assert_runs_free(pid);

    // C: the shim's own events (mem+mmio); the guest ran between B and C,
    // and nothing of it is in either.
    std::thread::sleep(Duration::from_millis(200));
    let c = base.join("c");
    window(pid, &c, &["--duration", "500ms"]);
    assert_eq!(capture_json(&c)["events"], "mem+mmio");
    let (c_first, _) = assert_exact_iterations(&c);
    assert!(
        b_first < b_last && c_first > b_last + 1,
        "B {b_first}..={b_last}, C from {c_first}"
    );
    assert_runs_free(pid);
}

/// `idle=count`: the shim keeps counting instructions while no collector is
/// attached, so `icount` is the guest's instruction count in every window
/// (iteration n's store to buf[0] is at the same 10n + c in both); with
/// `idle=free` a later window's icount is smaller (only instrumented spans
/// count).
#[test]
fn idle_count_keeps_icount_exact_across_windows() {
    let icount_base = |dir: &Path| {
        let rows = mem_rows(dir);
        let (icount, _, _, n) = *rows.iter().find(|r| r.1 == BUF0 && r.2 == "W").unwrap();
        icount as i128 - (INSNS_PER_ITERATION * n) as i128
    };
    let (counting, _r1) = free_qemu("idle-count", ",idle=count");
    let base = capture_dir("idle-count");
    // Instrumented (for mem+mmio, recording nothing) from the start.
    assert_eq!(shm_read(counting.pid(), INSTRUMENTED_EVENTS, 4), 3);
    window(counting.pid(), &base.join("1"), &["--duration", "300ms"]);
    std::thread::sleep(Duration::from_millis(300));
    window(counting.pid(), &base.join("2"), &["--duration", "300ms"]);
    assert_eq!(icount_base(&base.join("1")), icount_base(&base.join("2")));
    assert_eq!(shm_read(counting.pid(), INSTRUMENTED_EVENTS, 4), 3);

    let (free, _r2) = free_qemu("idle-free", "");
    let base = capture_dir("idle-free");
    window(free.pid(), &base.join("1"), &["--duration", "300ms"]);
    std::thread::sleep(Duration::from_millis(300));
    window(free.pid(), &base.join("2"), &["--duration", "300ms"]);
    assert!(icount_base(&base.join("2")) < icount_base(&base.join("1")));
}

#[test]
fn bad_window_options_are_clear_errors() {
    let (qemu, _reaper) = free_qemu("bad-windows", "");
    let dir = capture_dir("bad-windows").join("w");
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    let attach = |extra: &[&str]| {
        Command::new(collector())
            .args(["attach", "--pid", &qemu.pid().to_string(), "--out"])
            .arg(&dir)
            .args(extra)
            .output()
            .unwrap()
    };
    for (args, says) in [
        (
            &["--events", "mem,cache"][..],
            "unknown event kind \"cache\"",
        ),
        (&["--events", ""][..], "events"),
        (&["--duration", "0"][..], "longer than 0"),
        (&["--duration", "soon"][..], "not a duration"),
    ] {
        let o = attach(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // Nothing attached meanwhile: still free.
    assert_eq!(shm_read(qemu.pid(), STATE, 4), WAITING);

    // --append to a capture of other events.
    window(
        qemu.pid(),
        &dir,
        &["--events", "mmio", "--duration", "200ms"],
    );
    let o = attach(&["--append", "--events", "mem"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("recorded events mmio, this attach asks for mem"),
        "{err}"
    );
    assert_eq!(capture_json(&dir)["events"], "mmio");
    assert_runs_free(qemu.pid());
}

/// `idle=lazy`: no callback at all while detached, so the shim notices an
/// attach only when a vCPU translates code or goes idle. m3loop's busy loop
/// does neither: the window records nothing, and the collector says why.
#[test]
fn idle_lazy_waits_for_a_translation_and_says_so() {
    let (qemu, _reaper) = free_qemu("idle-lazy", ",idle=lazy");
    // Once the guest is in its loop (its first blocks are translations).
    std::thread::sleep(Duration::from_secs(1));
    let dir = capture_dir("idle-lazy").join("w");
    let stderr = window(qemu.pid(), &dir, &["--duration", "3s"]);
    assert!(
        stderr.contains("has not started recording 2 s after the attach"),
        "{stderr}"
    );
    let j = capture_json(&dir);
    assert_eq!(j["tables"]["mem"], 0);
    assert_eq!(j["window"]["instrumented_at"], serde_json::Value::Null);
    assert_runs_free(qemu.pid());
}

/// The address of m3loop-0's SysTick CVR load, its one MMIO instruction in
/// the loop, found by a window of MMIO accesses on a QEMU of its own.
fn cvr_load_pc(test: &str) -> u64 {
    let (probe, _r1) = free_qemu(&format!("{test}-probe"), "");
    let dir = capture_dir(&format!("{test}-probe"));
    window(
        probe.pid(),
        &dir,
        &["--events", "mmio", "--duration", "300ms"],
    );
    let probe_mmio = table(&dir, "mmio").unwrap();
    let pcs: Vec<u64> = u64s(&probe_mmio, "pc")
        .into_iter()
        .zip(u64s(&probe_mmio, "paddr"))
        .filter(|&(_, paddr)| paddr == SYST_CVR)
        .map(|(pc, _)| pc)
        .collect();
    assert!(pcs.iter().all(|&p| p == pcs[0]), "one load instruction");
    pcs[0]
}

/// `attach --until-pc`: the shim stops the recording as the guest is about
/// to execute that instruction. m3loop-0, held from its first instruction
/// (`wait=on`), stopped at its SysTick CVR load (whose address an earlier
/// window of another QEMU found): the capture holds exactly the accesses
/// before the first one (tests/firmware/README.md: the two SysTick setup
/// stores at instructions 3 and 5, iteration 0's four RAM accesses at 11,
/// 12, 13 and 15), and QEMU runs on, free.
#[test]
fn until_pc_ends_the_window_before_that_instruction() {
    let base = capture_dir("until-pc");
    let cvr_load = cvr_load_pc("until-pc");

    let (qemu, _r2) = free_qemu("until-pc", ",wait=on");
    let dir = base.join("w");
    let pc = format!("{cvr_load:#x}");
    window(
        qemu.pid(),
        &dir,
        &["--events", "mem,mmio", "--until-pc", &pc],
    );
    let j = capture_json(&dir);
    assert_eq!(j["end"], "window_ended");
    let rows: Vec<(u64, u64, String)> = mem_rows(&dir)
        .into_iter()
        .map(|(icount, paddr, ty, _)| (icount, paddr, ty))
        .collect();
    let before: Vec<_> = m3loop0_accesses().take_while(|a| a.0 < 17).collect();
    assert_eq!(
        rows, before,
        "the accesses before the first CVR load's instruction, 17"
    );
    assert_eq!(j["tables"]["mmio"], 2);
    assert_runs_free(qemu.pid());

    // Not an address: a clear error.
    let err = refused_attach(qemu.pid(), &base.join("bad"), &["--until-pc", "main"]);
    assert!(err.contains("'main' is not an address"), "{err}");
}

/// `attach --until-device NAME` (with `--qmp`, for QEMU's memory map): the
/// shim stops the recording after the first access to the device. On
/// m3loop-0, running, that is the first SysTick CVR load the window sees:
/// the capture ends with it, after at most its iteration's four RAM
/// accesses, exactly in the firmware's order.
#[test]
fn until_device_ends_the_window_after_its_first_access() {
    let base = capture_dir("until-device");
    std::fs::create_dir_all(&base).unwrap();
    let sock = base.join("qmp.sock");
    let qmp_option = format!("unix:{},server=on,wait=off", sock.display());
    let (qemu, _reaper) = free_qemu_with("until-device", "", &["-qmp", &qmp_option]);
    std::thread::sleep(Duration::from_millis(300));
    let dir = base.join("w");
    let qmp = sock.display().to_string();
    let stderr = window(
        qemu.pid(),
        &dir,
        &[
            "--qmp",
            &qmp,
            "--events",
            "mem,mmio",
            "--until-device",
            "systick",
        ],
    );
    assert!(!stderr.contains("without --qmp"), "{stderr}");
    assert_eq!(capture_json(&dir)["end"], "window_ended");
    let rows = mem_rows(&dir);
    let last = rows.last().unwrap();
    assert_eq!((last.1, last.2.as_str()), (SYST_CVR, "R"), "{rows:?}");
    assert!(rows.len() <= 5, "{rows:?}");
    // The accesses before it are its iteration's, in order.
    let offsets: Vec<u64> = rows.iter().map(|r| r.0 + 6 - last.0).collect();
    assert_eq!(offsets, ITERATION_ACCESSES[5 - rows.len()..].to_vec());
    assert_eq!(capture_json(&dir)["tables"]["mmio"], 1);
    assert_runs_free(qemu.pid());

    // A name the map does not have, and no --qmp: clear errors.
    for (extra, says) in [
        (
            &["--qmp", &qmp, "--until-device", "uart9"][..],
            "no device named 'uart9'",
        ),
        (
            &["--until-device", "systick"][..],
            "--until-device needs --qmp",
        ),
    ] {
        let o = Command::new(collector())
            .args([
                "attach",
                "--pid",
                &qemu.pid().to_string(),
                "--overwrite",
                "--out",
            ])
            .arg(base.join("bad"))
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(says), "{err}");
    }
    assert_runs_free(qemu.pid());
}

/// `attach --until-icount N` and `--max-events N` on m3loop-0 held from its
/// first instruction (`wait=on`), so icount counts from it: the window is
/// exactly the guest's events before instruction N, or its first N
/// accesses (tests/firmware/README.md: the SysTick setup stores at 3 and 5,
/// then iteration n's accesses at 11 + 10n + {0, 1, 2, 4, 6}, the last the
/// CVR load), or its first N instructions; the collector then detaches and
/// QEMU runs on.
#[test]
fn until_icount_and_max_events_end_the_window_exactly() {
    let base = capture_dir("window-ends");
    // The guest's accesses, in order: (icount, paddr, type).
    let rows_of = |dir: &Path| -> Vec<(u64, u64, String)> {
        mem_rows(dir)
            .into_iter()
            .map(|(i, a, t, _)| (i, a, t))
            .collect()
    };
    let held = |name: &str| free_qemu(&format!("window-ends-{name}"), ",wait=on");

    // Every table cut at instruction 1000.
    let (qemu, _r1) = held("icount");
    let dir = base.join("icount");
    window(
        qemu.pid(),
        &dir,
        &["--events", "mem,mmio,insn", "--until-icount", "1000"],
    );
    let j = capture_json(&dir);
    assert_eq!(j["end"], "window_ended");
    assert_eq!(j["window"]["end_icount"], serde_json::json!([1000]));
    assert_eq!(j["window"]["first_icount"], serde_json::json!([0]));
    let want: Vec<_> = m3loop0_accesses().take_while(|a| a.0 < 1000).collect();
    assert_eq!(want.len(), 2 + 99 * 5);
    assert_eq!(rows_of(&dir), want);
    assert_eq!(j["tables"]["mmio"], 2 + 99);
    let mut insn = u64s(&table(&dir, "insn").unwrap(), "icount");
    insn.sort_unstable();
    assert_eq!(
        insn,
        (0..1000).collect::<Vec<u64>>(),
        "instructions 0..1000, each once"
    );
    assert!(stat(&dir, "events_after_window", Some(0)) > 0);
    assert_runs_free(qemu.pid());

    // The first 100 accesses: iteration 19 cut after its third.
    let (qemu, _r2) = held("accesses");
    let dir = base.join("accesses");
    window(
        qemu.pid(),
        &dir,
        &["--events", "mem,mmio", "--max-events", "100"],
    );
    let j = capture_json(&dir);
    assert_eq!(j["end"], "window_ended");
    let want: Vec<_> = m3loop0_accesses().take(100).collect();
    assert_eq!(want.last().unwrap().0, 11 + 190 + 2);
    assert_eq!(rows_of(&dir), want);
    assert_eq!(j["tables"]["mmio"], 2 + 19);
    assert_eq!(j["window"]["end_icount"], serde_json::json!([11 + 190 + 4]));
    assert_runs_free(qemu.pid());

    // The first 1234 instructions.
    let (qemu, _r3) = held("insns");
    let dir = base.join("insns");
    window(
        qemu.pid(),
        &dir,
        &["--events", "insn", "--max-events", "1234"],
    );
    let mut insn = u64s(&table(&dir, "insn").unwrap(), "icount");
    insn.sort_unstable();
    assert_eq!(insn, (0..1234).collect::<Vec<u64>>());
    assert_eq!(
        capture_json(&dir)["window"]["end_icount"],
        serde_json::json!([1234])
    );

    // What cannot be cut exactly, and bad numbers: clear errors.
    for (args, says) in [
        (
            &["--events", "mem,insn", "--max-events", "5"][..],
            "--max-events needs one kind of event",
        ),
        (
            &["--max-events", "0"][..],
            "invalid value '0' for '--max-events <N>'",
        ),
        (
            &["--until-icount", "soon"][..],
            "'soon' is not an instruction index",
        ),
    ] {
        let err = refused_attach(qemu.pid(), &base.join("bad"), args);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_runs_free(qemu.pid());
}

/// `attach --from-pc ADDR` and `--from-device NAME`: QEMU runs
/// instrumented, recording nothing, until a vCPU meets the trigger; the
/// window starts with it. m3loop-0 held from its first instruction
/// (`wait=on`), from its SysTick CVR load: the first is instruction 17
/// (tests/firmware/README.md), so the first 11 accesses are that load and
/// the next two iterations'. Running, from the first SysTick access the
/// window sees: it is a CVR load, and the rows go on from it in the
/// firmware's order, the stored counter going up by one per iteration.
#[test]
fn from_pc_and_from_device_start_the_window_at_the_trigger() {
    let cvr_load = cvr_load_pc("from-pc");
    let base = capture_dir("from-trigger");

    let (qemu, _r1) = free_qemu("from-pc", ",wait=on");
    let dir = base.join("pc");
    let pc = format!("{cvr_load:#x}");
    window(
        qemu.pid(),
        &dir,
        &[
            "--events",
            "mem,mmio",
            "--from-pc",
            &pc,
            "--max-events",
            "11",
        ],
    );
    let rows: Vec<(u64, u64, String)> = mem_rows(&dir)
        .into_iter()
        .map(|(icount, paddr, ty, _)| (icount, paddr, ty))
        .collect();
    let want: Vec<_> = m3loop0_accesses()
        .skip_while(|a| a.0 < 17)
        .take(11)
        .collect();
    assert_eq!(rows, want);
    let j = capture_json(&dir);
    assert_eq!(j["window"]["first_icount"], serde_json::json!([17]));
    let (attached, started) = (
        j["window"]["attached_at"].as_f64().unwrap(),
        j["window"]["started_at"].as_f64().unwrap(),
    );
    assert!(attached <= started, "{}", j["window"]);
    assert_runs_free(qemu.pid());

    // Running, from the first access to SysTick (needs --qmp).
    let sock = base.join("qmp.sock");
    let qmp_option = format!("unix:{},server=on,wait=off", sock.display());
    let (qemu, _r2) = free_qemu_with("from-device", "", &["-qmp", &qmp_option]);
    std::thread::sleep(Duration::from_millis(300));
    let dir = base.join("device");
    let qmp = sock.display().to_string();
    window(
        qemu.pid(),
        &dir,
        &[
            "--qmp",
            &qmp,
            "--events",
            "mem,mmio",
            "--from-device",
            "systick",
            "--max-events",
            "11",
        ],
    );
    let rows = mem_rows(&dir);
    assert_eq!(rows.len(), 11);
    let c = rows[0].0;
    assert_eq!((rows[0].1, rows[0].2.as_str()), (SYST_CVR, "R"), "{rows:?}");
    let offsets: Vec<(u64, u64, &str)> =
        rows.iter().map(|r| (r.0 - c, r.1, r.2.as_str())).collect();
    let mut want = vec![(0, SYST_CVR, "R")];
    for k in 0..2 {
        let s = 4 + 10 * k;
        want.extend([
            (s, BUF0, "W"),
            (s + 1, BUF0 + 4, "W"),
            (s + 2, BUF0, "R"),
            (s + 4, BUF0 + 4, "R"),
            (s + 6, SYST_CVR, "R"),
        ]);
    }
    assert_eq!(offsets, want);
    let stored: Vec<u64> = rows
        .iter()
        .filter(|r| r.1 == BUF0 && r.2 == "W")
        .map(|r| r.3)
        .collect();
    assert_eq!(stored[1], stored[0] + 1, "consecutive iterations");
    assert_runs_free(qemu.pid());

    // Without --qmp, or a device the map does not have: clear errors.
    for (extra, says) in [
        (
            &["--from-device", "systick"][..],
            "--from-device needs --qmp",
        ),
        (
            &["--qmp", &qmp, "--from-device", "uart9"][..],
            "no device named 'uart9'",
        ),
        (&["--from-pc", "main"][..], "'main' is not an address"),
    ] {
        let err = refused_attach(qemu.pid(), &base.join("bad"), extra);
        assert!(err.contains(says), "{extra:?}: {err}");
    }
    assert_runs_free(qemu.pid());
}

/// `attach --overflow`: what a full ring does is the attaching collector's
/// choice, the shim's option its default. With the smallest ring, a window
/// with `drop` loses events (QEMU never waits) and says so; the next, with
/// the shim's `block`, loses none and holds every access of its span.
#[test]
fn overflow_is_chosen_per_window() {
    let (qemu, _reaper) = free_qemu("overflow", ",ring_kib=8,meta_kib=8");
    let base = capture_dir("overflow");
    let drop = base.join("drop");
    window(
        qemu.pid(),
        &drop,
        &[
            "--events",
            "mem,mmio",
            "--overflow",
            "drop",
            "--duration",
            "500ms",
        ],
    );
    let j = capture_json(&drop);
    assert_eq!(j["overflow"], "drop");
    assert!(j["events_lost"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(
        stat(&drop, "full_ring_waits", Some(0)),
        0,
        "QEMU never waited"
    );

    let block = base.join("block");
    window(
        qemu.pid(),
        &block,
        &["--events", "mem,mmio", "--duration", "500ms"],
    );
    let j = capture_json(&block);
    assert_eq!(j["overflow"], "block");
    assert_eq!(j["events_lost"], 0);
    assert_exact_iterations(&block);

    let err = refused_attach(qemu.pid(), &base.join("bad"), &["--overflow", "later"]);
    assert!(err.contains("'later': block or drop"), "{err}");
    assert_runs_free(qemu.pid());
}
