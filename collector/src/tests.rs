//! Whole captures of a fake shim: rings written with the schema's producer,
//! the capture loop run into a temporary directory, the Parquet read back.

use std::path::Path;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use polars::prelude::*;
use trace_schema::attach::State;
use trace_schema::chunk::block_id;
use trace_schema::layout::Geometry;
use trace_schema::sync::Ordering;

use crate::capture::session::{capture, CaptureSetup, Captured, Ending, Owner};
use crate::testutil::*;
use crate::write::tables::PluginDeviceNames;

fn setup(out: &Path, part_rows: usize) -> CaptureSetup {
    crate::capture::directory::check(out, false, false).unwrap();
    CaptureSetup {
        out: out.to_path_buf(),
        part_rows,
        flush_every: None,
        threads: None,
        names: Arc::new(PluginDeviceNames),
        show_progress: false,
        append: None,
        window: Default::default(),
    }
}

/// Every part of a table, in order, as one frame.
fn read_table(dir: &Path, table: &str) -> DataFrame {
    let mut parts: Vec<_> = std::fs::read_dir(dir.join(table))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    parts.sort();
    assert!(!parts.is_empty(), "{table} has no part");
    let mut df: Option<DataFrame> = None;
    for p in parts {
        let part = ParquetReader::new(std::fs::File::open(&p).unwrap())
            .finish()
            .unwrap();
        match &mut df {
            None => df = Some(part),
            Some(d) => {
                d.vstack_mut(&part).unwrap();
            }
        }
    }
    df.unwrap()
}

fn part_count(dir: &Path, table: &str) -> usize {
    std::fs::read_dir(dir.join(table)).unwrap().count()
}

fn u64s(df: &DataFrame, col: &str) -> Vec<u64> {
    df.column(col)
        .unwrap()
        .u64()
        .unwrap()
        .no_null_iter()
        .collect()
}
fn opt_u64s(df: &DataFrame, col: &str) -> Vec<Option<u64>> {
    df.column(col).unwrap().u64().unwrap().iter().collect()
}
fn u32s(df: &DataFrame, col: &str) -> Vec<u32> {
    df.column(col)
        .unwrap()
        .u32()
        .unwrap()
        .no_null_iter()
        .collect()
}
/// The `block_exec` rows as (vcpu, icount, block, insns), by vCPU then
/// icount.
fn block_exec_rows(dir: &Path) -> Vec<(u32, u64, u64, u32)> {
    let df = read_table(dir, "block_exec");
    let mut rows: Vec<_> = u32s(&df, "vcpu")
        .into_iter()
        .zip(u64s(&df, "icount"))
        .zip(u64s(&df, "block"))
        .zip(u32s(&df, "insns"))
        .map(|(((v, i), b), n)| (v, i, b, n))
        .collect();
    rows.sort_by_key(|r| (r.0, r.1));
    rows
}
fn strs(df: &DataFrame, col: &str) -> Vec<Option<String>> {
    df.column(col)
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|s| s.map(str::to_string))
        .collect()
}

/// The value of stats row (`name`, `vcpu`).
fn stat(dir: &Path, name: &str, vcpu: Option<u32>) -> Option<u64> {
    let df = read_table(dir, "stats");
    let names = strs(&df, "name");
    let vcpus: Vec<Option<u32>> = df.column("vcpu").unwrap().u32().unwrap().iter().collect();
    let values = u64s(&df, "value");
    (0..df.height())
        .find(|&i| names[i].as_deref() == Some(name) && vcpus[i] == vcpu)
        .map(|i| values[i])
}

fn capture_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("capture.json")).unwrap()).unwrap()
}

fn wait_attached(shim: &FakeShim) {
    while State::of(shim.header()) != Ok(State::Attached) {
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn run_capture(
    shim: &FakeShim,
    out: &Path,
    part_rows: usize,
    produce: impl FnOnce(&FakeShim) + Send,
) -> Captured {
    let seg = shim.open().unwrap();
    let signals = AtomicU32::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            wait_attached(shim);
            produce(shim);
        });
        capture(&seg, &setup(out, part_rows), Owner::Attach, &signals).unwrap()
    })
}

/// Many events through small rings on two vCPUs, concurrently, with small
/// parts: every event arrives once, in order, with its device names.
#[test]
fn mem_and_mmio_capture_is_exact() {
    let shim = FakeShim::small(2, "events=mem+mmio");
    let dir = TempDir::new("mem");
    let out = dir.0.join("cap");
    const N: u64 = 3000;
    let captured = run_capture(&shim, &out, 1000, |shim| {
        std::thread::scope(|s| {
            for v in 0..2u16 {
                s.spawn(move || {
                    let mut vcpu = shim.vcpu(v as u32);
                    vcpu.meta(&device_meta(0, if v == 0 { "uart" } else { "timer" }));
                    vcpu.meta(&device_meta(1, "shared"));
                    let all: Vec<Access> = (0..N)
                        .map(|i| match i % 10 {
                            3 => mmio(i, 0x100 + i, 0x4000_0000 + i, true, 0, i * 7),
                            7 => mmio(i, 0x100 + i, 0x5000_0000, false, 1, i),
                            _ => mem(i, 0x100 + i, 0x2000_0000 + 4 * i, i % 2 == 0, 4, i),
                        })
                        .collect();
                    // Chunks of 7 accesses, as a shim would gather them.
                    for c in all.chunks(7) {
                        vcpu.accesses(0, c);
                    }
                });
            }
        });
        shim.finish(&[N, N]);
    });
    assert_eq!(captured.ending, Ending::QemuExited);

    let mem = read_table(&out, "mem");
    assert_eq!(mem.height() as u64, 2 * N);
    // Parts end between chunks, at the first after 1000 rows.
    assert_eq!(part_count(&out, "mem"), 6);
    for v in 0..2u32 {
        let mine = mem
            .filter(&mem.column("vcpu").unwrap().u32().unwrap().equal(v))
            .unwrap();
        assert_eq!(
            u64s(&mine, "icount"),
            (0..N).collect::<Vec<_>>(),
            "vCPU {v} in order, once each"
        );
    }
    let first = mem
        .filter(&mem.column("vcpu").unwrap().u32().unwrap().equal(0))
        .unwrap()
        .head(Some(4));
    let s = |x: &str| Some(x.to_string());
    assert_eq!(strs(&first, "type"), [s("W"), s("R"), s("W"), s("W")]);
    assert_eq!(strs(&first, "device"), [None, None, None, s("uart")]);
    assert_eq!(u64s(&first, "paddr")[3], 0x4000_0003);
    assert_eq!(u64s(&first, "value")[3], 21);
    assert_eq!(opt_u64s(&first, "value_hi"), vec![None; 4]);
    assert_eq!(
        first
            .column("io")
            .unwrap()
            .bool()
            .unwrap()
            .no_null_iter()
            .collect::<Vec<_>>(),
        [false, false, false, true]
    );

    let mmio_t = read_table(&out, "mmio");
    assert_eq!(mmio_t.height() as u64, 2 * N / 5);
    let names: std::collections::BTreeSet<_> = strs(&mmio_t, "plugin_device")
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec!["shared", "timer", "uart"]
    );
    assert_eq!(strs(&mmio_t, "device"), strs(&mmio_t, "plugin_device"));
    assert!(mmio_t.column("io").is_err(), "mmio has no io column");

    let j = capture_json(&out);
    assert_eq!(
        j["complete"], false,
        "complete is set by the caller once QEMU's status is known"
    );
    assert_eq!(j["tables"]["mem"], 2 * N);
    assert_eq!(j["tables"]["mmio"], 2 * N / 5);
    assert_eq!(j["end"], "qemu_exited");
    assert_eq!(j["n_vcpus"], 2);
    assert_eq!(j["shim_options"], "events=mem+mmio");
    assert_eq!(j["devices"].as_array().unwrap().len(), 3);
    let summary = captured.complete("exited with status 0".into()).unwrap();
    let j = capture_json(&out);
    assert_eq!(j["complete"], true);
    assert_eq!(j["qemu_exit"], "exited with status 0");
    assert!(summary.to_string().contains("mem 6000"), "{summary}");

    assert_eq!(stat(&out, "events", Some(0)), Some(N));
    assert_eq!(stat(&out, "events_lost", Some(1)), Some(0));
    assert_eq!(stat(&out, "final_icount", Some(1)), Some(N));
    assert_eq!(stat(&out, "rows.mmio", None), Some(2 * N / 5));
    assert!(!out.join("block_exec").exists(), "insn is not recorded");
}

/// Block events become one block_exec row each, with the number of its
/// instructions that ran: the blocks of a chunk follow each other, the next
/// chunk's icount cuts the last block short after an early exit, a block
/// translated on another vCPU is found, one never described still gets its
/// row, the last block ends at final_icount, and code has one row per
/// translated insn.
#[test]
fn one_block_exec_row_per_block_event() {
    let shim = FakeShim::new(
        Geometry {
            n_vcpus: 2,
            event_ring_bytes: 8192,
            meta_ring_bytes: 8192,
        },
        "events=insn",
    );
    let dir = TempDir::new("insn");
    let out = dir.0.join("cap");
    let a: &[(u64, &[u8], &str, &str)] = &[
        (0x100, &[1, 0], "movs r0, #1", "start"),
        (0x102, &[2, 0], "movs r1, #2", ""),
        (0x104, &[3, 0, 0, 0xf0], "bl f", ""),
    ];
    let b: &[(u64, &[u8], &str, &str)] =
        &[(0x200, &[4, 0], "nop", "f"), (0x202, &[5, 0], "bx lr", "")];
    let (ida, idb, unknown) = (block_id(10, 3), block_id(11, 2), block_id(99, 2));
    let captured = run_capture(&shim, &out, 4, |shim| {
        let mut v0 = shim.vcpu(0);
        let mut v1 = shim.vcpu(1);
        v0.meta(&block_meta(ida, 0x100, a));
        // Block B is translated on vCPU 1 and executed on both.
        v1.meta(&block_meta(idb, 0x200, b));
        v0.blocks(0, &[ida, idb]); // A: all 3 run; B: exception after 1
        v0.blocks(4, &[ida]); // so a new chunk: 2 of 3 until exit
        v1.blocks(0, &[idb, unknown, idb]); // final_icount 10: all
        shim.finish(&[6, 10]);
    });
    assert_eq!(captured.ending, Ending::QemuExited);
    let rows = block_exec_rows(&out);
    assert_eq!(
        rows,
        vec![
            // (vcpu, icount, block, instructions that ran)
            (0, 0, ida, 3),
            (0, 3, idb, 1),
            (0, 4, ida, 2),
            (1, 0, idb, 2),
            (1, 2, unknown, 2),
            (1, 4, idb, 2),
        ]
    );
    // Parts end between chunks, at the first after 4 rows.
    assert_eq!(part_count(&out, "block_exec"), 2, "6 rows in parts of 4");

    let code = read_table(&out, "code");
    assert_eq!(code.height(), 5);
    let code = code.sort(["block", "index"], Default::default()).unwrap();
    assert_eq!(u64s(&code, "pc"), vec![0x100, 0x102, 0x104, 0x200, 0x202]);
    assert_eq!(u32s(&code, "opcode")[2], 0xf000_0003);
    assert_eq!(strs(&code, "symbol")[0].as_deref(), Some("start"));
    assert_eq!(strs(&code, "disas")[4].as_deref(), Some("bx lr"));

    assert_eq!(stat(&out, "blocks_unknown", None), Some(1));
    assert_eq!(stat(&out, "rows.block_exec", None), Some(6));
    assert_eq!(stat(&out, "events", Some(1)), Some(3));
    assert!(!out.join("mem").exists() && !out.join("mmio").exists());
}

/// Blocks whose description never arrived (announced to an earlier
/// collector): their ids say their lengths, so their rows are exact, and
/// each is counted as unknown; events lost between two chunks leave a gap.
#[test]
fn undescribed_blocks_get_exact_rows() {
    let shim = FakeShim::small(2, "events=insn");
    let dir = TempDir::new("unknown");
    let out = dir.0.join("cap");
    let (x, y, z) = (block_id(7, 3), block_id(8, 512), block_id(9, 2));
    run_capture(&shim, &out, 100, |shim| {
        let mut v0 = shim.vcpu(0);
        v0.blocks(100, &[x, y]);
        v0.blocks(2000, &[x]); // events lost between
        v0.blocks(3000, &[z]); // ends at final_icount 3001
        shim.vcpu(1).blocks(0, &[z]); // ends at final_icount 2
        shim.finish(&[3001, 2]);
    });
    assert_eq!(
        block_exec_rows(&out),
        vec![
            (0, 100, x, 3),
            (0, 103, y, 512),
            (0, 2000, x, 3),
            (0, 3000, z, 1),
            (1, 0, z, 2),
        ]
    );
    assert!(!out.join("code").join("part-000001.parquet").exists());
    assert_eq!(read_table(&out, "code").height(), 0, "no block described");
    assert_eq!(stat(&out, "blocks_unknown", None), Some(5));
}

/// A vCPU's last block when QEMU did not report its exit: the whole block.
/// The 16-byte access arrives with its high half. Losses before the attach
/// and after the detach are not the capture's.
#[test]
fn last_block_without_exit_is_whole_and_interrupt_detaches() {
    let shim = FakeShim::small(1, "events=insn+mem");
    let dir = TempDir::new("interrupt");
    let out = dir.0.join("cap");
    let seg = shim.open().unwrap();
    let signals = AtomicU32::new(0);
    let (b1, b2) = (block_id(1, 2), block_id(2, 5));
    let captured = std::thread::scope(|s| {
        s.spawn(|| {
            wait_attached(&shim);
            let mut v = shim.vcpu(0);
            v.meta(&block_meta(
                b1,
                0x10,
                &[(0x10, &[0; 4], "a", ""), (0x14, &[0; 4], "b", "")],
            ));
            v.blocks(0, &[b1, b2]);
            let mut wide = mem(1, 0x14, 0x2000, false, 16, 5);
            wide.high = Some(0x99);
            v.access(wide);
            // After the collector's snapshot of the counter.
            std::thread::sleep(Duration::from_millis(20));
            shim.view
                .vcpu(0)
                .counters
                .events_lost
                .store(7, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(50));
            signals.store(1, std::sync::atomic::Ordering::Relaxed);
            // Losses after the detach are not the capture's.
            while State::of(shim.header()) == Ok(State::Attached) {
                std::thread::sleep(Duration::from_micros(100));
            }
            shim.view
                .vcpu(0)
                .counters
                .events_lost
                .store(100, Ordering::Relaxed);
        });
        // Events lost before we attach.
        shim.view
            .vcpu(0)
            .counters
            .events_lost
            .store(3, Ordering::Relaxed);
        capture(&seg, &setup(&out, 100), Owner::Attach, &signals).unwrap()
    });
    assert_eq!(captured.ending, Ending::Interrupted);
    assert_eq!(State::of(shim.header()), Ok(State::Waiting));
    assert_eq!(shim.header().collector_pid.load(Ordering::Relaxed), 0);
    assert_eq!(block_exec_rows(&out), vec![(0, 0, b1, 2), (0, 2, b2, 5)]);
    let mem = read_table(&out, "mem");
    assert_eq!(opt_u64s(&mem, "value_hi"), vec![Some(0x99)]);
    assert_eq!(u64s(&mem, "value"), vec![5]);
    assert_eq!(
        read_table(&out, "mmio").height(),
        0,
        "an empty part gives the schema"
    );
    assert_eq!(stat(&out, "events", Some(0)), Some(3));
    assert_eq!(stat(&out, "blocks_unknown", None), Some(1));
    assert_eq!(stat(&out, "events_lost", Some(0)), Some(4));
    assert_eq!(stat(&out, "events_lost_before_attach", Some(0)), Some(3));
    assert_eq!(
        stat(&out, "final_icount", Some(0)),
        None,
        "QEMU did not exit"
    );
    assert_eq!(capture_json(&out)["end"], "interrupted");
}

/// QEMU killed: the capture ends, the stale segment is removed.
#[test]
fn qemu_that_dies_ends_the_capture() {
    let shim = FakeShim::small(1, "");
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    shim.header_mut().qemu_pid = child.id();
    let seg =
        crate::qemu::segment_view::Segment::open_named(&shim.name, child.id(), Duration::ZERO)
            .unwrap();
    let dir = TempDir::new("died");
    let out = dir.0.join("cap");
    let signals = AtomicU32::new(0);
    let captured = std::thread::scope(|s| {
        s.spawn(|| {
            wait_attached(&shim);
            shim.vcpu(0).access(mem(0, 0x10, 0x2000, true, 4, 1));
            child.kill().unwrap();
            child.wait().unwrap();
        });
        capture(&seg, &setup(&out, 100), Owner::Attach, &signals).unwrap()
    });
    assert_eq!(captured.ending, Ending::QemuDied);
    assert_eq!(read_table(&out, "mem").height(), 1);
    assert!(
        !Path::new(&format!("/dev/shm{}", shim.name)).exists(),
        "stale segment unlinked"
    );
}

/// A message that is not a chunk, or a chunk that does not follow the one
/// before: an error naming the vCPU and the offset, and the capture keeps
/// what came before, marked as failed.
#[test]
fn corrupt_ring_is_an_error() {
    let shim = FakeShim::small(2, "events=mem");
    let dir = TempDir::new("corrupt");
    let out = dir.0.join("cap");
    let seg = shim.open().unwrap();
    let signals = AtomicU32::new(0);
    let err = std::thread::scope(|s| {
        s.spawn(|| {
            wait_attached(&shim);
            let mut v = shim.vcpu(1);
            v.access(mem(0, 0x10, 0x2000, true, 4, 1));
            // A well-framed chunk whose root pointer is wrong.
            let mut c = trace_schema::chunk::ChunkBuffer::accesses();
            c.start(1, 0);
            c.push_access(&mem(1, 0, 0, false, 4, 0).record, true);
            let mut bad = c.seal(1, 1).to_vec();
            bad[8] = 0xff;
            v.raw(&bad);
        });
        capture(&seg, &setup(&out, 100), Owner::Attach, &signals)
            .err()
            .unwrap()
    });
    let msg = format!("{err:#}");
    assert!(
        msg.contains("vCPU 1") && msg.contains("offset 112") && msg.contains("not a Chunk"),
        "{msg}"
    );
    let j = capture_json(&out);
    assert_eq!(j["end"], "error");
    assert_eq!(j["complete"], false);
    assert_eq!(read_table(&out, "mem").height(), 1);
}

/// A chunk whose first index is not the count of the events before it (a
/// lost or replayed chunk): an error, not rows out of order.
#[test]
fn a_chunk_out_of_sequence_is_an_error() {
    let shim = FakeShim::small(1, "events=mem");
    let dir = TempDir::new("sequence");
    let out = dir.0.join("cap");
    let seg = shim.open().unwrap();
    let signals = AtomicU32::new(0);
    let err = std::thread::scope(|s| {
        s.spawn(|| {
            wait_attached(&shim);
            let mut v = shim.vcpu(0);
            v.access(mem(0, 0x10, 0x2000, true, 4, 1));
            v.published += 5;
            v.access(mem(1, 0x10, 0x2000, true, 4, 1));
        });
        capture(&seg, &setup(&out, 100), Owner::Attach, &signals)
            .err()
            .unwrap()
    });
    let msg = format!("{err:#}");
    assert!(
        msg.contains("vCPU 0") && msg.contains("follows 6 events, not the 1 drained"),
        "{msg}"
    );
    assert_eq!(read_table(&out, "mem").height(), 1);
}

#[test]
fn event_set_from_shim_options() {
    use crate::capture::session::shim_events;
    use trace_schema::options::EventSet;
    assert_eq!(
        shim_events("").unwrap(),
        EventSet {
            mem: true,
            mmio: true,
            insn: false
        }
    );
    assert_eq!(
        shim_events("events=mmio,wait=on").unwrap(),
        EventSet {
            mem: false,
            mmio: true,
            insn: false
        }
    );
    assert_eq!(
        shim_events("events=insn,future_option=1").unwrap(),
        EventSet {
            mem: false,
            mmio: false,
            insn: true
        }
    );
    assert!(shim_events("events=bogus").is_err());
}

/// Drain throughput with a Rust producer per vCPU (not a correctness test):
/// `cargo test --release -p trace-collector throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    const N: u64 = 4_000_000;
    let shim = FakeShim::new(
        Geometry {
            n_vcpus: 2,
            event_ring_bytes: 1 << 22,
            meta_ring_bytes: 1 << 16,
        },
        "events=mem+insn",
    );
    let dir = TempDir::new("throughput");
    let out = dir.0.join("cap");
    let insns: Vec<(u64, &[u8], &str, &str)> = (0..8)
        .map(|i| (0x1000 + 4 * i, &[0u8, 1, 2, 3][..], "add r0, r0, #1", ""))
        .collect();
    let started = std::time::Instant::now();
    let captured = run_capture(&shim, &out, crate::DEFAULT_PART_ROWS, |shim| {
        std::thread::scope(|s| {
            for v in 0..2u16 {
                let insns = &insns;
                s.spawn(move || {
                    let mut vcpu = shim.vcpu(v as u32);
                    let id = block_id(v as u64, 8);
                    vcpu.meta(&block_meta(id, 0x1000, insns));
                    for i in (0..N).step_by(100) {
                        vcpu.blocks(8 * i, &[id; 25]);
                        let accesses: Vec<Access> = (i..i + 75)
                            .map(|k| mem(8 * i + k, 0x1000, 0x2000_0000 + 4 * k, k % 2 == 0, 4, k))
                            .collect();
                        vcpu.accesses(0, &accesses);
                    }
                });
            }
        });
        shim.finish(&[8 * N, 8 * N]);
    });
    let secs = started.elapsed().as_secs_f64();
    let rows: u64 = captured.report.rows.iter().map(|r| r.1).sum();
    eprintln!(
        "{} events, {rows} rows, {:.1} MiB in {secs:.2} s: {:.2} M events/s, {:.2} M rows/s",
        2 * N,
        captured.bytes_written as f64 / (1 << 20) as f64,
        2.0 * N as f64 / secs / 1e6,
        rows as f64 / secs / 1e6
    );
}
