//! Creating the shared-memory segment the collector attaches to.
//!
//! The segment is `/dev/shm/trace-collector.<qemu pid>`, created exclusively
//! (O_EXCL) with mode 0600, so no other user can read the trace and no one can
//! hand us a segment prepared in advance. It is unlinked when QEMU exits; a
//! collector that has it mapped keeps reading it.

use std::ffi::CString;
use trace_schema::layout::{
    self, Geometry, Header, SegmentView, HEADER_BYTES, LAYOUT_VERSION, MAGIC, OPTIONS_BYTES,
};
use trace_schema::record::EVENT_RECORD_BYTES;
use trace_schema::sync::Ordering;

pub struct Segment {
    name: CString,
    pub view: SegmentView,
}

impl Segment {
    /// Creates, sizes, maps and initialises the segment of this process.
    pub fn create(geometry: Geometry, options: &str) -> Result<Segment, String> {
        geometry.check().map_err(|e| format!("cannot lay out the shared segment: {e}"))?;
        let bytes = geometry.segment_bytes().unwrap();
        let pid = std::process::id();
        let name = CString::new(layout::segment_name(pid)).unwrap();
        let fd = unsafe { open_exclusive(&name)? };
        let unlink_and = |msg: String| {
            unsafe {
                libc::close(fd);
                libc::shm_unlink(name.as_ptr());
            }
            Err(msg)
        };
        if unsafe { libc::ftruncate(fd, bytes as libc::off_t) } != 0 {
            return unlink_and(format!(
                "cannot size the shared segment to {bytes} bytes: {} (is /dev/shm large enough? lower ring_kib)",
                std::io::Error::last_os_error()
            ));
        }
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return unlink_and(format!("cannot map the shared segment: {}", std::io::Error::last_os_error()));
        }
        unsafe { libc::close(fd) };

        // The file is fresh from ftruncate, so every byte is zero: all rings
        // are empty, all counters 0, state WAITING.
        let header = unsafe { &mut *(base as *mut Header) };
        header.layout_version = LAYOUT_VERSION;
        header.header_bytes = HEADER_BYTES as u32;
        header.event_record_bytes = EVENT_RECORD_BYTES as u32;
        header.n_vcpus = geometry.n_vcpus;
        header.event_ring_bytes = geometry.event_ring_bytes;
        header.meta_ring_bytes = geometry.meta_ring_bytes;
        header.segment_bytes = bytes;
        header.qemu_pid = pid;
        let opts = options.as_bytes();
        let n = opts.len().min(OPTIONS_BYTES);
        header.options[..n].copy_from_slice(&opts[..n]);
        header.options_len = n as u32;
        // Release: a collector that reads the magic with Acquire sees every
        // header field written above.
        header.magic.store(MAGIC, Ordering::Release);

        let view = unsafe { SegmentView::new(base as *mut u8, geometry) };
        Ok(Segment { name, view })
    }

    /// Removes the segment's name; mappings (ours, the collector's) stay valid.
    pub fn unlink(&self) {
        unsafe { libc::shm_unlink(self.name.as_ptr()) };
    }
}

/// `shm_open(O_CREAT | O_EXCL)`. A leftover segment of a dead process that had
/// our pid (QEMU killed, pid reused) is removed once and creation retried; one
/// that we cannot remove (another user's) is an error.
unsafe fn open_exclusive(name: &CString) -> Result<libc::c_int, String> {
    for attempt in 0..2 {
        let fd = unsafe {
            libc::shm_open(name.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0o600 as libc::mode_t)
        };
        if fd >= 0 {
            // The mode given to shm_open is filtered by the umask: make sure.
            unsafe { libc::fchmod(fd, 0o600) };
            return Ok(fd);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EEXIST) && attempt == 0 {
            unsafe { libc::shm_unlink(name.as_ptr()) };
            continue;
        }
        return Err(format!("cannot create the shared segment /dev/shm{}: {err}", name.to_string_lossy()));
    }
    unreachable!()
}
