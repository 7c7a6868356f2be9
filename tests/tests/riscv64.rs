//! RISC-V 64 guests (issue 18): `qemu-system-riscv64 -M virt` booting
//! Debian trixie's riscv64 kernel with a busybox initramfs whose /init runs
//! a small workload and powers off (scripts/riscv-guest.sh fetches and
//! caches them). A boot is QEMU's reset code in its MROM (0x1000), OpenSBI
//! (QEMU's default firmware, in M-mode), then the kernel in S-mode
//! (physical addresses until it turns the MMU on, then 0xffffffff8...),
//! then user space (U-mode), powered off through SBI.
//!
//! The captures are checked against QEMU itself, in the same QEMU run, as
//! tests/tests/x86_64.rs does for x86: QEMU's execlog plugin (every
//! instruction, its accesses, and `satp`, from the reset vector into the
//! kernel's virtual addresses), QEMU's mem plugin (every access of that
//! window with its value; how many accesses the whole boot made, RAM and
//! I/O apart), and QEMU's monitor (`satp`, and the memory map once the
//! guest has powered off). RISC-V has no disassembly mode in the shim:
//! every instruction's text is QEMU's own call (its RISC-V disassembler,
//! not capstone), which the execlog comparison checks line for line.

use std::path::Path;
use trace_format::memory_map::{versions, MemoryMap};
use trace_tests::guest::*;
use trace_tests::*;

/// The QEMU command line of the guest, tagged with `marker` (`-name`),
/// with a QMP socket for the test at `qmp` if any, then `extra`.
fn riscv_qemu(marker: &str, qmp: Option<&Path>, extra: &[String]) -> Vec<String> {
    LinuxGuest {
        qemu: "qemu-system-riscv64",
        board: &["-M", "virt", "-m", "512", "-no-reboot"],
        console: "ttyS0",
        files: guest("riscv-guest.sh"),
        kernel: "Image",
    }
    .command(marker, qmp, extra)
}

/// `satp` in `info registers`' output (a line ` satp     a000000000081fcb`).
fn satp_of(registers: &str) -> u64 {
    let hex = registers
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("satp"))
                .then(|| words.next())
                .flatten()
        })
        .unwrap_or_else(|| panic!("no satp in {registers}"));
    u64::from_str_radix(hex, 16).unwrap()
}

/// satp's fields (the privileged spec): MODE (8 Sv39, 9 Sv48, 10 Sv57),
/// ASID, and the PPN of the root page table.
fn satp_mode(satp: u64) -> u64 {
    satp >> 60
}
fn satp_asid(satp: u64) -> u64 {
    (satp >> 44) & 0xffff
}

/// `trace-query execlog` equals QEMU's own execlog plugin (contrib/plugins/
/// execlog.c, `reg=satp`), run in the same QEMU, line for line, from the
/// reset vector (QEMU's reset code in the MROM at 0x1000) through OpenSBI
/// (M-mode, its `mret` into the kernel) and the kernel's first code at
/// physical addresses into its virtual addresses: every instruction's
/// vCPU, pc, opcode (compressed and not), QEMU's text (its RISC-V
/// disassembler, asked by the shim for every instruction), and each
/// access's type and physical address. The test ends QEMU (QMP `quit`)
/// once its log holds 200k lines from the kernel's first instruction at
/// 0xffffffff8... on (about 14M instructions, OpenSBI's most of them).
///
/// Every `mem` row's `asid` is the satp QEMU's execlog read before that
/// instruction (it reports each change: the kernel probes the MMU's modes,
/// then its trampoline, early and final page tables), and the last one is
/// the satp that `info registers` shows once QEMU is stopped. And every
/// `mem` row, in order, is the access QEMU's mem plugin
/// (`print-accesses=true`, in the same run) printed: pc, virtual and
/// physical address, size, load or store, and the value.
#[test]
fn execlog_satp_and_accesses_match_qemus_from_reset_into_the_kernel() {
    let ExeclogRun {
        dir,
        log,
        ours,
        registers,
        map,
    } = execlog_run("riscv-execlog", riscv_qemu, "satp");
    let satp_at_stop = satp_of(&registers);

    let (mut kernel, mut compressed, mut mrets) = (0u64, 0u64, 0u64);
    let window = compare_execlogs(&log, &ours, "satp", &map, |insn, _| {
        let mut fields = insn.splitn(4, ", ");
        let (_, pc, opcode) = (
            fields.next(),
            fields.next().unwrap(),
            fields.next().unwrap(),
        );
        let opcode = u32::from_str_radix(opcode.trim_start_matches("0x"), 16).unwrap();
        kernel += u64::from(pc.starts_with("0xffffffff8"));
        // A compressed instruction's low two bits are not 0b11.
        compressed += u64::from(opcode & 3 != 3);
        mrets += u64::from(insn.contains(", \"mret"));
    });
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&ours);
    let n = window.lines;
    // QEMU's reset code in the MROM (hw/riscv/boot.c), its first
    // instruction.
    assert_eq!(
        window.first.as_deref(),
        Some("0, 0x1000, 0x297, \"auipc                   t0,0                    # 0x1000\"")
    );
    // QEMU was stopped once its log had 200,000 kernel lines; the window
    // compared ends where both logs do (a few thousand lines earlier when
    // the machine is busy), so it has at least half as many.
    assert!(
        n > 10_000_000 && kernel >= 100_000,
        "{n} lines, {kernel} of the kernel"
    );
    assert!(compressed > 1_000_000, "{compressed} compressed");
    // OpenSBI enters the kernel in S-mode with an `mret`.
    assert!(mrets >= 1, "no mret");
    // The kernel turned the MMU on: satp's last value is a page table's,
    // with one of the MMU's modes, ASID 0 (the kernel's).
    let (_, last) = *window.reg_changes.last().unwrap();
    assert!((8..=10).contains(&satp_mode(last)), "{last:#x}");
    assert_eq!(satp_asid(last), 0, "{last:#x}");

    // The ASID is satp: the value QEMU's execlog read before each access's
    // instruction (0 from reset, then each change it reported), the last
    // one `info registers`'; and every access, in order, as QEMU's mem
    // plugin printed it.
    check_window_accesses(&dir, &window, satp_at_stop);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The workload's line on the console: `seq 1 2000` written to a tmpfs
/// file, counted and checksummed in user space (`seq 1 2000 | md5sum`).
const WORKLOAD_LINE: &str =
    "trace-collector riscv guest: riscv64 2000 lines, md5 ea4d0a24dabcaa11f9aa979b872d162b";

/// The whole boot, to the guest's own `poweroff -f`, captured with `mem`
/// and `mmio`, with QEMU's mem plugin (tests/tcg/plugins/mem.c,
/// `callback=true,haddr=true`) counting in the same run; QEMU is kept
/// (`-no-shutdown`) so that its monitor can be asked about the end state.
///
/// - `mem` holds exactly as many rows as QEMU's plugin counted accesses, and
///   `mmio` (and `mem`'s `io` rows) as many as it counted I/O ones; nothing
///   lost.
/// - `asid` is satp: 0 (bare) until the kernel turns the MMU on; then every
///   value has one MMU mode; until user space, the kernel's own two page
///   tables with ASID 0 (early, then swapper_pg_dir) and init's, the first
///   user-space access's; the user-space accesses (pc below RAM, after the
///   kernel started) carry other satps than the kernel's, at least two (init
///   and its children), each with an ASID of its own; the last access carries the satp that
///   `info registers` shows after the power-off, that of the process that
///   powered off.
/// - `mmio`: every row's address is an I/O region of QEMU's memory map read
///   after the boot, whose name is the row's `region` and (or its short
///   name) `device`; the virt machine maps all of them when it is created,
///   so mtree.txt holds one version; the devices are the UART, PLIC,
///   ACLINT, RTC, PCIe ECAM and the test device; the bytes written to the
///   UART's data register hold the workload's line, and the power-off is
///   OpenSBI's read of the test device, then its "pass" write.
#[test]
fn boot_counts_satp_and_mmio_match_qemus() {
    let Boot {
        dir,
        ram,
        io,
        registers,
        mtree,
    } = boot("riscv-boot", riscv_qemu, &[], WORKLOAD_LINE);
    let satp_at_poweroff = satp_of(&registers);
    let map_after = MemoryMap::parse(&mtree).unwrap();
    assert!(ram > 100_000_000 && io > 1_000, "{ram} RAM, {io} I/O");
    assert_rows_are_qemus(&dir, ram, io);
    assert_eq!(stat(&dir, "events", Some(0)), ram + io);
    assert_eq!(query_u64s(&dir, "select count(*) from mem where io"), [io]);

    // ASIDs.
    let kernel_start = query_u64s(
        &dir,
        "select min(icount) from mem where pc >= 0xffffffff80000000",
    )[0];
    // Bare (satp 0) until then: the MROM, OpenSBI, the kernel's physical
    // entry.
    assert_eq!(
        query_u64s(
            &dir,
            &format!("select distinct asid from mem where icount < {kernel_start}")
        ),
        [0]
    );
    // User space: code below RAM (0x80000000) once the kernel runs (the
    // MROM at 0x1000 runs only from reset).
    let user = format!("icount > {kernel_start} and pc < 0x80000000");
    let user_asids = query_u64s(&dir, &format!("select distinct asid from mem where {user}"));
    let first_user = query_u64s(&dir, &format!("select min(icount) from mem where {user}"))[0];
    // Before user space: the kernel's own page tables (ASID 0; the early
    // one, then swapper_pg_dir), and, as it execs init, init's.
    let before_user = query_u64s(
        &dir,
        &format!(
            "select distinct asid from mem where icount >= {kernel_start} \
             and icount < {first_user} order by asid"
        ),
    );
    let first_user_asid = query_u64s(
        &dir,
        &format!("select asid from mem where icount = {first_user} limit 1"),
    )[0];
    let (kernel_asids, processes): (Vec<u64>, Vec<u64>) =
        before_user.iter().partition(|&&a| satp_asid(a) == 0);
    assert_eq!(kernel_asids.len(), 2, "{before_user:x?}");
    assert_eq!(processes, [first_user_asid], "{before_user:x?}");
    let first_kernel = query_u64s(
        &dir,
        &format!("select asid from mem where icount = {kernel_start} limit 1"),
    )[0];
    assert!(kernel_asids.contains(&first_kernel), "{first_kernel:#x}");
    let all = query_u64s(&dir, "select distinct asid from mem where asid <> 0");
    let mode = satp_mode(first_kernel);
    assert!((8..=10).contains(&mode), "{first_kernel:#x}");
    assert!(all.iter().all(|&a| satp_mode(a) == mode), "{all:x?}");
    assert!(user_asids.len() >= 2, "{user_asids:x?}");
    for a in &user_asids {
        assert!(!kernel_asids.contains(a), "{a:#x} in {kernel_asids:x?}");
        assert_ne!(satp_asid(*a), 0, "{a:#x}");
    }
    let user_asid_fields: std::collections::BTreeSet<u64> =
        user_asids.iter().map(|&a| satp_asid(a)).collect();
    assert_eq!(user_asid_fields.len(), user_asids.len(), "{user_asids:x?}");
    assert!(
        user_asids.contains(&satp_at_poweroff),
        "{satp_at_poweroff:x} not in {user_asids:x?}"
    );
    let last = query_u64s(
        &dir,
        "select asid from mem where icount in (select max(icount) from mem)",
    );
    assert!(
        !last.is_empty() && last.iter().all(|&a| a == satp_at_poweroff),
        "{last:x?}"
    );

    // MMIO: regions and devices against QEMU's memory map after the boot.
    let mtree_txt = std::fs::read_to_string(dir.join("mtree.txt")).unwrap();
    assert_eq!(versions(&mtree_txt).len(), 1, "mtree.txt's versions");
    let regions = mmio_regions_from_the_map(&dir, &map_after);
    let mmio = table(&dir, "mmio").unwrap();
    let paddr = mmio.column("paddr").unwrap().u64().unwrap().clone();
    let size = mmio.column("size").unwrap().u8().unwrap().clone();
    let ty = mmio.column("type").unwrap().str().unwrap().clone();
    let value = mmio.column("value").unwrap().u64().unwrap().clone();
    let icount = mmio.column("icount").unwrap().u64().unwrap().clone();
    let devices: std::collections::BTreeSet<&str> = regions.iter().map(String::as_str).collect();
    let mut uart = Vec::new();
    let mut test_device = Vec::new();
    for (i, name) in regions.iter().enumerate() {
        let a = paddr.get(i).unwrap();
        let write = ty.get(i) == Some("W");
        if a == 0x1000_0000 && write && size.get(i) == Some(1) {
            uart.push((icount.get(i).unwrap(), value.get(i).unwrap() as u8));
        }
        if name == "riscv.sifive.test" {
            test_device.push((write, size.get(i).unwrap(), value.get(i).unwrap()));
        }
    }
    let names: Vec<&str> = devices.into_iter().collect();
    assert_eq!(
        names,
        [
            "goldfish_rtc",
            "pcie-mmcfg-mmio",
            "riscv.aclint.mtimer",
            "riscv.aclint.swi",
            "riscv.sifive.plic",
            "riscv.sifive.test",
            "serial"
        ]
    );
    uart.sort();
    let console: Vec<u8> = uart.iter().map(|&(_, b)| b).collect();
    let console = String::from_utf8_lossy(&console);
    assert!(console.contains(WORKLOAD_LINE), "{console}");
    // OpenSBI's system reset: the test device read (it reads as 0), then
    // FINISHER_PASS (0x5555) written to it.
    assert_eq!(test_device, [(false, 4, 0), (true, 4, 0x5555)]);
    let _ = std::fs::remove_dir_all(&dir); // 800 MB
}
