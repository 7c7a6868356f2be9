//! The counters of the `stats` table, declared once with what each means
//! and whether it means rows are missing (as Perfetto's stats table carries
//! a severity): the collector writes them by these names, and readers warn
//! from this list.
//!
//! A row is (name, vcpu, value): `vcpu` is null for capture-wide counters.
//! A counter of a table (`rows.<table>`) has one row per table of the
//! capture. A capture continued with `attach --append` has one set of rows
//! per finished session: a counter's total is the sum of its rows.

/// Whom a counter's rows are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One row per vCPU of the segment.
    PerVcpu,
    /// One row, `vcpu` null.
    Capture,
    /// One row per vCPU per table the capture writes rows of events to
    /// (`mem`, `mmio`, `block_exec`), named `<name>.<table>`.
    PerVcpuPerTable,
    /// One row per table but `stats`, `vcpu` null, named `<name>.<table>`.
    PerTable,
}

/// What a non-zero count tells a reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Nothing is missing.
    Info,
    /// The rows are all there, some of their values are not (a null `pc`,
    /// an unnamed device).
    Warning,
    /// Rows are missing: events the tables do not hold.
    DataLoss,
}

/// One counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub name: &'static str,
    pub scope: Scope,
    pub severity: Severity,
    /// What it counts, in a line (what a warning says after the count).
    pub meaning: &'static str,
}

impl Stat {
    /// Its row name for `table` (`<name>.<table>` for per-table counters).
    pub fn for_table(&self, table: &str) -> String {
        format!("{}.{table}", self.name)
    }

    /// Whether `row_name` is one of this counter's rows.
    pub fn names(&self, row_name: &str) -> bool {
        match self.scope {
            Scope::PerTable | Scope::PerVcpuPerTable => row_name
                .strip_prefix(self.name)
                .is_some_and(|rest| rest.starts_with('.')),
            _ => row_name == self.name,
        }
    }

    /// Its name as docs/capture-format.md lists it (`<name>.<table>` for
    /// per-table counters).
    pub fn doc_name(&self) -> String {
        match self.scope {
            Scope::PerTable | Scope::PerVcpuPerTable => self.for_table("<table>"),
            _ => self.name.to_string(),
        }
    }
}

const fn stat(name: &'static str, scope: Scope, severity: Severity, meaning: &'static str) -> Stat {
    Stat {
        name,
        scope,
        severity,
        meaning,
    }
}

use Scope::*;
use Severity::*;

pub const EVENTS: Stat = stat(
    "events",
    PerVcpu,
    Info,
    "events drained from the vCPU's ring",
);
pub const EVENTS_LOST: Stat = stat(
    "events_lost",
    PerVcpu,
    DataLoss,
    "the shim could not deliver them to the collector",
);
pub const EVENTS_LOST_BEFORE_ATTACH: Stat = stat(
    "events_lost_before_attach",
    PerVcpu,
    // A gap inside the capture only when it was continued with --append
    // (readers check `collector_pids`); else they are before its start.
    DataLoss,
    "no collector was attached (the capture was continued with --append)",
);
pub const EVENTS_LOST_UNCOUNTED: Stat = stat(
    "events_lost_uncounted",
    Capture,
    // As events_lost_before_attach: a gap inside the capture only when it
    // was continued with --append.
    DataLoss,
    "1: after the collector before this session died, the shim stopped counting the events it could not deliver (its idle option is not count), so more are missing before this session than events_lost_before_attach says",
);
pub const EVENTS_LOST_COLLECTOR_DIED: Stat = stat(
    "events_lost_collector_died",
    PerVcpuPerTable,
    DataLoss,
    "a collector drained them and was killed before writing their rows",
);
pub const EVENTS_ALREADY_CAPTURED: Stat = stat(
    "events_already_captured",
    PerVcpu,
    Info,
    "events drained again that the appended capture already holds (not written twice)",
);
pub const EVENTS_AFTER_WINDOW: Stat = stat(
    "events_after_window",
    PerVcpu,
    Info,
    "events drained after the window's end (attach --until-icount, --max-events), not written",
);
pub const META_LOST: Stat = stat(
    "meta_lost",
    PerVcpu,
    Info,
    "device names and block descriptions the shim could not deliver (their effect is counted in devices_unknown and blocks_unknown)",
);
pub const FULL_RING_WAITS: Stat = stat(
    "full_ring_waits",
    PerVcpu,
    Info,
    "times a chunk of the vCPU's events waited for room in a full ring (overflow=block)",
);
pub const FULL_RING_WAIT_NS: Stat = stat(
    "full_ring_wait_ns",
    PerVcpu,
    Info,
    "nanoseconds those waits took: how much the capture slowed the vCPU beyond the shim's own cost",
);
pub const FINAL_ICOUNT: Stat = stat(
    "final_icount",
    PerVcpu,
    Info,
    "instructions the vCPU executed, when QEMU exited during the capture",
);
pub const EVENTS_WRITTEN: Stat = stat(
    "events_written",
    PerVcpu,
    Info,
    "events the shim published since QEMU started, when QEMU exited during the capture",
);
pub const ROWS: Stat = stat("rows", PerTable, Info, "rows written to the table");
pub const META_RECORDS: Stat = stat("meta_records", Capture, Info, "meta records drained");
pub const BLOCKS_UNKNOWN: Stat = stat(
    "blocks_unknown",
    Capture,
    Warning,
    "executed blocks had no description: their instructions have a null pc and no code rows",
);
pub const DEVICES_UNKNOWN: Stat = stat(
    "devices_unknown",
    Capture,
    Warning,
    "I/O accesses have no device name",
);
pub const EVENTS_UNEXPECTED: Stat = stat(
    "events_unexpected",
    Capture,
    Info,
    "events of a kind the capture's tables do not take (ignored)",
);

/// Every counter, in the order the collector writes them.
pub const ALL: &[Stat] = &[
    EVENTS,
    EVENTS_LOST,
    EVENTS_LOST_BEFORE_ATTACH,
    EVENTS_LOST_UNCOUNTED,
    EVENTS_LOST_COLLECTOR_DIED,
    EVENTS_ALREADY_CAPTURED,
    EVENTS_AFTER_WINDOW,
    META_LOST,
    FULL_RING_WAITS,
    FULL_RING_WAIT_NS,
    FINAL_ICOUNT,
    EVENTS_WRITTEN,
    ROWS,
    META_RECORDS,
    BLOCKS_UNKNOWN,
    DEVICES_UNKNOWN,
    EVENTS_UNEXPECTED,
];

/// The counter a row named `row_name` belongs to.
pub fn of(row_name: &str) -> Option<&'static Stat> {
    ALL.iter().find(|s| s.names(row_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_names_find_their_counter() {
        assert_eq!(of("events_lost"), Some(&EVENTS_LOST));
        assert_eq!(
            of("events_lost_collector_died.mem"),
            Some(&EVENTS_LOST_COLLECTOR_DIED)
        );
        assert_eq!(of("rows.block_exec"), Some(&ROWS));
        assert_eq!(of("rows"), None);
        assert_eq!(of("events_lost_collector_died"), None);
        assert_eq!(of("bogus"), None);
        assert_eq!(
            EVENTS_LOST_COLLECTOR_DIED.for_table("mmio"),
            "events_lost_collector_died.mmio"
        );
    }
}
