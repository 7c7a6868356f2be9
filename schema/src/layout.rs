//! The shared-memory segment: where everything lives, and the checks the
//! collector makes before trusting any of it.
//!
//! ```text
//! offset 0                      Header (HEADER_BYTES)
//! vcpu_block(0)                 VcpuControl: event ring control, meta ring
//!                               control, counters (VCPU_CONTROL_BYTES)
//!   + VCPU_CONTROL_BYTES        event ring data (event_ring_bytes)
//!   + ... + event_ring_bytes    meta ring data (meta_ring_bytes)
//! vcpu_block(1)                 ... one block per vCPU
//! ```
//!
//! Every field the producer writes after creation is an atomic; the rest is
//! written once before `magic` is stored (with Release), so a reader that has
//! seen the magic (with Acquire) sees a complete header.

use crate::chunk::CHUNK_BYTES;
use crate::ring::RingControl;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// "TRCQEMU" + layout generation, as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"TRCQEMU1");
/// Bumped on any change to this file, to `chunk.rs`'s offsets or to
/// `events.capnp`'s `Chunk`.
pub const LAYOUT_VERSION: u32 = 6;

pub const HEADER_BYTES: usize = 4096;
pub const RING_CONTROL_BYTES: usize = 256;
pub const VCPU_CONTROL_BYTES: usize = 4096;
/// Bytes of the shim's option string kept in the header (for the capture's metadata).
pub const OPTIONS_BYTES: usize = 1024;
/// Slots of the double-buffered commit record (see `commit`).
pub const COMMIT_SLOTS: usize = 2;
/// Output streams (the collector's tables) the commit record counts per:
/// `commit::STREAMS`.
pub const COMMIT_STREAMS: usize = crate::commit::STREAMS.len();

pub const MAX_VCPUS: u32 = 4096;
/// Most address ranges of `Header::stop_ranges` and `Header::start_ranges`.
pub const MAX_STOP_RANGES: usize = 8;
/// Most memory ranges `Header::publish_memory_ranges` keeps.
pub const MAX_MEMORY_RANGES: usize = 16;
/// A ring holds at least two chunks (a message is at most half a ring).
pub const MIN_RING_BYTES: u64 = 2 * CHUNK_BYTES as u64;
pub const MAX_RING_BYTES: u64 = 1 << 30;

/// The name of QEMU process `pid`'s segment, for `shm_open`
/// (the file `/dev/shm/trace-collector.<pid>`).
pub fn segment_name(pid: u32) -> String {
    format!("/trace-collector.{pid}")
}

#[repr(C)]
pub struct Header {
    /// `MAGIC`, stored last at creation (Release).
    pub magic: AtomicU64,
    pub layout_version: u32,
    pub header_bytes: u32,
    /// `chunk::CHUNK_BYTES`: the largest message of an event ring.
    pub chunk_bytes: u32,
    pub n_vcpus: u32,
    pub event_ring_bytes: u64,
    pub meta_ring_bytes: u64,
    pub segment_bytes: u64,
    pub qemu_pid: u32,
    pub options_len: u32,
    /// The shim's option string as QEMU passed it, comma-joined, UTF-8.
    pub options: [u8; OPTIONS_BYTES],

    /// An `attach::State`: see `attach` for who writes it.
    pub state: AtomicU32,
    /// Pid of the attached collector (0 when none). The shim checks it is alive
    /// when a ring stays full.
    pub collector_pid: AtomicU32,
    /// Set to 1 by the shim when QEMU is exiting, after its last events and
    /// counters are published.
    pub qemu_exited: AtomicU32,
    /// Incremented by each attach.
    pub attach_count: AtomicU32,
    /// Nanoseconds (CLOCK_MONOTONIC) at which the collector last showed it is
    /// alive; informational.
    pub collector_heartbeat_ns: AtomicU64,
    /// Written by the attached collector only (see `commit`): which slot of
    /// `commit_parts`, `commit_collector_pid` and
    /// `VcpuControl::committed_events` is current, 1-based; 0 while no
    /// collector has committed anything.
    pub commit_slot: AtomicU32,
    _reserved: u32,
    pub commit_parts: [[AtomicU64; COMMIT_STREAMS]; COMMIT_SLOTS],
    pub commit_collector_pid: [AtomicU32; COMMIT_SLOTS],
    /// Bumped by the attached collector when it wants every vCPU's open
    /// chunks published (it is about to stop, or a ring has been quiet): a
    /// vCPU that sees a new value at its next event, or goes idle, publishes
    /// what it has gathered (`chunk`).
    pub flush_epoch: AtomicU32,
    /// Written by the collector once it has read QEMU's memory map (see
    /// `publish_memory_ranges`): how many of `memory_ranges` hold, 0 before.
    pub memory_ranges_len: AtomicU32,
    /// Bit `i`: range `i` is RAM (loads and stores), else ROM (loads only).
    pub memory_ranges_ram: AtomicU32,
    /// (first, last) address of each RAM or ROM region of the CPU's flat
    /// memory map.
    pub memory_ranges: [[AtomicU64; 2]; MAX_MEMORY_RANGES],
    /// Written by a collector before it attaches: the events it wants
    /// recorded (`EventSet::bits`), 0 for the shim's own `events` option.
    pub requested_events: AtomicU32,
    /// Written by the shim: the events QEMU's translated code is
    /// instrumented for (`EventSet::bits`; 0: none, see `options::Idle`).
    /// Blocks translated before it changed may still run until QEMU's
    /// translations are flushed, which the shim asks for at once.
    pub instrumented_events: AtomicU32,
    /// Written by a collector before it attaches: 1 when the shim is to
    /// stop the recording itself as a vCPU is about to execute the
    /// instruction at `stop_at_pc` (`attach --until-pc`; see
    /// `attach::stop_at_trigger`), else 0.
    pub stop_armed: AtomicU32,
    pub stop_at_pc: AtomicU64,
    /// Written by a collector before it attaches (`attach --until-device`):
    /// how many of `stop_ranges` hold, 0 for none. The shim stops the
    /// recording after the first I/O access inside one of them
    /// (`attach::hits_stop_range`).
    pub stop_ranges_len: AtomicU32,
    /// (first, last) physical address of each.
    pub stop_ranges: [[AtomicU64; 2]; MAX_STOP_RANGES],
    /// Written by a collector before it attaches: 1 when the recording is
    /// to start only as a vCPU is about to execute the instruction at
    /// `start_at_pc` (`attach --from-pc`; see `attach::start_at_trigger`),
    /// else 0.
    pub start_armed: AtomicU32,
    pub start_at_pc: AtomicU64,
    /// Written by a collector before it attaches (`attach --from-device`):
    /// how many of `start_ranges` hold, 0 for none. The recording starts
    /// with the first I/O access inside one of them
    /// (`attach::hits_start_range`).
    pub start_ranges_len: AtomicU32,
    /// (first, last) physical address of each.
    pub start_ranges: [[AtomicU64; 2]; MAX_STOP_RANGES],
    /// Set to 1 by the shim when, its collector dead, it dropped its
    /// instrumentation (`idle` other than `count`): from then on the
    /// vCPUs' `events_lost` no longer count what QEMU did. Taken (and
    /// cleared) by the next collector's attach (`attach::attach`).
    pub losses_uncounted: AtomicU32,
    /// Written by a collector before it attaches: what a full ring does
    /// during its capture, 1 block, 2 drop, 0 the shim's `overflow` option.
    pub requested_overflow: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_BYTES);

/// Per-vCPU counters, read by the collector. Written by that vCPU's thread
/// only (so a plain load and store, no read-modify-write, is enough), except
/// the two `full_ring_*` counters: a full meta ring is waited for by
/// whichever thread translates, so they take a `fetch_add`.
#[repr(C)]
pub struct VcpuCounters {
    /// Events published into the event ring, published when QEMU exits.
    pub events_written: AtomicU64,
    /// Events the shim could not deliver: ring full in `overflow=drop`, or no
    /// live collector after one had attached.
    pub events_lost: AtomicU64,
    /// Instructions this vCPU has executed, published when QEMU exits.
    pub final_icount: AtomicU64,
    /// Meta records the shim could not deliver (meta ring full).
    pub meta_lost: AtomicU64,
    /// Times a record of this vCPU waited for room in a full ring
    /// (`overflow=block`), and the nanoseconds all those waits took: how
    /// long the collector held QEMU back.
    pub full_ring_waits: AtomicU64,
    pub full_ring_wait_ns: AtomicU64,
}

/// The control block at the start of each vCPU's block.
#[repr(C)]
pub struct VcpuControl {
    pub event_ring: RingControl,
    pub meta_ring: RingControl,
    pub counters: VcpuCounters,
    /// Written by the attached collector only (see `commit`).
    pub committed_events: [[AtomicU64; COMMIT_STREAMS]; COMMIT_SLOTS],
    /// Written by the shim: the `Header::flush_epoch` up to which this
    /// vCPU has published every event it gathered.
    pub flushed_epoch: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<VcpuControl>() <= VCPU_CONTROL_BYTES);

/// The sizes that decide where everything is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub n_vcpus: u32,
    pub event_ring_bytes: u64,
    pub meta_ring_bytes: u64,
}

impl Geometry {
    fn vcpu_block_bytes(&self) -> u64 {
        VCPU_CONTROL_BYTES as u64 + self.event_ring_bytes + self.meta_ring_bytes
    }

    /// Total bytes of the segment, or `None` on overflow.
    pub fn segment_bytes(&self) -> Option<u64> {
        self.vcpu_block_bytes()
            .checked_mul(self.n_vcpus as u64)?
            .checked_add(HEADER_BYTES as u64)
    }

    pub fn vcpu_control_offset(&self, vcpu: u32) -> u64 {
        HEADER_BYTES as u64 + vcpu as u64 * self.vcpu_block_bytes()
    }

    pub fn event_data_offset(&self, vcpu: u32) -> u64 {
        self.vcpu_control_offset(vcpu) + VCPU_CONTROL_BYTES as u64
    }

    pub fn meta_data_offset(&self, vcpu: u32) -> u64 {
        self.event_data_offset(vcpu) + self.event_ring_bytes
    }

    /// Checks the sizes are ones a shim could have made.
    pub fn check(&self) -> Result<(), LayoutError> {
        if self.n_vcpus == 0 || self.n_vcpus > MAX_VCPUS {
            return Err(LayoutError::Field("n_vcpus", self.n_vcpus as u64));
        }
        for (name, bytes) in [
            ("event_ring_bytes", self.event_ring_bytes),
            ("meta_ring_bytes", self.meta_ring_bytes),
        ] {
            if !bytes.is_power_of_two() || !(MIN_RING_BYTES..=MAX_RING_BYTES).contains(&bytes) {
                return Err(LayoutError::Field(name, bytes));
            }
        }
        self.segment_bytes()
            .ok_or(LayoutError::Field("n_vcpus", self.n_vcpus as u64))?;
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutError {
    TooSmall {
        len: u64,
    },
    BadMagic {
        found: u64,
    },
    Version {
        found: u32,
    },
    Field(&'static str, u64),
    SizeMismatch {
        header_says: u64,
        geometry_says: u64,
        mapped: u64,
    },
}

impl std::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayoutError::TooSmall { len } => {
                write!(f, "segment is {len} bytes, smaller than its {HEADER_BYTES}-byte header")
            }
            LayoutError::BadMagic { found } => write!(
                f,
                "segment has magic {:?}, not {:?}: not a trace-collector segment (or not initialised yet)",
                String::from_utf8_lossy(&found.to_le_bytes()),
                String::from_utf8_lossy(&MAGIC.to_le_bytes())
            ),
            LayoutError::Version { found } => write!(
                f,
                "segment layout version {found}, this collector reads version {LAYOUT_VERSION}: use the shim and collector of the same build"
            ),
            LayoutError::Field(name, v) => write!(f, "segment header field {name} = {v} is out of range"),
            LayoutError::SizeMismatch { header_says, geometry_says, mapped } => write!(
                f,
                "segment size mismatch: header says {header_says} bytes, its geometry {geometry_says}, the file has {mapped}"
            ),
        }
    }
}

impl std::error::Error for LayoutError {}

impl Header {
    /// Writes the header of a fresh (all-zero) segment of `geometry` for QEMU
    /// process `qemu_pid`, with the shim's `options` (cut to `OPTIONS_BYTES`),
    /// the magic last: everything else stays zero (rings empty, counters 0,
    /// state WAITING). `geometry` must have passed `Geometry::check`.
    pub fn initialise(&mut self, geometry: Geometry, qemu_pid: u32, options: &str) {
        self.layout_version = LAYOUT_VERSION;
        self.header_bytes = HEADER_BYTES as u32;
        self.chunk_bytes = CHUNK_BYTES as u32;
        self.n_vcpus = geometry.n_vcpus;
        self.event_ring_bytes = geometry.event_ring_bytes;
        self.meta_ring_bytes = geometry.meta_ring_bytes;
        self.segment_bytes = geometry.segment_bytes().expect("a checked geometry");
        self.qemu_pid = qemu_pid;
        let n = options.len().min(OPTIONS_BYTES);
        self.options[..n].copy_from_slice(&options.as_bytes()[..n]);
        self.options_len = n as u32;
        // Release: a collector that reads the magic with Acquire sees every
        // header field written above.
        self.magic.store(MAGIC, Ordering::Release);
    }

    /// Validates a mapped header before anything else in the segment is
    /// touched; returns the geometry, every offset of which lies inside
    /// `mapped_len` bytes.
    pub fn validate(&self, mapped_len: u64) -> Result<Geometry, LayoutError> {
        // Acquire: pairs with the shim's Release store of the magic, after
        // which the rest of the header is complete.
        let magic = self.magic.load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(LayoutError::BadMagic { found: magic });
        }
        if self.layout_version != LAYOUT_VERSION {
            return Err(LayoutError::Version {
                found: self.layout_version,
            });
        }
        if self.header_bytes as usize != HEADER_BYTES {
            return Err(LayoutError::Field("header_bytes", self.header_bytes as u64));
        }
        if self.chunk_bytes as usize != CHUNK_BYTES {
            return Err(LayoutError::Field("chunk_bytes", self.chunk_bytes as u64));
        }
        if self.options_len as usize > OPTIONS_BYTES {
            return Err(LayoutError::Field("options_len", self.options_len as u64));
        }
        let g = Geometry {
            n_vcpus: self.n_vcpus,
            event_ring_bytes: self.event_ring_bytes,
            meta_ring_bytes: self.meta_ring_bytes,
        };
        g.check()?;
        let geometry_says = g.segment_bytes().unwrap();
        if geometry_says != self.segment_bytes || geometry_says != mapped_len {
            return Err(LayoutError::SizeMismatch {
                header_says: self.segment_bytes,
                geometry_says,
                mapped: mapped_len,
            });
        }
        Ok(g)
    }

    /// Publishes the RAM and ROM regions of QEMU's memory map, `(first,
    /// last address, RAM?)` (the first `MAX_MEMORY_RANGES`), for the shim:
    /// on a core without an MMU (a virtual address is the physical one) and
    /// with a memory map fixed at machine creation, an access inside one of
    /// them needs no question to QEMU (`Header::is_memory`). Once only, by
    /// the collector that read the map.
    pub fn publish_memory_ranges(&self, ranges: &[(u64, u64, bool)]) {
        let n = ranges.len().min(MAX_MEMORY_RANGES);
        let mut ram = 0u32;
        for (i, &(first, last, is_ram)) in ranges[..n].iter().enumerate() {
            self.memory_ranges[i][0].store(first, Ordering::Relaxed);
            self.memory_ranges[i][1].store(last, Ordering::Relaxed);
            ram |= (is_ram as u32) << i;
        }
        self.memory_ranges_ram.store(ram, Ordering::Relaxed);
        // Release: a shim that reads the count with Acquire sees the ranges.
        self.memory_ranges_len.store(n as u32, Ordering::Release);
    }

    /// Whether an access of up to 16 bytes at `addr` (`store` or load) lies
    /// wholly inside a published RAM region, or a ROM region for a load.
    /// False while none is published.
    #[inline(always)]
    pub fn is_memory(&self, addr: u64, store: bool) -> bool {
        // Acquire: pairs with `publish_memory_ranges`' Release.
        let n = (self.memory_ranges_len.load(Ordering::Acquire) as usize).min(MAX_MEMORY_RANGES);
        let ram = self.memory_ranges_ram.load(Ordering::Relaxed);
        self.memory_ranges[..n].iter().enumerate().any(|(i, r)| {
            let (first, last) = (r[0].load(Ordering::Relaxed), r[1].load(Ordering::Relaxed));
            addr >= first
                && addr.checked_add(15).is_some_and(|end| end <= last)
                && (!store || ram >> i & 1 != 0)
        })
    }

    /// The shim's options string.
    pub fn options(&self) -> String {
        let n = (self.options_len as usize).min(OPTIONS_BYTES);
        String::from_utf8_lossy(&self.options[..n]).into_owned()
    }
}

/// A validated segment mapped at `base`: typed access to its parts.
#[derive(Clone, Copy)]
pub struct SegmentView {
    base: *mut u8,
    pub geometry: Geometry,
}

// Safety: a pointer into a mapping that outlives the view (`new`'s contract)
// and belongs to the process, not to a thread.
unsafe impl Send for SegmentView {}
// Safety: shared, it only hands out `&Header` and `&VcpuControl`, changed after
// creation through atomics only, and ring pointers that `Producer::new` and
// `Consumer::new` govern.
unsafe impl Sync for SegmentView {}

impl SegmentView {
    /// # Safety
    /// `base` must point to a mapping of `geometry.segment_bytes()` bytes that
    /// outlives the view, and `geometry` must come from `Header::validate` (or
    /// from the creator's own `Geometry::check`ed sizes).
    pub unsafe fn new(base: *mut u8, geometry: Geometry) -> SegmentView {
        SegmentView { base, geometry }
    }

    pub fn header(&self) -> &Header {
        // Safety: `base` maps at least HEADER_BYTES aligned bytes for the view's
        // life (`new`'s contract), and any bytes are a valid `Header`.
        unsafe { &*(self.base as *const Header) }
    }

    pub fn vcpu(&self, vcpu: u32) -> &VcpuControl {
        assert!(vcpu < self.geometry.n_vcpus);
        let off = self.geometry.vcpu_control_offset(vcpu) as usize;
        // Safety: for `vcpu < n_vcpus` (asserted) the valid geometry puts an
        // 8-aligned VCPU_CONTROL_BYTES block inside the mapping there.
        unsafe { &*(self.base.add(off) as *const VcpuControl) }
    }

    pub fn event_data(&self, vcpu: u32) -> *mut u8 {
        assert!(vcpu < self.geometry.n_vcpus);
        // Safety: for `vcpu < n_vcpus` (asserted) the offset is inside the mapping.
        unsafe {
            self.base
                .add(self.geometry.event_data_offset(vcpu) as usize)
        }
    }

    pub fn meta_data(&self, vcpu: u32) -> *mut u8 {
        assert!(vcpu < self.geometry.n_vcpus);
        // Safety: for `vcpu < n_vcpus` (asserted) the offset is inside the mapping.
        unsafe { self.base.add(self.geometry.meta_data_offset(vcpu) as usize) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offsets tests/src/processes.rs reads from /dev/shm.
    #[test]
    fn header_offsets_the_tests_read() {
        assert_eq!(std::mem::offset_of!(Header, state), 1080);
        assert_eq!(std::mem::offset_of!(Header, collector_pid), 1084);
        assert_eq!(std::mem::offset_of!(Header, instrumented_events), 1476);
    }

    fn geometry() -> Geometry {
        Geometry {
            n_vcpus: 2,
            event_ring_bytes: 1 << 16,
            meta_ring_bytes: 1 << 14,
        }
    }

    /// A header in a heap buffer, as the shim would write it.
    fn segment(g: Geometry) -> Vec<u64> {
        let bytes = g.segment_bytes().unwrap();
        let mut mem = vec![0u64; bytes as usize / 8];
        header(&mut mem).initialise(g, 0, "");
        mem
    }

    fn header(mem: &mut [u64]) -> &mut Header {
        // Safety: `mem` is a whole segment of u64s (aligned, longer than a
        // `Header`, any bytes valid for one), borrowed by the result.
        unsafe { &mut *(mem.as_mut_ptr() as *mut Header) }
    }

    #[test]
    fn a_well_formed_header_validates() {
        let g = geometry();
        let mut mem = segment(g);
        let len = g.segment_bytes().unwrap();
        assert_eq!(header(&mut mem).validate(len), Ok(g));
    }

    #[test]
    fn parts_do_not_overlap_and_stay_inside() {
        let g = geometry();
        let end = g.segment_bytes().unwrap();
        assert_eq!(g.vcpu_control_offset(0), HEADER_BYTES as u64);
        assert_eq!(
            g.event_data_offset(0),
            g.vcpu_control_offset(0) + VCPU_CONTROL_BYTES as u64
        );
        assert_eq!(
            g.meta_data_offset(0),
            g.event_data_offset(0) + g.event_ring_bytes
        );
        assert_eq!(
            g.vcpu_control_offset(1),
            g.meta_data_offset(0) + g.meta_ring_bytes
        );
        assert_eq!(g.meta_data_offset(1) + g.meta_ring_bytes, end);
    }

    #[test]
    fn memory_ranges_answer_only_what_they_cover() {
        let g = geometry();
        let mut mem = segment(g);
        let h = header(&mut mem);
        assert!(!h.is_memory(0x2000_0000, false), "nothing published yet");
        h.publish_memory_ranges(&[(0, 0x3_ffff, false), (0x2000_0000, 0x2000_ffff, true)]);
        assert!(
            h.is_memory(0x100, false) && !h.is_memory(0x100, true),
            "ROM: loads only"
        );
        assert!(h.is_memory(0x2000_0000, true) && h.is_memory(0x2000_fff0, true));
        assert!(
            !h.is_memory(0x2000_fff1, false),
            "an access that may cross the end"
        );
        assert!(!h.is_memory(0x4000_c000, false) && !h.is_memory(u64::MAX - 3, false));
    }

    #[test]
    fn hostile_headers_are_refused() {
        let g = geometry();
        let len = g.segment_bytes().unwrap();
        type Case = (fn(&mut Header), &'static str);
        let cases: Vec<Case> = vec![
            (|h| h.magic.store(0x1234, Ordering::Relaxed), "magic"),
            (|h| h.layout_version = 99, "version"),
            (|h| h.chunk_bytes = 8, "chunk_bytes"),
            (|h| h.n_vcpus = 0, "n_vcpus"),
            (|h| h.n_vcpus = u32::MAX, "n_vcpus"),
            (|h| h.event_ring_bytes = 5000, "event_ring_bytes"),
            (|h| h.meta_ring_bytes = 1 << 40, "meta_ring_bytes"),
            (|h| h.segment_bytes = 1 << 50, "size mismatch"),
            (|h| h.options_len = 1 << 20, "options_len"),
        ];
        for (break_it, what) in cases {
            let mut mem = segment(g);
            break_it(header(&mut mem));
            assert!(
                header(&mut mem).validate(len).is_err(),
                "{what} should be refused"
            );
        }
        // A file shorter than its header says.
        let mut mem = segment(g);
        assert!(matches!(
            header(&mut mem).validate(len - 4096),
            Err(LayoutError::SizeMismatch { .. })
        ));
    }
}
