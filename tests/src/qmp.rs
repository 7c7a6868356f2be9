//! A minimal QMP client for the tests: a QEMU started with `-qmp
//! unix:PATH,server=on,wait=off` (besides the collector's own) is asked for
//! its state, registers and memory map, stopped and ended.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to the socket QEMU listens on (retrying until it does, up to
    /// `limit`) and leaves capabilities negotiation mode.
    pub fn connect(path: &Path, limit: Duration) -> Qmp {
        let deadline = Instant::now() + limit;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "cannot connect to QMP at {}: {e}",
                        path.display()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let greeting = qmp.message();
        assert!(
            greeting.get("QMP").is_some(),
            "not a QMP greeting: {greeting}"
        );
        qmp.execute("qmp_capabilities", json!({}));
        qmp
    }

    /// The next message (a reply or an event).
    fn message(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).unwrap();
        assert!(n > 0, "QMP closed the connection");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad QMP message {line:?}: {e}"))
    }

    /// Runs a command; its `return` (events in between are skipped); fails
    /// the test on an error.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Value {
        let request = json!({"execute": command, "arguments": arguments});
        writeln!(self.writer, "{request}").unwrap();
        loop {
            let m = self.message();
            if let Some(r) = m.get("return") {
                return r.clone();
            }
            assert!(m.get("error").is_none(), "QMP {command}: {m}");
        }
    }

    /// A human monitor command's output (`info registers`, `info mtree -f`).
    pub fn hmp(&mut self, command_line: &str) -> String {
        let r = self.execute(
            "human-monitor-command",
            json!({"command-line": command_line}),
        );
        r.as_str().unwrap_or_default().to_string()
    }

    /// QEMU's run state (`running`, `paused`, `shutdown`, ...).
    pub fn status(&mut self) -> String {
        let r = self.execute("query-status", json!({}));
        r["status"].as_str().unwrap_or_default().to_string()
    }

    /// Ends QEMU (as a shutdown: plugins' exit callbacks run).
    pub fn quit(mut self) {
        let request = json!({"execute": "quit"});
        let _ = writeln!(self.writer, "{request}");
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.reader, &mut rest);
    }
}
