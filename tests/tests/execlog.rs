//! `trace-query execlog` prints what QEMU's own execlog plugin prints:
//! QEMU's `contrib/plugins/execlog.c`, built from the installed QEMU's
//! source (scripts/qemu-execlog.sh), runs in the same QEMU run as the
//! capture, and every line is compared: vCPU, pc, opcode, disassembly, and
//! each access with its physical address, in the same order, the last
//! instruction included. Device names are ours (from QEMU's memory map),
//! where QEMU's plugin API says `anonXXXXXXXX`: only there may they differ.

use std::process::Command;
use trace_tests::*;

/// Captures `qemu` (mem, mmio and insn) with QEMU's execlog loaded in the
/// same run; returns QEMU's log and `trace-query execlog`'s output.
fn both_logs(name: &str, qemu: &[String]) -> (String, String) {
    let dir = capture_dir(&format!("execlog-{name}"));
    let log = dir.with_extension("qemu-execlog.log");
    let _ = std::fs::remove_file(&log);
    let mut qemu = qemu.to_vec();
    qemu.extend([
        "-plugin".into(),
        qemu_plugin("execlog").display().to_string(),
        "-d".into(),
        "plugin".into(),
        "-D".into(),
        log.display().to_string(),
    ]);
    run_capture(&dir, &["--events", "mem,mmio,insn"], &qemu);
    let ours = Command::new(query())
        .args(["execlog", "--trace"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        ours.status.success(),
        "{}",
        String::from_utf8_lossy(&ours.stderr)
    );
    (
        std::fs::read_to_string(&log).unwrap(),
        String::from_utf8(ours.stdout).unwrap(),
    )
}

/// Checks `ours` line for line against QEMU's `theirs` (both per vCPU, in
/// order): equal but for the devices QEMU cannot name.
fn assert_same(what: &str, theirs: &[&str], ours: &[&str]) {
    assert_eq!(theirs.len(), ours.len(), "{what}: number of lines");
    for (i, (t, o)) in theirs.iter().zip(ours).enumerate() {
        assert!(
            same_execlog_line(t, o),
            "{what}, line {}:\n QEMU: {t}\n ours: {o}",
            i + 1
        );
    }
}

/// A Cortex-M3 firmware of Thumb-2 IT blocks of every length, pattern and
/// condition (tests/firmware/m3it/m3it.S), run under four sets of flags.
/// Capstone keeps an IT instruction's state in its handle: unless cleared,
/// the members' text would be IT-aware ("addne r5, #1") where QEMU's,
/// from a fresh handle, is not ("adds r5, #1").
#[test]
fn thumb_it_blocks_match_qemus_execlog() {
    let (theirs, ours) = both_logs("m3it", &lm3s6965evb_qemu("m3it.elf"));
    let [theirs, ours] = [&theirs, &ours].map(|s| s.lines().collect::<Vec<_>>());
    // 21 instructions of reset_handler, 4 passes of the 911 of `blocks`
    // (214 IT instructions, 696 members, bx lr).
    assert_eq!(theirs.len(), 3665);
    let its = |lines: &[&str]| lines.iter().filter(|l| l.contains(", \"it")).count();
    assert_eq!(its(&theirs), 4 * 214);
    assert_eq!(its(&ours), 4 * 214);
    assert_same("m3it", &theirs, &ours);
}

/// The records of QEMU's log. QEMU's execlog writes a line and its newline
/// with two calls, so with vCPUs on two threads a line may come between
/// another and its newline: the records are cut where one starts (a
/// one-digit vCPU index, then `, 0x<pc>, 0x<opcode>, "`), newlines aside.
fn records(log: &str) -> Vec<String> {
    let text: String = log.chars().filter(|&c| c != '\n').collect();
    let bytes = text.as_bytes();
    let starts_at = |i: usize| -> bool {
        let hex_then = |mut j: usize, end: &[u8]| -> Option<usize> {
            let from = j;
            while j < bytes.len() && bytes[j].is_ascii_hexdigit() {
                j += 1;
            }
            (j > from && bytes[j..].starts_with(end)).then_some(j + end.len())
        };
        bytes[i].is_ascii_digit()
            && bytes[i + 1..].starts_with(b", 0x")
            && hex_then(i + 5, b", 0x")
                .and_then(|j| hex_then(j, b", \""))
                .is_some()
    };
    let mut starts: Vec<usize> = (0..bytes.len()).filter(|&i| starts_at(i)).collect();
    starts.push(bytes.len());
    starts
        .windows(2)
        .map(|w| text[w[0]..w[1]].to_string())
        .collect()
}

/// The lines of vCPU `v`, in order.
fn of_vcpu(lines: &[String], v: usize) -> Vec<&str> {
    let prefix = format!("{v}, ");
    lines
        .iter()
        .filter(|l| l.starts_with(&prefix))
        .map(String::as_str)
        .collect()
}

/// AArch64 on two vCPUs (tests/firmware/a64), each on its own thread:
/// each vCPU's lines in order, with the accesses to RAM and to the GIC.
#[test]
fn aarch64_matches_qemus_execlog() {
    let (theirs, ours) = both_logs("a64", &a64_qemu());
    let theirs = records(&theirs);
    let ours: Vec<String> = ours.lines().map(str::to_string).collect();
    assert_eq!(theirs.len(), ours.len());
    for v in 0..2 {
        let (t, o) = (of_vcpu(&theirs, v), of_vcpu(&ours, v));
        assert!(!t.is_empty(), "vcpu {v} ran nothing");
        assert_same(&format!("a64 vcpu {v}"), &t, &o);
    }
}

#[test]
fn records_are_cut_where_a_line_came_between_another_and_its_newline() {
    let log = "0, 0x10, 0x1, \"a\"\n1, 0x20, 0x2, \"b\", store, 0x30, RAM0, 0x11, 0x3, \"c\"\n\n1, 0x24, 0x4, \"d\", load, 0x8, pl011\n";
    assert_eq!(
        records(log),
        [
            "0, 0x10, 0x1, \"a\"",
            "1, 0x20, 0x2, \"b\", store, 0x30, RAM",
            "0, 0x11, 0x3, \"c\"",
            "1, 0x24, 0x4, \"d\", load, 0x8, pl011"
        ]
    );
}
