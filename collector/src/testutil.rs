//! A fake shim for the unit tests: creates a segment in POSIX shared memory
//! exactly as the real shim lays it out, and publishes chunks of records
//! into its rings with the schema's `ChunkBuffer` and `ring::Producer`.

use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering as StdOrdering};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::mman::{mmap, munmap, shm_open, shm_unlink, MapFlags, ProtFlags};
use nix::sys::stat::Mode;
use nix::unistd::ftruncate;
use trace_schema::chunk::{ChunkBuffer, MemAccess, FLAG_IO, FLAG_STORE, NO_DEVICE};
use trace_schema::events_capnp::meta;
use trace_schema::layout::{Geometry, Header, SegmentView};
use trace_schema::ring::Producer;
use trace_schema::sync::Ordering;

use crate::qemu::segment_view::{Segment, SegmentError};

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct FakeShim {
    pub name: String,
    base: NonNull<c_void>,
    len: usize,
    pub view: SegmentView,
}

// Safety: as `Segment`: shared memory written through atomics, the base
// pointer only used to unmap on drop.
unsafe impl Send for FakeShim {}
unsafe impl Sync for FakeShim {}

impl FakeShim {
    /// A segment of `n_vcpus` with the smallest rings.
    pub fn small(n_vcpus: u32, options: &str) -> FakeShim {
        FakeShim::new(
            Geometry {
                n_vcpus,
                event_ring_bytes: trace_schema::layout::MIN_RING_BYTES,
                meta_ring_bytes: trace_schema::layout::MIN_RING_BYTES,
            },
            options,
        )
    }

    pub fn new(g: Geometry, options: &str) -> FakeShim {
        let name = format!(
            "/trace-collector-test.{}.{}",
            std::process::id(),
            COUNTER.fetch_add(1, StdOrdering::Relaxed)
        );
        let _ = shm_unlink(name.as_str());
        FakeShim::named(&name, g, options)
    }

    /// A segment at `name`, which must not exist.
    pub fn named(name: &str, g: Geometry, options: &str) -> FakeShim {
        g.check().unwrap();
        let name = name.to_string();
        let fd = shm_open(
            name.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let len = g.segment_bytes().unwrap() as usize;
        ftruncate(&fd, len as i64).unwrap();
        // Safety: a fresh shared mapping of the new object, unmapped once (Drop).
        let base = unsafe {
            mmap(
                None,
                NonZeroUsize::new(len).unwrap(),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }
        .unwrap();
        // Safety: the mapping is `g.segment_bytes()` long and page-aligned,
        // and nobody else has it yet: the header is ours to initialise.
        let h = unsafe { &mut *(base.as_ptr() as *mut Header) };
        h.initialise(g, std::process::id(), options);
        // Safety: the mapping holds the layout of `g`, and outlives the view
        // (both are fields of this FakeShim, unmapped on drop).
        let view = unsafe { SegmentView::new(base.as_ptr() as *mut u8, g) };
        FakeShim {
            name,
            base,
            len,
            view,
        }
    }

    pub fn header(&self) -> &Header {
        self.view.header()
    }

    #[allow(clippy::mut_from_ref)]
    pub fn header_mut(&self) -> &mut Header {
        // Safety: test-only: tests write the header's plain fields while no
        // collector reads them (before `open`), as the shim does at creation.
        unsafe { &mut *(self.base.as_ptr() as *mut Header) }
    }

    pub fn open(&self) -> Result<Segment, SegmentError> {
        self.open_with_wait(Duration::from_millis(100))
    }

    pub fn open_with_wait(&self, wait: Duration) -> Result<Segment, SegmentError> {
        Segment::open_named(&self.name, std::process::id(), wait)
    }

    /// vCPU `v`'s side of the shim (one at a time per vCPU).
    pub fn vcpu(&self, v: u32) -> FakeVcpu {
        let g = self.view.geometry;
        let c = self.view.vcpu(v);
        // Safety: the rings are in the mapping, which outlives the producers
        // (tests drop them before the FakeShim), and a test makes one
        // producer per vCPU at a time, as the shim has one per vCPU.
        unsafe {
            FakeVcpu {
                index: v as u16,
                events: Producer::new(&c.event_ring, self.view.event_data(v), g.event_ring_bytes),
                meta: Producer::new(&c.meta_ring, self.view.meta_data(v), g.meta_ring_bytes),
                published: 0,
            }
        }
    }

    pub fn finish(&self, final_icounts: &[u64]) {
        for (v, &n) in final_icounts.iter().enumerate() {
            self.view
                .vcpu(v as u32)
                .counters
                .final_icount
                .store(n, Ordering::Relaxed);
        }
        self.header().qemu_exited.store(1, Ordering::Release);
    }
}

impl Drop for FakeShim {
    fn drop(&mut self) {
        let _ = shm_unlink(self.name.as_str());
        // Safety: our mapping; `view` goes with us.
        unsafe { munmap(self.base, self.len) }.ok();
    }
}

/// Pushes, waiting (like overflow=block) while the ring is full.
pub fn push(p: &mut Producer, msg: &[u8]) {
    while !p.push(msg) {
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// One vCPU of the fake shim: publishes chunks as the shim does, numbering
/// their events.
pub struct FakeVcpu {
    pub index: u16,
    pub events: Producer,
    pub meta: Producer,
    /// Events published so far.
    pub published: u64,
}

impl FakeVcpu {
    pub fn meta(&mut self, msg: &[u8]) {
        push(&mut self.meta, msg);
    }

    /// Publishes `c` and empties it.
    fn publish(&mut self, c: &mut ChunkBuffer) {
        let events = c.events();
        push(&mut self.events, c.seal(self.index, self.published));
        self.published += events;
        c.clear();
    }

    /// One chunk of `accesses`, in address space `asid`, counted from the
    /// first one's icount.
    pub fn accesses(&mut self, asid: u64, accesses: &[Access]) {
        let mut c = ChunkBuffer::accesses();
        c.start(accesses.first().map_or(0, |a| a.icount), asid);
        for a in accesses {
            let mut record = a.record;
            record.icount_delta = (a.icount - c.icount()) as u32;
            c.push_access(&record, true);
            if let Some(value) = a.high {
                let half = MemAccess {
                    value,
                    flags: record.flags | trace_schema::chunk::FLAG_HIGH_HALF,
                    ..record
                };
                c.push_access(&half, false);
            }
        }
        self.publish(&mut c);
    }

    /// A chunk of one access (address space 0).
    pub fn access(&mut self, a: Access) {
        self.accesses(0, &[a]);
    }

    /// One chunk of blocks `ids`, the first starting at `icount`, each
    /// after the whole of the one before.
    pub fn blocks(&mut self, icount: u64, ids: &[u64]) {
        let mut c = ChunkBuffer::blocks();
        c.start(icount, 0);
        for &id in ids {
            c.push_block(id);
        }
        self.publish(&mut c);
    }

    /// Any bytes, as a message of the event ring.
    pub fn raw(&mut self, msg: &[u8]) {
        push(&mut self.events, msg);
    }
}

/// An access as the shim sees it: its record, its icount, the high half of
/// a 16-byte access's value.
#[derive(Clone, Copy)]
pub struct Access {
    pub icount: u64,
    pub record: MemAccess,
    pub high: Option<u64>,
}

pub fn mem(icount: u64, pc: u64, vaddr: u64, store: bool, size: u8, value: u64) -> Access {
    Access {
        icount,
        record: MemAccess {
            pc,
            vaddr,
            paddr: vaddr,
            value,
            icount_delta: 0,
            size,
            flags: if store { FLAG_STORE } else { 0 },
            device: NO_DEVICE,
        },
        high: (size > 8).then_some(0),
    }
}

pub fn mmio(icount: u64, pc: u64, paddr: u64, store: bool, device: u16, value: u64) -> Access {
    let mut a = mem(icount, pc, paddr, store, 4, value);
    a.record.flags |= FLAG_IO;
    a.record.device = device;
    a
}

pub fn device_meta(id: u16, name: &str) -> Vec<u8> {
    let mut msg = capnp::message::Builder::new_default();
    let mut d = msg.init_root::<meta::Builder>().init_device();
    d.set_id(id);
    d.set_name(name);
    capnp::serialize::write_message_to_words(&msg)
}

/// A block of instructions `(pc, bytes, disas, symbol)`.
pub fn block_meta(id: u64, pc: u64, insns: &[(u64, &[u8], &str, &str)]) -> Vec<u8> {
    let mut msg = capnp::message::Builder::new_default();
    let mut b = msg.init_root::<meta::Builder>().init_block();
    b.set_id(id);
    b.set_pc(pc);
    let mut list = b.init_insns(insns.len() as u32);
    for (i, (pc, bytes, disas, symbol)) in insns.iter().enumerate() {
        let mut insn = list.reborrow().get(i as u32);
        insn.set_pc(*pc);
        insn.set_bytes(bytes);
        insn.set_disas(*disas);
        insn.set_symbol(*symbol);
    }
    capnp::serialize::write_message_to_words(&msg)
}

/// A fresh, empty temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "trace-collector-test.{}.{}.{what}",
            std::process::id(),
            COUNTER.fetch_add(1, StdOrdering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
