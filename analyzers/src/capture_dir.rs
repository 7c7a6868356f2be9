//! Opening a capture directory (see `docs/capture-format.md`): its tables
//! (directories of Parquet parts), `capture.json`, and the data-loss warnings.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use polars::prelude::*;

use crate::stream::Window;

/// How analyzers name an I/O access whose `device` is null.
pub const UNKNOWN_DEVICE: &str = "unknown";

/// The tables of a capture, in the order `--tables` lists them. `insn` is
/// not written by the collector: it is the view [`Capture::scan`] builds
/// from `block_exec` and `code` (captures of older versions hold it as a
/// table, which is then used as is).
pub use trace_format::STANDARD_TABLES;

/// The view rebuilt from `block_exec` rather than read from files.
const INSN: &str = trace_format::INSN_VIEW;

use trace_format::memory_map::MemoryMap;
use trace_format::{stats as stat, CaptureJson, Table, MAX_BLOCK_INSNS};

/// An open capture directory.
#[derive(Debug)]
pub struct Capture {
    dir: PathBuf,
    meta: Option<CaptureJson>,
    /// Table name -> its Parquet parts, sorted by file name.
    tables: BTreeMap<String, Vec<PathBuf>>,
    /// Table name -> (first part found damaged, what is wrong with it).
    corrupt: BTreeMap<String, (PathBuf, String)>,
    /// Problems found while opening that are not fatal.
    open_warnings: Vec<String>,
    /// `code`'s (block, index, pc), read once for the `insn` view.
    code_pcs: std::sync::OnceLock<DataFrame>,
}

/// Name, schema and row count of one table, for `trace-query --tables`.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub name: String,
    /// Its Parquet parts (for the `insn` view: those of `block_exec`).
    pub parts: usize,
    /// Built from other tables (`insn` from `block_exec` and `code`), not
    /// read from its own files.
    pub view: bool,
    pub columns: Vec<(String, String)>,
    pub rows: u64,
}

impl Capture {
    /// Opens `dir`. Fails when it does not exist, is not a directory, or holds
    /// neither a `capture.json` nor any table directory.
    pub fn open(dir: impl AsRef<Path>) -> Result<Capture> {
        let dir = dir.as_ref().to_path_buf();
        let md = std::fs::metadata(&dir)
            .map_err(|e| anyhow!("capture directory {}: {e}", dir.display()))?;
        if !md.is_dir() {
            bail!("capture directory {}: not a directory", dir.display());
        }
        let mut open_warnings = Vec::new();
        let meta_path = dir.join("capture.json");
        let meta = if meta_path.exists() {
            let text = std::fs::read_to_string(&meta_path)
                .with_context(|| format!("reading {}", meta_path.display()))?;
            match CaptureJson::parse(&text) {
                Ok(v) => Some(v),
                Err(e) => {
                    open_warnings.push(format!(
                        "{} is not valid JSON of a capture ({e}); ignoring it",
                        meta_path.display()
                    ));
                    None
                }
            }
        } else {
            None
        };

        let mut tables = BTreeMap::new();
        let entries = std::fs::read_dir(&dir)
            .with_context(|| format!("reading directory {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading directory {}", dir.display()))?;
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let parts = list_parts(&path)?;
            if !parts.is_empty() {
                tables.insert(name, parts);
            }
        }
        // A table of the capture whose first part is not written yet (a
        // capture still running, or a table that had no rows when the
        // collector was cut short) exists all the same, empty: capture.json
        // lists the capture's tables from the start.
        for name in meta.iter().flat_map(|m| m.tables.keys()) {
            if Table::named(name).is_some_and(|t| t != Table::Stats) {
                tables.entry(name.clone()).or_insert_with(Vec::new);
            }
        }
        if meta.is_none() && tables.is_empty() {
            bail!(
                "{} is not a capture directory: it has no capture.json and no table \
                 directories (mem/, mmio/, insn/, code/, stats/ holding *.parquet parts)",
                dir.display()
            );
        }

        let mut corrupt = BTreeMap::new();
        for (name, parts) in &tables {
            for part in parts {
                if let Err(why) = check_part(part) {
                    corrupt.insert(name.clone(), (part.clone(), why));
                    break;
                }
            }
        }

        Ok(Capture {
            dir,
            meta,
            tables,
            corrupt,
            open_warnings,
            code_pcs: std::sync::OnceLock::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// QEMU's memory map the collector saved (`mtree.txt`), if it did (not
    /// `attach` without `--qmp`); an error names the file that does not read.
    pub fn memory_map(&self) -> Result<Option<MemoryMap>> {
        let path = self.dir.join("mtree.txt");
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        MemoryMap::parse(&text)
            .map(Some)
            .map_err(|e| anyhow!("{}: {e}", path.display()))
    }

    /// The parsed `capture.json`, if there is one.
    pub fn meta(&self) -> Option<&CaptureJson> {
        self.meta.as_ref()
    }

    /// `guest_pointer_bits` from capture.json; 64 when unknown.
    pub fn guest_pointer_bits(&self) -> u32 {
        self.meta
            .as_ref()
            .and_then(|m| m.guest_pointer_bits)
            .filter(|&b| b > 0 && b <= 64)
            .unwrap_or(64)
    }

    /// Hex digits of a guest pointer: 8 for 32-bit guests, 16 for 64-bit ones.
    pub fn ptr_digits(&self) -> usize {
        crate::hex::ptr_digits(self.guest_pointer_bits())
    }

    /// `complete` from capture.json (None without one).
    pub fn complete(&self) -> Option<bool> {
        self.meta.as_ref().map(|m| m.complete)
    }

    /// All table names: the standard ones first (in their usual order), then
    /// any other, alphabetically.
    pub fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = STANDARD_TABLES
            .iter()
            .filter(|t| self.has_table(t))
            .map(|t| t.to_string())
            .collect();
        names.extend(
            self.tables
                .keys()
                .filter(|t| !STANDARD_TABLES.contains(&t.as_str()))
                .cloned(),
        );
        names
    }

    pub fn has_table(&self, name: &str) -> bool {
        self.tables.contains_key(name) || self.is_view(name)
    }

    /// Whether `name` is a view built from other tables rather than read
    /// from its own files: `insn`, rebuilt from `block_exec` and `code` when
    /// there is no `insn` directory (the collector writes none since format
    /// 2: block executions are a tenth of the rows).
    pub fn is_view(&self, name: &str) -> bool {
        name == INSN && !self.tables.contains_key(INSN) && self.tables.contains_key("block_exec")
    }

    /// The Parquet parts of a table, sorted by name.
    pub fn parts(&self, name: &str) -> Option<&[PathBuf]> {
        self.tables.get(name).map(Vec::as_slice)
    }

    /// When one of the table's parts is damaged: that part and what is wrong.
    pub fn corrupt_part(&self, name: &str) -> Option<(&Path, &str)> {
        self.corrupt
            .get(name)
            .map(|(p, why)| (p.as_path(), why.as_str()))
    }

    pub(crate) fn corrupt_error(&self, name: &str) -> Option<anyhow::Error> {
        self.corrupt_part(name).map(|(p, why)| {
            anyhow!(
                "table '{name}': corrupt Parquet part {}: {why}",
                p.display()
            )
        })
    }

    pub(crate) fn unknown_table_error(&self, name: &str) -> anyhow::Error {
        let names = self.table_names();
        let list = if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        };
        anyhow!(
            "unknown table '{name}': the capture in {} has the tables: {list}",
            self.dir.display()
        )
    }

    /// A lazy scan over all parts of a table. Nothing is read until collected.
    pub fn scan(&self, name: &str) -> Result<LazyFrame> {
        if self.is_view(name) {
            // Lazy: `code` is read only if the query uses `insn`.
            return Ok(insn_view(self.scan("block_exec")?, self.code_pcs_scan()?));
        }
        let Some(parts) = self.tables.get(name) else {
            return Err(self.unknown_table_error(name));
        };
        if let Some(e) = self.corrupt_error(name) {
            return Err(e);
        }
        if parts.is_empty() {
            return Ok(empty_table(name));
        }
        let paths = parts
            .iter()
            .map(|p| PlRefPath::try_from_path(p))
            .collect::<PolarsResult<Vec<_>>>()
            .map_err(|e| anyhow!("table '{name}': {e}"))?;
        let args = ScanArgsParquet {
            glob: false,
            ..Default::default()
        };
        LazyFrame::scan_parquet_files(paths.into_iter().collect(), args)
            .map_err(|e| anyhow!("table '{name}': {e}"))
    }

    /// The rows of `name` whose `icount` is in `w`, as a lazy frame. For
    /// the `insn` view the window first selects the block executions that
    /// overlap it (a filter the Parquet scan of `block_exec` can use), so a
    /// window costs its own rows, not the whole table's.
    pub fn scan_window(&self, name: &str, w: Window) -> Result<LazyFrame> {
        if self.is_view(name) {
            // The first condition is on the raw column, so the Parquet scan
            // skips the row groups before the window (a block holds at most
            // MAX_BLOCK_INSNS instructions); without it every window would
            // read block_exec from its start.
            let mut overlaps = col("icount")
                .gt_eq(lit(w.start.saturating_sub(MAX_BLOCK_INSNS)))
                .and((col("icount") + col("insns").cast(DataType::UInt64)).gt(lit(w.start)));
            if let Some(end) = w.end {
                overlaps = overlaps.and(col("icount").lt(lit(end)));
            }
            let blocks = self.scan("block_exec")?.filter(overlaps);
            return Ok(w.filter(insn_view(blocks, self.code_pcs()?.clone().lazy())));
        }
        Ok(w.filter(self.scan(name)?))
    }

    /// `code`'s (block, index, pc), each (block, index) once, read at the
    /// first use and kept: the windows and parts of one analysis all join
    /// with it. Small next to the instructions: one row per translated
    /// instruction.
    fn code_pcs(&self) -> Result<&DataFrame> {
        if let Some(df) = self.code_pcs.get() {
            return Ok(df);
        }
        let df = self.collect(self.code_pcs_scan()?)?;
        Ok(self.code_pcs.get_or_init(|| df))
    }

    /// A lazy scan of `code`'s (block, index, pc), each (block, index) once
    /// (an empty frame when there is no `code`).
    fn code_pcs_scan(&self) -> Result<LazyFrame> {
        if !self.tables.contains_key("code") {
            let schema = Schema::from_iter([
                Field::new("block".into(), DataType::UInt64),
                Field::new("index".into(), DataType::UInt32),
                Field::new("pc".into(), DataType::UInt64),
            ]);
            return Ok(DataFrame::empty_with_schema(&schema).lazy());
        }
        Ok(self
            .scan("code")?
            .select([
                col("block").cast(DataType::UInt64),
                col("index").cast(DataType::UInt32),
                col("pc").cast(DataType::UInt64),
            ])
            .unique(
                Some(by_name(["block", "index"], true, false)),
                UniqueKeepStrategy::First,
            ))
    }

    /// One lazy scan per Parquet part of a table, in part order (for the
    /// `insn` view: per part of `block_exec`).
    pub fn scan_parts(&self, name: &str) -> Result<Vec<LazyFrame>> {
        if self.is_view(name) {
            return self
                .scan_parts("block_exec")?
                .into_iter()
                .map(|part| Ok(insn_view(part, self.code_pcs()?.clone().lazy())))
                .collect();
        }
        let Some(parts) = self.tables.get(name) else {
            return Err(self.unknown_table_error(name));
        };
        if let Some(e) = self.corrupt_error(name) {
            return Err(e);
        }
        parts
            .iter()
            .map(|p| {
                let path =
                    PlRefPath::try_from_path(p).map_err(|e| anyhow!("table '{name}': {e}"))?;
                LazyFrame::scan_parquet(path, ScanArgsParquet::default())
                    .map_err(|e| anyhow!("table '{name}': {}: {e}", p.display()))
            })
            .collect()
    }

    /// Fails, with a message naming the analyzer, when the capture lacks a
    /// table the analyzer needs.
    pub(crate) fn require(&self, name: &str, who: &str) -> Result<()> {
        if !self.has_table(name) {
            bail!(
                "{who} needs the '{name}' table, which the capture in {} does not have \
                 (tables: {})",
                self.dir.display(),
                self.table_names().join(", ")
            );
        }
        Ok(())
    }

    /// A scan of a table the analyzer needs (see [`Capture::require`]).
    pub(crate) fn scan_required(&self, name: &str, who: &str) -> Result<LazyFrame> {
        self.require(name, who)?;
        self.scan(name)
    }

    /// Collects a lazy frame built on this capture's tables. On failure (a
    /// polars error, or a panic inside polars on damaged data) the error says
    /// which Parquet part is damaged, when one can be found.
    pub fn collect(&self, lf: LazyFrame) -> Result<DataFrame> {
        // The streaming engine: a query over a 100M-row table runs in bounded
        // memory instead of materialising every column it touches.
        let res = catch_unwind(AssertUnwindSafe(|| {
            lf.collect_with_engine(Engine::Streaming)
                .map(|result| result.unwrap_single())
        }));
        let err = match res {
            Ok(Ok(df)) => return Ok(df),
            Ok(Err(e)) => e.to_string(),
            Err(panic) => format!("polars panicked: {}", panic_message(&*panic)),
        };
        Err(self.query_failed(&err))
    }

    /// Runs `lf` as [`Capture::collect`] does, handing its result to `each`
    /// a batch at a time, in order, as the streaming engine makes them: a
    /// result of any size in bounded memory. `each` is called at least
    /// once (with no rows, in the result's schema, when there are none).
    pub fn collect_in_batches(
        &self,
        mut lf: LazyFrame,
        mut each: impl FnMut(DataFrame) -> Result<()>,
    ) -> Result<()> {
        let schema = lf
            .collect_schema()
            .map_err(|e| self.query_failed(&e.to_string()))?;
        // Two batches wait at most: the engine then waits for the writer.
        let (tx, rx) = std::sync::mpsc::sync_channel::<DataFrame>(2);
        // The callback answers "stop" once nobody takes the batches.
        let sink = lf
            .sink_batches(
                PlanCallback::new(move |df| Ok(tx.send(df).is_err())),
                true,
                None,
            )
            .map_err(|e| self.query_failed(&e.to_string()))?;
        let engine = std::thread::spawn(move || {
            catch_unwind(AssertUnwindSafe(|| {
                sink.collect_with_engine(Engine::Streaming).map(|_| ())
            }))
        });
        let mut written = Ok(());
        let mut batches = 0;
        for df in rx.iter() {
            batches += 1;
            written = each(df);
            if written.is_err() {
                break;
            }
        }
        drop(rx);
        let ran = engine
            .join()
            .unwrap_or_else(Err)
            .map_err(|panic| format!("polars panicked: {}", panic_message(&*panic)))
            .and_then(|r| r.map_err(|e| e.to_string()));
        written?;
        if let Err(err) = ran {
            return Err(self.query_failed(&err));
        }
        if batches == 0 {
            each(DataFrame::empty_with_schema(&schema))?;
        }
        Ok(())
    }

    /// The error of a query that failed with polars' message `err`: which
    /// Parquet part is damaged, when one can be found.
    fn query_failed(&self, err: &str) -> anyhow::Error {
        let diag = self.diagnose_parts().or_else(|| {
            if looks_like_decoding_error(err) {
                self.diagnose_data()
            } else {
                None
            }
        });
        match diag {
            Some(diag) => anyhow!("{diag} (query failed: {err})"),
            None => anyhow!("query failed: {err}"),
        }
    }

    /// Reads every part in full, one at a time, for the first one that does
    /// not decode. Expensive: only used after a query failed with what looks
    /// like a Parquet decoding error.
    pub fn diagnose_data(&self) -> Option<String> {
        for (name, parts) in &self.tables {
            for part in parts {
                let Ok(path) = PlRefPath::try_from_path(part) else {
                    continue;
                };
                let res = catch_unwind(AssertUnwindSafe(|| {
                    LazyFrame::scan_parquet(path, ScanArgsParquet::default())?.collect()
                }));
                let why = match res {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => e.to_string(),
                    Err(p) => panic_message(&*p),
                };
                return Some(format!(
                    "table '{name}': corrupt Parquet part {}: {why}",
                    part.display()
                ));
            }
        }
        None
    }

    /// Looks through every part's Parquet metadata for a damaged one.
    pub fn diagnose_parts(&self) -> Option<String> {
        for (name, parts) in &self.tables {
            for part in parts {
                if let Err(why) = check_part(part).and_then(|()| read_part_metadata(part)) {
                    return Some(format!(
                        "table '{name}': corrupt Parquet part {}: {why}",
                        part.display()
                    ));
                }
            }
        }
        None
    }

    /// Name, columns and row count of each table.
    pub fn table_info(&self) -> Result<Vec<TableInfo>> {
        let mut out = Vec::new();
        for name in self.table_names() {
            let view = self.is_view(&name);
            // The view's files are block_exec's (and code's).
            let source = if view { "block_exec" } else { name.as_str() };
            let parts = self.tables[source].len();
            if let Some(e) = self.corrupt_error(source) {
                return Err(e);
            }
            let mut lf = self.scan(&name)?;
            let schema = lf
                .collect_schema()
                .map_err(|e| match self.diagnose_parts() {
                    Some(d) => anyhow!("{d} ({e})"),
                    None => anyhow!("table '{name}': {e}"),
                })?;
            let columns = schema
                .iter()
                .map(|(n, dt)| (n.to_string(), dt.to_string()))
                .collect();
            let count = if view {
                // As many rows as instructions ran, without the join.
                self.scan("block_exec")?
                    .select([col("insns").cast(DataType::UInt64).sum().alias("n")])
            } else {
                lf.select([len().alias("n")])
            };
            let counted = self.collect(count)?;
            let rows = counted
                .column("n")?
                .cast(&DataType::UInt64)?
                .u64()?
                .get(0)
                .unwrap_or(0);
            out.push(TableInfo {
                name,
                parts,
                view,
                columns,
                rows,
            });
        }
        Ok(out)
    }

    /// Warnings a reader should see before trusting the capture: it is
    /// incomplete, the shim lost events, capture.json is unreadable.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = self.open_warnings.clone();
        if self.meta.is_none() {
            w.push(format!(
                "{} has no capture.json: pointer width unknown, assuming 64-bit",
                self.dir.display()
            ));
        }
        if let Some(m) = self.meta.as_ref().filter(|m| !m.complete) {
            let mut how = String::new();
            if let Some(end) = m.end {
                how.push_str(&format!(", end: {}", end.key()));
            }
            if let Some(err) = &m.error {
                how.push_str(&format!(", error: {err}"));
            }
            w.push(format!(
                "the capture in {} is incomplete (capture.json: complete=false{how}): the \
                 collector was still running or was cut short; tables hold the rows up to \
                 its last finished part",
                self.dir.display()
            ));
        }
        for (name, (part, why)) in &self.corrupt {
            w.push(format!(
                "table '{name}' has a corrupt Parquet part {}: {why}",
                part.display()
            ));
        }
        let stats = match self.stats() {
            Ok(s) => s,
            Err(e) => {
                w.push(format!("could not read the stats table: {e:#}"));
                Vec::new()
            }
        };
        // Continued with --append: losses before a later session's attach
        // are gaps inside the capture; in a capture of one session they are
        // before its start.
        let sessions = self.meta.as_ref().map_or(1, |m| m.collector_pids.len());
        let mut lost = 0;
        for s in stat::ALL {
            let before_start = [stat::EVENTS_LOST_BEFORE_ATTACH, stat::EVENTS_LOST_UNCOUNTED];
            if s.severity == stat::Severity::Info || (before_start.contains(s) && sessions <= 1) {
                continue;
            }
            if *s == stat::EVENTS_LOST_UNCOUNTED {
                // A flag, not a count of events.
                if stats.iter().any(|r| s.names(&r.0) && r.2 > 0) {
                    w.push(format!("{} (stats: {})", &s.meaning[3..], s.name));
                }
                continue;
            }
            let names: std::collections::BTreeSet<&str> = stats
                .iter()
                .map(|(n, _, _)| n.as_str())
                .filter(|n| s.names(n))
                .collect();
            for name in names {
                if s.severity == stat::Severity::DataLoss {
                    lost += push_loss_warning(&mut w, &stats, s, name);
                    continue;
                }
                let n: u64 = stats.iter().filter(|r| r.0 == name).map(|r| r.2).sum();
                if n > 0 {
                    let mut line = format!("{n} {} (stats: {name})", s.meaning);
                    if *s == stat::DEVICES_UNKNOWN {
                        line.push_str(&format!(
                            "; analyzers show them as device '{UNKNOWN_DEVICE}'"
                        ));
                    }
                    w.push(line);
                }
            }
        }
        if lost == 0 && !self.has_table("stats") {
            // stats is written at the end; an unfinished capture has only
            // capture.json's running sum.
            let sum = self.meta.as_ref().map_or(0, |m| m.events_lost);
            if sum > 0 {
                w.push(format!(
                    "{sum} events lost: {}, so the tables miss those accesses/instructions \
                     (capture.json: events_lost)",
                    stat::EVENTS_LOST.meaning
                ));
            }
        }
        w
    }

    /// The rows of the `stats` table: (name, vcpu, value), one set per
    /// collector session (an appended capture has several). Empty when there
    /// is no stats table.
    pub fn stats(&self) -> Result<Vec<(String, Option<u32>, u64)>> {
        if !self.has_table("stats") || self.corrupt.contains_key("stats") {
            return Ok(Vec::new());
        }
        let lf = self.scan("stats")?.select([
            col("name"),
            col("vcpu").cast(DataType::UInt32),
            col("value").cast(DataType::UInt64),
        ]);
        let df = self.collect(lf)?;
        let name = df.column("name")?.str()?;
        let vcpu = df.column("vcpu")?.u32()?;
        let value = df.column("value")?.u64()?;
        Ok((0..df.height())
            .map(|i| {
                (
                    name.get(i).unwrap_or("").to_owned(),
                    vcpu.get(i),
                    value.get(i).unwrap_or(0),
                )
            })
            .collect())
    }
}

/// A table of the capture with no part yet: no rows, its declared columns.
fn empty_table(name: &str) -> LazyFrame {
    let schema: Schema = Table::named(name)
        .map(|t| t.columns())
        .unwrap_or_default()
        .iter()
        .map(|c| Field::new(c.name.into(), c.ty.polars()))
        .collect();
    DataFrame::empty_with_schema(&schema).lazy()
}

/// One row per instruction that ran: each `block_exec` row's first
/// `insns` instructions, their pcs from `code` (null when the block's
/// description is missing: `blocks_unknown`), in `block_exec` order.
/// `code`: (block, index, pc), each (block, index) once.
fn insn_view(blocks: LazyFrame, code: LazyFrame) -> LazyFrame {
    blocks
        .filter(col("insns").gt(lit(0u32)))
        .select([
            col("vcpu"),
            col("icount"),
            col("block"),
            int_ranges(lit(0u32), col("insns"), lit(1u32), DataType::UInt32).alias("index"),
        ])
        .explode(
            by_name(["index"], true, false),
            ExplodeOptions {
                empty_as_null: false,
                keep_nulls: false,
            },
        )
        .join(
            code,
            [col("block"), col("index")],
            [col("block"), col("index")],
            JoinArgs {
                maintain_order: MaintainOrderJoin::Left,
                ..JoinArgs::new(JoinType::Left)
            },
        )
        .select([
            col("vcpu"),
            (col("icount") + col("index").cast(DataType::UInt64)).alias("icount"),
            col("pc"),
            col("block"),
        ])
}

/// The `*.parquet` files of a table directory (hidden and temporary files
/// excluded), sorted by name.
fn list_parts(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut parts = Vec::new();
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("reading directory {}", dir.display()))?
    {
        let path = entry
            .with_context(|| format!("reading directory {}", dir.display()))?
            .path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') || !name.ends_with(".parquet") || !path.is_file() {
            continue;
        }
        parts.push(path);
    }
    parts.sort();
    Ok(parts)
}

/// Cheap structural check of one part: the `PAR1` magic at both ends and a
/// footer length that fits in the file. Catches truncated parts.
fn check_part(path: &Path) -> std::result::Result<(), String> {
    let mut f = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let len = f.metadata().map_err(|e| format!("cannot stat: {e}"))?.len();
    if len < 12 {
        return Err(format!(
            "truncated: {len} bytes, too short for a Parquet file"
        ));
    }
    let mut head = [0u8; 4];
    f.read_exact(&mut head)
        .map_err(|e| format!("cannot read: {e}"))?;
    if &head != b"PAR1" {
        return Err("not a Parquet file (no PAR1 magic at the start)".into());
    }
    let mut tail = [0u8; 8];
    f.seek(SeekFrom::End(-8))
        .and_then(|_| f.read_exact(&mut tail))
        .map_err(|e| format!("cannot read: {e}"))?;
    if &tail[4..] != b"PAR1" {
        return Err("truncated or corrupt: no PAR1 magic at the end (footer missing)".into());
    }
    let footer = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if footer + 12 > len {
        return Err(format!(
            "corrupt footer: metadata length {footer} does not fit in the file's {len} bytes"
        ));
    }
    Ok(())
}

/// Parses one part's Parquet metadata (footer) with polars.
fn read_part_metadata(path: &Path) -> std::result::Result<(), String> {
    let f = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let res = catch_unwind(AssertUnwindSafe(|| {
        let mut r = ParquetReader::new(f);
        r.get_metadata().map(|_| ())
    }));
    match res {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(p) => Err(panic_message(&*p)),
    }
}

/// Whether a polars error message looks like damaged Parquet data (rather
/// than, say, a type error in the query).
fn looks_like_decoding_error(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    [
        "parquet",
        "out of spec",
        "thrift",
        "decompress",
        "snappy",
        "zstd",
        "lz4",
        "gzip",
        "brotli",
        "panicked",
        "io error",
        "unexpected end",
    ]
    .iter()
    .any(|k| m.contains(k))
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// Adds a warning for the losses of stat `name` (summed per vCPU over every
/// session), if any; returns their total.
fn push_loss_warning(
    w: &mut Vec<String>,
    stats: &[(String, Option<u32>, u64)],
    counter: &stat::Stat,
    name: &str,
) -> u64 {
    let mut per: BTreeMap<Option<u32>, u64> = BTreeMap::new();
    for (_, vcpu, n) in stats.iter().filter(|(n, _, v)| n == name && *v > 0) {
        *per.entry(*vcpu).or_default() += n;
    }
    let total: u64 = per.values().sum();
    if total > 0 {
        let per: Vec<String> = per
            .iter()
            .map(|(vcpu, n)| match vcpu {
                Some(v) => format!("vcpu {v}: {n}"),
                None => format!("capture-wide: {n}"),
            })
            .collect();
        // Per-table counters say which table misses the rows.
        let of_table = match name.strip_prefix(counter.name) {
            Some(t) if !t.is_empty() => format!(" of table {}", &t[1..]),
            _ => String::new(),
        };
        w.push(format!(
            "{total} events lost ({}): {}{of_table}, so the tables miss those \
             accesses/instructions (stats: {name})",
            per.join(", "),
            counter.meaning
        ));
    }
    total
}
