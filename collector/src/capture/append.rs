//! `attach --append`: continuing a capture directory with a new collector.
//!
//! The directory must hold a capture of the same QEMU process (pid, command
//! line and shim options all equal), and the segment's commit record
//! (`trace_schema::commit`) must be one its collectors made, or none. Then:
//! - parts the commit record does not count are removed (the dead collector
//!   renamed them but died before recording it: their records are either
//!   drained again now or counted as lost), with leftover temporary files;
//! - new parts are numbered after the remaining ones;
//! - records below the commit are not written again;
//! - the blocks the kept `code` parts describe are known to the drain: the
//!   records drained again may be of blocks described to the dead collector;
//! - the losses the remaining `stats` parts already account for are not
//!   counted again.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use polars::prelude::{ParquetReader, SerReader};
use trace_schema::commit::Committed;

use trace_format::stats as stat;

use crate::capture::directory::{CaptureJson, FORMAT_VERSION};
use crate::write::parquet_file::part_rows;
use crate::write::tables::Table;

/// How the new collector continues the directory.
#[derive(Debug, Clone, Default)]
pub struct AppendPlan {
    /// The capture.json found in the directory.
    pub previous: CaptureJson,
    /// Per table (`Table::index`): the number of its next part.
    pub first_part: [u32; 5],
    /// Per table (`Table::index`): rows in the parts kept.
    pub rows: [u64; 5],
    /// Per vCPU, per table: records below this index have their rows of
    /// that table in the kept parts.
    pub skip_below: Vec<[u64; 5]>,
    /// Per vCPU: the shim's `events_lost` the kept stats parts account for.
    pub lost_accounted: Vec<u64>,
    /// Uncommitted parts removed.
    pub removed: Vec<PathBuf>,
    /// The blocks the kept `code` parts describe.
    pub blocks: Vec<u64>,
}

/// Reads `dir`'s capture.json, or `None` when it holds no capture.
pub fn previous_capture(dir: &Path) -> Result<Option<CaptureJson>> {
    let path = dir.join("capture.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    serde_json::from_str(&text)
        .with_context(|| format!("--append: {} is not a capture.json", path.display()))
        .map(Some)
}

/// Checks that `previous` is a capture of this QEMU and this commit record,
/// removes the uncommitted parts, and plans the rest.
pub fn prepare(
    dir: &Path,
    previous: CaptureJson,
    qemu_pid: u32,
    qemu_command: &[String],
    shim_options: &str,
    committed: &Committed,
) -> Result<AppendPlan> {
    let d = dir.display();
    if previous.qemu_pid != qemu_pid || previous.qemu_command != qemu_command {
        bail!(
            "--append: {d} holds a capture of QEMU pid {} ({}), not of pid {qemu_pid} ({}): \
             capture into a new directory",
            previous.qemu_pid,
            previous.qemu_command.join(" "),
            qemu_command.join(" ")
        );
    }
    if previous.format_version != FORMAT_VERSION {
        bail!(
            "--append: {d} holds a capture in format version {}, this collector writes version \
             {FORMAT_VERSION}: capture into a new directory",
            previous.format_version
        );
    }
    if previous.shim_options != shim_options {
        bail!(
            "--append: {d} was captured with shim options {:?}, this QEMU has {shim_options:?}",
            previous.shim_options
        );
    }
    if committed.collector_pid != 0 && !previous.collector_pids.contains(&committed.collector_pid) {
        bail!(
            "--append: this QEMU's capture was last continued by collector pid {} into another \
             directory, not {d} (written by pid(s) {:?}): append there, or capture into a new directory",
            committed.collector_pid,
            previous.collector_pids
        );
    }

    let mut plan = AppendPlan {
        skip_below: committed.events.clone(),
        lost_accounted: vec![0; committed.events.len()],
        ..Default::default()
    };
    for t in Table::ALL {
        let tdir = dir.join(t.name());
        let mut next = 0u32;
        let mut rows = 0u64;
        for (number, path) in parts(&tdir)? {
            if number as u64 >= committed.parts[t.index()] {
                std::fs::remove_file(&path)
                    .with_context(|| format!("--append: cannot remove {}", path.display()))?;
                plan.removed.push(path);
                continue;
            }
            rows += part_rows(&path)
                .with_context(|| format!("--append: cannot read the part {}", path.display()))?;
            next = next.max(number + 1);
            if t == Table::Stats {
                add_accounted_losses(&path, &mut plan.lost_accounted)?;
            }
            if t == Table::Code {
                add_blocks(&path, &mut plan.blocks)?;
            }
        }
        remove_temporaries(&tdir)?;
        plan.first_part[t.index()] = next;
        plan.rows[t.index()] = rows;
    }
    plan.previous = previous;
    Ok(plan)
}

/// The parts (`part-NNNNNN.parquet`) of a table directory, by number.
fn parts(tdir: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(tdir) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("part-")
            .and_then(|r| r.strip_suffix(".parquet"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            out.push((n, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Removes the `.part-*.tmp` files a killed writer left.
fn remove_temporaries(tdir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(tdir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(".part-") {
            std::fs::remove_file(e.path())
                .with_context(|| format!("--append: cannot remove {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// Adds the blocks a `code` part describes (its rows are in block, index
/// order per block).
fn add_blocks(path: &Path, blocks: &mut Vec<u64>) -> Result<()> {
    let file = std::fs::File::open(path)?;
    let df = ParquetReader::new(file)
        .finish()
        .with_context(|| format!("--append: cannot read {}", path.display()))?;
    let ids = df.column("block")?.u64()?.clone();
    for id in ids.iter().flatten() {
        if blocks.last() != Some(&id) {
            blocks.push(id);
        }
    }
    Ok(())
}

/// Adds a stats part's `events_lost` and `events_lost_before_attach` (the
/// shim's counter, as far as that session accounted for it) per vCPU.
fn add_accounted_losses(path: &Path, lost: &mut [u64]) -> Result<()> {
    let file = std::fs::File::open(path)?;
    let df = ParquetReader::new(file)
        .finish()
        .with_context(|| format!("--append: cannot read {}", path.display()))?;
    let names = df.column("name")?.str()?.clone();
    let vcpus = df.column("vcpu")?.u32()?.clone();
    let values = df.column("value")?.u64()?.clone();
    for ((name, vcpu), value) in names.iter().zip(vcpus.iter()).zip(values.iter()) {
        let is_loss =
            |n: &str| n == stat::EVENTS_LOST.name || n == stat::EVENTS_LOST_BEFORE_ATTACH.name;
        if let (Some(n), Some(v), Some(x)) = (name, vcpu, value) {
            if !is_loss(n) {
                continue;
            }
            if let Some(slot) = lost.get_mut(v as usize) {
                *slot += x;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use crate::write::tables::StatsBatch;

    fn previous() -> CaptureJson {
        CaptureJson {
            qemu_pid: 42,
            qemu_command: vec!["qemu-system-arm".into(), "-M".into(), "virt".into()],
            shim_options: "events=mem+mmio".into(),
            collector_pids: vec![7],
            format_version: FORMAT_VERSION,
            ..Default::default()
        }
    }

    /// Parts written: 2 of mem, 1 of mmio, none of block_exec and code, 1 of stats.
    fn committed() -> Committed {
        Committed {
            collector_pid: 7,
            parts: [2, 1, 0, 0, 1],
            events: vec![[100, 90, 0, 0, 100], [200, 180, 0, 0, 200]],
        }
    }

    /// Writes `DIR/<table>/part-<n>.parquet` with `rows` rows.
    fn part(dir: &Path, table: &str, n: u32, rows: u64) {
        let tdir = dir.join(table);
        std::fs::create_dir_all(&tdir).unwrap();
        let mut df = polars::df!("icount" => (0..rows).collect::<Vec<u64>>()).unwrap();
        let f = std::fs::File::create(tdir.join(format!("part-{n:06}.parquet"))).unwrap();
        polars::prelude::ParquetWriter::new(f)
            .finish(&mut df)
            .unwrap();
    }

    fn stats_part(dir: &Path, n: u32, lost: u64, before: u64) {
        let tdir = dir.join("stats");
        std::fs::create_dir_all(&tdir).unwrap();
        let mut b = StatsBatch::default();
        b.push(stat::EVENTS_LOST.name, Some(1), lost);
        b.push(stat::EVENTS_LOST_BEFORE_ATTACH.name, Some(1), before);
        b.push(stat::EVENTS.name, Some(1), 1000);
        let f = std::fs::File::create(tdir.join(format!("part-{n:06}.parquet"))).unwrap();
        crate::write::tables::Batch::Stats(b)
            .write(
                &[],
                &crate::write::tables::PluginDeviceNames,
                &mut crate::write::parquet_part::Compressors::default(),
                f,
            )
            .unwrap();
    }

    fn prepare_with(dir: &Path, prev: CaptureJson, c: &Committed) -> Result<AppendPlan> {
        let cmd = previous().qemu_command;
        prepare(dir, prev, 42, &cmd, "events=mem+mmio", c)
    }

    #[test]
    fn keeps_committed_parts_and_removes_the_rest() {
        let t = TempDir::new("append");
        let d = &t.0;
        part(d, "mem", 0, 10);
        part(d, "mem", 1, 10);
        part(d, "mem", 2, 10); // renamed, but the collector died before recording it
        part(d, "mmio", 0, 3);
        stats_part(d, 0, 5, 6);
        std::fs::write(d.join("mem/.part-000003.parquet.tmp"), "half").unwrap();
        let plan = prepare_with(d, previous(), &committed()).unwrap();
        assert_eq!(plan.removed, vec![d.join("mem/part-000002.parquet")]);
        assert!(!d.join("mem/.part-000003.parquet.tmp").exists());
        assert_eq!(plan.first_part, [2, 1, 0, 0, 1]);
        assert_eq!(plan.rows, [20, 3, 0, 0, 3]);
        assert_eq!(plan.skip_below, committed().events);
        assert_eq!(plan.lost_accounted, vec![0, 11]);
    }

    #[test]
    fn refuses_a_capture_of_something_else() {
        let t = TempDir::new("append-refused");
        let d = &t.0;
        let other_pid = CaptureJson {
            qemu_pid: 43,
            ..previous()
        };
        let e = prepare_with(d, other_pid, &committed()).unwrap_err();
        assert!(e.to_string().contains("QEMU pid 43"), "{e}");
        let other_options = CaptureJson {
            shim_options: "events=insn".into(),
            ..previous()
        };
        let e = prepare_with(d, other_options, &committed()).unwrap_err();
        assert!(e.to_string().contains("shim options"), "{e}");
        // Written by a collector of another format (version 1: `insn` rows).
        let older = CaptureJson {
            format_version: 1,
            ..previous()
        };
        let e = prepare_with(d, older, &committed()).unwrap_err();
        assert!(e.to_string().contains("format version 1"), "{e}");
        // The segment's commit is another collector's (it continued the
        // capture elsewhere): the kept records are not in this directory.
        let elsewhere = Committed {
            collector_pid: 8,
            ..committed()
        };
        let e = prepare_with(d, previous(), &elsewhere).unwrap_err();
        assert!(e.to_string().contains("collector pid 8"), "{e}");
        // No commit yet: nothing in the directory is committed.
        part(d, "mem", 0, 10);
        let none = Committed {
            collector_pid: 0,
            parts: [0; 5],
            events: vec![[0; 5]],
        };
        let plan = prepare_with(d, previous(), &none).unwrap();
        assert_eq!(plan.removed.len(), 1);
        assert_eq!(plan.first_part[0], 0);
    }
}
