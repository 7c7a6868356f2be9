#!/usr/bin/env python3
"""trace-query against DuckDB on the same capture files (run it through
benches/query-bench.sh).

`generate`: writes a synthetic `mem` table in the collector's capture format:
the same columns and types (docs/capture-format.md), parts of 1048576 rows
named part-NNNNNN.parquet, zstd-compressed by polars as the collector's
writer (Rust polars) does, plus capture.json and a stats part. The values
follow a kernel boot's shape: two vCPUs drained in chunks, icount increasing
per vCPU, ~200k distinct PCs, 2/3 loads, sizes 1/2/4/8, 1 access in 10000 to
MMIO.

`time`: runs each query of QUERIES (or those named by --query) that the
capture has the tables for, with `trace-query --trace DIR SQL` and with
DuckDB (its Python module, in a fresh process each time, on views over
DIR/<table>/*.parquet and docs/capture-format.md's `insn` view), --runs
times each after one warm-up run (warm page cache), checks that both give
the same answer, and prints a Markdown table.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PART_ROWS = 1 << 20
QUERY = "select vcpu, type, count(*), sum(size) from mem group by vcpu, type"

# The queries of issue 20, by name: (tables they need, SQL). Each runs on
# trace-query and DuckDB with the same text.
QUERIES = {
    "group-by": (["mem"], QUERY),
    "filter": (["mmio"], "select vcpu, icount, pc, paddr, value from mmio where device = '{device}'"),
    "join": (["mmio", "code"],
             "select m.vcpu, m.icount, m.device, m.value, c.disas from mmio m "
             "join (select distinct pc, disas from code) c on m.pc = c.pc"),
    "insn-count": (["block_exec", "code"], "select vcpu, count(*) from insn group by vcpu"),
}


def generate(out: Path, rows: int):
    import polars as pl

    (out / "mem").mkdir(parents=True, exist_ok=True)
    (out / "stats").mkdir(parents=True, exist_ok=True)
    part = 0
    t0 = time.time()
    for start in range(0, rows, PART_ROWS):
        n = min(PART_ROWS, rows - start)
        path = out / "mem" / f"part-{part:06d}.parquet"
        if path.exists():
            part += 1
            continue
        i = pl.int_range(start, start + n, dtype=pl.UInt64, eager=True).alias("i")
        df = pl.DataFrame([i]).with_columns(
            h=pl.col("i").hash(7),
            g=(pl.col("i") // 7).hash(11),
        )
        io = (pl.col("h") % 10000) == 0
        df = df.select(
            vcpu=((pl.col("i") // 65536) % 2).cast(pl.UInt32),
            icount=(pl.col("i") // 131072 * 65536 + pl.col("i") % 65536) * 3 // 2,
            pc=(pl.lit(0xFFFF800008000000, dtype=pl.UInt64) + (pl.col("g") % 200000) * 4),
            type=pl.when(pl.col("h") % 3 == 0).then(pl.lit("W")).otherwise(pl.lit("R")),
            vaddr=pl.when(io)
            .then(pl.lit(0x09000000, dtype=pl.UInt64))
            .otherwise(pl.lit(0xFFFF000040000000, dtype=pl.UInt64) + (pl.col("g") % 65536) * 64
                       + (pl.col("i") % 8) * 8),
            size=pl.col("h").floordiv(3).mod(4).replace_strict([0, 1, 2, 3], [1, 2, 4, 8],
                                                               return_dtype=pl.UInt8),
            value=pl.when(pl.col("h") % 2 == 0).then(pl.lit(0, dtype=pl.UInt64))
            .otherwise(pl.col("g") % 65536),
            value_hi=pl.lit(None, dtype=pl.UInt64),
            asid=pl.lit(0x41850000, dtype=pl.UInt64),
            io=io,
            device=pl.when(io).then(pl.lit("pl011")).otherwise(pl.lit(None, dtype=pl.String)),
        ).with_columns(
            paddr=pl.when(pl.col("io")).then(pl.col("vaddr"))
            .otherwise(pl.col("vaddr") - pl.lit(0xFFFF000000000000, dtype=pl.UInt64)),
        ).select("vcpu", "icount", "pc", "type", "vaddr", "paddr", "size", "value", "value_hi",
                 "asid", "io", "device")
        tmp = path.with_name("." + path.name + ".tmp")
        df.write_parquet(tmp, compression="zstd")
        tmp.rename(path)
        part += 1
        if part % 10 == 0:
            print(f"query-bench: {min(start + n, rows)} rows written ({time.time() - t0:.0f} s)",
                  file=sys.stderr)
    pl.DataFrame({"name": ["rows.mem"], "vcpu": pl.Series([None], dtype=pl.UInt32),
                  "value": pl.Series([rows], dtype=pl.UInt64)}).write_parquet(
        out / "stats" / "part-000000.parquet")
    (out / "capture.json").write_text(json.dumps({
        "format_version": 1, "complete": True, "collector_version": "synthetic",
        "qemu_pid": 0, "qemu_command": ["qemu-system-aarch64", "(synthetic: benches/query_bench.py)"],
        "guest_pointer_bits": 64, "shim_options": "events=mem+mmio", "n_vcpus": 2,
        "devices": ["pl011"], "qemu_exit": "exited with status 0", "end": "qemu_exited",
        "tables": {"mem": rows, "stats": 1}, "events_lost": 0, "events_lost_before_attach": 0,
        "duration_seconds": 0,
    }, indent=2))


def measured(cmd, out_path):
    """Runs `cmd` with its stdout in `out_path`: (wall s, peak RSS KiB, CPU s, stderr)."""
    import tempfile
    # Output to files, not pipes: a result larger than a pipe's buffer would
    # block the engine while we wait for it to exit.
    with open(out_path, "w") as out_f, tempfile.TemporaryFile("w+") as err_f:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, text=True)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        err_f.seek(0)
        err = err_f.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"query-bench: {cmd[0]} failed ({code}):\n{err}")
    return wall, ru.ru_maxrss, ru.ru_utime + ru.ru_stime, err


DUCKDB_SCRIPT = r"""
import json, os, sys, time
import duckdb
t0 = time.perf_counter()
# Queries over ~2 s otherwise draw a progress bar on stdout, which is our JSON.
con = duckdb.connect()
con.execute("set enable_progress_bar = false")
d = sys.argv[1]
for t in ("mem", "mmio", "code", "block_exec"):
    if os.path.isdir(f"{d}/{t}"):
        con.execute(f"create view {t} as select * from read_parquet('{d}/{t}/*.parquet')")
if os.path.isdir(f"{d}/block_exec"):
    # docs/capture-format.md's definition of the insn view.
    con.execute('create view insn as '
                'select x.vcpu, x.icount + x.i as icount, c.pc, x.block '
                'from (select vcpu, icount, block, unnest(range(insns::bigint)) as i from block_exec) x '
                'left join (select distinct block, "index", pc from code) c '
                'on c.block = x.block and c."index" = x.i')
# The result as CSV on stdout, as trace-query --format csv writes it: the
# same work for both (Python objects for millions of rows would cost DuckDB
# far more than its query).
con.execute(f"copy ({sys.argv[2]}) to '/dev/stdout' (format csv, header)")
sys.stdout.flush()
print(f"query_s={time.perf_counter() - t0}", file=sys.stderr)
"""


def digest(path):
    """(rows, an order-independent digest) of a CSV result without its
    header, read as a stream (results may have millions of rows, and this
    process must stay small: a child forked from it starts with its memory,
    which would count in the child's peak RSS). A float's trailing `.0` is
    dropped (one engine's sum may be a float)."""
    import csv
    import hashlib
    n, total = 0, 0
    with open(path, newline="") as f:
        rows = csv.reader(f)
        next(rows, None)
        for r in rows:
            r = [v[:-2] if v.endswith(".0") and v[:-2].lstrip("-").isdigit() else v for v in r]
            h = hashlib.blake2b("\x1f".join(r).encode(), digest_size=8).digest()
            total = (total + int.from_bytes(h, "little")) % (1 << 64)
            n += 1
    return n, total


def time_query(trace: Path, trace_query: str, sql: str, runs: int):
    """Times `sql` on both engines, alternating, after a warm-up each."""
    tq_cmd = [trace_query, "--trace", str(trace), "--format", "csv", sql]
    dd_cmd = [sys.executable, "-c", DUCKDB_SCRIPT, str(trace), sql]
    import tempfile
    res = {"trace-query": [], "duckdb": []}
    answers = {}
    out = tempfile.NamedTemporaryFile(prefix="query-bench-", suffix=".csv", delete=False).name
    for rep in range(runs + 1):  # the first is a warm-up
        for name, cmd in (("trace-query", tq_cmd), ("duckdb", dd_cmd)):
            wall, rss, cpu, err = measured(cmd, out)
            if rep == runs:
                answers[name] = digest(out)
            inner = None
            if name == "duckdb":
                inner = float(err.rsplit("query_s=", 1)[1])
            if rep > 0:
                res[name].append({"wall": wall, "rss_kib": rss, "cpu": cpu, "inner": inner})
            print(f"query-bench: {name:11} run {rep}{' (warm-up)' if rep == 0 else ''}: "
                  f"{wall:.2f} s, {rss / 1024:.0f} MiB", file=sys.stderr)
    os.unlink(out)
    return res, answers


def time_both(trace: Path, trace_query: str, runs: int, names, device: str):
    import duckdb
    tables = json.loads((trace / "capture.json").read_text())["tables"]
    med = statistics.median
    lines = [
        f"`{trace}`: " + ", ".join(f"{t} {n:,} rows" for t, n in sorted(tables.items()) if t != "stats")
        + f"; warm page cache; {runs} runs after a warm-up, the engines alternating; "
        f"{os.cpu_count()} CPUs; DuckDB {duckdb.__version__} (Python module, fresh process per run).",
        "",
        "| query | trace-query wall s, median [min–max] | CPU s | RSS MiB "
        "| DuckDB wall s (query alone) [min–max] | CPU s | RSS MiB | ratio | same answer |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    sqls = []
    for name in names:
        need, sql = QUERIES[name]
        if not all(t in tables for t in need):
            print(f"query-bench: {name}: the capture has no {', '.join(need)}: skipped", file=sys.stderr)
            continue
        sql = sql.format(device=device)
        res, answers = time_query(trace, trace_query, sql, runs)
        tq, dd = res["trace-query"], res["duckdb"]

        def wall(rs):
            return med([r["wall"] for r in rs])

        def cell(rs, inner=""):
            return (f"{wall(rs):.2f}{inner} [{min(r['wall'] for r in rs):.2f}–{max(r['wall'] for r in rs):.2f}] "
                    f"| {med([r['cpu'] for r in rs]):.2f} | {med([r['rss_kib'] for r in rs]) / 1024:.0f}")

        same = answers["trace-query"] == answers["duckdb"]
        inner = med([r["inner"] for r in dd])
        lines.append(f"| {name} | {cell(tq)} | {cell(dd, f' ({inner:.2f})')} "
                     f"| {wall(tq) / wall(dd):.2f}× | {'yes' if same else 'NO'} ({answers['duckdb'][0]:,} rows) |")
        sqls.append(f"- {name}: `{sql}`")
    return "\n".join(lines + [""] + sqls)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--out", required=True)
    g.add_argument("--rows", type=int, default=100_000_000)
    t = sub.add_parser("time")
    t.add_argument("--trace", required=True)
    t.add_argument("--trace-query", required=True)
    t.add_argument("--runs", type=int, default=5)
    t.add_argument("--query", action="append", choices=sorted(QUERIES),
                   help="a query to time (repeatable; default: each the capture has the tables for)")
    t.add_argument("--device", default="systick", help="the device of the filter query")
    a = ap.parse_args()
    if a.cmd == "generate":
        generate(Path(a.out), a.rows)
    else:
        print(time_both(Path(a.trace), a.trace_query, a.runs, a.query or list(QUERIES), a.device))


if __name__ == "__main__":
    main()
