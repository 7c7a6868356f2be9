//! A yardstick for the end-to-end benchmark: the real shim and its rings with
//! a collector that drains every ring and throws the records away (no
//! tables, no Parquet; it only counts each chunk's events). The time QEMU takes under it is what the
//! shim and the ring cost on their own; the gap to `trace-collector run` is
//! the collector's share.
//!
//! ```text
//! null-collector --shim PATH --events mem+mmio [--shim-option K=V]... [--dump FILE --dump-skip N --dump-records M] -- qemu-system-... [args]
//! ```
//!
//! Starts QEMU with `-plugin PATH,events=...,[K=V,...]overflow=block,wait=on`, attaches
//! to its segment as `trace-collector` does (`trace_schema::attach`), drains until the shim announces QEMU's exit, and prints
//! `null-collector: events=N meta=M bytes=B` on stderr. Exits with QEMU's
//! status.
//!
//! `--dump FILE` also writes vCPU 0's event chunks from the one holding its
//! event number N to the one holding event N+M-1 (and every meta message of
//! vCPU 0 before the last of them) to FILE, in the order a collector meets
//! them: each message after an 8-byte word saying its ring (0: events, 1:
//! meta). The drain benchmark replays such a file
//! (`BENCH_RECORDS`, see benches/README.md) to measure the collector on a
//! real guest's records.

use std::ffi::CString;
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use trace_schema::attach;
use trace_schema::chunk::{self, Chunk};
use trace_schema::layout::{self, Header, SegmentView, HEADER_BYTES};
use trace_schema::ring::Consumer;
use trace_schema::sync::Ordering;

fn usage() -> ! {
    eprintln!(
        "usage: null-collector --shim PATH --events EVENTS [--shim-option K=V]... -- QEMU [ARGS...]"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut shim = None;
    let mut events = "mem+mmio".to_string();
    let mut shim_options = String::new();
    let mut dump_path: Option<String> = None;
    let (mut dump_skip, mut dump_records) = (0u64, 5_000_000u64);
    let number =
        |v: Option<&String>| -> u64 { v.and_then(|s| s.parse().ok()).unwrap_or_else(|| usage()) };
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--shim" => {
                shim = args.get(i + 1).cloned();
                i += 2;
            }
            "--events" => {
                events = args
                    .get(i + 1)
                    .cloned()
                    .unwrap_or_else(|| usage())
                    .replace(',', "+");
                i += 2;
            }
            "--shim-option" => {
                shim_options.push_str(args.get(i + 1).unwrap_or_else(|| usage()));
                shim_options.push(',');
                i += 2;
            }
            "--dump" => {
                dump_path = Some(args.get(i + 1).unwrap_or_else(|| usage()).clone());
                i += 2;
            }
            "--dump-skip" => {
                dump_skip = number(args.get(i + 1));
                i += 2;
            }
            "--dump-records" => {
                dump_records = number(args.get(i + 1));
                i += 2;
            }
            "--" => {
                i += 1;
                break;
            }
            _ => usage(),
        }
    }
    let mut dump = dump_path.map(|path| {
        let file = std::fs::File::create(&path).unwrap_or_else(|e| {
            eprintln!("null-collector: cannot create {path}: {e}");
            std::process::exit(1)
        });
        Dump {
            out: std::io::BufWriter::new(file),
            seen: 0,
            skip: dump_skip,
            records: dump_records,
            dumped: 0,
        }
    });
    let qemu = &args[i..];
    let (Some(shim), Some(binary)) = (shim, qemu.first()) else {
        usage()
    };
    let mut child = Command::new(binary)
        .args(&qemu[1..])
        .arg("-plugin")
        .arg(format!(
            "{shim},events={events},{shim_options}overflow=block,wait=on"
        ))
        .spawn()
        .unwrap_or_else(|e| {
            eprintln!("null-collector: cannot start {binary}: {e}");
            std::process::exit(1)
        });
    let pid = child.id();

    // The segment: wait for the shim to create it and write its header.
    let name = CString::new(layout::segment_name(pid)).unwrap();
    let started = Instant::now();
    let (base, len) = loop {
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!("null-collector: QEMU exited before creating its segment: {status}");
            std::process::exit(1);
        }
        let fd = unsafe { libc::shm_open(name.as_ptr(), libc::O_RDWR, 0) };
        if fd >= 0 {
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            unsafe { libc::fstat(fd, &mut st) };
            let len = st.st_size as usize;
            if len >= HEADER_BYTES {
                let base = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        fd,
                        0,
                    )
                };
                unsafe { libc::close(fd) };
                assert!(base != libc::MAP_FAILED, "mmap");
                let header = unsafe { &*(base as *const Header) };
                if header.validate(len as u64).is_ok() {
                    break (base as *mut u8, len);
                }
                unsafe { libc::munmap(base, len) };
            } else {
                unsafe { libc::close(fd) };
            }
        }
        if started.elapsed() > Duration::from_secs(20) {
            eprintln!("null-collector: no valid segment for QEMU pid {pid}");
            let _ = child.kill();
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let header = unsafe { &*(base as *const Header) };
    let geometry = header.validate(len as u64).unwrap();
    let view = unsafe { SegmentView::new(base, geometry) };

    // Per vCPU its meta ring, then its event ring, as trace-collector
    // drains them (a device is announced before its first access).
    let mut rings: Vec<Consumer> = Vec::new();
    for v in 0..geometry.n_vcpus {
        let c = view.vcpu(v);
        unsafe {
            rings.push(Consumer::new(
                &c.meta_ring,
                view.meta_data(v),
                geometry.meta_ring_bytes,
            ));
            rings.push(Consumer::new(
                &c.event_ring,
                view.event_data(v),
                geometry.event_ring_bytes,
            ));
        }
    }

    // Attach as trace-collector does (trace_schema::attach).
    attach::attach(header, std::process::id(), attach::process_alive, 0, || {})
        .expect("attach to the shim's segment");

    let (mut events, mut metas, mut bytes, mut sum) = (0u64, 0u64, 0u64, 0u64);
    let mut drain_all = |rings: &mut [Consumer]| -> u64 {
        let mut n = 0;
        for (k, r) in rings.iter_mut().enumerate() {
            let got = r
                .drain(|m| {
                    bytes += m.len() as u64;
                    // Read one word of each message, as any consumer must.
                    sum = sum.wrapping_add(u64::from_le_bytes(m[16..24].try_into().unwrap()));
                    let weight = if k % 2 == 1 { chunk_events(m) } else { 0 };
                    if let Some(d) = dump.as_mut().filter(|_| k < 2) {
                        d.message(weight, k == 1, m);
                    }
                    events += weight;
                    metas += (k % 2 == 0) as u64;
                    Ok::<u64, ()>(weight)
                })
                .expect("ring") as u64;
            n += got;
        }
        n
    };
    loop {
        let exited = header.qemu_exited.load(Ordering::Acquire) == 1;
        let n = drain_all(&mut rings);
        if exited {
            drain_all(&mut rings);
            break;
        }
        if n == 0 {
            if let Ok(Some(_)) = child.try_wait() {
                drain_all(&mut rings);
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    let status = child.wait().expect("wait");
    if let Some(mut d) = dump {
        d.out.flush().expect("write the dump");
        eprintln!("null-collector: dumped {} of vCPU 0's events", d.dumped);
    }
    eprintln!("null-collector: events={events} meta={metas} bytes={bytes} (checksum {sum:x})");
    std::process::exit(status.code().unwrap_or(1));
}

/// The events of event chunk `m` (a 16-byte access's two records are one).
fn chunk_events(m: &[u8]) -> u64 {
    match chunk::parse(m).expect("an event chunk") {
        c @ Chunk::Accesses(..) => c.accesses().filter(|a| !a.is_high_half()).count() as u64,
        c @ Chunk::Blocks(..) => c.blocks().count() as u64,
    }
}

/// `--dump`: vCPU 0's messages, as a collector meets them.
struct Dump {
    out: std::io::BufWriter<std::fs::File>,
    /// Events seen so far.
    seen: u64,
    /// Events in the chunks dumped.
    dumped: u64,
    skip: u64,
    records: u64,
}

impl Dump {
    /// Message `m` of `events` events (an event chunk), or a meta message.
    fn message(&mut self, events: u64, event: bool, m: &[u8]) {
        let wanted = if event {
            let first = self.seen;
            self.seen += events;
            first < self.skip + self.records && self.seen > self.skip
        } else {
            self.seen < self.skip + self.records
        };
        if wanted && event {
            self.dumped += events;
        }
        if wanted {
            let ring: u64 = if event { 0 } else { 1 };
            self.out
                .write_all(&ring.to_le_bytes())
                .and_then(|()| self.out.write_all(m))
                .expect("write the dump");
        }
    }
}
