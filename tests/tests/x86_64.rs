//! x86-64 guests (issue 18): `qemu-system-x86_64 -M q35` booting Debian
//! bookworm's amd64 kernel with a busybox initramfs whose /init runs a
//! small workload and powers off (scripts/x86-guest.sh fetches and caches
//! them). The kernel is the bzImage's payload, booted through its PVH entry
//! (QEMU's pvh.bin option ROM), so a boot is SeaBIOS (16- and 32-bit code),
//! then the kernel (32-bit PVH entry, then 64-bit), then user space.
//!
//! The captures are checked against QEMU itself, in the same QEMU run:
//! QEMU's execlog plugin (every instruction, its accesses, and CR3, from
//! the reset vector into the 64-bit kernel), QEMU's mem plugin (every
//! access of that window with its value; how many accesses the whole boot
//! made, RAM and I/O apart), and QEMU's monitor (CR3, and the memory map
//! once the guest has powered off); and the disassembly against QEMU's
//! own call, over a whole boot.

use std::path::Path;
use trace_format::memory_map::{versions, MemoryMap};
use trace_tests::guest::*;
use trace_tests::processes::{self, Reaper};
use trace_tests::*;

/// The QEMU command line of the guest, tagged with `marker` (`-name`),
/// with a QMP socket for the test at `qmp` if any, then `extra`.
fn x86_qemu(marker: &str, qmp: Option<&Path>, extra: &[String]) -> Vec<String> {
    LinuxGuest {
        qemu: "qemu-system-x86_64",
        board: &["-M", "q35", "-m", "256", "-no-reboot", "-vga", "none"],
        console: "ttyS0",
        files: guest("x86-guest.sh"),
        kernel: "vmlinux",
    }
    .command(marker, qmp, extra)
}

/// CR3 in `info registers`' output (`... CR3=0000000002a10000 ...`).
fn cr3_of(registers: &str) -> u64 {
    let at = registers
        .find("CR3=")
        .unwrap_or_else(|| panic!("no CR3 in {registers}"));
    let hex: String = registers[at + 4..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    u64::from_str_radix(&hex, 16).unwrap()
}

/// `trace-query execlog` equals QEMU's own execlog plugin (contrib/plugins/
/// execlog.c, `reg=cr3`), run in the same QEMU, line for line, from the
/// x86 reset vector (16-bit real mode: SeaBIOS, its hardware interrupts
/// and `int` calls) through 32-bit code (SeaBIOS, the PVH entry) into the
/// 64-bit kernel (its first exceptions, `rep stos`): every instruction's
/// vCPU, pc, opcode, QEMU's AT&T text (the shim's capstone handles in 64-,
/// 32- and 16-bit mode), and each access's type and physical address.
/// A whole boot is over a billion instructions, too many for a text log, so
/// the test ends QEMU (QMP `quit`) once its log holds 200k lines from the
/// kernel's first 64-bit instruction on (about 6M instructions, 400 MB of
/// text): both logs end with the same last instruction, as QEMU ends both
/// plugins the same way.
///
/// Every `mem` row's `asid` is the CR3 QEMU's execlog read before that
/// instruction (it reports each change), and the last one is the CR3 that
/// `info registers` shows once QEMU is stopped. And every `mem` row, in
/// order, is the access QEMU's mem plugin (`print-accesses=true`, in the
/// same run) printed: pc, virtual and physical address, size, load or
/// store, and the value loaded or stored.
#[test]
fn execlog_cr3_and_accesses_match_qemus_from_the_reset_vector_into_the_64_bit_kernel() {
    let ExeclogRun {
        dir,
        log,
        ours,
        registers,
        map,
    } = execlog_run("x86-execlog", x86_qemu, "cr3");
    let cr3_at_stop = cr3_of(&registers);

    // Line for line; QEMU's lines may end with `, cr3 -> 0x<16 digits>`
    // (the register changed during that instruction).
    let (mut kernel, mut ints, mut irets) = (0u64, 0u64, 0u64);
    let mut seen = std::collections::BTreeSet::new();
    let window = compare_execlogs(&log, &ours, "cr3", &map, |insn, accesses| {
        let text = insn.rsplit_once(", \"").unwrap().1.trim_end_matches('"');
        kernel += u64::from(insn.starts_with("0, 0xffffffff8"));
        ints += u64::from(text.starts_with("int "));
        irets += u64::from(text.starts_with("iret"));
        for want in [
            "iretw ",                       // real mode
            "rep movsl (%esi), %es:(%edi)", // 32-bit addressing
            "rep stosl %eax, (%rdi)",       // 64-bit addressing
            "iretq ",                       // the kernel's early exceptions
        ] {
            if text == want && (want.starts_with("iret") || accesses.len() > 2) {
                seen.insert(want);
            }
        }
    });
    let n = window.lines;
    // The x86 reset vector, in 16-bit real mode.
    assert_eq!(
        window.first.as_deref(),
        Some("0, 0xfffffff0, 0xe05bea, \"ljmpw $0xf000:$0xe05b\"")
    );
    // QEMU was stopped once its log had 200,000 kernel lines; the window
    // compared ends where both logs do (a few thousand lines earlier when
    // the machine is busy), so it has at least half as many.
    assert!(
        n > 2_000_000 && kernel >= 100_000,
        "{n} lines, {kernel} of the kernel"
    );
    assert_eq!(seen.len(), 4, "only {seen:?}");
    // More returns from interrupts than `int` instructions: hardware
    // interrupts (SeaBIOS's timer) and exceptions were taken in the window.
    assert!(irets > ints, "{irets} iret, {ints} int");

    // The ASID is CR3: the value QEMU's execlog read before each access's
    // instruction (0 from reset, then each change it reported), the last
    // one `info registers`'; and every access, in order, as QEMU's mem
    // plugin printed it: pc, virtual and physical address, size, load or
    // store, and the value.
    check_window_accesses(&dir, &window, cr3_at_stop);
    for p in [&log, &ours] {
        let _ = std::fs::remove_file(p);
    }
}

/// The physical addresses the kernel ELF loads into: [first, end) of its
/// LOAD program headers' `p_paddr .. p_paddr + p_memsz`.
fn kernel_physical_range(vmlinux: &Path) -> (u64, u64) {
    let elf = std::fs::read(vmlinux).unwrap();
    assert_eq!(&elf[..5], b"\x7fELF\x02", "not a 64-bit ELF");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    let (mut lo, mut hi) = (u64::MAX, 0);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap()) == 1 {
            lo = lo.min(u64_at(ph + 0x18));
            hi = hi.max(u64_at(ph + 0x18) + u64_at(ph + 0x28));
        }
    }
    assert!(lo < hi, "no LOAD segment in {}", vmlinux.display());
    (lo, hi)
}

/// The workload's line on the console: `seq 1 2000` written to a tmpfs
/// file, counted and checksummed in user space (`seq 1 2000 | md5sum`).
const WORKLOAD_LINE: &str =
    "trace-collector x86 guest: x86_64 2000 lines, md5 ea4d0a24dabcaa11f9aa979b872d162b";

/// The whole boot, to the guest's own `poweroff -f`, captured with `mem`
/// and `mmio`, with QEMU's mem plugin (tests/tcg/plugins/mem.c,
/// `callback=true,haddr=true`) counting in the same run; QEMU is kept
/// (`-no-shutdown`) so that its monitor can be asked about the end state.
///
/// - `mem` holds exactly as many rows as QEMU's plugin counted accesses, and
///   `mmio` (and `mem`'s `io` rows) as many as it counted I/O ones; nothing
///   lost.
/// - `asid` is CR3: every value is page-aligned (no PCID); the first
///   non-zero one (the kernel's PVH entry loads init_top_pgt) is inside the
///   kernel image; the user-space accesses (pc and address below 2^47,
///   after the kernel started, outside the kernel image's boot code) carry
///   other CR3s, at least two (init and its children); the last access
///   carries the CR3 that `info registers` shows after the power-off, that
///   of the process that powered off.
/// - `mmio`: every row's address is an I/O region of QEMU's memory map read
///   after the boot, whose name is the row's `region` and (or its short
///   name) `device`, also for the regions the firmware maps during the boot
///   (the AHCI BAR and PCIe MMCONFIG, in no region of the map the collector
///   read before it): the collector read the map again, and mtree.txt holds
///   its versions; the devices are the LAPIC, HPET, IOAPIC, AHCI and
///   MMCONFIG; the registers with fixed values read them: the HPET's
///   capabilities and period, the LAPIC's version.
#[test]
fn boot_counts_cr3_and_mmio_match_qemus() {
    let Boot {
        dir,
        ram,
        io,
        registers,
        mtree,
    } = boot("x86-boot", x86_qemu, &[], WORKLOAD_LINE);
    let cr3_at_poweroff = cr3_of(&registers);
    let map_after = MemoryMap::parse(&mtree).unwrap();
    assert!(ram > 100_000_000 && io > 1_000, "{ram} RAM, {io} I/O");
    assert_rows_are_qemus(&dir, ram, io);
    assert_eq!(stat(&dir, "events", Some(0)), ram + io);
    assert_eq!(query_u64s(&dir, "select count(*) from mem where io"), [io]);

    // ASIDs.
    let asids = query_u64s(&dir, "select distinct asid from mem order by asid");
    assert!(asids.iter().all(|a| a % 4096 == 0), "{asids:x?}");
    let kernel_start = query_u64s(
        &dir,
        "select min(icount) from mem where pc >= 0xffff800000000000",
    )[0];
    // User space: lower-half code after the kernel started, outside the
    // kernel image's physical range (its boot code runs identity-mapped
    // there for a while after its first 64-bit instruction).
    let (lo, hi) = kernel_physical_range(&guest("x86-guest.sh").join("vmlinux"));
    let user = format!(
        "icount > {kernel_start} and pc < 0x800000000000 and vaddr < 0x800000000000 \
         and (pc < {lo} or pc >= {hi})"
    );
    let user_asids = query_u64s(&dir, &format!("select distinct asid from mem where {user}"));
    // The kernel's own top page table (init_top_pgt, in its image's data,
    // never freed), the first CR3 it sets (its PVH entry, in 32-bit code),
    // is no process's.
    let init_top_pgt = query_u64s(
        &dir,
        &format!(
            "select asid from mem where icount < {kernel_start} and asid <> 0 \
             order by icount limit 1"
        ),
    )[0];
    assert!((lo..hi).contains(&init_top_pgt), "{init_top_pgt:#x}");
    assert!(user_asids.len() >= 2, "{user_asids:x?}");
    assert!(
        !user_asids.contains(&init_top_pgt),
        "{init_top_pgt:#x} in {user_asids:x?}"
    );
    assert!(
        user_asids.contains(&cr3_at_poweroff),
        "{cr3_at_poweroff:x} not in {user_asids:x?}"
    );
    let last = query_u64s(
        &dir,
        "select asid from mem where icount in (select max(icount) from mem)",
    );
    assert!(
        !last.is_empty() && last.iter().all(|&a| a == cr3_at_poweroff),
        "{last:x?}"
    );

    // MMIO: regions and devices against QEMU's memory maps.
    // mtree.txt: the map before the boot, then the versions read when an
    // access met a region mapped since.
    let mtree_txt = std::fs::read_to_string(dir.join("mtree.txt")).unwrap();
    let versions = versions(&mtree_txt);
    assert!(versions.len() >= 2, "{} versions", versions.len());
    for (n, (why, _)) in versions.iter().enumerate().skip(1) {
        assert!(
            why.starts_with(&format!("{}: read at ", n + 1))
                && why.contains("for an I/O access at 0x"),
            "{why}"
        );
    }
    let map_first = MemoryMap::parse(versions[0].1).unwrap();
    let mut mapped_later = std::collections::BTreeSet::new();
    // Named from the map after the boot also where the firmware mapped a
    // region after the collector's first read (the AHCI BAR, MMCONFIG): it
    // read the map again.
    let regions = mmio_regions_from_the_map(&dir, &map_after);
    let mmio = table(&dir, "mmio").unwrap();
    let paddr = mmio.column("paddr").unwrap().u64().unwrap().clone();
    let size = mmio.column("size").unwrap().u8().unwrap().clone();
    let ty = mmio.column("type").unwrap().str().unwrap().clone();
    let value = mmio.column("value").unwrap().u64().unwrap().clone();
    let devices: std::collections::BTreeSet<&str> = regions.iter().map(String::as_str).collect();
    let mut fixed = std::collections::BTreeMap::new();
    for (i, name) in regions.iter().enumerate() {
        let a = paddr.get(i).unwrap();
        if map_first.region(a).is_none() {
            mapped_later.insert(name.to_string());
        }
        if ty.get(i) == Some("R") && size.get(i) == Some(4) {
            let want = match a {
                0xfed0_0000 => Some(0x8086_a201), // HPET capabilities: QEMU's vendor, 3 timers, 64-bit
                0xfed0_0004 => Some(10_000_000),  // HPET period: 10 ns, in fs
                0xfee0_0030 => Some(0x0005_0014), // LAPIC version 0x14, 6 LVT entries
                _ => None,
            };
            if let Some(want) = want {
                assert_eq!(value.get(i), Some(want), "{a:#x}");
                *fixed.entry(a).or_insert(0) += 1;
            }
        }
    }
    let names: Vec<&str> = devices.into_iter().collect();
    assert_eq!(
        names,
        ["ahci", "apic-msi", "hpet", "ioapic", "pcie-mmcfg-mmio"]
    );
    assert_eq!(fixed.len(), 3, "{fixed:x?}");
    assert_eq!(
        mapped_later.iter().map(String::as_str).collect::<Vec<_>>(),
        ["ahci", "pcie-mmcfg-mmio"],
        "the regions the firmware mapped during the boot"
    );
    bufmon_finds_the_fill_process_buffer_in_its_own_address_space(&dir, &user_asids);
    let _ = std::fs::remove_dir_all(&dir); // 600 MB
}

/// bufmon on a user-space buffer of a guest process, in its address space:
/// /bin/fill (tests/guest/fill.c) writes 0xa0..0xaf into its 16-byte buffer
/// a byte at a time, then reads them back, and prints the buffer's address.
/// Its ASID is the CR3 of the rows that wrote 0xa0 there (one value, a
/// user-space one). bufmon with that ASID prints exactly those 32 accesses,
/// in order; with any other process's ASID, none: other processes' accesses
/// at the same virtual address are not this buffer's.
fn bufmon_finds_the_fill_process_buffer_in_its_own_address_space(dir: &Path, user_asids: &[u64]) {
    let console = std::fs::read_to_string(dir.with_extension("stdout")).unwrap();
    let line = console
        .lines()
        .find_map(|l| {
            l.split_once("trace-collector fill: buf 0x")
                .map(|(_, rest)| rest)
        })
        .unwrap_or_else(|| panic!("no fill line in {console}"));
    let buf = u64::from_str_radix(line.split(' ').next().unwrap(), 16).unwrap();
    assert!(
        line.ends_with(&format!("sum {}", (0xa0..=0xafu32).sum::<u32>())),
        "{line}"
    );
    let asids = query_u64s(
        dir,
        &format!("select distinct asid from mem where vaddr = {buf} and type = 'W' and size = 1 and value = 160"),
    );
    assert_eq!(asids.len(), 1, "{asids:x?}");
    let asid = asids[0];
    assert!(user_asids.contains(&asid), "{asid:#x} in {user_asids:x?}");
    let bufmon = |asid: u64| {
        let file = dir.with_extension(format!("buffers-{asid:x}"));
        std::fs::write(&file, format!("{buf:x} 10 {asid:x}\n")).unwrap();
        let d = dir.display().to_string();
        let (ok, out, err) =
            run_query(&["bufmon", "--trace", &d, "--buffers", file.to_str().unwrap()]);
        assert!(ok, "{err}");
        out
    };
    let out = bufmon(asid);
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split(' ').collect()).collect();
    let hex = |f: &str| u64::from_str_radix(f, 16).unwrap();
    // First the kernel, loading the program, zeroes the end of its data
    // page through the process's own mapping (clear_user of the BSS): two
    // 8-byte stores of 0 at the buffer. Then the program's 16 byte stores
    // and 16 byte loads, in order.
    assert_eq!(lines.len(), 2 + 32, "{out}");
    for (l, at) in lines[..2].iter().zip([buf, buf + 8]) {
        assert_eq!((l[0], hex(l[5]), hex(l[6])), ("WRITE", at, 8), "{out}");
        assert!(hex(l[3]) >= 0xffff_8000_0000_0000, "kernel code: {out}");
        assert!(l[7..].iter().all(|b| *b == "00"), "{out}");
    }
    for (i, l) in lines[2..].iter().enumerate() {
        let k = (i % 16) as u64;
        let kind = if i < 16 { "WRITE" } else { "READ" };
        assert_eq!(
            (l[0], hex(l[4]), hex(l[5]), hex(l[6]), hex(l[7])),
            (kind, asid, buf + k, 1, 0xa0 + k),
            "{out}"
        );
        assert!(hex(l[3]) < 0x8000_0000_0000, "the program's code: {out}");
    }
    for other in user_asids.iter().filter(|&&a| a != asid) {
        assert_eq!(bufmon(*other), "", "ASID {other:#x}");
    }
}

/// Two vCPUs (`-smp 2`, a thread each): the second starts in real mode at
/// the kernel's INIT/SIPI, from CR3 0. The boot's `mem` rows, both vCPUs'
/// together, are exactly the accesses QEMU's mem plugin counted (RAM and
/// I/O), each vCPU's stream has its own rows and lost none, and every CR3
/// recorded is page-aligned, the second vCPU's first one 0.
#[test]
fn two_vcpus_boot_counts_match_qemus() {
    let Boot { dir, ram, io, .. } = boot("x86-boot-smp2", x86_qemu, &["-smp", "2"], WORKLOAD_LINE);
    assert!(ram > 100_000_000 && io > 1_000, "{ram} RAM, {io} I/O");
    assert_rows_are_qemus(&dir, ram, io);
    let events = [0, 1].map(|v| stat(&dir, "events", Some(v)));
    assert_eq!(events[0] + events[1], ram + io);
    assert!(events.iter().all(|&e| e > 1_000_000), "{events:?}");
    for v in [0, 1] {
        assert_eq!(stat(&dir, "events_lost", Some(v)), 0, "vcpu {v}");
    }
    let per_vcpu = query_u64s(
        &dir,
        "select count(*) as n from mem group by vcpu order by vcpu",
    );
    assert_eq!(per_vcpu, events);
    let asids = query_u64s(&dir, "select distinct asid from mem order by asid");
    assert!(asids.iter().all(|a| a % 4096 == 0), "{asids:x?}");
    let first = query_u64s(
        &dir,
        "select asid from mem where vcpu = 1 order by icount limit 1",
    );
    assert_eq!(first, [0]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The older PC machine (`-M pc`: i440FX, no PCI Express): the boot's
/// `mem` and `mmio` rows are exactly the accesses and I/O accesses QEMU's
/// mem plugin counted, and every MMIO row's `region` is QEMU's region at its
/// address in the map after the boot: the LAPIC, HPET and IOAPIC (its disk
/// is IDE, reached by port I/O, and it has no MMCONFIG).
#[test]
fn pc_machine_boot_counts_and_devices_match_qemus() {
    let Boot {
        dir,
        ram,
        io,
        mtree,
        ..
    } = boot("x86-boot-pc", x86_qemu, &["-M", "pc"], WORKLOAD_LINE);
    assert!(ram > 100_000_000 && io > 1_000, "{ram} RAM, {io} I/O");
    assert_rows_are_qemus(&dir, ram, io);
    let map_after = MemoryMap::parse(&mtree).unwrap();
    let regions: std::collections::BTreeSet<String> = mmio_regions_from_the_map(&dir, &map_after)
        .into_iter()
        .collect();
    assert_eq!(
        regions.iter().map(String::as_str).collect::<Vec<_>>(),
        ["apic-msi", "hpet", "ioapic"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The whole boot's `code.disas` (BIOS, kernel and user space; 16-, 32-
/// and 64-bit code) is QEMU's text whether the shim reads it from its own
/// capstone handles (`--disas fast`) or asks QEMU for every instruction
/// (`--disas qemu`): two boots translate mostly the same instructions (the
/// rest depends on timing), and every (pc, bytes) both translated has the
/// same texts in both.
#[test]
fn whole_boot_disassembly_is_qemus_both_ways() {
    let marker = processes::marker("x86-disas");
    let _reaper = Reaper(marker.clone());
    let qemu = x86_qemu(&marker, None, &[]);
    let [fast, slow] = ["fast", "qemu"].map(|how| {
        let dir = capture_dir(&format!("x86-disas-{how}"));
        run_capture(&dir, &["--events", "insn", "--disas", how], &qemu);
        let rows = code_rows(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        rows
    });
    let texts = |rows: &std::collections::BTreeSet<(u64, Vec<u8>, String)>| {
        let mut by_insn = std::collections::BTreeMap::<(u64, Vec<u8>), Vec<String>>::new();
        for (pc, bytes, text) in rows {
            by_insn
                .entry((*pc, bytes.clone()))
                .or_default()
                .push(text.clone());
        }
        by_insn
    };
    let (fast, slow) = (texts(&fast), texts(&slow));
    let mut shared = 0;
    for (insn, text) in &fast {
        if let Some(other) = slow.get(insn) {
            assert_eq!(text, other, "{:#x} {:02x?}", insn.0, insn.1);
            shared += 1;
        }
    }
    assert!(
        shared > 300_000 && shared * 100 > fast.len().max(slow.len()) * 99,
        "{shared} shared of {} and {}",
        fast.len(),
        slow.len()
    );
}
