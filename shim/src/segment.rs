//! Creating the shared-memory segment the collector attaches to.
//!
//! The segment is `/dev/shm/trace-collector.<qemu pid>`, created exclusively
//! (O_EXCL) with mode 0600, so no other user can read the trace and no one can
//! hand us a segment prepared in advance. It is unlinked when QEMU exits; a
//! collector that has it mapped keeps reading it. Segments of QEMUs that were
//! killed outright are removed by the next QEMU that loads the shim.

use std::ffi::CString;
use trace_schema::layout::{self, Geometry, Header, SegmentView};
use trace_schema::sync::Ordering;

pub struct Segment {
    name: CString,
    pub view: SegmentView,
}

impl Segment {
    /// Creates, sizes, maps and initialises the segment of this process.
    pub fn create(geometry: Geometry, options: &str) -> Result<Segment, String> {
        geometry
            .check()
            .map_err(|e| format!("cannot lay out the shared segment: {e}"))?;
        let bytes = geometry.segment_bytes().unwrap();
        let pid = std::process::id();
        let name = CString::new(layout::segment_name(pid)).unwrap();
        remove_stale_segments(pid);
        // Safety: no precondition (`name` is a C string).
        let fd = unsafe { open_exclusive(&name)? };
        let unlink_and = |msg: String| {
            // Safety: `fd` is ours, open, and not used after this error path.
            unsafe {
                libc::close(fd);
                libc::shm_unlink(name.as_ptr());
            }
            Err(msg)
        };
        // Safety: `fd` is our new segment's, open.
        if unsafe { libc::ftruncate(fd, bytes as libc::off_t) } != 0 {
            return unlink_and(format!(
                "cannot size the shared segment to {bytes} bytes: {} (is /dev/shm large enough? lower ring_kib)",
                std::io::Error::last_os_error()
            ));
        }
        // Safety: a new shared mapping at an address the kernel picks: it
        // overlaps no Rust memory; failure is checked below.
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
            return unlink_and(format!(
                "cannot map the shared segment: {}",
                std::io::Error::last_os_error()
            ));
        }
        // Safety: `fd` is ours and not used again; the mapping keeps the file.
        unsafe { libc::close(fd) };

        // The file is fresh from ftruncate, so every byte is zero: all rings
        // are empty, all counters 0, state WAITING.
        // Safety: `base` maps `bytes` >= HEADER_BYTES page-aligned zero bytes (a
        // valid `Header`); no collector writes before the magic, stored last.
        let header = unsafe { &mut *(base as *mut Header) };
        header.initialise(geometry, pid, options);

        // Safety: the mapping holds the checked geometry's `segment_bytes()`
        // and is never unmapped, so it outlives the view.
        let view = unsafe { SegmentView::new(base as *mut u8, geometry) };
        Ok(Segment { name, view })
    }

    /// Removes the segment's name; mappings (ours, the collector's) stay valid.
    pub fn unlink(&self) {
        // Safety: `name` is a C string.
        unsafe { libc::shm_unlink(self.name.as_ptr()) };
    }

    /// Until the guard is dropped, SIGINT, SIGTERM and SIGHUP remove the
    /// segment and then take their default action. For the `wait=on` wait,
    /// which runs before QEMU installs its own handlers: a QEMU killed while
    /// waiting must not leave its segment in /dev/shm (tmpfs memory).
    pub fn unlink_on_fatal_signals(&self) -> SignalGuard {
        FATAL_SIGNAL_NAME.store(self.name.as_ptr() as *mut libc::c_char, Ordering::Release);
        let mut previous = Vec::new();
        for sig in FATAL_SIGNALS {
            // Safety: a zeroed `sigaction` is a valid empty one; the handler is a
            // plain `fn(c_int)` (no SA_SIGINFO) doing async-signal-safe work.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = unlink_and_reraise as *const () as libc::sighandler_t;
                libc::sigemptyset(&mut action.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(sig, &action, &mut old);
                previous.push((sig, old));
            }
        }
        SignalGuard { previous }
    }
}

const FATAL_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The segment name for the signal handler (a pointer into `Segment::name`,
/// which lives as long as the process).
static FATAL_SIGNAL_NAME: std::sync::atomic::AtomicPtr<libc::c_char> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Async-signal-safe: `shm_unlink` is an `unlink`, then the default action.
extern "C" fn unlink_and_reraise(sig: libc::c_int) {
    let name = FATAL_SIGNAL_NAME.load(Ordering::Acquire);
    // Safety: `name` is null or the name of the segment in the never-freed
    // `Shim`; these three calls are async-signal-safe.
    unsafe {
        if !name.is_null() {
            libc::shm_unlink(name);
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Restores the signal dispositions `unlink_on_fatal_signals` replaced.
pub struct SignalGuard {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for (sig, old) in &self.previous {
            // Safety: `old` is the disposition `sigaction` gave us for `sig`.
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
        }
    }
}

/// Removes the segments that QEMUs of this user left behind when they were
/// killed outright (SIGKILL: no exit handler ran) while no collector was
/// attached to remove them: each holds a whole capture's rings in tmpfs
/// memory. A segment is stale when its name is `trace-collector.<pid>`, it is
/// ours, and no process `<pid>` exists. (A QEMU in another pid namespace
/// sharing this /dev/shm would look dead here too; containers normally get
/// their own /dev/shm.) Runs once, at install.
fn remove_stale_segments(own_pid: u32) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    // Safety: no precondition; it cannot fail.
    let uid = unsafe { libc::geteuid() };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix("trace-collector."))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let ours = entry.metadata().is_ok_and(|m| m.uid() == uid);
        let gone = pid != own_pid
            && pid <= i32::MAX as u32
            // Safety: signal 0 sends nothing: `kill` only checks that `pid` exists.
            && unsafe { libc::kill(pid as libc::pid_t, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if ours && gone {
            let name = CString::new(layout::segment_name(pid)).unwrap();
            // Safety: `name` is a C string.
            unsafe { libc::shm_unlink(name.as_ptr()) };
        }
    }
}

/// `shm_open(O_CREAT | O_EXCL)`. A leftover segment of a dead process that had
/// our pid (QEMU killed, pid reused) is removed once and creation retried; one
/// that we cannot remove (another user's) is an error.
///
/// # Safety
/// None: `name` is a C string; the caller owns the descriptor returned.
unsafe fn open_exclusive(name: &CString) -> Result<libc::c_int, String> {
    for attempt in 0..2 {
        // Safety: `name` is a C string.
        let fd = unsafe {
            libc::shm_open(
                name.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
                0o600 as libc::mode_t,
            )
        };
        if fd >= 0 {
            // The mode given to shm_open is filtered by the umask: make sure.
            // Safety: `fd` is the descriptor just opened.
            unsafe { libc::fchmod(fd, 0o600) };
            return Ok(fd);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EEXIST) && attempt == 0 {
            // Safety: `name` is a C string.
            unsafe { libc::shm_unlink(name.as_ptr()) };
            continue;
        }
        return Err(format!(
            "cannot create the shared segment /dev/shm{}: {err}",
            name.to_string_lossy()
        ));
    }
    unreachable!()
}
