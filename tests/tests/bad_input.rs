//! Bad input gets a clear error: every case here must exit non-zero (1 for
//! errors, 2 for command-line usage errors), with a message that names the
//! problem, without a panic and without hanging (every command runs under a
//! deadline), and without leaving a QEMU behind.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use trace_tests::*;

// ------------------------------------------------------------------ helpers

/// What a command did.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `cmd` (stdin from nothing) and waits at most `limit`: past it, the
/// command is killed and the test fails.
fn run_limited(cmd: &mut Command, limit: Duration) -> Ran {
    use std::io::Read;
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ran {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        took: started.elapsed(),
    }
}

const LIMIT: Duration = Duration::from_secs(30);

/// Asserts the command failed with `code` and a message holding every one of
/// `needles`, and did not panic.
#[track_caller]
fn fails(r: &Ran, code: i32, needles: &[&str]) {
    assert_eq!(
        r.status.code(),
        Some(code),
        "exit status {}; stderr:\n{}",
        r.status,
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "a panic:\n{}", r.stderr);
    for n in needles {
        assert!(
            r.stderr.contains(n),
            "the message does not say {n:?}:\n{}",
            r.stderr
        );
    }
}

fn collector_cmd() -> Command {
    Command::new(collector())
}

fn query_cmd() -> Command {
    Command::new(query())
}

/// A unique `-name` for this test's QEMUs.
fn marker(test: &str) -> String {
    format!("trace-bad-input-{test}-{}", std::process::id())
}

/// The M3 firmware's QEMU command line, tagged with `marker`.
fn tagged_m3(marker: &str) -> Vec<String> {
    let mut q = m3_qemu();
    let kernel = q.len() - 2;
    q.splice(kernel..kernel, ["-name".to_string(), marker.to_string()]);
    q
}

#[track_caller]
fn assert_no_qemu(marker: &str) {
    let left = qemus_with(marker);
    for &pid in &left {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(left.is_empty(), "QEMU left running: {left:?}");
}

/// A `sleep 30` child: a live process that is not a QEMU. Killed on drop,
/// together with the segment file a test made for it.
struct Sleeper(std::process::Child);

impl Sleeper {
    fn new(args: &[&str]) -> Sleeper {
        Sleeper(
            Command::new(args[0])
                .args(&args[1..])
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn segment(&self) -> PathBuf {
        PathBuf::from(format!("/dev/shm/trace-collector.{}", self.pid()))
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(self.segment());
    }
}

/// A capture of the M3 firmware, made once, for the trace-query cases.
fn m3_capture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = capture_dir("bad-input-m3");
        run_capture(&dir, &["--events", "mem,mmio"], &m3_qemu());
        dir
    })
}

/// A copy of the M3 capture to damage.
fn copy_of_m3_capture(name: &str) -> PathBuf {
    copy_capture(m3_capture(), name)
}

// ------------------------------------------------------------------- shim

/// An unknown or malformed shim option given through `run`: refused before
/// QEMU starts.
#[test]
fn bad_shim_options_through_run() {
    let m = marker("run-options");
    let qemu = tagged_m3(&m);
    for (args, code, needles) in [
        (
            &["--events", "mem,bogus"][..],
            1,
            &["--events", "mem,bogus", "expected a comma-separated list"][..],
        ),
        (&["--events", ""], 1, &["--events"]),
        (&["--ring-kib", "3"], 1, &["ring_kib=3", "power of two"]),
        (
            &["--meta-kib", "5000"],
            1,
            &["meta_kib=5000", "power of two"],
        ),
        (&["--ring-kib", "lots"], 2, &["lots", "--ring-kib"]),
        (&["--overflow", "maybe"], 2, &["maybe", "--overflow"]),
    ] {
        let dir = capture_dir("bad-input-run-options");
        let r = run_limited(
            collector_cmd()
                .arg("run")
                .arg("--out")
                .arg(&dir)
                .args(args)
                .arg("--")
                .args(&qemu),
            LIMIT,
        );
        fails(&r, code, needles);
        assert_no_qemu(&m);
    }
}

/// The same options given to QEMU directly: QEMU refuses to start, and the
/// shim's message names the option.
#[test]
fn bad_shim_options_given_to_qemu() {
    let m = marker("qemu-options");
    for (option, needles) in [
        ("bogus=1", &["\"bogus\" is unknown", "options: events"][..]),
        ("events=mem+cache", &["events=mem+cache", "\"cache\""]),
        ("events=", &["events="]),
        ("ring_kib=3", &["ring_kib=3", "power of two"]),
        (
            "ring_kib=99999999999999999999",
            &["ring_kib=99999999999999999999"],
        ),
        ("meta_kib=abc", &["meta_kib=abc", "whole number"]),
        ("overflow=maybe", &["overflow=maybe", "block or drop"]),
        ("wait=2", &["wait=2", "on or off"]),
    ] {
        let mut qemu = tagged_m3(&m);
        qemu.push("-plugin".into());
        qemu.push(format!("{},{option}", shim().display()));
        let r = run_limited(Command::new(&qemu[0]).args(&qemu[1..]), LIMIT);
        assert!(!r.status.success(), "QEMU started with {option}");
        fails(
            &r,
            r.status.code().unwrap_or(-1),
            &[&["trace shim: trace shim option"][..], needles].concat(),
        );
        assert_eq!(r.stdout, "", "the guest did not run");
        assert_no_qemu(&m);
    }
}

// ----------------------------------------------------------------- attach

#[test]
fn attach_to_a_process_that_does_not_exist() {
    let mut child = Command::new("true").spawn().unwrap();
    let gone = child.id();
    child.wait().unwrap();
    for pid in [gone, 999_999_999, 0] {
        let dir = capture_dir("bad-input-no-process");
        let r = run_limited(
            collector_cmd()
                .args(["attach", "--pid", &pid.to_string(), "--out"])
                .arg(&dir),
            LIMIT,
        );
        fails(&r, 1, &[&format!("no process with pid {pid}")]);
        assert!(!dir.exists(), "nothing was created");
    }
    for bad in ["-1", "abc", ""] {
        let r = run_limited(
            collector_cmd().args(["attach", "--pid", bad, "--out", "/nonexistent/x"]),
            LIMIT,
        );
        fails(&r, 2, &["--pid"]);
    }
}

#[test]
fn attach_to_a_process_without_the_shim() {
    let sleeper = Sleeper::new(&["sleep", "30"]);
    let dir = capture_dir("bad-input-no-shim");
    let r = run_limited(
        collector_cmd()
            .args(["attach", "--pid", &sleeper.pid().to_string(), "--out"])
            .arg(&dir),
        LIMIT,
    );
    fails(
        &r,
        1,
        &[&format!(
            "process {} has no trace segment (/dev/shm/trace-collector.{})",
            sleeper.pid(),
            sleeper.pid()
        )],
    );
    // Not at once: it gives a `$!` that has not exec'd QEMU yet 0.5 s.
    assert!(
        r.took < Duration::from_secs(2),
        "refused soon: {:?}",
        r.took
    );
    assert!(!dir.exists(), "nothing was created");

    // A process whose command line mentions a plugin gets some time to
    // create its segment, but not forever.
    let sleeper = Sleeper::new(&["sh", "-c", "sleep 30", "plugin"]);
    let r = run_limited(
        collector_cmd()
            .args(["attach", "--pid", &sleeper.pid().to_string(), "--out"])
            .arg(&dir),
        LIMIT,
    );
    fails(&r, 1, &["has no trace segment"]);
}

// Writing segments by hand. The offsets are those of schema/src/layout.rs's
// #[repr(C)] Header, VcpuControl and RingControl (layout version 6).
const MAGIC: &[u8; 8] = b"TRCQEMU1";
const RING: u64 = 8192;
/// Header + one vCPU block (control + event ring + meta ring).
const SEGMENT_BYTES: u64 = 4096 + 4096 + 2 * RING;
const EVENT_HEAD: usize = 4096;
const META_HEAD: usize = 4096 + 256;
const EVENT_DATA: usize = 8192;
const META_DATA: usize = 8192 + RING as usize;

fn put(b: &mut [u8], at: usize, v: u64, len: usize) {
    b[at..at + len].copy_from_slice(&v.to_le_bytes()[..len]);
}

/// A segment a 1-vCPU shim with 8 KiB rings would have made for `pid`.
fn valid_segment(pid: u32) -> Vec<u8> {
    let mut b = vec![0u8; SEGMENT_BYTES as usize];
    b[0..8].copy_from_slice(MAGIC);
    put(&mut b, 8, 6, 4); // layout_version
    put(&mut b, 12, 4096, 4); // header_bytes
    put(&mut b, 16, 4096, 4); // chunk_bytes
    put(&mut b, 20, 1, 4); // n_vcpus
    put(&mut b, 24, RING, 8); // event_ring_bytes
    put(&mut b, 32, RING, 8); // meta_ring_bytes
    put(&mut b, 40, SEGMENT_BYTES, 8); // segment_bytes
    put(&mut b, 48, pid as u64, 4); // qemu_pid
    let opts = b"events=mem+mmio";
    put(&mut b, 52, opts.len() as u64, 4); // options_len
    b[56..56 + opts.len()].copy_from_slice(opts);
    b
}

/// Writes `bytes` as `sleeper`'s segment (mode 0600, ours).
fn write_segment(sleeper: &Sleeper, bytes: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(sleeper.segment());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(sleeper.segment())
        .unwrap();
    std::io::Write::write_all(&mut f, bytes).unwrap();
}

fn attach_to(sleeper: &Sleeper, dir: &Path) -> Ran {
    run_limited(
        collector_cmd()
            .args([
                "attach",
                "--quiet",
                "--pid",
                &sleeper.pid().to_string(),
                "--out",
            ])
            .arg(dir),
        LIMIT,
    )
}

/// The control: the hand-made valid segment is accepted (so each bad one
/// below is refused for the one field it changes). The "QEMU" dies, the
/// capture ends as `qemu_died`.
#[test]
fn a_valid_hand_made_segment_is_accepted() {
    let sleeper = Sleeper::new(&["sleep", "1"]);
    write_segment(&sleeper, &valid_segment(sleeper.pid()));
    let dir = capture_dir("bad-input-valid-segment");
    let r = attach_to(&sleeper, &dir);
    assert!(r.status.success(), "{}", r.stderr);
    assert!(
        r.stderr.contains("QEMU exited without finishing"),
        "{}",
        r.stderr
    );
    assert!(
        !sleeper.segment().exists(),
        "the dead process's segment is removed"
    );
}

/// Segments with a bad header: refused with the layout error, never read
/// beyond what the file holds.
#[test]
fn bad_segments_are_refused() {
    let sleeper = Sleeper::new(&["sleep", "60"]);
    let pid = sleeper.pid();
    type Edit = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Edit, String)> = vec![
        (
            "too small",
            Box::new(|b| b.truncate(100)),
            "segment is 100 bytes, smaller than its 4096-byte header".into(),
        ),
        (
            "empty",
            Box::new(|b| b.clear()),
            "segment is 0 bytes".into(),
        ),
        (
            "bad magic",
            Box::new(|b| b[0..8].copy_from_slice(b"NOTTRACE")),
            "has magic \"NOTTRACE\", not \"TRCQEMU1\": not a trace-collector segment".into(),
        ),
        (
            "version",
            Box::new(|b| put(b, 8, 7, 4)),
            "segment layout version 7, this collector reads version 6".into(),
        ),
        (
            "header size",
            Box::new(|b| put(b, 12, 100, 4)),
            "header_bytes = 100 is out of range".into(),
        ),
        (
            "chunk size",
            Box::new(|b| put(b, 16, 64, 4)),
            "chunk_bytes = 64 is out of range".into(),
        ),
        (
            "no vCPU",
            Box::new(|b| put(b, 20, 0, 4)),
            "n_vcpus = 0 is out of range".into(),
        ),
        (
            "too many vCPUs",
            Box::new(|b| put(b, 20, 5000, 4)),
            "n_vcpus = 5000 is out of range".into(),
        ),
        (
            "ring not a power of two",
            Box::new(|b| put(b, 24, 5000, 8)),
            "event_ring_bytes = 5000 is out of range".into(),
        ),
        (
            "huge meta ring",
            Box::new(|b| put(b, 32, 1 << 40, 8)),
            format!("meta_ring_bytes = {} is out of range", 1u64 << 40),
        ),
        (
            "options length",
            Box::new(|b| put(b, 52, 5000, 4)),
            "options_len = 5000 is out of range".into(),
        ),
        (
            "file shorter than the header says",
            Box::new(|b| b.truncate(12288)),
            "header says 24576 bytes, its geometry 24576, the file has 12288".into(),
        ),
        (
            "header claims a huge segment",
            Box::new(|b| {
                // 4096 vCPUs with 1 GiB rings, consistent with itself: only
                // the file's size shows the lie.
                put(b, 20, 4096, 4);
                put(b, 24, 1 << 30, 8);
                put(b, 32, 1 << 30, 8);
                put(b, 40, 4096 + (4096 + (2 << 30)) * 4096, 8);
            }),
            "the file has 24576".into(),
        ),
    ];
    let name = format!("/dev/shm/trace-collector.{pid}");
    let check = |what: &str, bytes: &[u8], needles: &[&str]| {
        write_segment(&sleeper, bytes);
        let dir = capture_dir("bad-input-bad-segment");
        let r = attach_to(&sleeper, &dir);
        fails(&r, 1, needles);
        // The magic and size cases wait (2 s) for a shim still writing it.
        assert!(r.took < Duration::from_secs(10), "{what}: {:?}", r.took);
        assert!(!dir.exists(), "{what}: nothing was created");
    };
    for (what, edit, needle) in cases {
        let mut b = valid_segment(pid);
        edit(&mut b);
        check(
            what,
            &b,
            &[&format!("invalid trace segment {name}: "), &needle],
        );
    }
    // Not a layout error: a segment of another process (a stale one whose
    // pid was reused, say).
    let mut b = valid_segment(pid);
    put(&mut b, 48, 1, 4);
    check(
        "another process's segment",
        &b,
        &[&format!(
            "trace segment {name} says it belongs to pid 1, not {pid}"
        )],
    );
}

/// A valid header with hostile rings: an error naming the ring, not a crash
/// or a read out of bounds; capture.json records the error.
#[test]
fn hostile_rings_are_errors() {
    let sleeper = Sleeper::new(&["sleep", "60"]);
    type Edit = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|b| put(b, EVENT_HEAD, 1 << 40, 8)),
            "corrupt event ring of vCPU 0: ring positions are inconsistent",
        ),
        (
            Box::new(|b| {
                put(b, EVENT_HEAD, 80, 8);
                put(b, EVENT_DATA, 1000 << 32, 8); // 1 segment of 1000 words
            }),
            "corrupt event ring of vCPU 0: corrupt record at ring offset 0: message longer than the bytes published",
        ),
        (
            Box::new(|b| {
                put(b, EVENT_HEAD, 8, 8);
                put(b, EVENT_DATA, 100, 8); // 101 segments
            }),
            "too many segments",
        ),
        (
            Box::new(|b| {
                put(b, EVENT_HEAD, 80, 8);
                put(b, EVENT_DATA, 9 << 32, 8); // 80 bytes, not a Chunk
                put(b, EVENT_DATA + 8, 0xdead_beef, 8);
            }),
            "corrupt event ring of vCPU 0: record at ring offset 0: not a Chunk",
        ),
        (
            Box::new(|b| {
                put(b, EVENT_HEAD, 16, 8);
                put(b, EVENT_DATA, 1 << 32, 8); // a 16-byte message
            }),
            "corrupt event ring of vCPU 0: record at ring offset 0: shorter than a chunk's header",
        ),
        (
            Box::new(|b| {
                put(b, META_HEAD, 24, 8);
                put(b, META_DATA, 2 << 32, 8);
                put(b, META_DATA + 8, u64::MAX - 1, 8);
            }),
            "corrupt meta ring of vCPU 0",
        ),
    ];
    for (edit, needle) in cases {
        let mut b = valid_segment(sleeper.pid());
        edit(&mut b);
        write_segment(&sleeper, &b);
        let dir = capture_dir("bad-input-hostile-ring");
        let r = attach_to(&sleeper, &dir);
        fails(&r, 1, &[needle]);
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("capture.json")).unwrap())
                .unwrap();
        assert_eq!(j["end"], "error");
        assert!(j["error"].as_str().unwrap().contains(needle), "{j}");
    }
}

/// A segment that belongs to another user is refused (needs root to make).
#[test]
fn a_segment_of_another_user_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("note: not root, cannot make another user's segment: skipped");
        return;
    }
    let sleeper = Sleeper::new(&["sleep", "60"]);
    write_segment(&sleeper, &valid_segment(sleeper.pid()));
    let nobody = nix::unistd::Uid::from_raw(65534);
    nix::unistd::chown(&sleeper.segment(), Some(nobody), None).unwrap();
    let dir = capture_dir("bad-input-other-user");
    let r = attach_to(&sleeper, &dir);
    fails(
        &r,
        1,
        &["belongs to uid 65534, not to us (uid 0)", "refusing"],
    );
}

// -------------------------------------------------------------------- run

#[test]
fn a_qemu_that_cannot_start() {
    let m = marker("no-qemu");
    let dir = capture_dir("bad-input-no-qemu");
    let not_exec = dir.with_extension("not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    let machine = {
        let mut q = tagged_m3(&m);
        q[2] = "no-such-machine".into();
        q
    };
    for (qemu, needles) in [
        (
            vec!["/nonexistent/qemu-system-arm".to_string()],
            vec!["cannot start QEMU: \"/nonexistent/qemu-system-arm\" not found"],
        ),
        (
            vec![not_exec.display().to_string()],
            vec!["cannot start QEMU", "is not executable"],
        ),
        (
            vec!["false".to_string()],
            vec!["QEMU refused to start: it exited with status 1"],
        ),
        (
            machine,
            vec![
                "no-such-machine",
                "QEMU refused to start: it exited with status 1",
            ],
        ),
    ] {
        let _ = std::fs::remove_dir_all(&dir);
        let r = run_limited(
            collector_cmd()
                .args(["run", "--out"])
                .arg(&dir)
                .arg("--")
                .args(&qemu),
            LIMIT,
        );
        fails(&r, 1, &needles);
        assert_no_qemu(&m);
    }
}

/// An output directory that already holds a capture is refused unless
/// `--overwrite`, and the old capture stays as it was.
#[test]
fn an_output_directory_holding_a_capture() {
    let m = marker("overwrite");
    let dir = capture_dir("bad-input-overwrite");
    run_capture(&dir, &[], &m3_qemu());
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let before = std::fs::read(dir.join("capture.json")).unwrap();
    for mode in ["run", "attach"] {
        let mut cmd = collector_cmd();
        cmd.arg(mode).arg("--out").arg(&dir);
        let _sleeper;
        if mode == "run" {
            cmd.arg("--").args(tagged_m3(&m));
        } else {
            // attach checks the directory once it has found the segment.
            let s = Sleeper::new(&["sleep", "60"]);
            write_segment(&s, &valid_segment(s.pid()));
            cmd.args(["--pid", &s.pid().to_string()]);
            _sleeper = s;
        }
        let r = run_limited(&mut cmd, LIMIT);
        fails(
            &r,
            1,
            &[
                "already holds a capture (capture.json, mtree.txt, mem, mmio, stats)",
                "--overwrite",
            ],
        );
        assert_no_qemu(&m);
    }
    assert_eq!(std::fs::read(dir.join("capture.json")).unwrap(), before);

    run_capture(&dir, &["--overwrite"], &m3_qemu());
    assert_ne!(std::fs::read(dir.join("capture.json")).unwrap(), before);
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "mine"
    );

    // Not a directory at all.
    let file = dir.join("notes.txt");
    let r = run_limited(
        collector_cmd()
            .args(["run", "--out"])
            .arg(&file)
            .arg("--")
            .args(tagged_m3(&m)),
        LIMIT,
    );
    fails(&r, 1, &["exists and is not a directory"]);
    assert_no_qemu(&m);
}

#[test]
fn a_malformed_device_map() {
    let m = marker("device-map");
    let dir = capture_dir("bad-input-device-map");
    let map = dir.with_extension("map");
    for (text, needles) in [
        (
            "# mine\n0x4000c000-0x4000cfff uart0\nbad line here\n",
            vec![
                "line 3",
                "\"bad line here\"",
                "expected `<region name or start-end> <name>`",
            ],
        ),
        ("pl011\n", vec!["line 1", "\"pl011\""]),
        (
            "0x2000-0x1000 backwards\n",
            vec!["line 1", "range start is after its end"],
        ),
    ] {
        std::fs::write(&map, text).unwrap();
        let r = run_limited(
            collector_cmd()
                .args(["run", "--out"])
                .arg(&dir)
                .arg("--device-map")
                .arg(&map)
                .arg("--")
                .args(tagged_m3(&m)),
            LIMIT,
        );
        let mut all = vec![format!("device map {}", map.display())];
        all.extend(needles.iter().map(|s| s.to_string()));
        fails(&r, 1, &all.iter().map(String::as_str).collect::<Vec<_>>());
        assert_no_qemu(&m);
    }
    let r = run_limited(
        collector_cmd()
            .args(["run", "--out"])
            .arg(&dir)
            .args(["--device-map", "/nonexistent/map.txt", "--"])
            .args(tagged_m3(&m)),
        LIMIT,
    );
    fails(&r, 1, &["cannot read the device map /nonexistent/map.txt"]);
    assert_no_qemu(&m);
}

#[test]
fn command_line_usage_errors() {
    for (args, needle) in [
        (&[][..], "Usage: trace-collector <COMMAND>"),
        (&["record"], "unrecognized subcommand 'record'"),
        (
            &["run", "--out", "/tmp/x"],
            "the following required arguments were not provided",
        ),
        (
            &[
                "run",
                "--out",
                "/tmp/x",
                "--part-rows",
                "0",
                "--",
                "qemu-system-arm",
            ],
            "invalid value '0' for '--part-rows <N>'",
        ),
        (&["attach", "--out", "/tmp/x"], "--pid <PID>"),
        (&["attach", "--pid", "1"], "--out <DIR>"),
        (
            &["run", "--bogus", "--out", "/tmp/x", "--", "qemu-system-arm"],
            "unexpected argument '--bogus'",
        ),
    ] {
        let r = run_limited(collector_cmd().args(args), LIMIT);
        fails(&r, 2, &[needle]);
    }
}

// ------------------------------------------------------------ trace-query

#[test]
fn bad_sql_and_unknown_tables() {
    let cap = m3_capture();
    for (sql, needles) in [
        ("selec * frm mem", &["SQL error", "selec"][..]),
        (
            "select * from nosuch",
            &["unknown table 'nosuch'", "mem, mmio, stats"],
        ),
        ("select nosuchcol from mem", &["nosuchcol"]),
        ("select * from mem where", &["SQL error"]),
        ("", &["SQL"]),
    ] {
        let r = run_limited(query_cmd().arg("--trace").arg(cap).arg(sql), LIMIT);
        fails(&r, 1, needles);
        assert_eq!(r.stdout, "", "{sql}");
    }
    let r = run_limited(query_cmd().arg("select 1"), LIMIT);
    fails(&r, 1, &["--trace DIR is required"]);
    let r = run_limited(
        query_cmd().args(["--trace", "/nonexistent/capture", "select 1"]),
        LIMIT,
    );
    fails(&r, 1, &["capture directory /nonexistent/capture"]);
    let empty = capture_dir("bad-input-empty");
    std::fs::create_dir_all(&empty).unwrap();
    let r = run_limited(
        query_cmd().arg("--trace").arg(&empty).arg("select 1"),
        LIMIT,
    );
    fails(&r, 1, &["is not a capture directory"]);
    let r = run_limited(
        query_cmd()
            .arg("--trace")
            .arg(cap)
            .args(["--format", "xml", "select 1"]),
        LIMIT,
    );
    fails(&r, 2, &["xml"]);
}

/// A truncated, empty or foreign part in a table: queries of that table fail
/// naming the part; other tables still answer, with a warning.
#[test]
fn corrupt_or_truncated_parts() {
    type Damage = Box<dyn Fn(&Path)>;
    let cases: [(&str, Damage); 3] = [
        (
            "truncated",
            Box::new(|p: &Path| {
                let len = std::fs::metadata(p).unwrap().len();
                let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                f.set_len(len / 2).unwrap();
            }),
        ),
        ("empty", Box::new(|p: &Path| std::fs::write(p, "").unwrap())),
        (
            "not parquet",
            Box::new(|p: &Path| std::fs::write(p, "this is not a parquet file\n").unwrap()),
        ),
    ];
    for (what, damage) in cases {
        let cap = copy_of_m3_capture(&format!("bad-input-corrupt-{}", what.replace(' ', "-")));
        let part = cap.join("mem/part-000000.parquet");
        damage(&part);
        let r = run_limited(
            query_cmd()
                .arg("--trace")
                .arg(&cap)
                .arg("select count(*) as n from mem"),
            LIMIT,
        );
        fails(
            &r,
            1,
            &["corrupt Parquet part", &part.display().to_string()],
        );

        let r = run_limited(
            query_cmd().arg("--trace").arg(&cap).args([
                "--format",
                "csv",
                "select count(*) as n from mmio",
            ]),
            LIMIT,
        );
        assert!(r.status.success(), "{what}: {}", r.stderr);
        assert_eq!(r.stdout, "n\n22\n");
        assert!(
            r.stderr.contains("warning") && r.stderr.contains(&part.display().to_string()),
            "{what}: {}",
            r.stderr
        );
        // The analyzers that read mem fail the same way.
        let bufs = cap.with_extension("buffers");
        std::fs::write(&bufs, "0x20000000 16 0\n").unwrap();
        let r = run_limited(
            query_cmd()
                .args(["bufmon", "--trace"])
                .arg(&cap)
                .arg("--buffers")
                .arg(&bufs),
            LIMIT,
        );
        fails(
            &r,
            1,
            &["corrupt Parquet part", &part.display().to_string()],
        );
    }
}

#[test]
fn a_malformed_search_buffers_file() {
    let cap = m3_capture();
    let file = capture_dir("bad-input-buffers").with_extension("txt");
    for (text, needles) in [
        (
            "# vaddr size asid\n0x20000000 16 0\n0x20000010 zz 0\n",
            vec![
                "line 3",
                "expected `<vaddr> <size> <asid>` in hex",
                "\"0x20000010 zz 0\"",
            ],
        ),
        ("0x20000000 0 0\n", vec!["line 1", "buffer size is 0"]),
        ("0x20000000\n", vec!["line 1"]),
    ] {
        std::fs::write(&file, text).unwrap();
        let r = run_limited(
            query_cmd()
                .args(["bufmon", "--trace"])
                .arg(cap)
                .arg("--buffers")
                .arg(&file),
            LIMIT,
        );
        let mut all = vec![file.display().to_string()];
        all.extend(needles.iter().map(|s| s.to_string()));
        fails(&r, 1, &all.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let r = run_limited(
        query_cmd()
            .args(["bufmon", "--trace"])
            .arg(cap)
            .args(["--buffers", "/nonexistent/bufs.txt"]),
        LIMIT,
    );
    fails(&r, 1, &["/nonexistent/bufs.txt", "No such file"]);
}
