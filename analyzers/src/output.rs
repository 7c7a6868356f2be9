//! Printing query results: `table` (polars' Display), `csv`, `json` (NDJSON).

use std::io::Write;

use anyhow::{anyhow, Result};
use polars::prelude::*;

/// Output format of `trace-query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// polars' human-readable table (the default).
    Table,
    /// A header line, then one line per row (polars' CsvWriter).
    Csv,
    /// One JSON object per row, one per line (NDJSON; polars' JsonWriter).
    Json,
}

/// Rows the `table` format prints in full; above it polars shows the first
/// and last rows around a `…` line. Overridden by `POLARS_FMT_MAX_ROWS`.
pub const TABLE_MAX_ROWS: usize = 100_000;

/// The `POLARS_FMT_*` settings `trace-query` uses for `--format table` so
/// nothing is elided: all columns, strings up to 1000 characters, no
/// wrapping to the terminal width, and up to [`TABLE_MAX_ROWS`] rows.
/// A variable already set in the environment is kept (the caller only sets
/// the ones that are unset).
pub fn table_env_defaults() -> Vec<(&'static str, String)> {
    vec![
        ("POLARS_FMT_MAX_ROWS", TABLE_MAX_ROWS.to_string()),
        ("POLARS_FMT_MAX_COLS", "-1".into()),
        ("POLARS_FMT_STR_LEN", "1000".into()),
        ("POLARS_TABLE_WIDTH", "65535".into()),
    ]
}

/// Sets the [`table_env_defaults`] that are not already set. Call it once,
/// early in `main`, before other threads exist.
pub fn set_table_env_defaults() {
    for (k, v) in table_env_defaults() {
        if std::env::var_os(k).is_none() {
            std::env::set_var(k, v);
        }
    }
}

/// Writes `df` to `w` in `format`. Binary columns are printed as lowercase
/// hex strings (the csv and json writers take no binary data, and the table
/// would show Rust byte-string escapes).
pub fn write_frame(df: &DataFrame, format: Format, w: &mut dyn Write) -> Result<()> {
    write_batch(df, format, true, w)
}

/// Writes `df`, one batch of a result, to `w` in `format` (as
/// [`write_frame`]); `first`: the result's first batch, which carries the
/// CSV header. A table is written whole: give it the whole result.
pub fn write_batch(df: &DataFrame, format: Format, first: bool, w: &mut dyn Write) -> Result<()> {
    match format {
        Format::Table => {
            writeln!(w, "{}", binary_as_hex(df)?)?;
        }
        Format::Csv => {
            let mut df = binary_as_hex(df)?;
            CsvWriter::new(&mut *w)
                .include_header(first)
                .finish(&mut df)
                .map_err(|e| anyhow!("writing CSV: {e}"))?;
        }
        Format::Json => {
            let mut df = binary_as_hex(df)?;
            if df.height() > 0 {
                JsonWriter::new(&mut *w)
                    .with_json_format(JsonFormat::JsonLines)
                    .finish(&mut df)
                    .map_err(|e| anyhow!("writing JSON: {e}"))?;
            }
        }
    }
    w.flush()?;
    Ok(())
}

/// A copy of `df` with every Binary column replaced by hex strings.
fn binary_as_hex(df: &DataFrame) -> Result<DataFrame> {
    let mut out = df.clone();
    let names: Vec<PlSmallStr> = df
        .columns()
        .iter()
        .filter(|c| matches!(c.dtype(), DataType::Binary))
        .map(|c| c.name().clone())
        .collect();
    for name in names {
        let bin = df.column(&name)?.binary()?.clone();
        let hex: StringChunked = bin
            .iter()
            .map(|v| v.map(to_hex))
            .collect::<StringChunked>()
            .with_name(name.clone());
        out.with_column(hex.into_column())?;
    }
    Ok(out)
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
