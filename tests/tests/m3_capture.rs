//! Captures the Cortex-M3 test firmware (tests/firmware/README.md lists every
//! access it makes) and checks the tables against those exact facts.

use std::process::{Command, Stdio};
use trace_tests::*;

const UART_DR: u64 = 0x4000_C000;
const SYST_CSR: u64 = 0xE000_E010;
const SYST_RVR: u64 = 0xE000_E014;
const SYST_CVR: u64 = 0xE000_E018;
const BUF: u64 = 0x2000_0000;
const SUM: u64 = 0x2000_0010;

fn check_m3_capture(dir: &std::path::Path) {
    let mem = accesses(dir, "mem").unwrap();
    let mmio = accesses(dir, "mmio").unwrap();

    // 47 data accesses, 32 stores, 15 loads, all on vCPU 0.
    assert_eq!(mem.len(), 47, "{mem:#?}");
    assert_eq!(mem.iter().filter(|a| a.store).count(), 32);
    assert!(mem.iter().all(|a| a.vcpu == 0));
    assert!(
        mem.iter().all(|a| a.vaddr == a.paddr),
        "no MMU: vaddr = paddr"
    );

    // Every record drained is one of these rows (no `insn` recorded here).
    if table(dir, "insn").is_err() {
        assert_eq!(stat(dir, "events", Some(0)), 47);
    }
    // A handful of records in a 16 MiB ring: QEMU never waited for room.
    assert_eq!(stat(dir, "full_ring_waits", Some(0)), 0);
    assert_eq!(stat(dir, "full_ring_wait_ns", Some(0)), 0);

    // The UART got exactly "Hello\n", one 32-bit store per byte, in order.
    let uart: Vec<u8> = mmio
        .iter()
        .filter(|a| a.paddr == UART_DR && a.store)
        .map(|a| a.value.unwrap() as u8)
        .collect();
    assert_eq!(uart, b"Hello\n");
    let first_uart = mmio.iter().find(|a| a.paddr == UART_DR).unwrap();
    assert_eq!((first_uart.pc, first_uart.size), (0x16, 4));

    // SysTick: 4 writes with known values, in order, and 10 reads of CVR.
    let systick: Vec<_> = mmio
        .iter()
        .filter(|a| (SYST_CSR..SYST_CSR + 16).contains(&a.paddr))
        .collect();
    let writes: Vec<(u64, u64)> = systick
        .iter()
        .filter(|a| a.store)
        .map(|a| (a.paddr, a.value.unwrap()))
        .collect();
    assert_eq!(
        writes,
        vec![
            (SYST_RVR, 0x1000),
            (SYST_CVR, 0),
            (SYST_CSR, 5),
            (SYST_CSR, 0)
        ]
    );
    let reads: Vec<_> = systick.iter().filter(|a| !a.store).collect();
    assert_eq!(reads.len(), 10);
    assert!(reads
        .iter()
        .all(|a| a.paddr == SYST_CVR && a.size == 4 && a.value.unwrap() <= 0x1000));
    let read_pcs: Vec<u64> = reads.iter().map(|a| a.pc).collect();
    assert_eq!(
        read_pcs,
        (0..10).map(|i| 0x3c + 2 * i).collect::<Vec<u64>>()
    );

    // The RAM buffer: 16 byte stores of 0xA0+i, then 4 word stores, 4 word
    // loads of the same values, then the sum.
    let ram: Vec<_> = mem
        .iter()
        .filter(|a| (BUF..=SUM).contains(&a.paddr))
        .collect();
    assert_eq!(ram.len(), 16 + 4 + 4 + 1);
    for (i, a) in ram[..16].iter().enumerate() {
        assert_eq!(
            (a.store, a.paddr, a.size, a.value),
            (true, BUF + i as u64, 1, Some(0xA0 + i as u64))
        );
        assert_eq!(a.pc, 0x5c + 4 * i as u64);
        assert_eq!(a.device, None, "RAM accesses have no device");
    }
    let words = [0x0302_0100u64, 0x0706_0504, 0x0b0a_0908, 0x0f0e_0d0c];
    for (i, w) in words.iter().enumerate() {
        let st = ram[16 + i];
        let ld = ram[20 + i];
        assert_eq!(
            (st.store, st.paddr, st.size, st.value),
            (true, BUF + 4 * i as u64, 4, Some(*w))
        );
        assert_eq!(
            (ld.store, ld.paddr, ld.size, ld.value),
            (false, BUF + 4 * i as u64, 4, Some(*w))
        );
    }
    assert_eq!(
        (ram[24].store, ram[24].paddr, ram[24].value),
        (true, SUM, Some(0x2420_1c18))
    );

    // The unimplemented-device stubs, by the plugin's name.
    let flash: Vec<_> = mmio.iter().filter(|a| a.paddr == 0x400F_D000).collect();
    assert_eq!(flash.len(), 1);
    assert_eq!((flash[0].store, flash[0].value), (false, Some(0)));
    let pwm: Vec<_> = mmio.iter().filter(|a| a.paddr == 0x4002_8000).collect();
    assert_eq!(pwm.len(), 1);
    assert_eq!((pwm[0].store, pwm[0].value), (true, Some(1)));

    // mmio is exactly the I/O part of mem.
    assert_eq!(mmio.len(), 6 + 14 + 2);
    let io_in_mem: Vec<_> = mem.iter().filter(|a| a.device.is_some()).cloned().collect();
    assert_eq!(io_in_mem, mmio);

    // icount grows with every access (one access per instruction here).
    assert!(mem.windows(2).all(|w| w[0].icount < w[1].icount));

    // Nothing lost in overflow=block.
    assert_eq!(stat(dir, "events_lost", Some(0)), 0);
}

/// (device, QEMU region, plugin name) of each MMIO address the firmware
/// touches, from the `mmio` table; panics if one address has two names.
fn names_by_address(
    dir: &std::path::Path,
) -> std::collections::BTreeMap<u64, (String, String, String)> {
    let df = table(dir, "mmio").unwrap();
    let col = |c: &str| df.column(c).unwrap().str().unwrap().clone();
    let (device, region, plugin) = (col("device"), col("region"), col("plugin_device"));
    let paddr = df.column("paddr").unwrap().u64().unwrap().clone();
    let mut names = std::collections::BTreeMap::new();
    for i in 0..df.height() {
        let n = (
            device.get(i).unwrap().to_string(),
            region.get(i).unwrap_or("").to_string(),
            plugin.get(i).unwrap().to_string(),
        );
        let prev = names.insert(paddr.get(i).unwrap(), n.clone());
        assert!(
            prev.is_none() || prev == Some(n),
            "two names for one address"
        );
    }
    names
}

#[test]
fn run_captures_every_access_of_the_m3_firmware() {
    let dir = capture_dir("m3-run");
    let out = run_capture(&dir, &["--events", "mem,mmio"], &m3_qemu());
    // QEMU's console output still reaches the terminal (here: our pipe).
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello\n");
    check_m3_capture(&dir);

    // Every device the firmware touches, named from QEMU's memory map: SysTick
    // although the plugin API calls it anonXXXXXXXX.
    let names = names_by_address(&dir);
    let named: Vec<(u64, &str, &str)> = names
        .iter()
        .map(|(a, (d, r, _))| (*a, d.as_str(), r.as_str()))
        .collect();
    assert_eq!(
        named,
        vec![
            (UART_DR, "pl011", "pl011"),
            (0x4002_8000, "PWM", "PWM"),
            (0x400F_D000, "flash-control", "flash-control"),
            (SYST_CSR, "systick", "v7m_systick"),
            (SYST_RVR, "systick", "v7m_systick"),
            (SYST_CVR, "systick", "v7m_systick"),
        ]
    );
    assert!(
        names[&SYST_CSR].2.starts_with("anon"),
        "the plugin's own name is kept: {:?}",
        names[&SYST_CSR]
    );
    assert!(dir.join("mtree.txt").exists());

    // ... so the query users write finds exactly the 14 SysTick accesses.
    let q = std::process::Command::new(query())
        .args(["--trace"])
        .arg(&dir)
        .args(["--format", "csv", "select type, count(*) as n from mmio where device='systick' group by type order by type"])
        .output()
        .unwrap();
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    assert_eq!(String::from_utf8_lossy(&q.stdout), "type,n\nR,10\nW,4\n");
}

#[test]
fn a_device_map_file_renames_devices() {
    let dir = capture_dir("m3-device-map");
    let map = dir.with_extension("map");
    std::fs::write(
        &map,
        "# ours\n0x4000c000-0x4000cfff uart0\nv7m_systick tick\n",
    )
    .unwrap();
    run_capture(
        &dir,
        &["--events", "mmio", "--device-map", map.to_str().unwrap()],
        &m3_qemu(),
    );
    let names = names_by_address(&dir);
    assert_eq!(names[&UART_DR].0, "uart0");
    assert_eq!(names[&SYST_CVR].0, "tick");
    assert_eq!(names[&SYST_CVR].1, "v7m_systick");
    assert_eq!(names[&0x4002_8000].0, "PWM");
}

#[test]
fn run_captures_every_instruction_of_the_m3_firmware() {
    let dir = capture_dir("m3-insn");
    run_capture(&dir, &["--events", "mem,mmio,insn"], &m3_qemu());
    check_m3_capture(&dir);

    // 99 instructions, icount 0..99, from 0x08 (reset b.w) to 0xf8 (bkpt).
    let insn = table(&dir, "insn")
        .unwrap()
        .sort(["icount"], Default::default())
        .unwrap();
    assert_eq!(insn.height(), 99);
    let icount = u64s(&insn, "icount");
    assert_eq!(icount, (0..99).collect::<Vec<u64>>());
    let pc = u64s(&insn, "pc");
    assert_eq!((pc[0], pc[98]), (0x08, 0xf8));

    // Each access's (icount, pc) is an executed instruction.
    for a in accesses(&dir, "mem").unwrap() {
        assert_eq!(pc[a.icount as usize], a.pc, "access {a:?}");
    }

    // The disassembly is stored once per translated instruction: one `code`
    // row per (block, index), and every executed instruction has the row of
    // the translation it ran from.
    let code = table(&dir, "code").unwrap();
    let (code_block, code_pc) = (u64s(&code, "block"), u64s(&code, "pc"));
    let index: Vec<u32> = code
        .column("index")
        .unwrap()
        .u32()
        .unwrap()
        .into_no_null_iter()
        .collect();
    let size: Vec<u8> = code
        .column("size")
        .unwrap()
        .u8()
        .unwrap()
        .into_no_null_iter()
        .collect();
    let disas: Vec<String> = code
        .column("disas")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|s| s.unwrap_or("").to_string())
        .collect();
    let rows: std::collections::HashMap<(u64, u64), (u8, &str)> = (0..code.height())
        .map(|i| ((code_block[i], code_pc[i]), (size[i], disas[i].as_str())))
        .collect();
    let slots: std::collections::HashSet<(u64, u32)> = code_block
        .iter()
        .zip(&index)
        .map(|(b, i)| (*b, *i))
        .collect();
    assert_eq!(slots.len(), code.height(), "one row per (block, index)");
    let insn_block = u64s(&insn, "block");
    for (i, (&b, &p)) in insn_block.iter().zip(&pc).enumerate() {
        assert!(
            rows.contains_key(&(b, p)),
            "instruction {i} at {p:#x} (block {b}) has no code row"
        );
    }
    assert_eq!(rows[&(insn_block[0], 0x08)], (4, "b.w #0xc"));
    assert_eq!(rows[&(insn_block[98], 0xf8)], (2, "bkpt #0xab"));
}

#[test]
fn attach_to_a_running_qemu_captures_the_same_accesses() {
    let dir = capture_dir("m3-attach");
    let mut qemu_cmd = m3_qemu();
    qemu_cmd.push("-plugin".into());
    qemu_cmd.push(format!("{},events=mem+mmio,wait=on", shim().display()));
    let qemu = Command::new(&qemu_cmd[0])
        .args(&qemu_cmd[1..])
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot start qemu-system-arm");
    let collector = Command::new(collector())
        .args(["attach", "--pid", &qemu.id().to_string(), "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    if !collector.status.success() {
        // QEMU waits for a collector (wait=on): do not leave it behind.
        let mut qemu = qemu;
        let _ = qemu.kill();
        let _ = qemu.wait();
        panic!(
            "attach failed: {}",
            String::from_utf8_lossy(&collector.stderr)
        );
    }
    let qemu_out = qemu.wait_with_output().unwrap();
    assert!(qemu_out.status.success());
    assert_eq!(String::from_utf8_lossy(&qemu_out.stdout), "Hello\n");
    check_m3_capture(&dir);
}
