//! `capture.json`: what a capture is of, how it ended, and its running
//! totals (docs/capture-format.md, "capture.json").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a capture ended (`end`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// The shim reported QEMU's exit: every event is in the capture.
    QemuExited,
    /// QEMU vanished without the shim reporting its exit (killed).
    QemuDied,
    /// SIGINT or SIGTERM.
    Interrupted,
    /// The collector failed: `error` says why.
    Error,
    /// `attach --duration` ran out, the guest reached `--until-pc` or
    /// accessed `--until-device`: the collector detached, QEMU runs on.
    WindowEnded,
}

impl End {
    /// Its name in `capture.json`.
    pub fn key(self) -> &'static str {
        match self {
            End::QemuExited => "qemu_exited",
            End::QemuDied => "qemu_died",
            End::Interrupted => "interrupted",
            End::Error => "error",
            End::WindowEnded => "window_ended",
        }
    }
}

/// `capture.json`. Every field has a default, so a reader takes the files
/// of older collectors (and of newer ones, whose extra fields it ignores).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct CaptureJson {
    pub format_version: u32,
    /// False until the collector finished it; a capture cut short keeps its
    /// finished parts.
    pub complete: bool,
    pub collector_version: String,
    pub qemu_pid: u32,
    /// The collectors that wrote this capture, one per session (`--append`
    /// adds one).
    pub collector_pids: Vec<u32>,
    pub qemu_command: Vec<String>,
    /// 64 or 32 from the QEMU binary's name; null when it is not
    /// `qemu-system-*`.
    pub guest_pointer_bits: Option<u32>,
    /// The shim's option string, as QEMU passed it.
    pub shim_options: String,
    /// What was recorded (`mem+mmio+insn`, as the shim's `events` option):
    /// `attach --events`, else the shim's option.
    pub events: String,
    /// What a full ring did (`block`: the guest waited, nothing lost;
    /// `drop`: events were counted lost): `attach --overflow`, else the
    /// shim's option.
    pub overflow: String,
    /// The host times (seconds since the Unix epoch) at which the collector
    /// attached, saw the shim instrumented for its events (the window's
    /// first events come after it), and detached or saw QEMU end.
    pub window: Window,
    pub n_vcpus: u32,
    /// The device names (the plugin API's) seen, first seen first.
    pub devices: Vec<String>,
    /// How QEMU ended, in words, once the capture is complete.
    pub qemu_exit: Option<String>,
    /// How the capture ended.
    pub end: Option<End>,
    /// Rows per table, in the parts written so far.
    pub tables: BTreeMap<String, u64>,
    /// Sums over the vCPUs and sessions of the stats of these names.
    pub events_lost: u64,
    pub events_lost_before_attach: u64,
    /// Sum over the vCPUs and sessions of the largest
    /// `events_lost_collector_died.<table>`.
    pub events_lost_collector_died: u64,
    pub duration_seconds: f64,
    /// Why the collector failed (`end` is `error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `capture.json`'s `window` (see `CaptureJson::window`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Window {
    pub attached_at: f64,
    pub instrumented_at: Option<f64>,
    /// When the start trigger fired (`attach --from-pc`, `--from-device`),
    /// as the collector saw it; null without one, or if it never fired.
    pub started_at: Option<f64>,
    pub ended_at: Option<f64>,
    /// Per vCPU: the icount of its first event in the capture (null: none).
    pub first_icount: Vec<Option<u64>>,
    /// Per vCPU: the icount its window ended at, when it ended on an
    /// instruction (`--until-icount`, `--max-events`): its events are
    /// those before it.
    pub end_icount: Vec<Option<u64>>,
}

impl Window {
    /// Now, as `Window`'s times.
    pub fn now() -> f64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }
}

impl CaptureJson {
    /// Reads `capture.json`'s text.
    pub fn parse(text: &str) -> Result<CaptureJson, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// `capture.json`'s text.
    pub fn to_text(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("serializable");
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_what_it_does_not_know() {
        let j = CaptureJson {
            format_version: 2,
            end: Some(End::QemuDied),
            tables: [("mem".to_string(), 5)].into_iter().collect(),
            ..Default::default()
        };
        let text = j.to_text();
        assert!(text.contains("\"end\": \"qemu_died\""), "{text}");
        assert_eq!(CaptureJson::parse(&text).unwrap(), j);
        let older = CaptureJson::parse("{\"qemu_pid\": 7, \"future\": [1]}").unwrap();
        assert_eq!(older.qemu_pid, 7);
        assert!(CaptureJson::parse("{\"end\": \"exploded\"}").is_err());
    }
}
