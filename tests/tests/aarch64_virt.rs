//! An arm64 Linux guest on Arm's `virt` board with a PCI device whose BAR
//! the guest assigns (issue 18): Debian's arm64 kernel (scripts/arm64-guest.sh)
//! boots with `-device pci-serial`, whose 8-byte I/O BAR Linux places in
//! the PCI I/O window, and whose driver (8250_pci, built in) then talks to
//! it. Before the boot, QEMU's memory map shows the window whole
//! (`gpex_ioport_window`); the collector, meeting accesses the plugin API
//! names otherwise, reads the map again, and names them `serial`.

use std::path::Path;
use trace_format::memory_map::{versions, MemoryMap};
use trace_tests::guest::*;
use trace_tests::*;

/// The console line of the guest's /init (benches/fetch-inputs.sh).
const WORKLOAD_LINE: &str = "trace-collector bench: booted";

/// `qemu-system-aarch64 -M virt` booting the guest, with QMP at `qmp`.
fn virt_qemu(marker: &str, qmp: Option<&Path>, extra: &[String]) -> Vec<String> {
    LinuxGuest {
        qemu: "qemu-system-aarch64",
        board: &[
            "-M",
            "virt",
            "-cpu",
            "cortex-a57",
            "-m",
            "512",
            "-device",
            "pci-serial",
        ],
        console: "ttyAMA0",
        files: guest("arm64-guest.sh"),
        kernel: "Image",
    }
    .command(marker, qmp, extra)
}

/// The whole boot: `mem` and `mmio` rows are exactly what QEMU's mem plugin
/// counted, and every MMIO row's `region` is QEMU's region at its address
/// in the map after the boot, and its `device` that region's (short) name:
/// the BAR the guest assigned included, which the map before the boot did
/// not have (there, the window's own region): mtree.txt holds the version
/// that has it.
#[test]
fn a_pci_bar_the_guest_assigns_is_named_from_the_map_in_force() {
    let Boot {
        dir,
        ram,
        io,
        mtree,
        ..
    } = boot("virt-pci", virt_qemu, &[], WORKLOAD_LINE);
    assert_rows_are_qemus(&dir, ram, io);

    let map_after = MemoryMap::parse(&mtree).unwrap();
    let mtree_txt = std::fs::read_to_string(dir.join("mtree.txt")).unwrap();
    let versions = versions(&mtree_txt);
    let map_first = MemoryMap::parse(versions[0].1).unwrap();
    let regions = mmio_regions_from_the_map(&dir, &map_after);
    let paddr = u64s(&columns(&dir, "mmio", &["paddr"]).unwrap(), "paddr");
    let mut renamed = std::collections::BTreeMap::new();
    for (&a, name) in paddr.iter().zip(&regions) {
        let before = map_first.region(a).map(|r| r.name.as_str());
        if before != Some(name.as_str()) {
            *renamed
                .entry((before.map(str::to_string), name.to_string()))
                .or_insert(0) += 1;
        }
    }
    // The serial port's BAR, in the I/O window: QEMU's after-boot map has
    // it there, the map before the boot only the window.
    let serial: Vec<_> = renamed.keys().collect();
    assert_eq!(
        serial,
        [&(Some("gpex_ioport_window".to_string()), "serial".to_string())],
        "{renamed:?}"
    );
    assert!(versions.len() >= 2, "{} versions", versions.len());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The kernel's code, above 4 GiB and so A64 (the shim then never asks
/// QEMU for a block's mode, shim/src/disas.rs), has QEMU's text: the boot
/// captured with `--disas fast` (the default) and with `--disas qemu`
/// (QEMU's call per instruction) gives the same text for every
/// instruction both runs translated (timer interrupts make the two runs'
/// paths differ a little).
#[test]
fn the_kernels_code_above_4_gib_has_qemus_text() {
    let mut qemu = virt_qemu(&processes::marker("virt-disas"), None, &[]);
    // The kernel at the same addresses in both runs.
    let append = qemu.iter().position(|a| a == "-append").unwrap() + 1;
    qemu[append].push_str(" nokaslr");
    let kernel_code = |disas: &str| {
        let dir = capture_dir(&format!("virt-disas-{disas}"));
        run_capture(&dir, &["--events", "insn", "--disas", disas], &qemu);
        code_rows(&dir)
            .into_iter()
            .filter(|(pc, _, _)| *pc > u32::MAX as u64)
            .map(|(pc, bytes, text)| ((pc, bytes), text))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (fast, qemus) = (kernel_code("fast"), kernel_code("qemu"));
    let mut compared = 0;
    for (at, text) in &fast {
        if let Some(theirs) = qemus.get(at) {
            assert_eq!(text, theirs, "at {:#x}", at.0);
            compared += 1;
        }
    }
    // About 304,000 kernel instructions are translated in a boot, all but
    // a few hundred in both runs.
    assert!(
        compared >= 250_000 && compared * 100 >= fast.len() * 99,
        "compared {compared} of {} kernel instructions",
        fast.len()
    );
}
