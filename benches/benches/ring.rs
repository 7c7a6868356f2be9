//! The shim's hot path and the collector's drain, without QEMU: encoding an
//! event record, pushing it into a ring, and draining + decoding it.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use trace_schema::record::{Event, EVENT_RECORD_BYTES, FLAG_STORE, KIND_MEM};
use trace_schema::ring::HeapRing;

fn event(i: u64) -> Event {
    Event {
        kind: KIND_MEM,
        size: 4,
        flags: FLAG_STORE,
        device: u16::MAX,
        vcpu: 0,
        icount: i,
        pc: 0x1000 + i,
        vaddr: 0x2000_0000 + (i & 0xfff),
        paddr: 0x2000_0000 + (i & 0xfff),
        value: i,
        value_hi: 0,
        asid: 0,
    }
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| {
        let mut rec = [0u8; EVENT_RECORD_BYTES];
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            black_box(event(i)).encode(&mut rec);
            black_box(&rec);
        })
    });
    g.bench_function("decode", |b| {
        let mut rec = [0u8; EVENT_RECORD_BYTES];
        event(7).encode(&mut rec);
        b.iter(|| black_box(Event::decode(black_box(&rec))))
    });
    g.finish();
}

/// Push N records then drain them all, single-threaded: the per-record cost
/// of both ends without cache-line ping-pong.
fn push_then_drain(c: &mut Criterion) {
    const N: u64 = 100_000;
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(N));
    g.bench_function("push+drain 80-byte records", |b| {
        let mut ring = HeapRing::new(16 << 20);
        let (mut p, mut cons) = ring.split();
        let mut rec = [0u8; EVENT_RECORD_BYTES];
        b.iter_batched(
            || (),
            |_| {
                for i in 0..N {
                    event(i).encode(&mut rec);
                    assert!(p.push(&rec));
                }
                let mut sum = 0u64;
                cons.drain(|m| {
                    let e = Event::decode(m.try_into().unwrap()).unwrap();
                    sum = sum.wrapping_add(e.value);
                    Ok::<(), ()>(())
                })
                .unwrap();
                black_box(sum)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// A producer thread and a consumer thread, as in a capture.
fn concurrent(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    g.bench_function("concurrent producer/consumer, 1 MiB ring", |b| {
        b.iter(|| {
            let mut ring = HeapRing::new(1 << 20);
            let (mut p, mut cons) = ring.split();
            std::thread::scope(|s| {
                s.spawn(move || {
                    let mut rec = [0u8; EVENT_RECORD_BYTES];
                    for i in 0..N {
                        event(i).encode(&mut rec);
                        while !p.push(&rec) {
                            std::hint::spin_loop();
                        }
                    }
                });
                let mut seen = 0;
                while seen < N {
                    seen += cons.drain(|_| Ok::<(), ()>(())).unwrap() as u64;
                }
            });
        })
    });
    g.finish();
}

criterion_group!(benches, encode, push_then_drain, concurrent);
criterion_main!(benches);
