//! The tables of a capture directory and their columns.

/// A column's type, as every Parquet reader sees it (polars' and Arrow's
/// names; unsigned integers are Parquet integers with an unsigned logical
/// type, strings UTF-8 byte arrays).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    UInt8,
    UInt32,
    UInt64,
    String,
    Binary,
    Boolean,
}

impl ColumnType {
    /// The name docs/capture-format.md uses.
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::UInt8 => "UInt8",
            ColumnType::UInt32 => "UInt32",
            ColumnType::UInt64 => "UInt64",
            ColumnType::String => "String",
            ColumnType::Binary => "Binary",
            ColumnType::Boolean => "Boolean",
        }
    }
}

#[cfg(feature = "polars")]
impl ColumnType {
    /// The polars type a reader gets for the column.
    pub fn polars(self) -> polars::prelude::DataType {
        use polars::prelude::DataType;
        match self {
            ColumnType::UInt8 => DataType::UInt8,
            ColumnType::UInt32 => DataType::UInt32,
            ColumnType::UInt64 => DataType::UInt64,
            ColumnType::String => DataType::String,
            ColumnType::Binary => DataType::Binary,
            ColumnType::Boolean => DataType::Boolean,
        }
    }
}

/// One column of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
    /// Whether rows may hold null.
    pub nullable: bool,
}

const fn c(name: &'static str, ty: ColumnType) -> Column {
    Column {
        name,
        ty,
        nullable: false,
    }
}

const fn nullable(name: &'static str, ty: ColumnType) -> Column {
    Column {
        name,
        ty,
        nullable: true,
    }
}

use ColumnType::*;

const MEM: &[Column] = &[
    c("vcpu", UInt32),
    c("icount", UInt64),
    c("pc", UInt64),
    c("type", String),
    c("vaddr", UInt64),
    c("paddr", UInt64),
    c("size", UInt8),
    c("value", UInt64),
    nullable("value_hi", UInt64),
    c("asid", UInt64),
    c("io", Boolean),
    nullable("device", String),
];

const MMIO: &[Column] = &[
    c("vcpu", UInt32),
    c("icount", UInt64),
    c("pc", UInt64),
    c("type", String),
    c("vaddr", UInt64),
    c("paddr", UInt64),
    c("size", UInt8),
    c("value", UInt64),
    nullable("value_hi", UInt64),
    c("asid", UInt64),
    nullable("device", String),
    nullable("region", String),
    nullable("plugin_device", String),
];

const BLOCK_EXEC: &[Column] = &[
    c("vcpu", UInt32),
    c("icount", UInt64),
    c("block", UInt64),
    c("insns", UInt32),
];

const CODE: &[Column] = &[
    c("block", UInt64),
    c("index", UInt32),
    c("pc", UInt64),
    c("size", UInt8),
    c("bytes", Binary),
    c("opcode", UInt32),
    c("disas", String),
    c("symbol", String),
];

const STATS: &[Column] = &[
    c("name", String),
    nullable("vcpu", UInt32),
    c("value", UInt64),
];

/// The columns of the `insn` view readers build from `block_exec` and
/// `code` (no files of its own).
const INSN: &[Column] = &[
    c("vcpu", UInt32),
    c("icount", UInt64),
    nullable("pc", UInt64),
    c("block", UInt64),
];

/// The name of the view of one row per executed instruction.
pub const INSN_VIEW: &str = "insn";

/// The names readers treat as the capture's own: the tables and the `insn`
/// view (anything else in the directory is listed after them).
pub const STANDARD_TABLES: [&str; 6] = ["mem", "mmio", INSN_VIEW, "block_exec", "code", "stats"];

/// The tables of a capture directory: one directory of Parquet parts each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Every data access, RAM and I/O.
    Mem,
    /// The I/O accesses, with their devices.
    Mmio,
    /// Every executed block, with how many of its instructions ran.
    BlockExec,
    /// Every translated instruction, once per translation.
    Code,
    /// The collector's counters.
    Stats,
}

impl Table {
    pub const ALL: [Table; 5] = [
        Table::Mem,
        Table::Mmio,
        Table::BlockExec,
        Table::Code,
        Table::Stats,
    ];

    /// The table's directory name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Mem => "mem",
            Table::Mmio => "mmio",
            Table::BlockExec => "block_exec",
            Table::Code => "code",
            Table::Stats => "stats",
        }
    }

    /// The table called `name`.
    pub fn named(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Its position in `ALL`.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The table's columns, in order.
    pub fn columns(self) -> &'static [Column] {
        match self {
            Table::Mem => MEM,
            Table::Mmio => MMIO,
            Table::BlockExec => BLOCK_EXEC,
            Table::Code => CODE,
            Table::Stats => STATS,
        }
    }

    /// The tables a capture has for what the shim records (its `events=`):
    /// `mem` means `mem` and `mmio`, `mmio` alone only `mmio`, `insn` means
    /// `block_exec` and `code` (from which readers build the `insn` view);
    /// `stats` always.
    pub fn for_events(mem: bool, mmio: bool, insn: bool) -> Vec<Table> {
        let mut t = Vec::new();
        if mem {
            t.push(Table::Mem);
        }
        if mem || mmio {
            t.push(Table::Mmio);
        }
        if insn {
            t.push(Table::BlockExec);
            t.push(Table::Code);
        }
        t.push(Table::Stats);
        t
    }
}

/// The columns of the `insn` view.
pub fn insn_view_columns() -> &'static [Column] {
    INSN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats;

    /// docs/capture-format.md's column tables, section by section, say what
    /// these declarations say: the names, in order, and the types.
    #[test]
    fn the_format_doc_has_these_columns() {
        // The checkout being tested, from cargo at run time: a test binary
        // reused from another clone's build has another path compiled in.
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
        let doc = std::fs::read_to_string(format!("{dir}/../docs/capture-format.md")).unwrap();
        let sections = column_tables(&doc);
        let doc_of = |name: &str| -> Vec<(std::string::String, std::string::String)> {
            sections
                .iter()
                .find(|(table, _)| table == name)
                .unwrap_or_else(|| {
                    panic!("docs/capture-format.md has no column table for `{name}`")
                })
                .1
                .clone()
        };
        let declared = |cols: &[Column]| -> Vec<(std::string::String, std::string::String)> {
            cols.iter()
                .map(|c| (c.name.to_string(), c.ty.name().to_string()))
                .collect()
        };
        for t in Table::ALL {
            if t == Table::Mmio {
                // The doc lists mmio's columns as mem's without `io`, plus
                // the ones its own table gives.
                let mut cols = doc_of("mem");
                cols.retain(|(n, _)| n != "io" && n != "device");
                cols.extend(doc_of("mmio"));
                assert_eq!(cols, declared(t.columns()), "mmio");
                continue;
            }
            assert_eq!(doc_of(t.name()), declared(t.columns()), "{}", t.name());
        }
        assert_eq!(doc_of(INSN_VIEW), declared(INSN), "insn");
        // The stats the doc lists are the ones declared.
        let mut doc_stats = stat_names(&doc);
        doc_stats.sort();
        let mut ours: Vec<std::string::String> = stats::ALL.iter().map(|s| s.doc_name()).collect();
        ours.sort();
        assert_eq!(doc_stats, ours);
    }

    /// (table, [(column, type)]) for each `| column | type | meaning |`
    /// table, named by the `` `name` `` that opens the paragraph before it.
    fn column_tables(
        doc: &str,
    ) -> Vec<(
        std::string::String,
        Vec<(std::string::String, std::string::String)>,
    )> {
        let mut out = Vec::new();
        let mut current: Option<std::string::String> = None;
        let mut rows: Option<Vec<(std::string::String, std::string::String)>> = None;
        for line in doc.lines() {
            if let Some(r) = rows.as_mut() {
                if !line.starts_with('|') {
                    out.push((current.clone().unwrap_or_default(), rows.take().unwrap()));
                    continue;
                }
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                if cells.len() > 3 && !cells[1].starts_with("---") {
                    r.push((cells[1].to_string(), cells[2].to_string()));
                }
                continue;
            }
            if line.starts_with("| column | type |") {
                rows = Some(Vec::new());
            } else if line.starts_with("```") {
                // A code block's fence names no table.
            } else if let Some(rest) = line.strip_prefix('`') {
                // A paragraph opening with "`name`: ..." or "`name` (...".
                if let Some((name, after)) = rest.split_once('`') {
                    let identifier = name.chars().all(|c| c.is_ascii_lowercase() || c == '_');
                    if identifier && (after.starts_with(':') || after.starts_with(" (")) {
                        current = Some(name.to_string());
                    }
                }
            }
        }
        if let Some(r) = rows {
            out.push((current.unwrap_or_default(), r));
        }
        out
    }

    /// The names in the doc's `| name | value |` tables of stats.
    fn stat_names(doc: &str) -> Vec<std::string::String> {
        let mut out = Vec::new();
        let mut inside = false;
        for line in doc.lines() {
            if line.starts_with("| name | value |") {
                inside = true;
                continue;
            }
            if inside {
                if !line.starts_with('|') {
                    inside = false;
                    continue;
                }
                let cell = line.split('|').nth(1).unwrap_or("").trim();
                if let Some(name) = cell.strip_prefix('`').and_then(|c| c.strip_suffix('`')) {
                    out.push(name.to_string());
                }
            }
        }
        out
    }
}
