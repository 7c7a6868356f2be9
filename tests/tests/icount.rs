//! The instruction count stays exact when a translated block stops in the
//! middle. The shim counts per block (the block's length when it starts,
//! then takes off what a block that stopped early did not run: see its
//! `Score`); tests/firmware/m3fault has two such blocks: its first stops
//! after a store to the System Control Block (QEMU ends the block there),
//! its second at an SDIV by zero that traps to the HardFault handler, which
//! steps over it. 23 instructions start, counted once each (QEMU's own
//! count with an exec callback per instruction agrees: 23).

use trace_tests::*;

/// (icount, pc, store, address) of every data access, in order
/// (m3fault.S lists them).
const ACCESSES: [(u64, u64, bool, u64); 6] = [
    (3, 0x1c, true, 0xe000_ed14),   // CCR = DIV_0_TRP | STKALIGN
    (8, 0x2a, true, 0x2000_0000),   // the last store before the fault
    (11, 0x4a, false, 0x2000_fff8), // handler: the stacked PC...
    (13, 0x4e, true, 0x2000_fff8),  // ... stepped over the SDIV
    (16, 0x34, true, 0x2000_0004),  // after the handler
    (18, 0x38, true, 0x2000_0008),
];

fn check_accesses(dir: &std::path::Path) {
    let mem = accesses(dir, "mem").unwrap();
    let got: Vec<_> = mem
        .iter()
        .map(|a| (a.icount, a.pc, a.store, a.vaddr))
        .collect();
    assert_eq!(got, ACCESSES);
    // The stacked PC is the SDIV's; the handler writes back the next one.
    assert_eq!((mem[2].value, mem[3].value), (Some(0x2e), Some(0x32)));
    assert_eq!(stat(dir, "final_icount", Some(0)), 23);
}

/// Without `insn`, a conditional callback takes off what a block did not run.
#[test]
fn memory_accesses_keep_their_icount_after_a_block_stops_early() {
    let dir = capture_dir("icount-mem");
    run_capture(
        &dir,
        &["--events", "mem,mmio"],
        &lm3s6965evb_qemu("m3fault.elf"),
    );
    check_accesses(&dir);
}

/// With `insn`, the block callback does; `block_exec` shows both early stops.
#[test]
fn every_instruction_counts_once_when_blocks_stop_early() {
    let dir = capture_dir("icount-insn");
    run_capture(
        &dir,
        &["--events", "mem,mmio,insn"],
        &lm3s6965evb_qemu("m3fault.elf"),
    );
    check_accesses(&dir);

    let blocks = table(&dir, "block_exec").unwrap();
    let code = table(&dir, "code").unwrap();
    let length = |block: u64| u64s(&code, "block").iter().filter(|&&b| b == block).count() as u64;
    let ran: Vec<(u64, u64, u64)> = u64s(&blocks, "icount")
        .into_iter()
        .zip(
            blocks
                .column("insns")
                .unwrap()
                .u32()
                .unwrap()
                .into_no_null_iter(),
        )
        .zip(u64s(&blocks, "block"))
        .map(|((icount, insns), block)| (icount, insns as u64, length(block)))
        .collect();
    // (first icount, instructions run, block length): the first block stops
    // after the CCR store, the second at the SDIV (started, counted).
    assert_eq!(ran, vec![(0, 4, 19), (4, 7, 15), (11, 4, 4), (15, 8, 8)]);

    let pcs = u64s(&table(&dir, "insn").unwrap(), "pc");
    let expected: Vec<u64> = [0x10, 0x14, 0x18, 0x1c] // movw movt movw str(CCR)
        .into_iter()
        .chain([0x1e, 0x22, 0x26, 0x28, 0x2a, 0x2c, 0x2e]) // ... sdiv (traps)
        .chain([0x4a, 0x4c, 0x4e, 0x50]) // HardFault handler
        .chain([0x32, 0x34, 0x36, 0x38, 0x3a, 0x3c, 0x40, 0x44]) // ... bkpt (exit)
        .collect();
    assert_eq!(pcs, expected);
}
