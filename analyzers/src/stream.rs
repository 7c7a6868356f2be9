//! Bounded-memory reading of large tables.
//!
//! SQL queries run on polars' streaming engine, but an analyzer's result (every
//! matching row, in icount order) is as big as its input, and a sort holds
//! what it sorts. Analyzers therefore read
//! big tables either part by part (aggregations) or in windows of
//! consecutive `icount` values (ordered output): each window is a filter on
//! the raw `icount` column, pushed down into the Parquet scan (row groups
//! outside the window are skipped by their statistics), then projected and
//! sorted by (icount, vcpu) with ties kept in file order.

use anyhow::Result;
use polars::prelude::*;

use crate::capture_dir::Capture;

/// Rows a window aims at (estimated from the table's icount density).
pub const DEFAULT_WINDOW_ROWS: u64 = 1_000_000;

/// [`DEFAULT_WINDOW_ROWS`], or `TRACE_QUERY_WINDOW_ROWS` from the
/// environment when set (to trade memory for speed).
pub fn window_rows() -> u64 {
    std::env::var("TRACE_QUERY_WINDOW_ROWS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_WINDOW_ROWS)
}

/// Smallest and largest `icount`, and row count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub lo: u64,
    pub hi: u64,
    pub rows: u64,
}

impl Range {
    /// The smallest range holding both.
    pub fn union(self, o: Range) -> Range {
        Range {
            lo: self.lo.min(o.lo),
            hi: self.hi.max(o.hi),
            rows: self.rows + o.rows,
        }
    }
}

/// The icount range of the rows of `table` that `filter` keeps (all rows
/// when `None`), computed part by part (so only one part's `icount` column
/// is in memory at once). None when no row is kept.
pub fn icount_range(cap: &Capture, table: &str, filter: Option<Expr>) -> Result<Option<Range>> {
    if filter.is_none() && cap.is_view(table) {
        // The `insn` view's range is `block_exec`'s: no need to expand it.
        return range_of_parts(
            cap,
            "block_exec",
            col("insns").gt(lit(0u32)),
            (col("icount").cast(DataType::UInt64) + col("insns").cast(DataType::UInt64)
                - lit(1u64))
            .max(),
            col("insns").cast(DataType::UInt64).sum(),
        );
    }
    range_of_parts(
        cap,
        table,
        filter.unwrap_or(lit(true)),
        col("icount").cast(DataType::UInt64).max(),
        len().cast(DataType::UInt64),
    )
}

/// Per part of `table`, of the rows `keep` keeps: the smallest icount,
/// `hi` and `rows`; combined.
fn range_of_parts(
    cap: &Capture,
    table: &str,
    keep: Expr,
    hi: Expr,
    rows: Expr,
) -> Result<Option<Range>> {
    let mut acc: Option<Range> = None;
    for part in cap.scan_parts(table)? {
        let df = cap.collect(part.filter(keep.clone()).select([
            col("icount").cast(DataType::UInt64).min().alias("lo"),
            hi.clone().alias("hi"),
            rows.clone().alias("n"),
        ]))?;
        let lo = df.column("lo")?.u64()?.get(0);
        let hi = df.column("hi")?.u64()?.get(0);
        let rows = df.column("n")?.u64()?.get(0).unwrap_or(0);
        if let (Some(lo), Some(hi)) = (lo, hi) {
            if rows > 0 {
                let r = Range { lo, hi, rows };
                acc = Some(acc.map_or(r, |a| a.union(r)));
            }
        }
    }
    Ok(acc)
}

/// A window of icounts: `start..end`, or `start..` when `end` is None.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: u64,
    pub end: Option<u64>,
}

impl Window {
    /// `lf` restricted to the window, by its raw `icount` column (so the
    /// predicate reaches the Parquet scan).
    pub fn filter(&self, lf: LazyFrame) -> LazyFrame {
        let mut pred = col("icount").gt_eq(lit(self.start));
        if let Some(end) = self.end {
            pred = pred.and(col("icount").lt(lit(end)));
        }
        lf.filter(pred)
    }
}

/// Windows covering `range`, each of about `window_rows` rows (assuming rows
/// spread evenly over the icounts).
pub fn windows(range: Range, window_rows: u64) -> Vec<Window> {
    let span = u128::from(range.hi - range.lo) + 1;
    let n = u128::from(range.rows.div_ceil(window_rows.max(1))).max(1);
    let width = span.div_ceil(n).max(1);
    let mut out = Vec::new();
    let mut start = u128::from(range.lo);
    while start <= u128::from(range.hi) {
        let end = start + width;
        out.push(Window {
            start: start as u64,
            end: (end <= u128::from(range.hi)).then_some(end as u64),
        });
        start = end;
    }
    out
}

/// The sort every analyzer uses: (icount, vcpu), stable.
pub fn by_icount_vcpu() -> SortMultipleOptions {
    SortMultipleOptions::default().with_maintain_order(true)
}

/// Collects the rows of `table` in window `w` that `filter` keeps,
/// projected to `projection` (which must produce `icount` and `vcpu`),
/// sorted by (icount, vcpu), as one chunk.
pub fn sorted_window(
    cap: &Capture,
    table: &str,
    w: Window,
    filter: Option<Expr>,
    projection: &[Expr],
) -> Result<DataFrame> {
    let mut lf = cap.scan_window(table, w)?;
    if let Some(f) = filter {
        lf = lf.filter(f);
    }
    let lf = lf
        .select(projection)
        .sort(["icount", "vcpu"], by_icount_vcpu());
    let mut df = cap.collect(lf)?;
    df.rechunk_mut();
    Ok(df)
}
