//! Two vCPUs (tests/firmware/a64): one ring per vCPU, each vCPU's events in
//! its own order, none lost.

use trace_tests::*;

const ARR0: u64 = 0x4010_0000;
const ARR1: u64 = 0x4010_2000;
const DONE: u64 = 0x4010_4000;

#[test]
fn each_vcpu_has_its_own_ordered_lossless_stream() {
    let dir = capture_dir("a64-smp2");
    run_capture(&dir, &["--events", "mem,mmio"], &a64_qemu());
    let mem = accesses(&dir, "mem").unwrap();
    let cpu0: Vec<_> = mem.iter().filter(|a| a.vcpu == 0).collect();
    let cpu1: Vec<_> = mem.iter().filter(|a| a.vcpu == 1).collect();
    assert_eq!((cpu0.len(), cpu1.len(), mem.len()), (1005, 1002, 2007));

    // vCPU 0: 3 GIC setup stores, done = 0, 1000 stores of i, one load of done.
    assert_eq!(
        cpu0[..4]
            .iter()
            .map(|a| (a.paddr, a.size, a.value.unwrap()))
            .collect::<Vec<_>>(),
        vec![
            (0x0800_0000, 4, 1),
            (0x0801_0004, 4, 0xff),
            (0x0801_0000, 4, 1),
            (DONE, 8, 0)
        ]
    );
    for (i, a) in cpu0[4..1004].iter().enumerate() {
        assert_eq!(
            (a.store, a.paddr, a.size, a.value),
            (true, ARR0 + 8 * i as u64, 8, Some(i as u64))
        );
    }
    assert_eq!(
        (cpu0[1004].store, cpu0[1004].paddr, cpu0[1004].value),
        (false, DONE, Some(1))
    );

    // vCPU 1: 1000 stores of (1<<32)|i, done = 1, the SGI to vCPU 0.
    for (i, a) in cpu1[..1000].iter().enumerate() {
        assert_eq!(
            (a.store, a.paddr, a.size, a.value),
            (true, ARR1 + 8 * i as u64, 8, Some((1 << 32) | i as u64))
        );
    }
    assert_eq!((cpu1[1000].paddr, cpu1[1000].value), (DONE, Some(1)));
    assert_eq!(
        (cpu1[1001].paddr, cpu1[1001].size, cpu1[1001].value),
        (0x0800_0F00, 4, Some(0x0001_0000))
    );

    // Per vCPU, icount only grows.
    for cpu in [&cpu0, &cpu1] {
        assert!(cpu.windows(2).all(|w| w[0].icount < w[1].icount));
    }
    // The address-space id is the MMU context register, TTBR0_EL1: CPU 1
    // set it before its first access and again before its last two, CPU 0
    // left QEMU's reset value.
    assert!(cpu0.iter().all(|a| a.asid == 0));
    assert!(
        cpu1[..1000].iter().all(|a| a.asid == 0x0005_0000_4020_0000),
        "{:x?}",
        cpu1[0]
    );
    assert_eq!(
        (cpu1[1000].asid, cpu1[1001].asid),
        (0x0006_0000_4020_0000, 0x0006_0000_4020_0000)
    );

    // The GIC accesses are I/O, the rest RAM.
    assert_eq!(mem.iter().filter(|a| a.device.is_some()).count(), 4);

    for v in [0, 1] {
        assert_eq!(stat(&dir, "events_lost", Some(v)), 0, "vcpu {v}");
    }
    assert_eq!(stat(&dir, "events", Some(0)), 1005);
    assert_eq!(stat(&dir, "events", Some(1)), 1002);
}

/// vCPUs taking turns on one thread (`-accel tcg,thread=single`, as
/// `-icount` implies): QEMU 10.0 would give every vCPU's events to the one
/// that translated the block and corrupt the generated code (see the shim's
/// `refuse_one_thread_for_many_vcpus`), so the shim stops QEMU before the
/// guest runs, saying why; the capture says how QEMU ended and holds no
/// event.
#[test]
fn vcpus_on_one_thread_are_refused_before_the_guest_runs() {
    let dir = capture_dir("a64-smp2-one-thread");
    let mut qemu = a64_qemu();
    qemu.splice(
        1..1,
        ["-accel".to_string(), "tcg,thread=single".to_string()],
    );
    let out = run_capture(&dir, &["--events", "mem,mmio"], &qemu);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("trace-shim: vCPUs 0 and 1 run on one thread"),
        "{stderr}"
    );
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("capture.json")).unwrap()).unwrap();
    assert_eq!(meta["qemu_exit"], "exited with status 1");
    assert_eq!(stat(&dir, "rows.mem", None), 0);
    assert_eq!(
        stat(&dir, "events", Some(0)) + stat(&dir, "events", Some(1)),
        0
    );
}
