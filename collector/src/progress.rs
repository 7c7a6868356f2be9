//! The live progress line on stderr (only when stderr is a terminal).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the capture loop refreshes the line.
pub const TICK: Duration = Duration::from_millis(250);

pub struct Progress {
    bar: ProgressBar,
    last: Instant,
    last_events: u64,
}

impl Progress {
    /// A progress line, hidden unless `enabled` and stderr is a terminal.
    pub fn new(enabled: bool) -> Progress {
        let target = if enabled && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr_with_hz(4)
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("static template"),
        );
        Progress {
            bar,
            last: Instant::now(),
            last_events: 0,
        }
    }

    pub fn update(&mut self, events: u64, bytes: u64, lost: u64) {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64().max(1e-3);
        let rate = (events.saturating_sub(self.last_events)) as f64 / dt;
        self.last = now;
        self.last_events = events;
        let lost = if lost > 0 {
            format!(", {lost} lost")
        } else {
            String::new()
        };
        self.bar.set_message(format!(
            "{events} events ({}/s), {:.1} MiB written{lost}",
            human(rate),
            bytes as f64 / (1 << 20) as f64
        ));
        self.bar.tick();
    }

    /// Prints a line above the progress line.
    pub fn println(&self, msg: &str) {
        if self.bar.is_hidden() {
            eprintln!("{msg}");
        } else {
            self.bar.println(msg);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn human(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.1}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}
