//! SQL over a capture: every table registered by name in a polars
//! `SQLContext` as a lazy Parquet scan.

use anyhow::{anyhow, Result};
use polars::prelude::*;
use polars::sql::SQLContext;

use crate::capture_dir::Capture;
use crate::direct_aggregate;
use crate::symbols::Symbols;

/// A `SQLContext` with every readable table of the capture registered under
/// its directory name. Tables with a damaged part are left out (a query
/// naming one fails with the damaged file's name, see [`run_sql`]).
pub fn sql_context(cap: &Capture) -> Result<SQLContext> {
    sql_context_with(cap, None)
}

/// [`sql_context`], and with `symbols` (`--symbols`) `mem`, `mmio` and
/// `insn` get a `symbol` column (the function holding `pc`, `name+0xoff`),
/// `code`'s `symbol` (QEMU's name, without offset) is replaced by the same,
/// and a `symbols` table lists the functions (`name`, `start`, `end`).
pub fn sql_context_with(cap: &Capture, symbols: Option<&Symbols>) -> Result<SQLContext> {
    let ctx = SQLContext::new();
    for name in cap.table_names() {
        if cap.corrupt_part(&name).is_some() {
            continue;
        }
        ctx.register(&name, with_symbols(&name, cap.scan(&name)?, symbols));
    }
    if let Some(s) = symbols {
        ctx.register("symbols", s.table()?.lazy());
    }
    Ok(ctx)
}

/// `lf` (table `name`) with its `symbol` column, when it has a `pc` to name.
pub(crate) fn with_symbols(name: &str, lf: LazyFrame, symbols: Option<&Symbols>) -> LazyFrame {
    match symbols {
        Some(s) if matches!(name, "mem" | "mmio" | "insn" | "code") => lf.with_column(s.expr("pc")),
        _ => lf,
    }
}

/// Plans `query` (lazily) without running it. Integer literals polars' SQL
/// does not take are rewritten first, see [`rewrite_literals`].
pub fn plan_sql(cap: &Capture, query: &str) -> Result<LazyFrame> {
    plan_sql_with(cap, query, None)
}

/// [`plan_sql`], with `symbols` (see [`sql_context_with`]).
pub fn plan_sql_with(cap: &Capture, query: &str, symbols: Option<&Symbols>) -> Result<LazyFrame> {
    let mut ctx = sql_context_with(cap, symbols)?;
    ctx.execute(&rewrite_literals(query))
        .map_err(|e| translate_error(cap, e))
}

/// Rewrites the integer literals polars' SQL cannot parse, so addresses can
/// be written as they are printed: hex literals (`0x20000100`) become
/// decimal, and any literal above `i64::MAX` (up to `u64::MAX`, hex or
/// decimal) becomes `CAST('<decimal>' AS UBIGINT)`. String literals, quoted
/// identifiers and comments are left alone.
pub fn rewrite_literals(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$';
    while i < b.len() {
        let c = b[i];
        // Quoted text: copied verbatim up to the closing quote.
        if c == b'\'' || c == b'"' || c == b'`' {
            let mut j = i + 1;
            while j < b.len() {
                if b[j] == c {
                    if j + 1 < b.len() && b[j + 1] == c {
                        j += 2; // doubled quote: escaped
                        continue;
                    }
                    break;
                }
                j += 1;
            }
            let end = (j + 1).min(b.len());
            out.push_str(&sql[i..end]);
            i = end;
            continue;
        }
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            let end = sql[i..].find('\n').map_or(b.len(), |k| i + k);
            out.push_str(&sql[i..end]);
            i = end;
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let end = sql[i + 2..].find("*/").map_or(b.len(), |k| i + 2 + k + 2);
            out.push_str(&sql[i..end]);
            i = end;
            continue;
        }
        let starts_token = i == 0 || !(ident(b[i - 1]) || b[i - 1] == b'.');
        if c.is_ascii_digit() && starts_token {
            let mut j = i;
            let value = if c == b'0' && matches!(b.get(i + 1), Some(b'x' | b'X')) {
                j += 2;
                let s = j;
                while j < b.len() && b[j].is_ascii_hexdigit() {
                    j += 1;
                }
                u128::from_str_radix(&sql[s..j], 16).ok()
            } else {
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                sql[i..j].parse::<u128>().ok()
            };
            let ends_token = j >= b.len() || !(ident(b[j]) || b[j] == b'.');
            let is_hex = j > i + 1 && matches!(b[i + 1], b'x' | b'X');
            match value {
                Some(v) if ends_token && v <= u128::from(u64::MAX) => {
                    if v > i64::MAX as u128 {
                        out.push_str(&format!("CAST('{v}' AS UBIGINT)"));
                    } else if is_hex {
                        out.push_str(&v.to_string());
                    } else {
                        out.push_str(&sql[i..j]);
                    }
                }
                _ => out.push_str(&sql[i..j]),
            }
            i = j;
            continue;
        }
        let ch = sql[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Runs `query` over the capture and collects the result.
pub fn run_sql(cap: &Capture, query: &str) -> Result<DataFrame> {
    run_sql_with(cap, query, None)
}

/// [`run_sql`], with `symbols` (see [`sql_context_with`]).
pub fn run_sql_with(cap: &Capture, query: &str, symbols: Option<&Symbols>) -> Result<DataFrame> {
    match answer_sql_with(cap, query, symbols)? {
        Answer::Computed(df) => Ok(df),
        Answer::Plan(lf) => cap.collect(*lf),
    }
}

/// How a query is answered: computed already ([`direct_aggregate`]: a few
/// groups), or a polars plan to run (collected, or written as it runs).
pub enum Answer {
    Computed(DataFrame),
    Plan(Box<LazyFrame>),
}

/// Answers `query` over the capture, with `symbols` (see
/// [`sql_context_with`]).
pub fn answer_sql_with(cap: &Capture, query: &str, symbols: Option<&Symbols>) -> Result<Answer> {
    let mut lf = plan_sql_with(cap, query, symbols)?;
    if symbols.is_none() {
        let source = [direct_aggregate::Source { name: None, cap }];
        if let Some(df) = direct(&source, query, &mut lf) {
            return Ok(Answer::Computed(df));
        }
    }
    Ok(Answer::Plan(Box::new(lf)))
}

/// The result of `query` (planned by polars as `lf`) computed by
/// [`direct_aggregate`], when it has the shape that module computes.
pub(crate) fn direct(
    sources: &[direct_aggregate::Source],
    query: &str,
    lf: &mut LazyFrame,
) -> Option<DataFrame> {
    let schema = lf.collect_schema().ok()?;
    direct_aggregate::try_run(sources, &rewrite_literals(query), &schema)
}

fn translate_error(cap: &Capture, e: PolarsError) -> anyhow::Error {
    let msg = e.to_string();
    if let Some(name) = missing_relation(&msg) {
        if let Some(err) = cap.corrupt_error(name) {
            return err;
        }
        return cap.unknown_table_error(name);
    }
    anyhow!("SQL error: {msg}")
}

/// The table name in polars' "relation 'X' was not found".
pub(crate) fn missing_relation(msg: &str) -> Option<&str> {
    let start = msg.find("relation '")? + "relation '".len();
    let rest = &msg[start..];
    let end = rest.find("' was not found")?;
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::rewrite_literals as rw;

    #[test]
    fn literals() {
        assert_eq!(
            rw("SELECT * FROM mem WHERE vaddr = 0x20000100 AND size>=0X4"),
            "SELECT * FROM mem WHERE vaddr = 536871168 AND size>=4"
        );
        assert_eq!(
            rw("WHERE a > 0xffff800000000000 OR b < 18446744073709551615"),
            "WHERE a > CAST('18446603336221196288' AS UBIGINT) OR b < \
             CAST('18446744073709551615' AS UBIGINT)"
        );
        assert_eq!(rw("9223372036854775807"), "9223372036854775807");
        assert_eq!(
            rw("9223372036854775808"),
            "CAST('9223372036854775808' AS UBIGINT)"
        );
        // left alone: strings, identifiers, comments, floats, too-large values
        for q in [
            "SELECT '0x10', \"c0x10\" FROM t",
            "SELECT col_0x10, x1 FROM t -- 0x10\n",
            "SELECT 1.5, 0.0x FROM t /* 0xff */",
            "SELECT 'it''s 0x1'",
            "SELECT 99999999999999999999999",
            "SELECT 0xfffffffffffffffff",
        ] {
            assert_eq!(rw(q), q);
        }
        assert_eq!(rw("SELECT 0x10, 'é', 0x1"), "SELECT 16, 'é', 1");
    }

    #[test]
    fn relation_name() {
        assert_eq!(
            super::missing_relation("SQLInterface: relation 'foo' was not found"),
            Some("foo")
        );
        assert_eq!(super::missing_relation("something else"), None);
    }
}
