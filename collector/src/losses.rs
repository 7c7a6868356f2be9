//! The ledger of one session's lost events, kept in one place: the shim's
//! loss counter when we attached and when we stopped, the part of it this
//! session accounts for, and what a collector that died drained without
//! writing. The drain writes the `stats` rows from it
//! (`trace_format::stats`: `events_lost`, `events_lost_before_attach`,
//! `events_lost_collector_died.<table>`); the summary and capture.json add
//! up its [`LostEvents`].

use trace_schema::layout::{SegmentView, COMMIT_STREAMS};
use trace_schema::sync::Ordering;

/// One session's losses, per vCPU.
#[derive(Debug, Clone)]
pub struct LossLedger {
    /// The shim's `events_lost` counters when we attached.
    at_attach: Vec<u64>,
    /// Their part this session accounts for (all of them, but in an
    /// appended capture what earlier sessions had not).
    before_attach: Vec<u64>,
    /// Per table (commit streams): records a collector before us drained
    /// and died before writing their rows (`commit`), found at attach.
    collector_died: Vec<[u64; COMMIT_STREAMS]>,
    /// The counters when the capture stopped by detaching: later losses are
    /// the detach's, not the capture's. `None`: still running, or QEMU
    /// ended (then every loss until now is the capture's).
    at_stop: Option<Vec<u64>>,
    /// The shim stopped counting losses after a collector before us died
    /// (`attach::Attached::losses_uncounted`): `before_attach` is a lower
    /// bound.
    uncounted: bool,
}

/// What a session lost, per vCPU, by cause.
#[derive(Debug, Clone, Default)]
pub struct LostEvents {
    /// Events the shim could not deliver while we were attached.
    pub during: Vec<u64>,
    /// Events it could not deliver before we attached (this session's share).
    pub before_attach: Vec<u64>,
    /// Records a collector that died drained and never wrote (the largest
    /// count over the capture's tables).
    pub collector_died: Vec<u64>,
}

impl LossLedger {
    /// The shim's `events_lost` counter of each vCPU, now.
    pub fn counters(view: &SegmentView) -> Vec<u64> {
        (0..view.geometry.n_vcpus)
            .map(|v| view.vcpu(v).counters.events_lost.load(Ordering::Relaxed))
            .collect()
    }

    /// A session that attached when the counters were `at_attach`, of which
    /// earlier sessions accounted for `accounted`.
    pub fn new(
        at_attach: Vec<u64>,
        accounted: &[u64],
        collector_died: Vec<[u64; COMMIT_STREAMS]>,
    ) -> LossLedger {
        let before_attach = at_attach
            .iter()
            .zip(accounted.iter().chain(std::iter::repeat(&0)))
            .map(|(&now, &accounted)| now.saturating_sub(accounted))
            .collect();
        LossLedger {
            at_attach,
            before_attach,
            collector_died,
            at_stop: None,
            uncounted: false,
        }
    }

    /// The shim stopped counting losses before we attached.
    pub fn set_uncounted(&mut self) {
        self.uncounted = true;
    }

    /// Whether `before_attach` is only a lower bound (`set_uncounted`).
    pub fn uncounted(&self) -> bool {
        self.uncounted
    }

    /// The capture stops by detaching: losses from now on are not its own.
    pub fn stop(&mut self, view: &SegmentView) {
        if self.at_stop.is_none() {
            self.at_stop = Some(Self::counters(view));
        }
    }

    /// Per vCPU: events lost since we attached (until the stop, if any).
    pub fn during(&self, view: &SegmentView) -> Vec<u64> {
        let until = self.at_stop.clone().unwrap_or_else(|| Self::counters(view));
        until
            .iter()
            .zip(self.at_attach.iter().chain(std::iter::repeat(&0)))
            .map(|(now, then)| now.saturating_sub(*then))
            .collect()
    }

    /// Per vCPU: this session's share of the losses before it attached.
    pub fn before_attach(&self) -> &[u64] {
        &self.before_attach
    }

    /// vCPU `v`'s records per commit stream that a dead collector never wrote.
    pub fn collector_died(&self, v: usize) -> [u64; COMMIT_STREAMS] {
        self.collector_died.get(v).copied().unwrap_or_default()
    }
}

impl LostEvents {
    /// The sum over vCPUs of each cause: (during, before attach, collector died).
    pub fn totals(&self) -> (u64, u64, u64) {
        (
            self.during.iter().sum(),
            self.before_attach.iter().sum(),
            self.collector_died.iter().sum(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_attach_is_what_earlier_sessions_did_not_account_for() {
        let l = LossLedger::new(vec![10, 5, 0], &[4, 9], vec![]);
        assert_eq!(l.before_attach(), &[6, 0, 0]);
        assert_eq!(l.collector_died(2), [0; COMMIT_STREAMS]);
    }
}
