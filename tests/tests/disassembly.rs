//! The `code` table's disassembly is QEMU's text (`qemu_plugin_insn_disas`)
//! whether the shim keeps its own capstone handles (`--disas fast`, the
//! default: QEMU is asked once per block and where its modes disagree; see
//! shim/src/disas.rs) or asks QEMU for every instruction (`--disas qemu`).

use std::collections::BTreeSet;
use trace_tests::*;

/// Captures `qemu` both ways; returns the rows of the fast one, checked
/// equal to the other's but for `racy` (instructions translated or not
/// depending on how the vCPUs' threads interleave), whose text must be
/// the one given wherever they appear.
fn both_ways(
    name: &str,
    qemu: &[String],
    racy: &[(u64, &str)],
) -> BTreeSet<(u64, Vec<u8>, String)> {
    let fast = capture_dir(&format!("disas-{name}-fast"));
    run_capture(&fast, &["--events", "insn"], qemu);
    let slow = capture_dir(&format!("disas-{name}-qemu"));
    run_capture(&slow, &["--events", "insn", "--disas", "qemu"], qemu);
    let [mut rows, mut other] = [&fast, &slow].map(|capture| code_rows(capture));
    for rows in [&mut rows, &mut other] {
        rows.retain(|(pc, _, text)| match racy.iter().find(|r| r.0 == *pc) {
            Some(&(_, want)) => {
                assert_eq!(text, want, "{name}: {pc:#x}");
                false
            }
            None => true,
        });
    }
    assert_eq!(rows, other, "{name}: fast and qemu disagree");
    rows
}

fn text_at(rows: &BTreeSet<(u64, Vec<u8>, String)>, pc: u64) -> &str {
    let mut at = rows.iter().filter(|r| r.0 == pc);
    let row = at
        .next()
        .unwrap_or_else(|| panic!("no instruction at {pc:#x}"));
    assert!(at.next().is_none(), "two instructions at {pc:#x}");
    &row.2
}

/// Thumb-2 on an M-profile core (capstone's T32 with M-class, in QEMU's
/// choice).
#[test]
fn cortex_m3_firmware_has_qemus_text() {
    let rows = both_ways("m3", &m3_qemu(), &[]);
    assert_eq!(rows.len(), 99);
    assert_eq!(text_at(&rows, 0x08), "b.w #0xc");
    assert_eq!(text_at(&rows, 0xf8), "bkpt #0xab");
}

/// Thumb-2 IT blocks of every length, pattern and condition
/// (tests/firmware/m3it): each member has QEMU's text, which knows nothing
/// of the IT instruction before it (capstone, left to itself, would carry
/// its state into the members: "addne r5, #1").
#[test]
fn thumb_it_block_members_have_qemus_text() {
    let rows = both_ways("m3it", &lm3s6965evb_qemu("m3it.elf"), &[]);
    // reset_handler's 21 instructions and `blocks`' 911.
    assert_eq!(rows.len(), 932);
    assert_eq!(text_at(&rows, 0x48), "it eq");
    assert_eq!(text_at(&rows, 0x4a), "adds r5, #1");
    assert_eq!(text_at(&rows, 0x58), "add.w r6, r6, #2");
    assert_eq!(text_at(&rows, 0x8d0), "it al");
    assert_eq!(text_at(&rows, 0x8f0), "str r5, [r4, #4]");
}

/// A64 on two vCPUs, each translating on its own thread.
#[test]
fn aarch64_firmware_has_qemus_text() {
    // vCPU 0 waits for vCPU 1's interrupt in a WFI loop, which it may never
    // enter (the interrupt already pending), so never translate.
    let rows = both_ways("a64", &a64_qemu(), &[(0x4008_00b4, "wfi ")]);
    assert_eq!(rows.len(), 96);
    // start.S; PC-relative operands as absolute addresses, as QEMU prints.
    assert_eq!(text_at(&rows, 0x4008_0000), "msr daifset, #0xf");
    assert_eq!(text_at(&rows, 0x4008_000c), "cbnz x0, #0x40080038");
    assert_eq!(text_at(&rows, 0x4008_0010), "adrp x1, #0x40118000");
}
