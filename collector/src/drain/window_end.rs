//! Where a window ends in events: `attach --until-icount N` (each vCPU's
//! events before its instruction N) and `--max-events N` (the first N
//! events drained). The shim records on; the drain writes the rows inside
//! the window and counts the others (`stats`' `events_after_window`), and
//! the collector detaches once the window is over.
//!
//! Both cut exactly, because each event carries its icount and a vCPU's
//! events of one kind arrive in icount order: the rows inside are a prefix
//! of each vCPU's events of each table. `--until-icount` cuts every table of
//! a vCPU at the same instruction (a block that runs past it keeps the
//! instructions before it). `--max-events` counts accesses (an MMIO access
//! once, though it is a row of `mem` and of `mmio`), or, for `insn`,
//! instructions: a capture of both kinds is refused
//! (`WindowEnd::new`), since their chunks leave a vCPU in an order that is
//! not execution order and "the first N" would not be one cut. With several
//! vCPUs, the first N are those the collector drains first: each vCPU's
//! rows are still a prefix of what it did.

use trace_schema::options::EventSet;

/// The end of a window, and what it left out.
#[derive(Clone, Debug)]
pub struct WindowEnd {
    until_icount: Option<u64>,
    max_events: Option<u64>,
    /// Events inside the window so far, every vCPU (with `max_events`).
    taken: u64,
    /// Per vCPU: an event at or past `until_icount` arrived, or the first
    /// event left out by `max_events`: its icount (the vCPU's window ends
    /// there).
    ended_at: Vec<Option<u64>>,
    /// Per vCPU: events drained after the window's end, not written.
    after: Vec<u64>,
}

impl WindowEnd {
    /// The end `until_icount` and `max_events` set for a capture of
    /// `events` from `n_vcpus` vCPUs (both `None`: no end, every event is
    /// inside). An error says why a request cannot be cut exactly.
    pub fn new(
        n_vcpus: usize,
        events: EventSet,
        until_icount: Option<u64>,
        max_events: Option<u64>,
    ) -> Result<WindowEnd, String> {
        if max_events.is_some() && events.insn && (events.mem || events.mmio) {
            return Err(format!(
                "--max-events needs one kind of event (mem and mmio, or insn), not {}: \
                 a vCPU's accesses and instructions reach the collector in separate \
                 chunks, so the first N of both together is not one point of the run \
                 (use --until-icount to cut every table at one instruction)",
                events.to_option()
            ));
        }
        if max_events == Some(0) {
            return Err("--max-events 0 would capture nothing".into());
        }
        Ok(WindowEnd {
            until_icount,
            max_events,
            taken: 0,
            ended_at: vec![None; n_vcpus],
            after: vec![0; n_vcpus],
        })
    }

    /// Whether the window has an end in events at all.
    #[inline]
    pub fn is_open_ended(&self) -> bool {
        self.until_icount.is_none() && self.max_events.is_none()
    }

    /// Whether `n` events of a vCPU, the last at `last_icount`, are all
    /// inside the window; if so they are counted in. Otherwise nothing is
    /// counted: take them one at a time ([`WindowEnd::take`]).
    #[inline]
    pub fn take_all(&mut self, n: u64, last_icount: u64) -> bool {
        if self.is_open_ended() {
            return true;
        }
        let whole = self.until_icount.is_none_or(|u| last_icount < u)
            && self.max_events.is_none_or(|m| self.taken + n <= m);
        if whole {
            self.taken += n;
        }
        whole
    }

    /// Whether vCPU `v`'s next event, at `icount`, is inside the window
    /// (counted in, or counted as after it).
    pub fn take(&mut self, v: usize, icount: u64) -> bool {
        self.take_insns(v, icount, 1) == 1
    }

    /// How many of the `n` instructions of a block vCPU `v` ran from
    /// `icount` are inside the window (for `insn`, each counts as an event).
    /// A block wholly after the window's end counts as one event after it.
    pub fn take_insns(&mut self, v: usize, icount: u64, n: u64) -> u64 {
        if self.is_open_ended() {
            return n;
        }
        // No "this vCPU has ended" rule: its accesses and its blocks come in
        // separate chunks, so an access past the end may come before blocks
        // that are not. Each event is judged by its own icount, and a budget
        // once spent stays spent.
        let mut inside = n;
        if let Some(u) = self.until_icount {
            inside = inside.min(u.saturating_sub(icount));
        }
        if let Some(m) = self.max_events {
            inside = inside.min(m - self.taken);
        }
        self.taken += inside;
        if inside < n && self.ended_at[v].is_none() {
            // The first instruction left out; with --until-icount, the first
            // event past it may come later than N itself.
            let end = icount + inside;
            self.ended_at[v] = Some(self.until_icount.map_or(end, |u| end.min(u)));
        }
        if inside == 0 {
            self.after[v] += 1;
        }
        inside
    }

    /// Whether the window is over: `--max-events` reached, or every vCPU
    /// past `--until-icount`.
    pub fn over(&self) -> bool {
        self.max_events.is_some_and(|m| self.taken >= m)
            || (self.until_icount.is_some() && self.ended_at.iter().all(Option::is_some))
    }

    /// Per vCPU: the icount its window ended at, when it did.
    pub fn ended_at(&self) -> &[Option<u64>] {
        &self.ended_at
    }

    /// Per vCPU: the events left out after the window's end.
    pub fn after(&self) -> &[u64] {
        &self.after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(s: &str) -> EventSet {
        EventSet::parse(s).unwrap()
    }

    #[test]
    fn until_icount_cuts_each_vcpu_at_its_instruction() {
        let mut w = WindowEnd::new(2, events("mem,insn"), Some(100), None).unwrap();
        assert!(w.take_all(5, 99), "a chunk before 100: whole");
        assert!(!w.take_all(5, 100), "a chunk reaching 100: one at a time");
        assert!(w.take(0, 99));
        assert!(!w.take(0, 100));
        assert_eq!(
            w.take_insns(1, 90, 20),
            10,
            "a block across 100 keeps 90..100"
        );
        assert_eq!(w.take_insns(1, 110, 5), 0);
        assert!(w.over());
        assert_eq!(w.ended_at(), &[Some(100), Some(100)]);
        assert_eq!(w.after(), &[1, 1]);
        assert!(
            w.take_all(1, 99) && w.take_insns(0, 95, 10) == 5,
            "events of another kind before 100, drained after the end: inside"
        );
        let mut w = WindowEnd::new(1, events("mem"), Some(100), None).unwrap();
        assert!(!w.take(0, 104));
        assert_eq!(
            w.ended_at(),
            &[Some(100)],
            "the end is N, not the first event past it"
        );
    }

    #[test]
    fn max_events_takes_the_first_n_drained() {
        let mut w = WindowEnd::new(2, events("mem,mmio"), None, Some(10)).unwrap();
        assert!(w.take_all(6, 1000));
        assert!(!w.take_all(6, 50), "6 more would pass 10");
        assert!(w.take(1, 40) && w.take(1, 41) && w.take(1, 42) && w.take(1, 43));
        assert!(!w.take(1, 44));
        assert!(w.over());
        assert_eq!(w.ended_at(), &[None, Some(44)]);
        assert!(!w.take(0, 2000));
        assert_eq!(w.ended_at(), &[Some(2000), Some(44)]);

        let mut w = WindowEnd::new(1, events("insn"), None, Some(25)).unwrap();
        assert_eq!(w.take_insns(0, 0, 20), 20);
        assert_eq!(w.take_insns(0, 20, 20), 5, "instructions, not blocks");
        assert_eq!(w.ended_at(), &[Some(25)]);
    }

    #[test]
    fn what_cannot_be_cut_exactly_is_refused() {
        let e = WindowEnd::new(1, events("mem,insn"), None, Some(5)).unwrap_err();
        assert!(e.contains("--max-events needs one kind of event"), "{e}");
        assert!(WindowEnd::new(1, events("mem"), None, Some(0)).is_err());
        assert!(WindowEnd::new(1, events("mem,insn"), Some(5), None).is_ok());
    }

    #[test]
    fn without_an_end_everything_is_inside() {
        let mut w = WindowEnd::new(1, events("mem"), None, None).unwrap();
        assert!(w.take_all(1 << 40, u64::MAX));
        assert_eq!(w.take_insns(0, 0, 7), 7);
        assert!(!w.over());
    }
}
