//! One DataFrame as one Parquet file, each column encoded for what it holds.
//!
//! polars' own writer tries a dictionary for every column and drops it when
//! the column has too many distinct values. On a trace that attempt is most
//! of the collector's CPU (building hash maps over the addresses and values
//! of millions of accesses, to throw them away), and the fallback stores
//! `icount`, which only grows, as plain 8-byte integers. So the encodings are
//! chosen here, by column name, with polars' Parquet writer underneath:
//!
//! | columns | encoding | why |
//! |---|---|---|
//! | `icount` | DELTA_BINARY_PACKED | grows by small steps within a vCPU: ~0.1 B/row |
//! | `asid` | DELTA_BINARY_PACKED | the same value for long runs: as small as a dictionary, without hashing every row |
//! | `vaddr`, `paddr`, `value` | PLAIN (then zstd) | too many distinct values for a dictionary |
//! | `value_hi` | PLAIN (then zstd) | null but for 16-byte accesses: a dictionary saves nothing |
//! | `type`, `device`, `region`, `plugin_device` of `mem`/`mmio` | a dictionary, given as built from the batch's codes (`columns`) | a handful of distinct strings; nothing to hash per row |
//! | everything else | polars' default: a dictionary (plain if that fails), plain for booleans | few distinct values (pc, size, vcpu, asid, ...) |
//!
//! Every page is zstd-compressed at level 1: against level 3, the drain-to-Parquet
//! benchmark takes 25% less time, for 10% more bytes (the arm64 boot's `mem`
//! table: 3.79 B per row instead of 3.45; the target is 4). Min/max statistics are kept: they
//! let readers skip row groups (trace-query's icount windows rely on them).
//! Every Parquet reader (polars, DuckDB, pyarrow) reads these encodings.

use std::io::Write;

use std::sync::Arc;

use anyhow::Result;
#[cfg(test)]
use polars::prelude::DataFrame;
use polars_arrow::record_batch::RecordBatchT;
use polars_parquet::write::{
    get_dtype_encoding, row_group_iter, CompressionOptions, Encoding, FileWriter,
    StatisticsOptions, Version, WriteOptions, ZstdLevel,
};

use crate::columns::Columns;

/// The encoding of a column chosen by its name (see the module docs), or
/// `None`: polars' default for its type (a dictionary for numbers and
/// strings, plain for booleans).
pub fn encoding_of(column: &str) -> Option<Encoding> {
    match column {
        "icount" | "asid" => Some(Encoding::DeltaBinaryPacked),
        "vaddr" | "paddr" | "value" | "value_hi" => Some(Encoding::Plain),
        _ => None,
    }
}

/// Writes `df` to `w` as one Parquet file; returns the file's size in bytes.
#[cfg(test)]
pub fn write<W: Write>(df: &DataFrame, w: W) -> Result<u64> {
    write_columns(Columns::from_frame(df.clone()), w)
}

/// Writes `columns` to `w` as one Parquet file (one row group); returns the
/// file's size in bytes.
pub fn write_columns<W: Write>(columns: Columns, w: W) -> Result<u64> {
    let Columns {
        schema,
        arrays,
        rows,
    } = columns;
    let encodings: Vec<Vec<Encoding>> = schema
        .iter()
        .map(|(name, field)| match encoding_of(name.as_str()) {
            Some(e) => vec![e],
            None => get_dtype_encoding(&field.dtype),
        })
        .collect();
    let options = WriteOptions {
        statistics: StatisticsOptions::default(),
        compression: CompressionOptions::Zstd(Some(ZstdLevel::try_new(1)?)),
        version: Version::V1,
        data_page_size: None,
    };
    let schema = Arc::new(schema);
    let mut writer = FileWriter::try_new(w, schema.as_ref().clone(), options)?;
    let fields = writer.parquet_schema().fields().to_vec();
    let batch = RecordBatchT::try_new(rows, schema, arrays)?;
    let group = row_group_iter(batch, encodings.into(), fields, options);
    writer.write(rows as u64, group)?;
    // With no footer metadata given, the writer stores the Arrow schema,
    // from which readers (polars) take the column types.
    Ok(writer.end(None)?)
}

/// A part's rows, from its footer.
pub fn part_rows(path: &std::path::Path) -> Result<u64> {
    let mut f = std::fs::File::open(path)?;
    Ok(polars_parquet::read::read_metadata(&mut f)?.num_rows as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::*;

    /// Every encoding chosen here reads back exactly, u64 extremes included
    /// (DELTA_BINARY_PACKED stores u64 as wrapping i64 deltas).
    #[test]
    fn a_written_file_reads_back_exactly() {
        let n = 10_000u64;
        let icount: Vec<u64> = (0..n)
            .map(|i| i * 3)
            .chain([u64::MAX - 1, u64::MAX])
            .collect();
        let vaddr: Vec<u64> = (0..n + 2)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let pc: Vec<u64> = (0..n + 2).map(|i| 0x1000 + (i % 7) * 4).collect();
        let typ: Vec<&str> = (0..n + 2)
            .map(|i| if i % 3 == 0 { "W" } else { "R" })
            .collect();
        let io: Vec<bool> = (0..n + 2).map(|i| i % 5 == 0).collect();
        let df = df!(
            "icount" => icount,
            "vaddr" => vaddr,
            "pc" => pc,
            "type" => typ,
            "io" => io,
        )
        .unwrap();
        let dir = std::env::temp_dir().join(format!("parquet-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.parquet");
        let size = write(&df, std::fs::File::create(&path).unwrap()).unwrap();
        assert_eq!(size, std::fs::metadata(&path).unwrap().len());
        assert_eq!(part_rows(&path).unwrap(), n + 2);
        let back = ParquetReader::new(std::fs::File::open(&path).unwrap())
            .finish()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(back.equals(&df), "{back} != {df}");
    }
}
