//! One vCPU's side of the segment: its event ring producer and the chunks
//! it gathers events in (hot path), its meta ring producer, and its
//! device-name cache.
//!
//! Callbacks for a vCPU run on that vCPU's thread (one thread per vCPU under
//! MTTCG; one thread for all under round-robin TCG), so the event producer and
//! the chunks are never used by two threads at once: that is what makes the
//! ring SPSC. The meta ring is also written at translation time, which QEMU
//! runs on whichever thread translates, so it is guarded by a spin lock
//! (never on the hot path).
//!
//! Events are gathered in two chunks per vCPU, one of memory accesses and
//! one of executed blocks (`trace_schema::chunk`), each published whole into
//! the event ring when it is full, when the collector asks
//! (`Header::flush_epoch`), when the vCPU goes idle, when the collector
//! detaches, and when QEMU exits.

use crate::access_kind::AccessKinds;
use std::cell::UnsafeCell;
use std::ffi::{c_char, CStr};
use std::sync::atomic::AtomicBool;
use trace_schema::attach::{self, State};
use trace_schema::chunk::{ChunkBuffer, MemAccess, FLAG_HIGH_HALF};
use trace_schema::events_capnp::meta;
use trace_schema::layout::{Header, SegmentView, VcpuControl};
use trace_schema::options::Overflow;
use trace_schema::ring::Producer;
use trace_schema::sync::Ordering;

/// Device names remembered per vCPU. QEMU interns the names it returns, so the
/// pointer identifies the name and a lookup is a pointer comparison.
const MAX_DEVICES: usize = 1024;

pub struct VcpuSlot {
    index: u32,
    control: *const VcpuControl,
    events: UnsafeCell<Producer>,
    /// The open chunks (see the module docs).
    accesses: UnsafeCell<Box<ChunkBuffer>>,
    blocks: UnsafeCell<Box<ChunkBuffer>>,
    /// `Header::flush_epoch` as of this vCPU's last flush.
    flushed_epoch: UnsafeCell<u32>,
    /// Events published into the event ring since QEMU started: the next
    /// chunk's `firstIndex`. Written by this vCPU's thread only (load +
    /// store, no read-modify-write); atomic because the exiting thread
    /// reads it.
    published: std::sync::atomic::AtomicU64,
    /// Who may touch the chunks: see `Life`.
    life: std::sync::atomic::AtomicU8,
    meta_lock: AtomicBool,
    meta: UnsafeCell<Producer>,
    devices: UnsafeCell<DeviceCache>,
    /// The kinds of access this vCPU made (see `access_kind`).
    pub access_kinds: AccessKinds,
}

// Safety: see the module comment: `events`, the chunks, `flushed_epoch`,
// `devices` and `access_kinds` are only touched by the thread running this
// vCPU (or by QEMU's exiting thread once it took them: `Life`), `meta`
// only under `meta_lock`.
unsafe impl Sync for VcpuSlot {}
// Safety: its raw pointers (the control block, QEMU's interned device names)
// point to memory that lives as long as the process, not to a thread's.
unsafe impl Send for VcpuSlot {}

struct DeviceCache {
    /// The attach this cache was filled for: a new collector has not seen our
    /// earlier `Meta.device` messages, so ids are handed out again.
    attach: u32,
    names: Vec<*const c_char>,
    /// With a fixed memory map: (address, device id) of I/O accesses met,
    /// by address (direct-mapped), so that QEMU names each address once:
    /// for an unnamed region it formats and interns a new string at every
    /// call (about 290 ns, most of an MMIO capture's time on Cortex-M).
    at: [(u64, u16); ADDRESSES],
}

/// Entries of `DeviceCache::at` (a power of two).
const ADDRESSES: usize = 64;
/// `DeviceCache::at`'s empty entry (no access is at the last address).
const NO_ADDRESS: (u64, u16) = (u64::MAX, 0);

/// Who may touch a vCPU's chunks, so that QEMU's exiting thread publishes a
/// vCPU's last chunk only while that vCPU cannot (QEMU runs the plugin's
/// exit callback from `exit()`: after pausing every vCPU on a normal
/// shutdown, but a vCPU that paused may not have reached its idle callback
/// yet, and a vCPU that calls `exit()` itself, as Arm semihosting's
/// SYS_EXIT does, leaves the others running).
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Life {
    /// Not initialised: it never ran.
    New,
    /// Running (or between callbacks): its thread owns the chunks.
    Awake,
    /// In QEMU's idle wait, its chunks published: nobody touches them.
    Idle,
    /// Taken by the exiting thread: the vCPU waits in its resume callback
    /// until the process ends.
    Final,
}

impl VcpuSlot {
    pub fn new(view: &SegmentView, index: u32) -> VcpuSlot {
        let g = view.geometry;
        let control = view.vcpu(index);
        // Safety: the ring is in the segment, never unmapped, of a checked
        // power-of-two size; install makes one slot, so one producer, per vCPU.
        let events = unsafe {
            Producer::new(
                &control.event_ring,
                view.event_data(index),
                g.event_ring_bytes,
            )
        };
        // Safety: likewise for the meta ring; its one producer is used under `meta_lock`.
        let meta =
            unsafe { Producer::new(&control.meta_ring, view.meta_data(index), g.meta_ring_bytes) };
        VcpuSlot {
            index,
            control,
            events: UnsafeCell::new(events),
            accesses: UnsafeCell::new(ChunkBuffer::accesses()),
            blocks: UnsafeCell::new(ChunkBuffer::blocks()),
            flushed_epoch: UnsafeCell::new(0),
            published: std::sync::atomic::AtomicU64::new(0),
            life: std::sync::atomic::AtomicU8::new(Life::New as u8),
            meta_lock: AtomicBool::new(false),
            meta: UnsafeCell::new(meta),
            devices: UnsafeCell::new(DeviceCache {
                attach: 0,
                names: Vec::with_capacity(MAX_DEVICES),
                at: [NO_ADDRESS; ADDRESSES],
            }),
            access_kinds: AccessKinds::new(),
        }
    }

    fn control(&self) -> &VcpuControl {
        // Safety: it points into the segment, which is never unmapped.
        unsafe { &*self.control }
    }

    /// Counts `n` events this vCPU could not deliver. Only this vCPU's
    /// thread writes the counter, so load + store is enough (no
    /// read-modify-write).
    #[cold]
    pub fn count_lost(&self, n: u64) {
        let lost = &self.control().counters.events_lost;
        lost.store(lost.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    /// Whether the collector asked for the open chunks since we last
    /// published them (`Header::flush_epoch`): one load of a line the
    /// collector rarely writes.
    #[inline(always)]
    pub fn flush_asked(&self, header: &Header) -> bool {
        // Safety: read on this vCPU's thread, the only one that writes it (`flush`).
        header.flush_epoch.load(Ordering::Relaxed) != unsafe { *self.flushed_epoch.get() }
    }

    /// Whether this vCPU answered the collector's last flush request (any
    /// thread may ask).
    pub fn answered(&self, header: &Header) -> bool {
        // Relaxed (both): a hint for the watcher, which asks again.
        header.flush_epoch.load(Ordering::Relaxed)
            == self.control().flushed_epoch.load(Ordering::Relaxed)
    }

    /// Records one memory access made at `icount` in address space `asid`;
    /// `high` is the upper half of a 16-byte access's value. The hot path:
    /// a few stores into the open chunk.
    #[inline(always)]
    pub fn record_access(
        &self,
        header: &Header,
        overflow: Overflow,
        icount: u64,
        asid: u64,
        access: &mut MemAccess,
        high: Option<u64>,
    ) {
        // Safety: the chunks are this vCPU's thread's alone (module docs); this
        // reference is not used once `restart_accesses` takes its own.
        let chunk = unsafe { &mut **self.accesses.get() };
        let records = 1 + high.is_some() as usize;
        let delta = icount.wrapping_sub(chunk.icount());
        if chunk.is_empty()
            || chunk.room() < records
            || delta > u32::MAX as u64
            || asid != chunk.asid()
        {
            self.restart_accesses(header, overflow, icount, asid);
            access.icount_delta = 0;
        } else {
            access.icount_delta = delta as u32;
        }
        // Safety: this vCPU's thread's alone; the reference above is dead.
        let chunk = unsafe { &mut **self.accesses.get() };
        chunk.push_access(access, true);
        if let Some(value) = high {
            let half = MemAccess {
                value,
                flags: access.flags | FLAG_HIGH_HALF,
                ..*access
            };
            chunk.push_access(&half, false);
        }
    }

    /// The open chunk of accesses cannot take the next one: publish it and
    /// start another at `icount`, in `asid`.
    #[cold]
    #[inline(never)]
    fn restart_accesses(&self, header: &Header, overflow: Overflow, icount: u64, asid: u64) {
        // Safety: on this vCPU's thread, from `record_access`, which does not use
        // its own reference to the chunk meanwhile.
        let chunk = unsafe { &mut **self.accesses.get() };
        self.publish(header, overflow, chunk);
        chunk.start(icount, asid);
    }

    /// Records one executed block `id` starting at `icount`; `stopped_early`:
    /// the block before stopped early, so this one's icount does not follow
    /// from the chunk's (a new chunk says it).
    #[inline(always)]
    pub fn record_block(
        &self,
        header: &Header,
        overflow: Overflow,
        icount: u64,
        id: u64,
        stopped_early: bool,
    ) {
        // Safety: the chunks are this vCPU's thread's alone (module docs); this
        // reference is not used once `restart_blocks` takes its own.
        let chunk = unsafe { &mut **self.blocks.get() };
        if chunk.is_empty() || chunk.room() == 0 || stopped_early {
            self.restart_blocks(header, overflow, icount);
        }
        // Safety: this vCPU's thread's alone; the reference above is dead.
        let chunk = unsafe { &mut **self.blocks.get() };
        chunk.push_block(id);
    }

    #[cold]
    #[inline(never)]
    fn restart_blocks(&self, header: &Header, overflow: Overflow, icount: u64) {
        // Safety: on this vCPU's thread, from `record_block`, which does not use
        // its own reference to the chunk meanwhile.
        let chunk = unsafe { &mut **self.blocks.get() };
        self.publish(header, overflow, chunk);
        chunk.start(icount, 0);
    }

    /// Publishes both open chunks (the collector asked, the vCPU goes idle,
    /// the collector detached, QEMU exits) and notes the epoch asked for.
    #[cold]
    pub fn flush(&self, header: &Header, overflow: Overflow) {
        // Read first: what we publish below was gathered before it.
        let epoch = header.flush_epoch.load(Ordering::Relaxed);
        // Safety: on this vCPU's thread (or the exiting one, once it took the
        // chunks: `Life`), outside `record_*`: no other reference to them.
        unsafe {
            self.publish(header, overflow, &mut *self.accesses.get());
            self.publish(header, overflow, &mut *self.blocks.get());
            *self.flushed_epoch.get() = epoch;
        }
        // Release: a collector that reads the epoch with Acquire sees the
        // chunks published (their ring positions) before it.
        self.control().flushed_epoch.store(epoch, Ordering::Release);
    }

    /// Publishes `chunk` (if it holds anything) into the event ring and
    /// empties it. A full ring: `overflow=drop` counts its events lost;
    /// `overflow=block` waits for the collector to make room, unless it is
    /// gone (then they are lost too).
    fn publish(&self, header: &Header, overflow: Overflow, chunk: &mut ChunkBuffer) {
        if chunk.is_empty() {
            return;
        }
        let events = chunk.events();
        let first = self.published.load(Ordering::Relaxed);
        let message = chunk.seal(self.index as u16, first);
        // Safety: the event producer is this vCPU's thread's alone (module
        // docs), and nothing here re-enters `publish`.
        let ring = unsafe { &mut *self.events.get() };
        let delivered = ring.push(message)
            || (overflow == Overflow::Block
                && attach::draining(header)
                && self.wait_for_room(header, || ring.push(message)));
        if delivered {
            self.published.store(first + events, Ordering::Relaxed);
        } else {
            self.count_lost(events);
        }
        chunk.clear();
    }

    /// Publishes a `Meta` message (translation time, or a device's first
    /// access). Never blocks before a collector has attached.
    pub fn push_meta(&self, header: &Header, overflow: Overflow, message: &[u8]) {
        while self
            .meta_lock
            // Acquire/Release: the lock hands the producer's state from one
            // translating thread to the next.
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        // Safety: we hold `meta_lock` (taken with Acquire above, released
        // below), so no other thread uses the meta producer.
        let ring = unsafe { &mut *self.meta.get() };
        let fits = message.len() as u64 <= ring.capacity() / 2;
        let delivered = fits
            && (ring.push(message)
                || (overflow == Overflow::Block
                    // Armed too: blocks and devices met before the start
                    // trigger are described for the window after it.
                    && matches!(State::of(header), Ok(State::Attached | State::Armed))
                    && self.wait_for_room(header, || ring.push(message))));
        if !delivered {
            let lost = &self.control().counters.meta_lost;
            // Under the lock: one writer at a time.
            lost.store(lost.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
        self.meta_lock.store(false, Ordering::Release);
    }

    /// The id of the device whose interned name is `name`, announcing it on
    /// the meta ring the first time this vCPU meets it under this attach.
    #[inline]
    pub fn device_id(&self, header: &Header, overflow: Overflow, name: *const c_char) -> u16 {
        // Safety: the cache is this vCPU's thread's alone, and `device_at`
        // holds no reference to it while calling us.
        let cache = unsafe { &mut *self.devices.get() };
        let attach = header.attach_count.load(Ordering::Relaxed);
        if cache.attach == attach {
            if let Some(i) = cache.names.iter().position(|&n| n == name) {
                return i as u16;
            }
        } else {
            cache.attach = attach;
            cache.names.clear();
            cache.at = [NO_ADDRESS; ADDRESSES];
        }
        self.new_device(header, overflow, cache, name)
    }

    /// The id of the device at physical address `paddr`, on a core whose
    /// memory map is fixed (the same device at an address for good): QEMU's
    /// `name()` is asked only the first time an address is met under this
    /// attach.
    #[inline]
    pub fn device_at(
        &self,
        header: &Header,
        overflow: Overflow,
        paddr: u64,
        name: impl FnOnce() -> *const c_char,
    ) -> u16 {
        if let Some(id) = self.device_met(header, paddr) {
            return id;
        }
        let at = (paddr >> 2) as usize % ADDRESSES;
        let id = self.device_id(header, overflow, name());
        // Safety: this vCPU's thread's alone; `device_id`'s borrow has ended.
        let cache = unsafe { &mut *self.devices.get() };
        cache.at[at] = (paddr, id);
        id
    }

    /// With a fixed memory map: the id of the device at physical address
    /// `paddr` if this vCPU met an I/O access there under this attach and
    /// still remembers it (`device_at`), else `None`.
    #[inline]
    pub fn device_met(&self, header: &Header, paddr: u64) -> Option<u16> {
        // Safety: this vCPU's thread's alone; the borrow ends with this
        // function.
        let cache = unsafe { &*self.devices.get() };
        let attach = header.attach_count.load(Ordering::Relaxed);
        let (address, id) = cache.at[(paddr >> 2) as usize % ADDRESSES];
        (cache.attach == attach && address == paddr).then_some(id)
    }

    #[cold]
    fn new_device(
        &self,
        header: &Header,
        overflow: Overflow,
        cache: &mut DeviceCache,
        name: *const c_char,
    ) -> u16 {
        if cache.names.len() >= MAX_DEVICES {
            return trace_schema::chunk::NO_DEVICE;
        }
        let id = cache.names.len() as u16;
        cache.names.push(name);
        let text = if name.is_null() {
            ""
        } else {
            // Safety: non-null; callers pass QEMU's device names, interned C
            // strings that live as long as QEMU.
            unsafe { CStr::from_ptr(name) }.to_str().unwrap_or("?")
        };
        let mut msg = capnp::message::Builder::new_default();
        let mut device = msg.init_root::<meta::Builder>().init_device();
        device.set_id(id);
        device.set_name(text);
        self.push_meta(
            header,
            overflow,
            &capnp::serialize::write_message_to_words(&msg),
        );
        id
    }

    /// Publishes this vCPU's open chunks and final counters (QEMU is
    /// exiting; every vCPU has stopped).
    pub fn publish_final(&self, header: &Header, overflow: Overflow, icount: u64) {
        self.flush(header, overflow);
        let c = &self.control().counters;
        c.final_icount.store(icount, Ordering::Relaxed);
        c.events_written
            .store(self.published.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// Whether the vCPU was ever initialised.
    pub fn ran(&self) -> bool {
        self.life.load(Ordering::Relaxed) != Life::New as u8
    }

    /// The vCPU was initialised (on its thread): it owns its chunks.
    pub fn woke(&self) {
        self.life.store(Life::Awake as u8, Ordering::Relaxed);
    }

    /// On the vCPU's thread, in its idle callback, after `flush`.
    pub fn went_idle(&self) {
        // Release: the chunks' last writes happen before the exiting thread's
        // (it takes them with Acquire).
        self.life.store(Life::Idle as u8, Ordering::Release);
    }

    /// On the vCPU's thread, leaving QEMU's idle wait: takes the chunks back,
    /// or, if the exiting thread took them, waits for the process to end.
    pub fn resumed(&self) {
        loop {
            // Acquire: pairs with `went_idle`'s Release (our own writes) and
            // with nothing else (Final is never left).
            match self.life.compare_exchange(
                Life::Idle as u8,
                Life::Awake as u8,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(l) if l == Life::Final as u8 => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(_) => return, // awake already (a resume without an idle)
            }
        }
    }

    /// On QEMU's exiting thread: takes the chunks of a vCPU that is idle, or
    /// becomes idle within `wait` (one that had paused but not yet reached
    /// its idle callback). False for a vCPU that never ran, or still runs.
    pub fn take_for_exit(&self, wait: std::time::Duration) -> bool {
        let started = std::time::Instant::now();
        loop {
            // Acquire: pairs with `went_idle`'s Release.
            match self.life.compare_exchange(
                Life::Idle as u8,
                Life::Final as u8,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(l) if l == Life::New as u8 || l == Life::Final as u8 => return false,
                Err(_) if started.elapsed() >= wait => return false,
                Err(_) => std::thread::sleep(std::time::Duration::from_micros(100)),
            }
        }
    }

    /// Retries `push` until it succeeds (returns true) or the collector is
    /// gone (returns false; the state is then DETACHED and stays so until a
    /// collector attaches again). The wait is counted in this vCPU's
    /// `full_ring_waits` and `full_ring_wait_ns`.
    fn wait_for_room(&self, header: &Header, push: impl FnMut() -> bool) -> bool {
        let started = std::time::Instant::now();
        let delivered = retry_until_room(header, push);
        let waited = started.elapsed().as_nanos() as u64;
        let c = &self.control().counters;
        // Relaxed: plain counters; the collector reads them (for its progress
        // line and its stats) without relying on any other memory.
        c.full_ring_waits.fetch_add(1, Ordering::Relaxed);
        c.full_ring_wait_ns.fetch_add(waited, Ordering::Relaxed);
        delivered
    }
}

/// `VcpuSlot::wait_for_room`'s loop.
fn retry_until_room(header: &Header, mut push: impl FnMut() -> bool) -> bool {
    let mut tries: u64 = 0;
    loop {
        if push() {
            return true;
        }
        if !attach::draining(header) {
            return false;
        }
        tries += 1;
        if tries < 128 {
            std::hint::spin_loop();
            continue;
        }
        // About every 50 ms: is the collector still there? (A syscall, but we
        // are waiting anyway.)
        if tries.is_multiple_of(1024) && !attach::collector_alive(header) {
            attach::give_up_on_dead_collector(header);
            return false;
        }
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
}
