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

    /// `held`: how long QEMU has waited on a full ring so far (`overflow=block`).
    pub fn update(&mut self, events: u64, bytes: u64, lost: u64, held: Duration) {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64().max(1e-3);
        let rate = (events.saturating_sub(self.last_events)) as f64 / dt;
        self.last = now;
        self.last_events = events;
        self.bar
            .set_message(status(events, rate, bytes, lost, held));
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

/// The progress line after the spinner and elapsed time.
fn status(events: u64, rate: f64, bytes: u64, lost: u64, held: Duration) -> String {
    let mut line = format!(
        "{events} events ({}/s), {:.1} MiB written",
        human(rate),
        bytes as f64 / (1 << 20) as f64
    );
    if lost > 0 {
        line += &format!(", {lost} lost");
    }
    if !held.is_zero() {
        line += &format!(", QEMU held back {:.1} s", held.as_secs_f64());
    }
    line
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_names_losses_and_waits_only_when_there_are_some() {
        assert_eq!(
            status(1_500_000, 2_500_000.0, 3 << 20, 0, Duration::ZERO),
            "1500000 events (2.5M/s), 3.0 MiB written"
        );
        assert_eq!(
            status(10, 10.0, 0, 4, Duration::from_millis(1300)),
            "10 events (10/s), 0.0 MiB written, 4 lost, QEMU held back 1.3 s"
        );
    }
}
