//! The collector's drain-to-Parquet path, without QEMU, through its public
//! API: `trace_collector::attach` on a segment laid out exactly as the shim
//! lays it out (the same `trace_schema::layout` header, rings and records),
//! filled by a producer thread that plays the shim.
//!
//! `attach` takes a QEMU pid and opens `layout::segment_name(pid)`, checking
//! that the header's `qemu_pid` is that pid and that the process lives: the
//! benchmark process plays QEMU, with its own pid. Each iteration creates a
//! fresh segment and capture directory; the time measured is the whole
//! `attach` call: attach, drain every record, build the columns, write and
//! fsync the Parquet parts, write stats and capture.json. The producer only
//! copies pre-encoded records into the ring, far faster than the collector
//! drains them, so the collector is the bottleneck, as in a capture where
//! QEMU blocks on a full ring (`overflow=block`).
//!
//! Groups:
//! - `drain_parquet/mem`: the m3loop firmware's pattern (per 10 instructions
//!   2 RAM stores, 2 RAM loads, 1 MMIO load): tables mem and mmio;
//! - `drain_parquet/insn`: blocks of 10 instructions, one `block_exec` row
//!   each;
//! - `drain_parquet/mem (recorded)`: a real guest's records, replayed from
//!   the file `BENCH_RECORDS` names (written by `null-collector --dump`, see
//!   benches/README.md; `BENCH_RECORDS_EVENTS` names the events it was
//!   recorded with, `mem+mmio` unless set); skipped when it is not set.
//!   Synthetic records
//!   compress unlike a real guest's addresses and values: this group is the
//!   one to judge encodings by.
//!
//! Throughput is in rows per second of `mem`, and of the `insn` view
//! (instructions the `block_exec` rows describe); for the recorded group,
//! rows of `mem` or `block_exec`. The recorded group is also timed with 1
//! and 2 encoder threads (`--threads`), and by the collector's CPU time.

use std::ffi::CString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use trace_collector::{attach, AttachArgs};
use trace_schema::attach::State;
use trace_schema::chunk::{self, ChunkBuffer, MemAccess, FLAG_IO, FLAG_STORE, NO_DEVICE};
use trace_schema::events_capnp::meta;
use trace_schema::layout::{self, Geometry, Header, SegmentView};
use trace_schema::ring::Producer;
use trace_schema::sync::Ordering;

/// The shim's defaults: 16 MiB event ring, 4 MiB meta ring per vCPU.
const RING_BYTES: u64 = 16 << 20;
const META_BYTES: u64 = 4 << 20;

/// A segment created as the shim creates it, for our own pid.
struct FakeSegment {
    name: CString,
    base: *mut u8,
    len: usize,
    view: SegmentView,
}

// Safety: `base`/`len` name a shared mapping of the process, not of a
// thread, unmapped only by `drop`; `view` is `Send` already.
unsafe impl Send for FakeSegment {}
// Safety: shared, only `view` (Sync) is read; `base` is used only by `drop`,
// and `producers` only by the one producer thread of each segment.
unsafe impl Sync for FakeSegment {}

impl FakeSegment {
    fn create(options: &str) -> FakeSegment {
        let geometry = Geometry {
            n_vcpus: 1,
            event_ring_bytes: RING_BYTES,
            meta_ring_bytes: META_BYTES,
        };
        geometry.check().unwrap();
        let len = geometry.segment_bytes().unwrap() as usize;
        let pid = std::process::id();
        let name = CString::new(layout::segment_name(pid)).unwrap();
        // Safety: `name` is a C string and `fd` ours (checked). The mapping is
        // `len` bytes (checked), page-aligned and all zero (a fresh `O_EXCL`
        // object), so it holds a `Header` that we, its only user yet, may write;
        // it stays mapped until `drop`, outliving `view`, whose geometry passed
        // `check`: what `SegmentView::new` needs.
        unsafe {
            libc::shm_unlink(name.as_ptr());
            let fd = libc::shm_open(
                name.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
                0o600 as libc::mode_t,
            );
            assert!(fd >= 0, "shm_open: {}", std::io::Error::last_os_error());
            libc::fchmod(fd, 0o600);
            assert_eq!(libc::ftruncate(fd, len as libc::off_t), 0);
            let base = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert!(base != libc::MAP_FAILED);
            libc::close(fd);
            (*(base as *mut Header)).initialise(geometry, pid, options);
            let view = SegmentView::new(base as *mut u8, geometry);
            FakeSegment {
                name,
                base: base as *mut u8,
                len,
                view,
            }
        }
    }

    fn producers(&self) -> (Producer, Producer) {
        let g = self.view.geometry;
        let c = self.view.vcpu(0);
        // Safety: the rings lie in our mapping, which stays until `drop`; the
        // producers live only inside `produce`, which borrows `self`, and each
        // segment is produced once, so they are the rings' only producers;
        // `check` made the capacities powers of two.
        unsafe {
            (
                Producer::new(&c.event_ring, self.view.event_data(0), g.event_ring_bytes),
                Producer::new(&c.meta_ring, self.view.meta_data(0), g.meta_ring_bytes),
            )
        }
    }
}

impl Drop for FakeSegment {
    fn drop(&mut self) {
        // Safety: `name` is a C string; `base`/`len` are `create`'s mapping,
        // unmapped once, here, after every producer and view of it is gone (the
        // collector maps its own).
        unsafe {
            libc::shm_unlink(self.name.as_ptr());
            libc::munmap(self.base as *mut libc::c_void, self.len);
        }
    }
}

/// Waits (as `overflow=block` does) until the collector made room.
fn push(p: &mut Producer, msg: &[u8]) {
    let mut spins = 0u32;
    while !p.push(msg) {
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// Publishes `c` as the shim does (its events numbered from `*published`),
/// and empties it.
fn publish(p: &mut Producer, c: &mut ChunkBuffer, published: &mut u64) {
    if !c.is_empty() {
        let events = c.events();
        push(p, c.seal(0, *published));
        *published += events;
        c.clear();
    }
}

fn device_meta(id: u16, name: &str) -> Vec<u8> {
    let mut msg = capnp::message::Builder::new_default();
    let mut d = msg.init_root::<meta::Builder>().init_device();
    d.set_id(id);
    d.set_name(name);
    capnp::serialize::write_message_to_words(&msg)
}

/// One translated block of `n` Thumb instructions at `pc` (`id` must say `n`).
fn block_meta(id: u64, pc: u64, n: u32) -> Vec<u8> {
    let mut msg = capnp::message::Builder::new_default();
    let mut b = msg.init_root::<meta::Builder>().init_block();
    b.set_id(id);
    b.set_pc(pc);
    let mut list = b.init_insns(n);
    for i in 0..n {
        let mut insn = list.reborrow().get(i);
        insn.set_pc(pc + 2 * i as u64);
        insn.set_bytes(&[0x1a, 0x44]);
        insn.set_disas("add r2, r3");
        insn.set_symbol("fw_main");
    }
    capnp::serialize::write_message_to_words(&msg)
}

/// What the producer plays.
#[derive(Clone, Copy)]
enum Workload {
    /// `iterations` m3loop iterations: 5 accesses each, one of them MMIO.
    Mem { iterations: u64 },
    /// `blocks` executions of one 10-instruction block.
    Insn { blocks: u64 },
    /// A `null-collector --dump` file's messages, for vCPU 0, captured with
    /// `events` (the shim's option string); `records` events.
    Recorded {
        dump: &'static [u8],
        records: u64,
        options: &'static str,
    },
}

/// The messages of a `null-collector --dump` file: (is an event record, bytes).
fn dumped(mut dump: &[u8]) -> impl Iterator<Item = (bool, &[u8])> {
    std::iter::from_fn(move || {
        let ring = u64::from_le_bytes(dump.get(..8)?.try_into().unwrap());
        let len = trace_schema::ring::message_len(&dump[8..]).expect("a dumped message");
        let m = &dump[8..8 + len];
        dump = &dump[8 + len..];
        Some((ring == 0, m))
    })
}

impl Workload {
    fn options(self) -> &'static str {
        match self {
            Workload::Mem { .. } => "events=mem+mmio,overflow=block,wait=on",
            Workload::Insn { .. } => "events=insn,overflow=block,wait=on",
            Workload::Recorded { options, .. } => options,
        }
    }

    /// Rows of the main table.
    fn rows(self) -> u64 {
        match self {
            Workload::Mem { iterations } => 5 * iterations,
            Workload::Insn { blocks } => 10 * blocks,
            Workload::Recorded { records, .. } => records,
        }
    }

    /// Plays the shim: every event, gathered in chunks as the shim does,
    /// then the final counters and `qemu_exited`.
    fn produce(self, seg: &FakeSegment) {
        let (mut events, mut metas) = seg.producers();
        let mut written = 0u64;
        let icount;
        match self {
            Workload::Mem { iterations } => {
                push(&mut metas, &device_meta(0, "anon0x5581c0de"));
                let mut c = ChunkBuffer::accesses();
                let ram = |pc, addr, store, value| MemAccess {
                    pc,
                    vaddr: addr,
                    paddr: addr,
                    value,
                    icount_delta: 0,
                    size: 4,
                    flags: if store { FLAG_STORE } else { 0 },
                    device: NO_DEVICE,
                };
                let mut s = 0u64;
                for k in 0..iterations {
                    let base = 11 + 10 * k;
                    let n = iterations - k;
                    let cvr = 0xff_ffff - (k * 10) % 0x100_0000;
                    let accesses = [
                        (base, ram(0x2a, 0x2000_0000, true, n)),
                        (base + 1, ram(0x2c, 0x2000_0004, true, s)),
                        (base + 2, ram(0x2e, 0x2000_0000, false, n)),
                        (base + 4, ram(0x32, 0x2000_0004, false, s)),
                        (
                            base + 6,
                            MemAccess {
                                flags: FLAG_IO,
                                device: 0,
                                ..ram(0x36, 0xe000_e018, false, cvr)
                            },
                        ),
                    ];
                    for (icount, mut a) in accesses {
                        if c.room() == 0 {
                            publish(&mut events, &mut c, &mut written);
                        }
                        if c.is_empty() {
                            c.start(icount, 0);
                        }
                        a.icount_delta = (icount - c.icount()) as u32;
                        c.push_access(&a, true);
                    }
                    s = ((s + n) ^ s).wrapping_add(cvr) & 0xffff_ffff;
                }
                publish(&mut events, &mut c, &mut written);
                icount = 11 + 10 * iterations;
            }
            Workload::Insn { blocks } => {
                let id = chunk::block_id(0, 10);
                push(&mut metas, &block_meta(id, 0x2a, 10));
                let mut c = ChunkBuffer::blocks();
                for b in 0..blocks {
                    if c.room() == 0 {
                        publish(&mut events, &mut c, &mut written);
                    }
                    if c.is_empty() {
                        c.start(10 * b, 0);
                    }
                    c.push_block(id);
                }
                publish(&mut events, &mut c, &mut written);
                icount = 10 * blocks;
            }
            Workload::Recorded { dump, .. } => {
                // The dump starts in the middle of the guest's stream: its
                // chunks are numbered again from 0, as the collector counts.
                let mut last = 0;
                for (event, m) in dumped(dump) {
                    if event {
                        let mut m = m.to_vec();
                        m[16..24].copy_from_slice(&written.to_le_bytes());
                        let c = chunk::parse(&m).expect("a dumped chunk");
                        let base = c.header().icount;
                        // Where the chunk's last event leaves the count.
                        (last, written) = match c {
                            chunk::Chunk::Accesses(..) => (
                                c.accesses()
                                    .last()
                                    .map_or(base, |a| base + a.icount_delta as u64 + 1),
                                written + c.accesses().filter(|a| !a.is_high_half()).count() as u64,
                            ),
                            chunk::Chunk::Blocks(..) => (
                                base + c.blocks().map(chunk::block_insns).sum::<u64>(),
                                written + c.blocks().count() as u64,
                            ),
                        };
                        push(&mut events, &m);
                    } else {
                        push(&mut metas, m);
                    }
                }
                icount = last;
            }
        }
        let c = &seg.view.vcpu(0).counters;
        c.final_icount.store(icount, Ordering::Relaxed);
        c.events_written.store(written, Ordering::Relaxed);
        seg.view.header().qemu_exited.store(1, Ordering::Release);
    }
}

/// What one capture cost.
struct Cost {
    /// Wall time of the `attach` call.
    wall: Duration,
    /// CPU time of the collector's threads during it (the process's, less
    /// the producer thread's).
    cpu: Duration,
}

fn cpu_clock(clock: libc::clockid_t) -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Safety: `t` is a valid, writable `timespec` for the call.
    unsafe { libc::clock_gettime(clock, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// One capture of `w`.
fn capture_once(w: Workload, out: &PathBuf, threads: Option<usize>) -> Cost {
    let seg = FakeSegment::create(w.options());
    let _ = std::fs::remove_dir_all(out);
    std::thread::scope(|s| {
        let producer = s.spawn(|| {
            let started = cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID);
            // The shim records nothing before a collector attaches.
            while State::of(seg.view.header()) != Ok(State::Attached) {
                std::thread::sleep(Duration::from_micros(100));
            }
            w.produce(&seg);
            cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID) - started
        });
        let started = Instant::now();
        let cpu_started = cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID);
        let summary = attach(&AttachArgs {
            pid: std::process::id(),
            out: out.clone(),
            overwrite: true,
            append: false,
            qmp: None,
            device_map: None,
            part_rows: trace_collector::DEFAULT_PART_ROWS,
            flush_every: None,
            threads,
            show_progress: false,
            events: None,
            overflow: None,
            duration: None,
            until_pc: None,
            until_device: None,
            until_icount: None,
            max_events: None,
            from_pc: None,
            from_device: None,
        })
        .expect("attach");
        let wall = started.elapsed();
        let cpu = cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID) - cpu_started;
        std::hint::black_box(summary);
        let producer_cpu = producer.join().unwrap();
        Cost {
            wall,
            cpu: cpu.saturating_sub(producer_cpu),
        }
    })
}

fn bench(c: &mut Criterion) {
    // As the trace-collector binary does first thing.
    trace_collector::keep_freed_memory();
    let out = std::env::temp_dir().join(format!("trace-bench-drain.{}", std::process::id()));
    let mut g = c.benchmark_group("drain_parquet");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.warm_up_time(Duration::from_secs(1));
    let mut workloads = vec![
        Workload::Mem {
            iterations: 1_000_000,
        },
        Workload::Insn { blocks: 500_000 },
    ];
    match std::env::var_os("BENCH_RECORDS") {
        Some(path) => {
            let dump: &'static [u8] = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("BENCH_RECORDS={}: {e}", path.to_string_lossy()))
                .leak();
            let records = dumped(dump)
                .filter(|(event, _)| *event)
                .map(|(_, m)| match chunk::parse(m).expect("a dumped chunk") {
                    c @ chunk::Chunk::Accesses(..) => {
                        c.accesses().filter(|a| !a.is_high_half()).count() as u64
                    }
                    c @ chunk::Chunk::Blocks(..) => c.blocks().count() as u64,
                })
                .sum();
            // The events the dump was made with (its records' kinds).
            let events = std::env::var("BENCH_RECORDS_EVENTS").unwrap_or("mem+mmio".into());
            let options = format!("events={events},overflow=block,wait=on").leak();
            workloads.push(Workload::Recorded {
                dump,
                records,
                options,
            });
        }
        None => eprintln!("drain_parquet: BENCH_RECORDS not set: the recorded group is skipped"),
    }
    for w in workloads {
        let name = match w {
            Workload::Mem { .. } => "mem (m3loop pattern, 5M rows)".to_string(),
            Workload::Insn { .. } => "insn (10-insn blocks, 5M rows)".to_string(),
            Workload::Recorded {
                records, options, ..
            } => match options.split(',').next() {
                Some("events=mem+mmio") => format!("mem (recorded, {records} records)"),
                Some(events) => format!("{events} (recorded, {records} records)"),
                None => unreachable!("options start with events="),
            },
        };
        g.throughput(Throughput::Elements(w.rows()));
        g.bench_function(&name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| capture_once(w, &out, None).wall).sum())
        });
        if let Workload::Recorded { .. } = w {
            // On a guest that leaves the collector one core, its CPU time
            // is what bounds the capture.
            g.bench_function(format!("{name}, collector CPU time"), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| capture_once(w, &out, None).cpu).sum())
            });
            // How the wall time scales with the encoder threads (`--threads`).
            for threads in [1, 2] {
                g.bench_function(format!("{name}, {threads} encoder threads"), |b| {
                    b.iter_custom(|iters| {
                        (0..iters)
                            .map(|_| capture_once(w, &out, Some(threads)).wall)
                            .sum()
                    })
                });
            }
        }
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&out);
}

criterion_group!(benches, bench);
criterion_main!(benches);
