//! Processes for the tests that start QEMU and collectors themselves and
//! kill them: a child killed and reaped on drop, a reaper of every QEMU a
//! test tagged, the m3loop firmware's QEMU command line, and reads of the
//! shim's segment from /dev/shm.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{collector, firmware, firmware_sources, lm3s6965evb_command, qemus_with};

// Fields of the shared segment (schema/src/layout.rs, #[repr(C)]): the tests
// read them from /dev/shm to see what the shim does once no collector runs.
pub const STATE: u64 = 1080;
pub const COLLECTOR_PID: u64 = 1084;
/// `Header::instrumented_events`, after the memory ranges (1216 + 16 * 16)
/// and `requested_events`.
pub const INSTRUMENTED_EVENTS: u64 = 1476;
/// vCPU 0's `events_lost`: header (4096) + two ring controls (2 * 256) +
/// `events_written` (8).
pub const EVENTS_LOST_0: u64 = 4096 + 512 + 8;
/// `attach::State`s.
pub const WAITING: u64 = 0;
pub const DETACHED: u64 = 2;

/// `m3loop-<n>.elf`, built once per `n` (`m3loop-0.elf` is part of the
/// default build).
pub fn m3loop(n: u64) -> PathBuf {
    if n == 0 {
        return firmware("m3loop-0.elf");
    }
    let out = firmware("m3.elf").parent().unwrap().to_path_buf();
    let src = firmware_sources();
    let status = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(&src)
        .arg("m3loop")
        .arg(format!("ITERATIONS={n}"))
        .arg(format!("OUT={}", out.display()))
        .status()
        .expect("make is needed to build the test firmware");
    assert!(status.success(), "building m3loop-{n}.elf failed");
    out.join(format!("m3loop-{n}.elf"))
}

/// A unique `-name` for this test's QEMUs: the cleanup finds them by it.
pub fn marker(test: &str) -> String {
    format!("trace-faults-{test}-{}", std::process::id())
}

/// The QEMU command line for an m3loop firmware, tagged with `marker`.
pub fn loop_qemu(elf: &Path, marker: &str, serial: &str) -> Vec<String> {
    let mut cmd = lm3s6965evb_command(elf, serial);
    cmd.extend(["-name".to_string(), marker.to_string()]);
    cmd
}

pub fn segment_path(pid: u32) -> PathBuf {
    PathBuf::from(format!("/dev/shm/trace-collector.{pid}"))
}

/// On drop, kills every process tagged with the marker (a QEMU a killed `run`
/// collector left behind) and removes their segments.
pub struct Reaper(pub String);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in qemus_with(&self.0) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = std::fs::remove_file(segment_path(pid));
        }
    }
}

/// A child process, killed (SIGKILL) and reaped on drop if still running.
pub struct Proc {
    child: Child,
    /// A QEMU: remove its segment when we kill it.
    qemu: bool,
    log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the exit; fails the test after `limit` (the drop kills it).
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "pid {} did not exit within {limit:?}; its stderr:\n{}",
                    self.pid(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if self.qemu {
            let _ = std::fs::remove_file(segment_path(self.child.id()));
        }
    }
}

/// Starts `cmd` with stdin and stdout from/to nothing (or `stdout`), stderr to `log`.
pub fn spawn(cmd: &[String], log: &Path, stdout: Option<&Path>, qemu: bool) -> Proc {
    let err = std::fs::File::create(log).unwrap();
    let out = match stdout {
        Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
        None => Stdio::null(),
    };
    let child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", cmd[0]));
    Proc {
        child,
        qemu,
        log: log.to_path_buf(),
    }
}

/// Where a capture's collector writes its stderr: beside the directory.
pub fn log(dir: &Path) -> PathBuf {
    dir.with_extension("log")
}

/// `trace-collector attach --pid PID --out DIR --quiet <extra>`, stderr to `log`.
pub fn start_attach(pid: u32, dir: &Path, log: &Path, extra: &[&str]) -> Proc {
    let mut cmd = vec![
        collector().display().to_string(),
        "attach".into(),
        "--pid".into(),
        pid.to_string(),
        "--out".into(),
        dir.display().to_string(),
        "--quiet".into(),
    ];
    cmd.extend(extra.iter().map(|s| s.to_string()));
    spawn(&cmd, log, None, false)
}

/// Polls `cond` every 10 ms; fails the test after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn shm_read(pid: u32, offset: u64, len: usize) -> u64 {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(segment_path(pid)).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut b = [0u8; 8];
    f.read_exact(&mut b[..len]).unwrap();
    u64::from_le_bytes(b)
}

/// Asserts the shim runs free after its collector detached: WAITING, no
/// collector, QEMU's code instrumented for nothing (`idle=free`), and
/// nothing counted as lost while the guest runs.
pub fn assert_runs_free(qemu: u32) {
    wait_until(
        Duration::from_secs(10),
        "the shim to drop its instrumentation",
        || shm_read(qemu, INSTRUMENTED_EVENTS, 4) == 0,
    );
    assert_eq!(shm_read(qemu, STATE, 4), WAITING);
    assert_eq!(shm_read(qemu, COLLECTOR_PID, 4), 0);
    let before = shm_read(qemu, EVENTS_LOST_0, 8);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(shm_read(qemu, EVENTS_LOST_0, 8), before);
}
