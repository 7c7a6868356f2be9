//! Many captures as one dataset: `trace-query --trace 'runs/*'` (a quoted
//! pattern trace-query expands, or `--trace` given several times). Each
//! table is the union of that table of every capture, with a `capture`
//! column holding the capture directory's own name (`run-17`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use polars::prelude::*;
use polars::sql::SQLContext;

use crate::capture_dir::Capture;
use crate::sql::Answer;
use crate::symbols::Symbols;

/// The column that says which capture a row is from.
pub const CAPTURE_COLUMN: &str = "capture";

/// The capture directories `patterns` name, in order, each once. A pattern
/// is a path whose last component may hold `*` (any run of characters) and
/// `?` (any one); it must match at least one directory.
pub fn expand(patterns: &[String]) -> Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for pattern in patterns {
        let path = Path::new(pattern);
        let wild = |s: &str| s.contains(['*', '?']);
        let Some(last) = path.file_name().and_then(|n| n.to_str()) else {
            dirs.push(path.to_path_buf());
            continue;
        };
        if !wild(last) {
            if path.parent().is_some_and(|p| wild(&p.to_string_lossy())) {
                bail!("--trace {pattern}: only the last path component may hold * or ?");
            }
            dirs.push(path.to_path_buf());
            continue;
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if wild(&parent.to_string_lossy()) {
            bail!("--trace {pattern}: only the last path component may hold * or ?");
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(&parent)
            .with_context(|| format!("--trace {pattern}: reading {}", parent.display()))?
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                !name.starts_with('.') && matches(last.as_bytes(), name.as_bytes())
            })
            .map(|e| e.path())
            .collect();
        if found.is_empty() {
            bail!("--trace {pattern}: no directory matches");
        }
        found.sort();
        dirs.extend(found);
    }
    let mut seen = std::collections::BTreeSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    Ok(dirs)
}

/// Whether `name` matches `pattern` (`*`: any run, `?`: any one byte).
fn matches(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| matches(rest, &name[i..])),
        Some((b'?', rest)) => !name.is_empty() && matches(rest, &name[1..]),
        Some((c, rest)) => name.first() == Some(c) && matches(rest, &name[1..]),
    }
}

/// Several open captures, by name.
pub struct Dataset {
    captures: Vec<(String, Capture)>,
}

impl Dataset {
    /// Opens every directory; their names (last path components) must differ.
    pub fn open(dirs: &[PathBuf]) -> Result<Dataset> {
        let mut captures = Vec::new();
        let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
        for dir in dirs {
            let name = capture_name(dir)?;
            if let Some(other) = by_name.insert(name.clone(), dir.clone()) {
                bail!(
                    "two captures are named '{name}' ({} and {}): the capture column could \
                     not tell their rows apart",
                    other.display(),
                    dir.display()
                );
            }
            captures.push((name, Capture::open(dir)?));
        }
        if captures.is_empty() {
            bail!("no capture directory given");
        }
        Ok(Dataset { captures })
    }

    pub fn captures(&self) -> &[(String, Capture)] {
        &self.captures
    }

    /// The captures, by name, for analyzers that read one at a time.
    pub fn into_captures(self) -> Vec<(String, Capture)> {
        self.captures
    }

    /// Every table name any capture has, in the order the first has them.
    pub fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (_, cap) in &self.captures {
            for n in cap.table_names() {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        names
    }

    /// `name` over every capture that has it, with the `capture` column
    /// first. Columns one capture lacks are null in its rows.
    pub fn scan(&self, name: &str) -> Result<LazyFrame> {
        let mut frames = Vec::new();
        for (cname, cap) in &self.captures {
            if !cap.has_table(name) {
                continue;
            }
            let lf = cap.scan(name)?;
            frames.push(lf.select([lit(cname.as_str()).alias(CAPTURE_COLUMN), all().as_expr()]));
        }
        if frames.is_empty() {
            bail!(
                "unknown table '{name}': none of the {} captures has it (tables: {})",
                self.captures.len(),
                self.table_names().join(", ")
            );
        }
        // Columns one capture lacks (an older format) are null in its rows.
        let mut columns: Vec<(PlSmallStr, DataType)> = Vec::new();
        let mut schemas = Vec::new();
        for lf in &mut frames {
            let schema = lf
                .collect_schema()
                .map_err(|e| anyhow!("table '{name}': {e}"))?;
            for (c, dt) in schema.iter() {
                if !columns.iter().any(|(have, _)| have == c) {
                    columns.push((c.clone(), dt.clone()));
                }
            }
            schemas.push(schema);
        }
        let aligned: Vec<LazyFrame> = frames
            .into_iter()
            .zip(schemas)
            .map(|(lf, schema)| {
                lf.select(
                    columns
                        .iter()
                        .map(|(c, dt)| match schema.get(c) {
                            Some(_) => col(c.clone()),
                            None => lit(NULL).cast(dt.clone()).alias(c.clone()),
                        })
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        concat(aligned, UnionArgs::default()).map_err(|e| anyhow!("table '{name}': {e}"))
    }

    /// A `SQLContext` with every table registered (see [`Dataset::scan`]),
    /// with `symbols` as in `sql::sql_context_with`.
    pub fn sql_context(&self, symbols: Option<&Symbols>) -> Result<SQLContext> {
        let ctx = SQLContext::new();
        for name in self.table_names() {
            if self
                .captures
                .iter()
                .any(|(_, c)| c.corrupt_part(&name).is_some())
            {
                continue;
            }
            ctx.register(
                &name,
                crate::sql::with_symbols(&name, self.scan(&name)?, symbols),
            );
        }
        if let Some(s) = symbols {
            ctx.register("symbols", s.table()?.lazy());
        }
        Ok(ctx)
    }

    /// Runs `query` over the dataset and collects the result.
    pub fn run_sql(&self, query: &str, symbols: Option<&Symbols>) -> Result<DataFrame> {
        match self.answer_sql(query, symbols)? {
            Answer::Computed(df) => Ok(df),
            Answer::Plan(lf) => self.captures[0].1.collect(*lf),
        }
    }

    /// Answers `query` over the dataset (see [`Answer`]).
    pub fn answer_sql(&self, query: &str, symbols: Option<&Symbols>) -> Result<Answer> {
        let mut ctx = self.sql_context(symbols)?;
        let lf = ctx
            .execute(&crate::sql::rewrite_literals(query))
            .map_err(|e| {
                let msg = e.to_string();
                match crate::sql::missing_relation(&msg) {
                    Some(name) => match self
                        .captures
                        .iter()
                        .find_map(|(_, c)| c.corrupt_error(name))
                    {
                        Some(err) => err,
                        None => anyhow!(
                            "unknown table '{name}' (tables: {})",
                            self.table_names().join(", ")
                        ),
                    },
                    None => anyhow!("SQL error: {msg}"),
                }
            })?;
        let mut lf = lf;
        if symbols.is_none() {
            let sources: Vec<_> = self
                .captures
                .iter()
                .map(|(name, cap)| crate::direct_aggregate::Source {
                    name: Some(name),
                    cap,
                })
                .collect();
            if let Some(df) = crate::sql::direct(&sources, query, &mut lf) {
                return Ok(Answer::Computed(df));
            }
        }
        Ok(Answer::Plan(Box::new(lf)))
    }
}

/// A capture directory's own name: its last path component.
fn capture_name(dir: &Path) -> Result<String> {
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    canonical
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| anyhow!("{}: a capture directory needs a name", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches(b"run-*", b"run-17"));
        assert!(matches(b"run-?", b"run-1"));
        assert!(!matches(b"run-?", b"run-17"));
        assert!(matches(b"*", b""));
        assert!(matches(b"*-1*", b"run-17"));
        assert!(!matches(b"run-*", b"walk-1"));
    }
}
