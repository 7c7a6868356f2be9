//! `run`: start QEMU with the shim loaded and a QMP socket, wait for its
//! segment, capture, and report how QEMU exited.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use trace_schema::options::{EventSet, ShimOptions};

use crate::capture::directory;
use crate::capture::session::{self, CaptureSetup, Ending, Owner, Summary};
use crate::qemu::qmp::MtreeFetch;
use crate::qemu::segment_view::{Segment, SegmentError};

/// The shim's file name, looked for beside the collector's executable.
pub const SHIM_FILE: &str = "libtrace_shim.so";

/// Arguments of `trace-collector run`.
#[derive(Debug, Clone)]
pub struct RunArgs {
    pub out: PathBuf,
    pub overwrite: bool,
    /// `mem,mmio,insn` (any subset, `,` or `+` separated).
    pub events: String,
    pub ring_kib: Option<u64>,
    pub meta_kib: Option<u64>,
    /// `block` or `drop`.
    pub overflow: String,
    /// `fast` or `qemu` (the shim's `disas=`).
    pub disas: String,
    /// The shim; default `libtrace_shim.so` beside this executable.
    pub shim: Option<PathBuf>,
    /// The user's device names (`memory_map::DeviceMap` format).
    pub device_map: Option<PathBuf>,
    pub part_rows: usize,
    /// Cut parts of tables whose rows waited this long (`None`: only full parts).
    pub flush_every: Option<std::time::Duration>,
    /// Parquet encoder threads (`None`: `default_threads`).
    pub threads: Option<usize>,
    pub show_progress: bool,
    /// The QEMU command line, binary first.
    pub qemu: Vec<String>,
}

/// The shim's `-plugin` arguments for `args`, checked by the shim's own parser.
pub fn plugin_options(args: &RunArgs) -> Result<Vec<String>> {
    let events = EventSet::parse(&args.events).map_err(|_| {
        anyhow!(
            "--events {:?}: expected a comma-separated list of mem, mmio, insn",
            args.events
        )
    })?;
    let mut opts = vec![format!("events={}", events.to_option())];
    if let Some(k) = args.ring_kib {
        opts.push(format!("ring_kib={k}"));
    }
    if let Some(k) = args.meta_kib {
        opts.push(format!("meta_kib={k}"));
    }
    opts.push(format!("overflow={}", args.overflow));
    // Only when asked: the default leaves the options (and so what
    // `--append` compares) as they were before the option existed.
    if args.disas != "fast" {
        opts.push(format!("disas={}", args.disas));
    }
    opts.push("wait=on".into());
    ShimOptions::parse(&opts).map_err(|e| anyhow!("invalid option: {e}"))?;
    Ok(opts)
}

/// The shim to load: `--shim`, or `libtrace_shim.so` beside our executable.
pub fn shim_path(given: Option<&Path>) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => {
            let exe =
                std::env::current_exe().context("cannot find the trace-collector executable")?;
            exe.parent().unwrap_or(Path::new(".")).join(SHIM_FILE)
        }
    };
    if !path.is_file() {
        bail!(
            "the QEMU plugin {} does not exist: build it (cargo build --release -p trace-shim) or give its path with --shim",
            path.display()
        );
    }
    let path = path
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    if path.to_string_lossy().contains(',') {
        bail!(
            "the plugin path {} contains a ',', which QEMU's -plugin option cannot take",
            path.display()
        );
    }
    Ok(path)
}

/// A private temporary directory for the QMP socket, removed on drop.
struct SocketDir(PathBuf);

impl SocketDir {
    fn new() -> Result<SocketDir> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("trace-collector.{}.{nanos:x}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(SocketDir(dir))
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// "exited with status N" / "killed by signal N (SIGNAME)".
pub fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else if let Some(sig) = status.signal() {
        match Signal::try_from(sig) {
            Ok(s) => format!("killed by signal {sig} ({s})"),
            Err(_) => format!("killed by signal {sig}"),
        }
    } else {
        format!("{status}")
    }
}

/// Waits up to `limit` for the child; kills it after that.
fn reap(child: &mut Child, limit: Duration) -> (ExitStatus, bool) {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return (s, false),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                return (
                    child.wait().unwrap_or_else(|_| ExitStatus::from_raw(0)),
                    true,
                );
            }
        }
    }
}

/// Stops a child that we will not capture (an error): SIGTERM, then SIGKILL.
fn stop_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        reap(child, Duration::from_secs(5));
    }
}

/// QEMU gets SIGTERM if we die, even by SIGKILL, where no handler of ours
/// runs: a `run` capture must not leave its QEMU running (and its segment in
/// /dev/shm) with no one to drain it. SIGTERM, not SIGKILL, so that QEMU
/// shuts down and the shim removes its segment. Set up by the kernel
/// (PR_SET_PDEATHSIG), for the thread that spawns QEMU: `run` does that on the
/// main thread, which lives as long as the process.
fn stop_with_us(command: &mut Command) {
    let parent = std::process::id();
    // Safety: the closure runs in the child between fork and exec; it only
    // makes two system calls (async-signal-safe) and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
            // We may have died before the prctl: then QEMU is an orphan
            // already and would never get the signal.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(std::io::Error::other("trace-collector exited"));
            }
            Ok(())
        });
    }
}

/// `trace-collector run`.
pub fn run(args: &RunArgs, signals: &AtomicU32) -> Result<Summary> {
    let plugin = plugin_options(args)?;
    if args.qemu.is_empty() {
        bail!("no QEMU command given: trace-collector run --out DIR -- qemu-system-... ARGS");
    }
    let shim = shim_path(args.shim.as_deref())?;
    let user_names = crate::qemu::memory_map::load_device_map(args.device_map.as_deref())?;
    directory::check(&args.out, args.overwrite, false)?;
    let sockets = SocketDir::new()?;
    let qmp = sockets.0.join("qmp.sock");

    let mut plugin_arg = shim.to_string_lossy().into_owned();
    for o in &plugin {
        plugin_arg.push(',');
        plugin_arg.push_str(o);
    }
    let qemu = &args.qemu[0];
    // Start paused, unless the user asked for that already: the shim holds
    // QEMU in plugin install until we attach, and QMP only answers after
    // that; paused, the guest cannot run (or exit) before the memory map is
    // read. The fetch resumes it.
    let start_paused = !args.qemu[1..].iter().any(|a| a == "-S");
    let mut command = Command::new(qemu);
    command
        .args(&args.qemu[1..])
        .args(start_paused.then_some("-S"))
        .arg("-plugin")
        .arg(&plugin_arg)
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()));
    stop_with_us(&mut command);
    let mut child = command.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("cannot start QEMU: {qemu:?} not found"),
        std::io::ErrorKind::PermissionDenied => {
            anyhow!("cannot start QEMU: {qemu:?} is not executable")
        }
        _ => anyhow!("cannot start QEMU {qemu:?}: {e}"),
    })?;
    let pid = child.id();

    let seg = match wait_for_segment(&mut child, signals) {
        Ok(seg) => seg,
        Err(e) => {
            stop_child(&mut child);
            return Err(e);
        }
    };
    let result = (|| {
        directory::clear(&args.out)?;
        let view = *seg.view();
        let mtree = MtreeFetch::start(
            qmp.clone(),
            args.out.join("mtree.txt"),
            Duration::from_secs(10),
            start_paused,
            // Before the guest runs (it is resumed after this).
            move |map| crate::qemu::memory_map::publish_memory_ranges(&view, map),
            move |why| {
                // Never leave a paused QEMU behind: stop it, the capture then ends.
                eprintln!("trace-collector: error: could not resume QEMU: {why}; stopping it");
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            },
        );
        let setup = CaptureSetup {
            out: args.out.clone(),
            part_rows: args.part_rows,
            flush_every: args.flush_every,
            threads: args.threads,
            names: std::sync::Arc::new(crate::qemu::memory_map::MapDeviceNames::new(
                args.out.join("mtree.txt"),
                Some(mtree.clone()),
                Some(qmp.clone()),
                user_names,
            )),
            show_progress: args.show_progress,
            append: None,
            window: session::WindowRequest::default(),
        };
        let captured = session::capture(&seg, &setup, Owner::Run { child: pid }, signals)?;
        Ok((captured, mtree))
    })();
    let (mut captured, mtree) = match result {
        Ok(r) => r,
        Err(e) => {
            stop_child(&mut child);
            seg.unlink();
            return Err(e);
        }
    };
    let (status, killed) = match captured.ending {
        // QEMU is exiting on its own (shim's atexit ran), or is gone.
        Ending::QemuExited | Ending::QemuDied => reap(&mut child, Duration::from_secs(30)),
        Ending::Interrupted | Ending::WindowEnded => reap(&mut child, Duration::ZERO),
    };
    // A QEMU that did not finish left its segment's name behind.
    seg.unlink();
    let mut qemu_exit = describe_status(status);
    if killed {
        qemu_exit = format!("{qemu_exit} (killed by the collector: it did not exit)");
    } else if captured.ending == Ending::QemuDied {
        qemu_exit = format!("QEMU exited without finishing (killed?): {qemu_exit}");
    }
    captured.warnings.extend(mtree.wait(Duration::from_secs(5)));
    captured.complete(qemu_exit)
}

/// Polls for the child's segment; fails if the child exits first.
fn wait_for_segment(child: &mut Child, signals: &AtomicU32) -> Result<Segment> {
    let pid = child.id();
    let signals_at_start = signals.load(Ordering::Relaxed);
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for QEMU")? {
            bail!(
                "QEMU refused to start: it {} before creating its trace segment (see its messages above)",
                describe_status(status)
            );
        }
        match Segment::open(pid) {
            Ok(seg) => return Ok(seg),
            // Not created yet, or we saw the process die between two checks.
            Err(SegmentError::NoSegment { .. } | SegmentError::NoProcess(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if signals.load(Ordering::Relaxed) != signals_at_start {
            bail!("interrupted while waiting for QEMU to start");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(events: &str, ring: Option<u64>, overflow: &str) -> RunArgs {
        RunArgs {
            out: "x".into(),
            overwrite: false,
            events: events.into(),
            ring_kib: ring,
            meta_kib: None,
            overflow: overflow.into(),
            disas: "fast".into(),
            shim: None,
            device_map: None,
            part_rows: 10,
            flush_every: None,
            threads: None,
            show_progress: false,
            qemu: vec!["qemu-system-arm".into()],
        }
    }

    #[test]
    fn plugin_options_are_checked_before_starting_qemu() {
        assert_eq!(
            plugin_options(&args("mem,mmio,insn", Some(64), "drop")).unwrap(),
            vec![
                "events=mem+mmio+insn",
                "ring_kib=64",
                "overflow=drop",
                "wait=on"
            ]
        );
        let e = plugin_options(&args("mem,cache", None, "block"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--events") && e.contains("cache"), "{e}");
        let e = plugin_options(&args("mem", Some(3), "block"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ring_kib"), "{e}");
        let e = plugin_options(&args("mem", None, "maybe"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("overflow"), "{e}");
    }

    #[test]
    fn missing_qemu_and_shim_are_clear_errors() {
        let e = shim_path(Some(Path::new("/nonexistent/libtrace_shim.so")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/libtrace_shim.so") && e.contains("--shim"),
            "{e}"
        );

        let dir = crate::testutil::TempDir::new("run");
        let shim = dir.0.join(SHIM_FILE);
        std::fs::write(&shim, "").unwrap();
        let mut a = args("mem", None, "block");
        a.out = dir.0.join("out");
        a.shim = Some(shim);
        a.qemu = vec!["/nonexistent/qemu-system-arm".into()];
        let sig = AtomicU32::new(0);
        let e = run(&a, &sig).unwrap_err().to_string();
        assert!(
            e.contains("not found") && e.contains("/nonexistent/qemu-system-arm"),
            "{e}"
        );

        // A "QEMU" that exits at once: refused to start.
        a.qemu = vec!["false".into()];
        let e = run(&a, &sig).unwrap_err().to_string();
        assert!(
            e.contains("refused to start") && e.contains("status 1"),
            "{e}"
        );
    }

    #[test]
    fn statuses_in_words() {
        assert_eq!(
            describe_status(ExitStatus::from_raw(0)),
            "exited with status 0"
        );
        assert_eq!(
            describe_status(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(
            describe_status(ExitStatus::from_raw(9)),
            "killed by signal 9 (SIGKILL)"
        );
    }
}
