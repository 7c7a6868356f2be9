#!/usr/bin/env bash
# trace-query against DuckDB, the same queries over the same Parquet files:
#
#   the queries of benches/query_bench.py (QUERIES): a group-by over mem, a
#   filter and a join over mmio, count(*) from insn group by vcpu
#
#   bash benches/query-bench.sh                       # 100M synthetic mem rows (generated once, cached)
#   bash benches/query-bench.sh --rows 20000000       # another size (its own cached directory)
#   bash benches/query-bench.sh --trace DIR           # a real capture instead (e.g. one e2e.sh kept)
#   bash benches/query-bench.sh --runs 3
#   bash benches/query-bench.sh --trace DIR --query insn-count   # one query (repeatable)
#   bash benches/query-bench.sh --trace DIR --device pl011       # the filter's device (systick)
#
# The synthetic table (benches/query_bench.py generate) is written with polars
# in the collector's format under $BENCH_WORK/query-<rows>/ (about 0.6 GB for
# 100M rows). Needs python3 with pip: installs polars and duckdb from PyPI
# when missing. Prints a Markdown table; appends nothing anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/trace-collector/target}"
WORK="${BENCH_WORK:-$HOME/.cache/trace-collector/bench-work}"

rows=100000000
runs=5
trace=""
queries=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rows) rows="$2"; shift ;;
        --runs) runs="$2"; shift ;;
        --trace) trace="$2"; shift ;;
        --query) queries+=(--query "$2"); shift ;;
        --device) queries+=(--device "$2"); shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "query-bench.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

for mod in polars duckdb; do
    if ! python3 -c "import $mod" 2>/dev/null; then
        echo "query-bench: installing $mod (pip)" >&2
        python3 -m pip install --quiet --disable-pip-version-check "$mod"
    fi
done

# The whole workspace, as scripts/test.sh builds it: with -p alone, cargo
# unifies polars' features differently and rebuilds polars (about 20 minutes)
# into a trace-query that is not the one the tests and e2e.sh use.
cargo build --release --workspace --locked
TQ="$CARGO_TARGET_DIR/release/trace-query"

if [ -z "$trace" ]; then
    trace="$WORK/query-$rows"
    if [ ! -f "$trace/capture.json" ]; then
        echo "query-bench: generating $rows mem rows in $trace" >&2
        python3 "$ROOT/benches/query_bench.py" generate --out "$trace" --rows "$rows"
    fi
fi

echo "query-bench: load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 "$ROOT/benches/query_bench.py" time --trace "$trace" --trace-query "$TQ" --runs "$runs" "${queries[@]}"
