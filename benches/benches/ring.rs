//! The shim's hot path and the collector's drain, without QEMU: recording
//! events into a chunk, publishing full chunks into a ring, and draining and
//! reading them back.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use trace_schema::chunk::{self, ChunkBuffer, MemAccess, FLAG_STORE};
use trace_schema::ring::{HeapRing, Producer};

fn access(i: u64) -> MemAccess {
    MemAccess {
        pc: 0x1000 + i,
        vaddr: 0x2000_0000 + (i & 0xfff),
        paddr: 0x2000_0000 + (i & 0xfff),
        value: i,
        icount_delta: 0,
        size: 4,
        flags: FLAG_STORE,
        device: u16::MAX,
    }
}

/// Records access `i` as the shim does: into the open chunk, published into
/// `ring` when full.
#[inline(always)]
fn record(c: &mut ChunkBuffer, ring: &mut Producer, published: &mut u64, i: u64) {
    if c.room() == 0 {
        let events = c.events();
        assert!(ring.push(c.seal(0, *published)));
        *published += events;
        c.clear();
    }
    if c.is_empty() {
        c.start(i, 0);
    }
    let mut a = access(i);
    a.icount_delta = (i - c.icount()) as u32;
    c.push_access(&a, true);
}

/// Record N accesses (publishing full chunks) then drain them all,
/// single-threaded: the per-event cost of both ends without cache-line
/// ping-pong.
fn record_then_drain(c: &mut Criterion) {
    const N: u64 = 100_000;
    let mut g = c.benchmark_group("chunks");
    g.throughput(Throughput::Elements(N));
    g.bench_function("record 40-byte accesses in chunks", |b| {
        let ring = HeapRing::new(16 << 20);
        let (mut p, mut cons) = ring.split();
        let mut chunk = ChunkBuffer::accesses();
        let mut published = 0;
        b.iter(|| {
            for i in 0..N {
                record(&mut chunk, &mut p, &mut published, i);
            }
            cons.drain(|_| Ok::<u64, ()>(0)).unwrap();
        })
    });
    g.bench_function("record + drain + read 40-byte accesses", |b| {
        let ring = HeapRing::new(16 << 20);
        let (mut p, mut cons) = ring.split();
        let mut chunk = ChunkBuffer::accesses();
        let mut published = 0;
        b.iter(|| {
            for i in 0..N {
                record(&mut chunk, &mut p, &mut published, i);
            }
            let mut sum = 0u64;
            cons.drain(|m| {
                let c = chunk::parse(m).unwrap();
                for a in c.accesses() {
                    sum = sum.wrapping_add(a.value);
                }
                Ok::<u64, ()>(0)
            })
            .unwrap();
            black_box(sum)
        })
    });
    g.bench_function("record 8-byte blocks in chunks", |b| {
        let ring = HeapRing::new(16 << 20);
        let (mut p, mut cons) = ring.split();
        let mut chunk = ChunkBuffer::blocks();
        let mut published = 0;
        b.iter(|| {
            for i in 0..N {
                if chunk.room() == 0 {
                    let events = chunk.events();
                    assert!(p.push(chunk.seal(0, published)));
                    published += events;
                    chunk.clear();
                }
                if chunk.is_empty() {
                    chunk.start(i, 0);
                }
                chunk.push_block(black_box(chunk::block_id(i, 4)));
            }
            cons.drain(|_| Ok::<u64, ()>(0)).unwrap();
        })
    });
    g.finish();
}

/// A producer thread and a consumer thread, as in a capture.
fn concurrent(c: &mut Criterion) {
    const N: u64 = 10_000_000;
    let mut g = c.benchmark_group("chunks");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    g.bench_function("concurrent recorder/drain, 1 MiB ring", |b| {
        b.iter(|| {
            let ring = HeapRing::new(1 << 20);
            let (mut p, mut cons) = ring.split();
            std::thread::scope(|s| {
                s.spawn(move || {
                    let mut chunk = ChunkBuffer::accesses();
                    let mut published = 0;
                    for i in 0..N {
                        if chunk.room() == 0 {
                            let events = chunk.events();
                            while !p.push(chunk.seal(0, published)) {
                                std::hint::spin_loop();
                            }
                            published += events;
                            chunk.clear();
                        }
                        if chunk.is_empty() {
                            chunk.start(i, 0);
                        }
                        let mut a = access(i);
                        a.icount_delta = (i - chunk.icount()) as u32;
                        chunk.push_access(&a, true);
                    }
                });
                let full = N / chunk::MAX_ACCESSES as u64 * chunk::MAX_ACCESSES as u64;
                let mut seen = 0;
                while seen < full {
                    cons.drain(|m| {
                        seen += chunk::parse(m).unwrap().accesses().count() as u64;
                        Ok::<u64, ()>(0)
                    })
                    .unwrap();
                }
            });
        })
    });
    g.finish();
}

criterion_group!(benches, record_then_drain, concurrent);
criterion_main!(benches);
