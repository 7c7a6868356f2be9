//! Asking QEMU for its memory map (`info mtree -f`) over QMP, on a thread of
//! its own so that a slow or absent monitor never stalls the drain.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// How long each read or write on the socket may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A QMP session on a unix socket, past the capabilities handshake.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to `socket`, retrying for `connect_for` (QEMU may not listen
    /// yet), and negotiates capabilities.
    pub fn connect(socket: &Path, connect_for: Duration) -> Result<Qmp> {
        let started = Instant::now();
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if started.elapsed() >= connect_for => {
                    return Err(e).with_context(|| {
                        format!("cannot connect to QMP socket {}", socket.display())
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let writer = stream.try_clone()?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = read_message(&mut qmp.reader)?;
        if greeting.get("QMP").is_none() {
            bail!(
                "{} is not a QMP socket (greeting {greeting})",
                socket.display()
            );
        }
        qmp.execute(serde_json::json!({"execute": "qmp_capabilities"}))?;
        Ok(qmp)
    }

    /// Sends one command, returns its `return`.
    pub fn execute(&mut self, request: Value) -> Result<Value> {
        self.writer
            .write_all(format!("{request}\n").as_bytes())
            .context("cannot write to QMP")?;
        reply(&mut self.reader)
    }

    /// Runs one HMP command (`info mtree -f`) and returns its output.
    pub fn human(&mut self, command: &str) -> Result<String> {
        let out = self.execute(serde_json::json!({
            "execute": "human-monitor-command",
            "arguments": {"command-line": command},
        }))?;
        let text = out
            .as_str()
            .ok_or_else(|| anyhow!("QMP returned {out} for {command:?}, not text"))?;
        Ok(text.replace("\r\n", "\n"))
    }
}

fn read_message(reader: &mut impl BufRead) -> Result<Value> {
    let mut line = String::new();
    if reader
        .read_line(&mut line)
        .context("cannot read from QMP")?
        == 0
    {
        bail!("QMP closed the connection");
    }
    serde_json::from_str(&line).with_context(|| format!("QMP sent {line:?}, not JSON"))
}

/// The `return` of the next reply, skipping asynchronous events.
fn reply(reader: &mut impl BufRead) -> Result<Value> {
    loop {
        let mut msg = read_message(reader)?;
        if let Some(r) = msg.get_mut("return") {
            return Ok(r.take());
        }
        if let Some(e) = msg.get("error") {
            bail!("QMP error: {e}");
        }
    }
}

/// How a fetch ended (`None` while it runs), and the condition its waiters
/// wait on.
type Outcome = Arc<(Mutex<Option<Result<(), String>>>, Condvar)>;

/// A background fetch of `info mtree -f` into a file. Shared: the capture
/// waits for it before naming devices, `run` waits for it at the end.
pub struct MtreeFetch {
    outcome: Outcome,
}

impl MtreeFetch {
    /// Starts fetching from `socket` into `dest`, handing the map to
    /// `on_map` as soon as it is read. With `resume`, QEMU was started paused
    /// (`-S`) so that the map can be read before the guest runs: the fetch
    /// then sends `cont` (after `on_map`), whether or not the map could be
    /// read. If QEMU cannot be resumed, `on_stuck` is called so that it does
    /// not stay paused forever.
    pub fn start(
        socket: PathBuf,
        dest: PathBuf,
        connect_for: Duration,
        resume: bool,
        on_map: impl FnOnce(&str) + Send + 'static,
        on_stuck: impl FnOnce(&str) + Send + 'static,
    ) -> Arc<MtreeFetch> {
        let fetch = Arc::new(MtreeFetch {
            outcome: Arc::new((Mutex::new(None), Condvar::new())),
        });
        let outcome = fetch.outcome.clone();
        std::thread::spawn(move || {
            let result = (|| -> Result<()> {
                let mut qmp = Qmp::connect(&socket, connect_for)?;
                let map = qmp.human("info mtree -f").and_then(|text| {
                    on_map(&text);
                    crate::capture::directory::write_atomic(&dest, text.as_bytes())
                });
                if resume {
                    qmp.execute(serde_json::json!({"execute": "cont"}))
                        .context("cannot resume QEMU (QMP cont)")?;
                }
                map
            })();
            if let (true, Err(e)) = (resume, &result) {
                on_stuck(&format!("{e:#}"));
            }
            let (lock, ready) = &*outcome;
            *lock.lock().unwrap() = Some(result.map_err(|e| format!("{e:#}")));
            ready.notify_all();
        });
        fetch
    }

    /// Waits at most `limit` for the fetch to end; returns whether it has.
    pub fn wait_done(&self, limit: Duration) -> bool {
        let (lock, ready) = &*self.outcome;
        let guard = lock.lock().unwrap();
        let (guard, _) = ready
            .wait_timeout_while(guard, limit, |o| o.is_none())
            .unwrap();
        guard.is_some()
    }

    /// Waits at most `limit` for the fetch; returns a warning if it failed or
    /// is still running (the thread is then left behind).
    pub fn wait(&self, limit: Duration) -> Option<String> {
        if !self.wait_done(limit) {
            return Some("could not get `info mtree -f` from QMP in time: no mtree.txt".into());
        }
        match &*self.outcome.0.lock().unwrap() {
            Some(Err(e)) => Some(format!(
                "could not get `info mtree -f` from QMP: {e}; no mtree.txt"
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use std::os::unix::net::UnixListener;

    /// A fake QEMU monitor: greeting, capabilities, an event, then the HMP reply.
    #[test]
    fn fetches_hmp_output_through_qmp() {
        let dir = TempDir::new("qmp");
        let sock = dir.0.join("qmp.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                .unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"));
            w.write_all(b"{\"return\": {}}\r\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["arguments"]["command-line"], "info mtree -f");
            w.write_all(b"{\"event\": \"RESUME\", \"data\": {}}\r\n")
                .unwrap();
            w.write_all(b"{\"return\": \"FlatView #0\\r\\n  0000000000000000-000000000003ffff (prio 0, rom): armv7m.flash\\r\\n\"}\r\n")
                .unwrap();
        });
        let dest = dir.0.join("mtree.txt");
        let (got, seen) = std::sync::mpsc::channel();
        let on_map = move |text: &str| got.send(text.to_string()).unwrap();
        let f = MtreeFetch::start(
            sock,
            dest.clone(),
            Duration::from_secs(1),
            false,
            on_map,
            |_| {},
        );
        assert_eq!(f.wait(Duration::from_secs(10)), None);
        server.join().unwrap();
        let map = "FlatView #0\n  0000000000000000-000000000003ffff (prio 0, rom): armv7m.flash\n";
        assert_eq!(std::fs::read_to_string(dest).unwrap(), map);
        assert_eq!(seen.recv().unwrap(), map, "the map is handed on");
    }

    #[test]
    fn a_missing_socket_is_a_warning() {
        let dir = TempDir::new("qmp-missing");
        let f = MtreeFetch::start(
            dir.0.join("none.sock"),
            dir.0.join("mtree.txt"),
            Duration::from_millis(50),
            false,
            |_| panic!("no map to hand on"),
            |_| {},
        );
        let w = f.wait(Duration::from_secs(5)).unwrap();
        assert!(w.contains("cannot connect"), "{w}");
    }
}
