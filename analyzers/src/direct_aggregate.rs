//! Group-by aggregations over one table, computed by hand part by part.
//!
//! polars 0.55's streaming group-by is 2.4× DuckDB on the boot's `mem` with
//! two keys, and to count instructions it expands the `insn` view into one
//! row per instruction, 2.3× DuckDB (benches/RESULTS.md, "Query speed"). The
//! shape most questions about a capture take is computed here instead:
//!
//! ```sql
//! SELECT <keys and aggregates> FROM <table> [WHERE ...] [GROUP BY <columns>]
//!        [ORDER BY <output columns>] [LIMIT n]
//! ```
//!
//! with `count(*)`, `count(c)`, `sum(c)`, `min(c)`, `max(c)` of integer or
//! boolean columns. Each part is read by polars (its projection and the
//! `WHERE`); its rows' keys are coded as small integers, and the aggregates
//! accumulate in arrays indexed by the code; parts run in parallel. On the
//! `insn` view a `count(*)` grouped by `vcpu` or `block` is the sum of
//! `block_exec.insns`, without expanding the instructions. polars still
//! plans the query (the result's names and types are its own) and orders and
//! limits the small result. Anything else, and any doubt (a part that does
//! not read, too many groups, a value out of the result's type), goes to
//! polars as before.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use polars::prelude::*;
use polars::sql::SQLContext;
use polars_arrow::array::Array;
use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, OrderByKind, SelectItem,
    SetExpr, Statement, TableFactor,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use crate::capture_dir::Capture;

/// Distinct key combinations a part may have before the query goes to
/// polars. Made for keys of few values (vcpu, type, device, asid); with many
/// (`group by pc` on the arm64 boot: tens of thousands per part), the
/// per-part arrays and the merge of the parts' groups made it slower than
/// polars' hash group-by (1.87 s against 1.47 s, benches/RESULTS.md).
const MAX_GROUPS: usize = 1 << 12;

/// Set to `polars` to leave every query to polars (to compare the two).
pub const ENGINE_VARIABLE: &str = "TRACE_QUERY_ENGINE";

/// One capture of the query's dataset, with its `capture` column's value
/// when the dataset has that column.
pub struct Source<'a> {
    pub name: Option<&'a str>,
    pub cap: &'a Capture,
}

/// An aggregate of the select list.
#[derive(Debug, Clone, PartialEq)]
enum Agg {
    CountStar,
    Count(String),
    Sum(String),
    Min(String),
    Max(String),
}

impl Agg {
    fn column(&self) -> Option<&str> {
        match self {
            Agg::CountStar => None,
            Agg::Count(c) | Agg::Sum(c) | Agg::Min(c) | Agg::Max(c) => Some(c),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Item {
    Key(String),
    Agg(Agg),
}

/// A query of the shape this module computes.
#[derive(Debug, PartialEq)]
struct Shape {
    table: String,
    keys: Vec<String>,
    items: Vec<Item>,
    /// The `WHERE` condition's text.
    filter: Option<String>,
    /// `ORDER BY ...` and `LIMIT n` as written, applied to the result.
    tail: String,
    /// Output columns the `ORDER BY` names: each must be one of the result's.
    order_names: Vec<String>,
}

/// The query's result, computed here, or None when polars should run it.
/// `sql` is the query with its literals rewritten; `schema` is polars'
/// plan's output schema.
pub fn try_run(sources: &[Source], sql: &str, schema: &Schema) -> Option<DataFrame> {
    if std::env::var(ENGINE_VARIABLE).is_ok_and(|v| v == "polars") {
        return None;
    }
    let shape = parse(sql)?;
    if shape.items.len() != schema.len()
        || !shape
            .order_names
            .iter()
            .all(|n| schema.get(n.as_str()).is_some())
    {
        return None;
    }
    let groups = aggregate(sources, &shape)?;
    let df = result(&shape, groups, schema)?;
    if shape.tail.is_empty() {
        return Some(df);
    }
    // ORDER BY and LIMIT, by polars, over the groups under the table's name.
    let mut ctx = SQLContext::new();
    ctx.register(&shape.table, df.lazy());
    let lf = ctx
        .execute(&format!("SELECT * FROM {}{}", shape.table, shape.tail))
        .ok()?;
    lf.collect().ok()
}

fn ident(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(i.value.clone()),
        _ => None,
    }
}

/// The aggregate `e` is, if it is one this module computes (no DISTINCT,
/// FILTER or OVER: its text must be exactly `name(arg)`).
fn aggregate_of(e: &Expr) -> Option<Agg> {
    let Expr::Function(f) = e else {
        return None;
    };
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    let [arg] = list.args.as_slice() else {
        return None;
    };
    let name = f.name.to_string().to_ascii_lowercase();
    let (agg, arg_text) = match arg {
        FunctionArg::Unnamed(FunctionArgExpr::Wildcard) if name == "count" => {
            (Agg::CountStar, "*".to_string())
        }
        FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => {
            let c = ident(x)?;
            let agg = match name.as_str() {
                "count" => Agg::Count(c),
                "sum" => Agg::Sum(c),
                "min" => Agg::Min(c),
                "max" => Agg::Max(c),
                _ => return None,
            };
            (agg, x.to_string())
        }
        _ => return None,
    };
    (f.to_string().to_ascii_lowercase() == format!("{name}({})", arg_text.to_ascii_lowercase()))
        .then_some(agg)
}

/// `sql` as a [`Shape`], or None. Every clause is matched, then the query
/// is rebuilt from what was understood and compared with sqlparser's own
/// rendering of it: anything else in it (a join, HAVING, DISTINCT, ...)
/// makes the two differ.
fn parse(sql: &str) -> Option<Shape> {
    let mut stmts = Parser::parse_sql(&GenericDialect {}, sql).ok()?;
    let (Some(Statement::Query(q)), None) = (stmts.pop(), stmts.pop()) else {
        return None;
    };
    let SetExpr::Select(sel) = q.body.as_ref() else {
        return None;
    };
    let [from] = sel.from.as_slice() else {
        return None;
    };
    let TableFactor::Table { name, .. } = &from.relation else {
        return None;
    };
    if !from.joins.is_empty() || from.relation.to_string() != name.to_string() {
        return None;
    }
    let table = match name.0.as_slice() {
        [part] => part.as_ident()?.value.clone(),
        _ => return None,
    };
    let keys: Vec<String> = match &sel.group_by {
        GroupByExpr::Expressions(exprs, modifiers) if modifiers.is_empty() => {
            exprs.iter().map(ident).collect::<Option<_>>()?
        }
        _ => return None,
    };
    let mut items = Vec::new();
    for item in &sel.projection {
        let e = match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
            _ => return None,
        };
        items.push(match (ident(e), aggregate_of(e)) {
            (Some(c), _) if keys.contains(&c) => Item::Key(c),
            (_, Some(a)) => Item::Agg(a),
            _ => return None,
        });
    }
    let filter = sel.selection.as_ref().map(|w| w.to_string());

    let mut rebuilt = format!(
        "SELECT {} FROM {}",
        sel.projection
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        from.relation
    );
    if let Some(w) = &filter {
        rebuilt += &format!(" WHERE {w}");
    }
    if !keys.is_empty() {
        rebuilt += &format!(" {}", sel.group_by);
    }
    if sel.to_string() != rebuilt {
        return None;
    }

    let mut tail = String::new();
    let mut order_names = Vec::new();
    if let Some(o) = &q.order_by {
        let OrderByKind::Expressions(exprs) = &o.kind else {
            return None;
        };
        for e in exprs {
            if e.with_fill.is_some() {
                return None;
            }
            order_names.push(ident(&e.expr)?);
        }
        tail += &format!(" {o}");
    }
    if let Some(l) = &q.limit_clause {
        tail += &l.to_string();
    }
    if q.to_string() != format!("{rebuilt}{tail}") {
        return None;
    }
    Some(Shape {
        table,
        keys,
        items,
        filter,
        tail,
        order_names,
    })
}

/// One value of a key column.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum KeyValue {
    Null,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Str(String),
}

impl KeyValue {
    fn any(&self) -> AnyValue<'_> {
        match self {
            KeyValue::Null => AnyValue::Null,
            KeyValue::Bool(b) => AnyValue::Boolean(*b),
            KeyValue::Unsigned(v) => AnyValue::UInt64(*v),
            KeyValue::Signed(v) => AnyValue::Int64(*v),
            KeyValue::Str(s) => AnyValue::String(s),
        }
    }
}

/// One aggregate of one group.
#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    /// Rows counted (`count`), or rows with a value (`sum`, `min`, `max`).
    n: u64,
    value: i128,
}

/// A group's rows and aggregates.
#[derive(Debug, Clone)]
struct Group {
    rows: u64,
    accs: Vec<Acc>,
}

/// Where the rows come from: the table's own parts, or (the `insn` view)
/// `block_exec`'s, each row standing for `insns` instructions.
struct Input {
    parts: Vec<(Option<String>, PathBuf)>,
    weighted: bool,
}

fn input(sources: &[Source], shape: &Shape) -> Option<Input> {
    let mut parts = Vec::new();
    let mut weighted = None;
    for s in sources {
        if !s.cap.has_table(&shape.table) {
            continue;
        }
        let view = s.cap.is_view(&shape.table);
        if *weighted.get_or_insert(view) != view {
            return None;
        }
        let table = if view { "block_exec" } else { &shape.table };
        if s.cap.corrupt_part(table).is_some() {
            return None;
        }
        for p in s.cap.parts(table)? {
            parts.push((s.name.map(str::to_string), p.clone()));
        }
    }
    let weighted = weighted?;
    if weighted {
        // Only what a block execution says of each of its instructions.
        let per_block = |c: &str| matches!(c, "vcpu" | "block" | "capture");
        let counts = shape.items.iter().all(|i| match i {
            Item::Key(_) => true,
            Item::Agg(Agg::CountStar) => true,
            Item::Agg(Agg::Count(c)) => matches!(c.as_str(), "vcpu" | "block"),
            Item::Agg(_) => false,
        });
        if !counts || shape.filter.is_some() || !shape.keys.iter().all(|k| per_block(k)) {
            return None;
        }
    }
    (!parts.is_empty()).then_some(Input { parts, weighted })
}

/// Every group of the query, over all parts (in parallel), by key.
fn aggregate(sources: &[Source], shape: &Shape) -> Option<BTreeMap<Vec<KeyValue>, Group>> {
    let input = input(sources, shape)?;
    let aggs: Vec<Agg> = shape
        .items
        .iter()
        .filter_map(|i| match i {
            Item::Agg(a) => Some(a.clone()),
            Item::Key(_) => None,
        })
        .collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let all: Mutex<BTreeMap<Vec<KeyValue>, Group>> = Mutex::new(BTreeMap::new());
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(input.parts.len());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut mine: BTreeMap<Vec<KeyValue>, Group> = BTreeMap::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= input.parts.len() || failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let (capture, path) = &input.parts[i];
                    let done = read_part(path, shape, &aggs, input.weighted).and_then(|df| {
                        part_groups(&df, shape, &aggs, capture.as_deref(), input.weighted)
                    });
                    match done {
                        Some(groups) => merge(&mut mine, groups, &aggs),
                        None => failed.store(true, Ordering::Relaxed),
                    }
                }
                merge(&mut all.lock().unwrap(), mine, &aggs);
            });
        }
    });
    if failed.load(Ordering::Relaxed) {
        return None;
    }
    let all = all.into_inner().unwrap();
    // No row at all: what polars says of an empty table is its own.
    (!all.is_empty()).then_some(all)
}

/// Adds the groups of `from` to those of `into`.
fn merge(
    into: &mut BTreeMap<Vec<KeyValue>, Group>,
    from: BTreeMap<Vec<KeyValue>, Group>,
    aggs: &[Agg],
) {
    for (k, g) in from {
        add_group(into, k, g, aggs);
    }
}

/// Adds the group `g` of key `k` to `into`'s.
fn add_group(into: &mut BTreeMap<Vec<KeyValue>, Group>, k: Vec<KeyValue>, g: Group, aggs: &[Agg]) {
    match into.get_mut(&k) {
        None => {
            into.insert(k, g);
        }
        Some(have) => have.absorb(&g, aggs),
    }
}

impl Group {
    fn new(aggs: usize) -> Group {
        Group {
            rows: 0,
            accs: vec![Acc::default(); aggs],
        }
    }

    /// Adds `other`'s rows (of the same key) to this group's.
    fn absorb(&mut self, other: &Group, aggs: &[Agg]) {
        self.rows += other.rows;
        for ((a, b), agg) in self.accs.iter_mut().zip(&other.accs).zip(aggs) {
            a.value = match agg {
                _ if b.n == 0 => a.value,
                _ if a.n == 0 => b.value,
                Agg::CountStar | Agg::Count(_) => 0,
                Agg::Sum(_) => a.value + b.value,
                Agg::Min(_) => a.value.min(b.value),
                Agg::Max(_) => a.value.max(b.value),
            };
            a.n += b.n;
        }
    }
}

/// The part's columns the query needs (the `capture` column is not in
/// parts), its rows filtered by the `WHERE`.
fn read_part(path: &Path, shape: &Shape, aggs: &[Agg], weighted: bool) -> Option<DataFrame> {
    let mut cols: Vec<&str> = Vec::new();
    let names = shape
        .keys
        .iter()
        .map(String::as_str)
        .chain(aggs.iter().filter(|_| !weighted).filter_map(Agg::column))
        .chain(weighted.then_some("insns"));
    for c in names {
        if c != "capture" && !cols.contains(&c) {
            cols.push(c);
        }
    }
    if cols.is_empty() {
        // Nothing to read rows by (`count(*)` alone): polars answers that
        // from the parts' metadata.
        return None;
    }
    let Some(w) = &shape.filter else {
        // Read here, in this thread: the parts are what runs in parallel.
        let f = std::fs::File::open(path).ok()?;
        return ParquetReader::new(f)
            .with_columns(Some(cols.iter().map(|c| c.to_string()).collect()))
            .read_parallel(ParallelStrategy::None)
            .finish()
            .ok();
    };
    // The `WHERE` as polars' SQL reads it, over this part alone.
    let lf =
        LazyFrame::scan_parquet(PlRefPath::try_from_path(path).ok()?, Default::default()).ok()?;
    let mut ctx = SQLContext::new();
    ctx.register("part", lf);
    let list: Vec<String> = cols.iter().map(|c| format!("\"{c}\"")).collect();
    ctx.execute(&format!("SELECT {} FROM part WHERE {w}", list.join(", ")))
        .ok()?
        .collect()
        .ok()
}

/// Codes each row's value of `s` (a key column) as the index of the value
/// in the returned list, into `codes`.
fn code_key(s: &Column, codes: &mut [u32]) -> Option<Vec<KeyValue>> {
    let s = s.as_materialized_series();
    let mut i = 0;
    match s.dtype() {
        DataType::String => {
            // A string of up to 12 bytes is all in its 16-byte view: the
            // view is the value, compared without reading the bytes.
            let mut coder = Coder::<u128>::default();
            for arr in s.str().ok()?.downcast_iter() {
                let validity = arr.validity();
                for (j, view) in arr.views().iter().enumerate() {
                    let valid = validity.is_none_or(|b| b.get_bit(j));
                    codes[i] = if !valid {
                        coder.code(None, || KeyValue::Null)?
                    } else if view.length <= 12 {
                        coder.code(Some(view.as_u128()), || KeyValue::Str(arr.value(j).into()))?
                    } else {
                        coder.code_by_key(KeyValue::Str(arr.value(j).into()))?
                    };
                    i += 1;
                }
            }
            Some(coder.dict)
        }
        DataType::Boolean => {
            let mut coder = Coder::<bool>::default();
            for v in s.bool().ok()?.iter() {
                codes[i] = coder.code(v, || v.map_or(KeyValue::Null, KeyValue::Bool))?;
                i += 1;
            }
            Some(coder.dict)
        }
        // vcpu: read as is, no cast.
        DataType::UInt32 => code_numbers(s.u32().ok()?, codes, u64::from, KeyValue::Unsigned),
        d if d.is_unsigned_integer() => {
            let s = s.cast(&DataType::UInt64).ok()?;
            code_numbers(s.u64().ok()?, codes, |v| v, KeyValue::Unsigned)
        }
        d if d.is_signed_integer() => {
            let s = s.cast(&DataType::Int64).ok()?;
            code_numbers(s.i64().ok()?, codes, |v| v, KeyValue::Signed)
        }
        _ => None,
    }
}

/// [`code_key`] for a numeric column: each value made `T` by `raw`, and a
/// key value by `key`.
fn code_numbers<N: PolarsNumericType, T: Slot>(
    ca: &ChunkedArray<N>,
    codes: &mut [u32],
    raw: impl Fn(N::Native) -> T,
    key: impl Fn(T) -> KeyValue,
) -> Option<Vec<KeyValue>> {
    let mut coder = Coder::<T>::default();
    let mut i = 0;
    for_each_value(ca, |v| {
        let v = v.map(&raw);
        codes[i] = coder.code(v, || v.map_or(KeyValue::Null, &key))?;
        i += 1;
        Some(())
    })?;
    Some(coder.dict)
}

/// Calls `f` with each value of `ca` in order, reading the arrays' values
/// directly when they have no nulls.
fn for_each_value<T: PolarsNumericType>(
    ca: &ChunkedArray<T>,
    mut f: impl FnMut(Option<T::Native>) -> Option<()>,
) -> Option<()> {
    for arr in ca.downcast_iter() {
        if arr.null_count() == 0 {
            for v in arr.values().iter() {
                f(Some(*v))?;
            }
        } else {
            for v in arr.iter() {
                f(v.copied())?;
            }
        }
    }
    Some(())
}

/// Gives each distinct value of a key column a code, its index in `dict`.
/// Keys of a capture's tables have few values, but not in runs (`type`
/// alternates between loads and stores): a value is looked up in a small
/// direct-mapped cache first, whose hit is a branch the CPU predicts, then
/// in a hash map of the values themselves.
struct Coder<T> {
    /// The last value, for keys that come in runs ([`Slot::RUNS`]).
    last: Option<(Option<T>, u32)>,
    cache: Vec<Option<(Option<T>, u32)>>,
    /// Every value met, by its raw form (a key with many values, `pc`).
    typed: PlHashMap<Option<T>, u32>,
    /// Every value met, by its value (a long string's code, and the dict's).
    many: HashMap<KeyValue, u32>,
    dict: Vec<KeyValue>,
}

/// Slots of [`Coder`]'s cache.
const SLOTS: usize = 64;

/// Where a value goes in [`Coder`]'s cache.
trait Slot: PartialEq + Eq + std::hash::Hash + Copy {
    /// Whether a column of these usually holds runs of one value (integer
    /// keys: vcpu, asid, device ids), so the last value is tried first;
    /// not strings (`type` alternates), where that branch would be
    /// mispredicted at every other row.
    const RUNS: bool = true;
    fn slot(&self) -> usize;
}

fn mix(x: u64) -> usize {
    (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize
}

impl Slot for u128 {
    const RUNS: bool = false;
    fn slot(&self) -> usize {
        mix((*self as u64) ^ ((*self >> 64) as u64))
    }
}
impl Slot for u64 {
    fn slot(&self) -> usize {
        mix(*self)
    }
}
impl Slot for i64 {
    fn slot(&self) -> usize {
        mix(*self as u64)
    }
}
impl Slot for bool {
    const RUNS: bool = false;
    fn slot(&self) -> usize {
        *self as usize
    }
}

impl<T: Copy> Default for Coder<T> {
    fn default() -> Self {
        Coder {
            last: None,
            cache: vec![None; SLOTS],
            typed: PlHashMap::default(),
            many: HashMap::new(),
            dict: Vec::new(),
        }
    }
}

impl<T: Slot> Coder<T> {
    /// `v`'s code; `key` is its value, asked only when `v` is not cached.
    #[inline]
    fn code(&mut self, v: Option<T>, key: impl FnOnce() -> KeyValue) -> Option<u32> {
        if let Some((l, c)) = self.last {
            if l == v {
                return Some(c);
            }
        }
        let c = self.cached(v, key)?;
        if T::RUNS {
            self.last = Some((v, c));
        }
        Some(c)
    }

    #[inline]
    fn cached(&mut self, v: Option<T>, key: impl FnOnce() -> KeyValue) -> Option<u32> {
        let slot = v.map_or(SLOTS - 1, |v| v.slot());
        if let Some((c_v, c)) = self.cache[slot] {
            if c_v == v {
                return Some(c);
            }
        }
        let c = match self.typed.get(&v) {
            Some(c) => *c,
            None => {
                let c = self.code_by_key(key())?;
                self.typed.insert(v, c);
                c
            }
        };
        self.cache[slot] = Some((v, c));
        Some(c)
    }

    /// The code of the value `k`; None past [`MAX_GROUPS`] values.
    fn code_by_key(&mut self, k: KeyValue) -> Option<u32> {
        if let Some(c) = self.many.get(&k) {
            return Some(*c);
        }
        if self.dict.len() >= MAX_GROUPS {
            return None;
        }
        let c = self.dict.len() as u32;
        self.dict.push(k.clone());
        self.many.insert(k, c);
        Some(c)
    }
}

/// Calls `f` with each row's value of an aggregated column as an integer
/// (booleans as 0 and 1), None for null.
fn for_each_integer(c: &Column, mut f: impl FnMut(Option<i128>)) -> Option<()> {
    let s = c.as_materialized_series();
    let d = s.dtype();
    if d.is_unsigned_integer() || d == &DataType::Boolean {
        let s = s.cast(&DataType::UInt64).ok()?;
        for_each_value(s.u64().ok()?, |v| {
            f(v.map(i128::from));
            Some(())
        })
    } else if d.is_signed_integer() {
        let s = s.cast(&DataType::Int64).ok()?;
        for_each_value(s.i64().ok()?, |v| {
            f(v.map(i128::from));
            Some(())
        })
    } else {
        None
    }
}

/// One part's groups.
fn part_groups(
    df: &DataFrame,
    shape: &Shape,
    aggs: &[Agg],
    capture: Option<&str>,
    weighted: bool,
) -> Option<BTreeMap<Vec<KeyValue>, Group>> {
    let n = df.height();
    let mut groups = BTreeMap::new();
    if n == 0 {
        return Some(groups);
    }
    // Each row's group: its keys' codes, as digits of one number.
    let mut combined = vec![0u32; n];
    let mut codes = vec![0u32; n];
    let mut dicts: Vec<Vec<KeyValue>> = Vec::new();
    let mut size = 1usize;
    for k in &shape.keys {
        let dict = if k == "capture" && capture.is_some() && df.column(k).is_err() {
            codes.fill(0);
            vec![KeyValue::Str(capture?.to_string())]
        } else {
            code_key(df.column(k).ok()?, &mut codes)?
        };
        size = size.checked_mul(dict.len())?;
        if size > MAX_GROUPS {
            return None;
        }
        let card = dict.len() as u32;
        for (g, c) in combined.iter_mut().zip(&codes) {
            *g = *g * card + c;
        }
        dicts.push(dict);
    }
    let weights: Option<Vec<u64>> = if weighted {
        let w = df
            .column("insns")
            .ok()?
            .as_materialized_series()
            .cast(&DataType::UInt64)
            .ok()?;
        Some(w.u64().ok()?.iter().map(|v| v.unwrap_or(0)).collect())
    } else {
        None
    };
    let rows: Vec<u64> = match &weights {
        Some(w) => sum_by_group(&combined, size, |row| u128::from(w[row])),
        None => sum_by_group(&combined, size, |_| 1),
    }
    .into_iter()
    .map(|n| n as u64)
    .collect();
    let mut accs = vec![vec![Acc::default(); size]; aggs.len()];
    for (a, agg) in aggs.iter().enumerate() {
        let acc = &mut accs[a];
        match agg {
            Agg::CountStar => {
                for (g, r) in rows.iter().enumerate() {
                    acc[g].n = *r;
                }
            }
            // On the `insn` view, `count(vcpu)` and `count(block)` are
            // `count(*)`: neither is ever null.
            Agg::Count(_) if weighted => {
                for (g, r) in rows.iter().enumerate() {
                    acc[g].n = *r;
                }
            }
            Agg::Count(c) => {
                let col = df.column(c).ok()?;
                if col.null_count() == 0 {
                    for (g, r) in rows.iter().enumerate() {
                        acc[g].n = *r;
                    }
                } else {
                    let valid = col.as_materialized_series().is_not_null();
                    for (g, v) in combined.iter().zip(valid.iter()) {
                        acc[*g as usize].n += u64::from(v == Some(true));
                    }
                }
            }
            Agg::Sum(c) if unsigned_values(df.column(c).ok()?).is_some() => {
                let values = unsigned_values(df.column(c).ok()?)?;
                let sums = sum_by_group(&combined, size, |row| values.get(row));
                for (a, (sum, rows)) in acc.iter_mut().zip(sums.into_iter().zip(&rows)) {
                    a.value = i128::try_from(sum).ok()?;
                    a.n = *rows;
                }
            }
            Agg::Sum(c) | Agg::Min(c) | Agg::Max(c) => {
                let mut row = 0;
                for_each_integer(df.column(c).ok()?, |v| {
                    let g = combined[row] as usize;
                    row += 1;
                    let Some(v) = v else { return };
                    let a = &mut acc[g];
                    a.value = match agg {
                        _ if a.n == 0 => v,
                        Agg::Sum(_) => a.value + v,
                        Agg::Min(_) => a.value.min(v),
                        _ => a.value.max(v),
                    };
                    a.n += 1;
                })?;
            }
        }
    }
    for (g, r) in rows.iter().enumerate() {
        if *r == 0 {
            continue;
        }
        // The group's key values: `g`'s digits, the last key's lowest.
        let mut key = vec![KeyValue::Null; dicts.len()];
        let mut rest = g;
        for (k, dict) in dicts.iter().enumerate().rev() {
            key[k] = dict[rest % dict.len()].clone();
            rest /= dict.len();
        }
        let mut group = Group::new(aggs.len());
        group.rows = *r;
        for (a, acc) in accs.iter().enumerate() {
            group.accs[a] = acc[g];
        }
        // A value may have two codes (a short string's view is compared
        // whole): their groups are one.
        add_group(&mut groups, key, group, aggs);
    }
    Some(groups)
}

/// Per group (`combined[row]` is each row's), the sum of `value(row)` over
/// its rows. Four interleaved lanes: a group's consecutive rows add to
/// different counters, so each addition does not wait for the previous
/// one's store (one counter per group was a fifth of the group-by's time).
fn sum_by_group(combined: &[u32], size: usize, value: impl Fn(usize) -> u128) -> Vec<u128> {
    const LANES: usize = 4;
    let mut lanes = vec![0u128; size * LANES];
    let whole = combined.len() / LANES * LANES;
    for (k, gs) in combined[..whole].chunks_exact(LANES).enumerate() {
        let row = k * LANES;
        for (lane, g) in gs.iter().enumerate() {
            lanes[*g as usize * LANES + lane] += value(row + lane);
        }
    }
    for (row, g) in combined.iter().enumerate().skip(whole) {
        lanes[*g as usize * LANES] += value(row);
    }
    lanes.chunks_exact(LANES).map(|l| l.iter().sum()).collect()
}

/// An unsigned column without nulls, read in place (no cast to a wider
/// type), for [`sum_by_group`]; None for other columns.
enum UnsignedValues<'a> {
    U8(&'a [u8]),
    U16(&'a [u16]),
    U32(&'a [u32]),
    U64(&'a [u64]),
}

fn unsigned_values(c: &Column) -> Option<UnsignedValues<'_>> {
    let s = c.as_materialized_series();
    // One chunk without nulls (a part read at once is one chunk).
    if s.null_count() > 0 || s.n_chunks() != 1 {
        return None;
    }
    fn slice<T: PolarsNumericType>(ca: &ChunkedArray<T>) -> Option<&[T::Native]> {
        Some(ca.downcast_iter().next()?.values().as_slice())
    }
    Some(match s.dtype() {
        DataType::UInt8 => UnsignedValues::U8(slice(s.u8().ok()?)?),
        DataType::UInt16 => UnsignedValues::U16(slice(s.u16().ok()?)?),
        DataType::UInt32 => UnsignedValues::U32(slice(s.u32().ok()?)?),
        DataType::UInt64 => UnsignedValues::U64(slice(s.u64().ok()?)?),
        _ => return None,
    })
}

impl UnsignedValues<'_> {
    #[inline]
    fn get(&self, row: usize) -> u128 {
        match self {
            UnsignedValues::U8(v) => v[row].into(),
            UnsignedValues::U16(v) => v[row].into(),
            UnsignedValues::U32(v) => v[row].into(),
            UnsignedValues::U64(v) => v[row].into(),
        }
    }
}

/// The result, in polars' names and types (`schema`), one row per group.
fn result(
    shape: &Shape,
    groups: BTreeMap<Vec<KeyValue>, Group>,
    schema: &Schema,
) -> Option<DataFrame> {
    let mut columns = Vec::new();
    let mut a = 0;
    for (item, (name, dtype)) in shape.items.iter().zip(schema.iter()) {
        let values: Vec<AnyValue> = match item {
            Item::Key(k) => {
                let i = shape.keys.iter().position(|x| x == k)?;
                groups.keys().map(|key| key[i].any()).collect()
            }
            Item::Agg(agg) => {
                let i = a;
                a += 1;
                groups
                    .values()
                    .map(|g| {
                        let acc = g.accs[i];
                        match agg {
                            Agg::CountStar | Agg::Count(_) => AnyValue::UInt64(acc.n),
                            // As polars: the sum, min and max of no values are null.
                            _ if acc.n == 0 => AnyValue::Null,
                            _ => integer(acc.value),
                        }
                    })
                    .collect()
            }
        };
        if values.iter().any(|v| matches!(v, AnyValue::Float64(_))) {
            return None; // out of 64-bit range
        }
        let s = Series::from_any_values(name.clone(), &values, false).ok()?;
        columns.push(s.strict_cast(dtype).ok()?.into_column());
    }
    DataFrame::new(groups.len(), columns).ok()
}

/// `v` as a 64-bit integer value; a float marks one out of range.
fn integer(v: i128) -> AnyValue<'static> {
    if let Ok(v) = i64::try_from(v) {
        AnyValue::Int64(v)
    } else if let Ok(v) = u64::try_from(v) {
        AnyValue::UInt64(v)
    } else {
        AnyValue::Float64(0.0)
    }
}
