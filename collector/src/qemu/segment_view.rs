//! Finding, checking, mapping and attaching to a QEMU process's segment.
//!
//! We use `nix` (`shm_open`, `fstat`, `mmap`) rather than the `shared_memory`
//! crate on purpose: that crate owns the segment's lifetime (its `Drop`
//! unlinks what it created or opened as owner), names segments its own way
//! and keeps "flink" files beside them, and gives no access to the file
//! descriptor before mapping, so it cannot check who owns the segment. Here
//! the shim creates and unlinks the segment; the collector only opens an
//! existing name, refuses a segment owned by another user, and maps it.

use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{mmap, munmap, shm_open, shm_unlink, MapFlags, ProtFlags};
use nix::sys::stat::{fstat, Mode};
use nix::unistd::geteuid;
use trace_schema::attach::{self, AttachError, Attached};
use trace_schema::layout::{self, Header, LayoutError, SegmentView, HEADER_BYTES};
use trace_schema::sync::Ordering;

/// How long to wait for a segment that exists but whose header is not
/// written yet (the shim stores the magic last).
pub const MAGIC_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("no process with pid {0}")]
    NoProcess(u32),
    #[error(
        "process {pid} has no trace segment (/dev/shm{name}): is it a QEMU started with \
         -plugin libtrace_shim.so, and has it finished starting?"
    )]
    NoSegment { pid: u32, name: String },
    #[error(
        "the trace segment /dev/shm{name} belongs to uid {owner}, not to us (uid {me}): \
         refusing to read another user's trace (run the collector as the user running QEMU)"
    )]
    OtherOwner { name: String, owner: u32, me: u32 },
    #[error("cannot open the trace segment /dev/shm{name}: {err}")]
    Open { name: String, err: Errno },
    #[error("cannot map the trace segment /dev/shm{name}: {err}")]
    Map { name: String, err: Errno },
    #[error("invalid trace segment /dev/shm{name}: {err}")]
    Layout { name: String, err: LayoutError },
    #[error("trace segment /dev/shm{name} says it belongs to pid {found}, not {expected}")]
    WrongPid {
        name: String,
        found: u32,
        expected: u32,
    },
    #[error("QEMU pid {pid} is already being traced by trace-collector pid {collector}")]
    AlreadyAttached { pid: u32, collector: u32 },
    #[error("interrupted while waiting for process {0} to create its trace segment")]
    Interrupted(u32),
    #[error("trace segment of pid {pid} has an unknown state {state}")]
    BadState { pid: u32, state: u32 },
}

/// Whether process `pid` still runs (a zombie counts as gone).
pub use trace_schema::attach::process_alive;

/// (st_dev, st_ino): which file a name refers to.
#[allow(clippy::unnecessary_cast)] // the types differ between libcs
fn file_id(st: &nix::sys::stat::FileStat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

/// Our pid as the header stores it.
fn own_pid() -> u32 {
    std::process::id()
}

/// A validated segment, mapped read-write. Unmapped on drop; never unlinked
/// except by `unlink` (the shim unlinks it when QEMU exits).
pub struct Segment {
    base: NonNull<c_void>,
    len: usize,
    view: SegmentView,
    name: String,
    pid: u32,
    /// (st_dev, st_ino) of the file we mapped: `unlink` removes that file's
    /// name only, never a new segment of a process that reused the pid.
    file_id: (u64, u64),
}

// Safety: the mapping is shared memory that the other side writes through
// atomics; `SegmentView` is already Send + Sync, and the raw base pointer is
// only used to unmap, once, on drop.
unsafe impl Send for Segment {}
unsafe impl Sync for Segment {}

impl Segment {
    /// Opens the segment of QEMU process `pid` (`layout::segment_name(pid)`).
    pub fn open(pid: u32) -> Result<Segment, SegmentError> {
        if !process_alive(pid) {
            return Err(SegmentError::NoProcess(pid));
        }
        Segment::open_named(&layout::segment_name(pid), pid, MAGIC_WAIT)
    }

    /// Like `open`, but while the process lives and has no segment yet (a
    /// QEMU that is still starting), asks `wait(elapsed)` whether to wait on:
    /// `Ok(true)` waits, `Ok(false)` gives up (`NoSegment`), an error is
    /// returned as is.
    pub fn open_waiting(
        pid: u32,
        mut wait: impl FnMut(Duration) -> Result<bool, SegmentError>,
    ) -> Result<Segment, SegmentError> {
        let started = Instant::now();
        loop {
            match Segment::open(pid) {
                Err(e @ SegmentError::NoSegment { .. }) => {
                    if !wait(started.elapsed())? {
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                r => return r,
            }
        }
    }

    /// Opens the segment `name` (a `shm_open` name, leading '/'), which must
    /// belong to us and to QEMU process `pid`. Waits up to `magic_wait` for a
    /// shim that is still writing the header.
    pub fn open_named(name: &str, pid: u32, magic_wait: Duration) -> Result<Segment, SegmentError> {
        let fd = match shm_open(name, OFlag::O_RDWR, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                return Err(SegmentError::NoSegment {
                    pid,
                    name: name.to_string(),
                })
            }
            Err(err) => {
                return Err(SegmentError::Open {
                    name: name.to_string(),
                    err,
                })
            }
        };
        let started = Instant::now();
        loop {
            let st = fstat(&fd).map_err(|err| SegmentError::Open {
                name: name.to_string(),
                err,
            })?;
            let me = geteuid().as_raw();
            if st.st_uid != me {
                return Err(SegmentError::OtherOwner {
                    name: name.to_string(),
                    owner: st.st_uid,
                    me,
                });
            }
            let len = st.st_size.max(0) as u64;
            let result = if len < HEADER_BYTES as u64 {
                // Created but not sized yet.
                Err(SegmentError::Layout {
                    name: name.to_string(),
                    err: LayoutError::TooSmall { len },
                })
            } else {
                Segment::map(&fd, name, pid, len, file_id(&st))
            };
            match result {
                Ok(seg) => return Ok(seg),
                Err(SegmentError::Layout {
                    err: LayoutError::BadMagic { .. } | LayoutError::TooSmall { .. },
                    ..
                }) if started.elapsed() < magic_wait => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn map(
        fd: &OwnedFd,
        name: &str,
        pid: u32,
        len: u64,
        file_id: (u64, u64),
    ) -> Result<Segment, SegmentError> {
        let size = usize::try_from(len)
            .ok()
            .and_then(NonZeroUsize::new)
            .ok_or(SegmentError::Layout {
                name: name.to_string(),
                err: LayoutError::TooSmall { len },
            })?;
        // Safety: a fresh shared mapping of the whole file; nothing else in
        // this process refers to it, and `Segment` unmaps it once (Drop).
        let base = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .map_err(|err| SegmentError::Map {
            name: name.to_string(),
            err,
        })?;
        let unmap = |e| {
            // Safety: the mapping made above, not handed out yet.
            unsafe { munmap(base, size.get()) }.ok();
            Err(e)
        };
        // Safety: the mapping is at least HEADER_BYTES long and page-aligned.
        let header = unsafe { &*(base.as_ptr() as *const Header) };
        let geometry = match header.validate(len) {
            Ok(g) => g,
            Err(err) => {
                return unmap(SegmentError::Layout {
                    name: name.to_string(),
                    err,
                })
            }
        };
        if header.qemu_pid != pid {
            return unmap(SegmentError::WrongPid {
                name: name.to_string(),
                found: header.qemu_pid,
                expected: pid,
            });
        }
        // Safety: `geometry` comes from `validate` against the mapped length.
        let view = unsafe { SegmentView::new(base.as_ptr() as *mut u8, geometry) };
        Ok(Segment {
            base,
            len: size.get(),
            view,
            name: name.to_string(),
            pid,
            file_id,
        })
    }

    pub fn view(&self) -> &SegmentView {
        &self.view
    }

    pub fn header(&self) -> &Header {
        self.view.header()
    }

    /// The QEMU pid the segment belongs to.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the shim has announced QEMU's exit (its last events and
    /// counters are then published).
    pub fn qemu_exited(&self) -> bool {
        // Acquire: pairs with the shim's Release store, after its last events.
        self.header().qemu_exited.load(Ordering::Acquire) == 1
    }

    /// Makes us the segment's collector: the shim starts recording
    /// (`trace_schema::attach`). A live collector that holds the segment is
    /// refused (one between its two steps of attaching or detaching is
    /// given a second); a dead one is taken over.
    pub fn attach(&self) -> Result<Attached, SegmentError> {
        let attached = attach::attach(self.header(), own_pid(), process_alive, 100, || {
            std::thread::sleep(Duration::from_millis(10))
        })
        .map_err(|e| self.attach_error(e))?;
        self.heartbeat();
        Ok(attached)
    }

    fn attach_error(&self, e: AttachError) -> SegmentError {
        match e {
            AttachError::Held(collector) => SegmentError::AlreadyAttached {
                pid: self.pid,
                collector,
            },
            AttachError::BadState(state) => SegmentError::BadState {
                pid: self.pid,
                state,
            },
        }
    }

    /// Fails if a live collector other than us is attached (`attach` would
    /// refuse): lets a caller check before it does anything irreversible.
    pub fn check_not_attached(&self) -> Result<(), SegmentError> {
        match attach::held_by_other(self.header(), own_pid(), process_alive) {
            Some(collector) => Err(self.attach_error(AttachError::Held(collector))),
            None => Ok(()),
        }
    }

    /// Takes the segment back from a shim that decided we were gone
    /// (`attach::reclaim`; we hold `collector_pid`). Returns whether it did.
    pub fn reclaim(&self) -> Result<bool, SegmentError> {
        attach::reclaim(self.header()).map_err(|st| self.attach_error(AttachError::BadState(st)))
    }

    /// Stops the capture: the shim records nothing from now on, and a
    /// spinning `overflow=block` producer gives up instead of waiting for us.
    pub fn detach(&self) {
        attach::detach(self.header(), own_pid());
        attach::release(self.header(), own_pid());
    }

    /// Whether the shim stopped our recording at the trigger we set
    /// (`attach --until-pc`).
    pub fn stopped_by_shim(&self) -> bool {
        attach::stopped_by_shim(self.header(), own_pid())
    }

    /// Stops the recording but keeps the segment (the shim still publishes
    /// what it gathered, waiting for room): `detach` when drained.
    pub fn stop_recording(&self) {
        attach::detach(self.header(), own_pid());
    }

    /// Asks every vCPU to publish the events it has gathered in its open
    /// chunks (`Header::flush_epoch`); returns the epoch to wait for with
    /// `flushed`.
    pub fn request_flush(&self) -> u32 {
        // Release: nothing of ours needs ordering before it; the shim reads it
        // Relaxed and answers through `flushed_epoch` (Release).
        self.header()
            .flush_epoch
            .fetch_add(1, Ordering::Release)
            .wrapping_add(1)
    }

    /// Whether every vCPU has published what it gathered up to `epoch`.
    /// (A vCPU halted since before the request answers when it wakes; a
    /// halted vCPU has published everything when it went idle.)
    pub fn flushed(&self, epoch: u32) -> bool {
        let view = self.view();
        (0..view.geometry.n_vcpus).all(|v| {
            // Acquire: pairs with the shim's Release store after publishing.
            let done = view.vcpu(v).flushed_epoch.load(Ordering::Acquire);
            epoch.wrapping_sub(done) as i32 <= 0
        })
    }

    /// Shows the shim (and any curious reader) that we are alive.
    pub fn heartbeat(&self) {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // Safety: `ts` is a valid timespec to write.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        self.header()
            .collector_heartbeat_ns
            .store(ns, Ordering::Relaxed);
    }

    /// Removes the segment's name (for a QEMU that died without doing it),
    /// if the name still refers to our segment. A name that is gone is fine.
    pub fn unlink(&self) {
        let Ok(fd) = shm_open(self.name.as_str(), OFlag::O_RDONLY, Mode::empty()) else {
            return;
        };
        match fstat(&fd) {
            Ok(st) if file_id(&st) == self.file_id => {}
            _ => return,
        }
        match shm_unlink(self.name.as_str()) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => eprintln!(
                "trace-collector: warning: cannot remove /dev/shm{}: {e}",
                self.name
            ),
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // Safety: our mapping; the views into it borrow `self`, so none
        // outlives it.
        unsafe { munmap(self.base, self.len) }.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::FakeShim;
    use trace_schema::attach::State;
    use trace_schema::layout::Geometry;

    fn geometry() -> Geometry {
        Geometry {
            n_vcpus: 2,
            event_ring_bytes: 8192,
            meta_ring_bytes: 8192,
        }
    }

    #[test]
    fn opens_and_attaches_and_detaches() {
        let shim = FakeShim::new(geometry(), "events=mem+mmio");
        let seg = shim.open().unwrap();
        assert_eq!(seg.view().geometry, geometry());
        assert_eq!(seg.header().options(), "events=mem+mmio");
        let a = seg.attach().unwrap();
        assert_eq!(
            a,
            Attached {
                previous: State::Waiting,
                took_over_from: None,
                losses_uncounted: false,
            }
        );
        assert_eq!(State::of(shim.header()), Ok(State::Attached));
        assert_eq!(
            shim.header().collector_pid.load(Ordering::Relaxed),
            std::process::id()
        );
        assert_eq!(shim.header().attach_count.load(Ordering::Relaxed), 1);
        seg.detach();
        assert_eq!(State::of(shim.header()), Ok(State::Waiting));
        assert_eq!(shim.header().collector_pid.load(Ordering::Relaxed), 0);
        // Attach again after a detach.
        seg.attach().unwrap();
        assert_eq!(shim.header().attach_count.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn refuses_a_live_collector_and_takes_over_a_dead_one() {
        let shim = FakeShim::new(geometry(), "");
        let seg = shim.open().unwrap();
        // pid 1 is alive and is not us.
        shim.header()
            .state
            .store(State::Attached as u32, Ordering::Relaxed);
        shim.header().collector_pid.store(1, Ordering::Relaxed);
        assert!(seg.check_not_attached().is_err());
        match seg.attach() {
            Err(SegmentError::AlreadyAttached { collector: 1, .. }) => {}
            other => panic!("expected AlreadyAttached, got {:?}", other.map(|_| ())),
        }
        // A dead collector: a child we reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        shim.header().collector_pid.store(dead, Ordering::Relaxed);
        let a = seg.attach().unwrap();
        assert_eq!(a.took_over_from, Some(dead));
        assert_eq!(
            shim.header().collector_pid.load(Ordering::Relaxed),
            std::process::id()
        );
    }

    #[test]
    fn refuses_bad_headers() {
        type Break = fn(&mut Header);
        let cases: [(Break, &str); 4] = [
            (|h| h.magic.store(0x1234, Ordering::Relaxed), "magic"),
            (|h| h.layout_version = 99, "version"),
            (|h| h.segment_bytes += 4096, "size mismatch"),
            (|h| h.qemu_pid += 1, "belongs to pid"),
        ];
        for (break_it, what) in cases {
            let shim = FakeShim::new(geometry(), "");
            break_it(shim.header_mut());
            let err = shim
                .open_with_wait(Duration::from_millis(50))
                .err()
                .unwrap_or_else(|| panic!("{what} accepted"));
            assert!(err.to_string().contains(what), "{what}: {err}");
        }
    }

    #[test]
    fn waits_for_a_segment_that_is_being_created() {
        let name = layout::segment_name(std::process::id());
        let creator = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            FakeShim::named(&name, geometry(), "")
        });
        let seg =
            Segment::open_waiting(std::process::id(), |t| Ok(t < Duration::from_secs(5))).unwrap();
        let shim = creator.join().unwrap();
        assert_eq!(seg.pid(), std::process::id());
        // `unlink` removes our segment's name, but not a new segment that
        // took the same name since.
        let _ = shm_unlink(shim.name.as_str());
        let newer = FakeShim::named(&shim.name, geometry(), "");
        seg.unlink();
        assert!(std::path::Path::new(&format!("/dev/shm{}", newer.name)).exists());
        drop(shim);
        drop(newer);
        assert!(matches!(
            Segment::open_waiting(std::process::id(), |t| Ok(t < Duration::from_millis(50))),
            Err(SegmentError::NoSegment { .. })
        ));
    }

    #[test]
    fn missing_segment_and_process() {
        let err = Segment::open_named("/trace-collector-test.none", 1, Duration::ZERO)
            .err()
            .unwrap();
        assert!(matches!(err, SegmentError::NoSegment { .. }), "{err}");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        assert!(!process_alive(dead));
        assert!(matches!(
            Segment::open(dead).err().unwrap(),
            SegmentError::NoProcess(_)
        ));
        assert!(process_alive(std::process::id()));
    }
}
