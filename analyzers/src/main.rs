//! `trace-query`: SQL over a capture directory, and the analyzers.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use polars::prelude::*;
use trace_analyzers::{
    bufmon, dataset, execlog, line_prefix, mmio_json, output, perfetto, sql, stream, symbols,
    timeline, Capture,
};

#[derive(Parser)]
#[command(
    name = "trace-query",
    version,
    about = "SQL over a trace-collector capture directory, and analyzers",
    long_about = "SQL over a trace-collector capture directory, and analyzers.\n\n\
        trace-query --trace DIR [--format table|csv|json] \"SQL\"\n\
        trace-query --trace DIR --tables\n\
        trace-query bufmon|mmio-json|execlog|timeline|perfetto --trace DIR ...\n\n\
        Every table directory of DIR (mem, mmio, insn, code, stats, ...) is a SQL table.",
    after_help = QUERY_EXAMPLES,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    query: QueryArgs,
}

#[derive(Args)]
struct QueryArgs {
    /// Capture directory. Several (`--trace` again, or a quoted pattern
    /// such as 'runs/*' in the last path component) are read as one
    /// dataset: every table gets a `capture` column, the directory's name.
    #[arg(long, value_name = "DIR")]
    trace: Vec<String>,
    /// Output format of the query result.
    #[arg(long, value_enum, default_value_t = FormatArg::Table)]
    format: FormatArg,
    /// List the tables with their columns and row counts.
    #[arg(long)]
    tables: bool,
    /// An ELF with symbols, or a System.map-style file (`nm` output): `mem`,
    /// `mmio` and `insn` get a `symbol` column (`uart_putc+0x12` for their
    /// `pc`) and a `symbols` table lists the functions.
    #[arg(long, value_name = "FILE")]
    symbols: Option<PathBuf>,
    /// The SQL query (polars SQL).
    #[arg(value_name = "SQL")]
    sql: Option<String>,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum FormatArg {
    /// polars' table (all columns; rows up to POLARS_FMT_MAX_ROWS, default 100000)
    Table,
    /// header line, then one line per row
    Csv,
    /// one JSON object per row and line (NDJSON)
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum PhysArg {
    /// the physical address
    Absolute,
    /// the offset into the device's memory region
    Offset,
}

#[derive(Subcommand)]
enum Command {
    /// PANDA's bufmon: accesses touching the buffers listed in a file.
    #[command(after_help = "Example:\n  \
        printf '20000000 10 0\\n' > search_buffers.txt   # <vaddr> <size> <asid>, hex\n  \
        trace-query bufmon --trace cap/ --buffers search_buffers.txt --symbols fw.elf > buffer_taps.txt")]
    Bufmon {
        /// Capture directory. Several (`--trace` again, or a quoted pattern
        /// such as 'runs/*'): each line starts with the capture's name.
        #[arg(long, value_name = "DIR", required = true)]
        trace: Vec<String>,
        /// Lines `<vaddr> <size> <asid>` in hex.
        #[arg(long, value_name = "FILE")]
        buffers: PathBuf,
        /// An ELF or System.map-style file: each line ends with
        /// ` <caller> <pc>` as function+offset.
        #[arg(long, value_name = "FILE")]
        symbols: Option<PathBuf>,
    },
    /// PANDA mmio_trace's JSON log of the MMIO accesses.
    #[command(after_help = "Example:\n  \
        trace-query mmio-json --trace cap/ --phys offset > mmio.json   # diffs against PANDA's log")]
    MmioJson {
        /// Capture directory. Several (`--trace` again, or a quoted pattern
        /// such as 'runs/*'): one log, each object with `"capture"`, the
        /// capture's name.
        #[arg(long, value_name = "DIR", required = true)]
        trace: Vec<String>,
        /// What `phys_addr` holds: the physical address, or the offset
        /// into the device's memory region, as PANDA's mmio_trace writes it
        /// (from the capture's memory map, mtree.txt).
        #[arg(long, value_enum, default_value_t = PhysArg::Absolute)]
        phys: PhysArg,
    },
    /// QEMU's execlog: one line per executed instruction with its accesses.
    #[command(after_help = "Example (a capture with --events mem,mmio,insn):\n  \
        trace-query execlog --trace cap/ --symbols fw.elf | less")]
    Execlog {
        /// Capture directory. Several (`--trace` again, or a quoted pattern
        /// such as 'runs/*'): each line starts with the capture's name.
        #[arg(long, value_name = "DIR", required = true)]
        trace: Vec<String>,
        /// An ELF or System.map-style file: each line ends with
        /// `, <function+offset>` of its instruction.
        #[arg(long, value_name = "FILE")]
        symbols: Option<PathBuf>,
    },
    /// An SVG timeline of the MMIO accesses, one lane per device.
    #[command(after_help = "Example:\n  trace-query timeline --trace cap/ --out mmio.svg")]
    Timeline {
        /// Capture directory.
        #[arg(long, value_name = "DIR")]
        trace: PathBuf,
        /// The SVG file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// A Perfetto trace to open in ui.perfetto.dev: a track per MMIO device
    /// (an instant per access), a track per vCPU (a slice per function
    /// call, with insn). Timestamps: 1 ns = 1 guest instruction (icount).
    #[command(long_about = "A Perfetto trace (protobuf) of the capture, to open in \
        ui.perfetto.dev (Open trace file) or Perfetto's trace processor.\n\n\
        Timestamps are instruction counts: an event at icount N of its vCPU is at N ns \
        (1 ns = 1 guest instruction; each vCPU counts its own).\n\n\
        Under one track for the capture:\n\
        - capture: an instant saying so, with the capture's directory and QEMU command;\n\
        - vCPU N functions (needs insn): a slice per function call, from the callee's \
        first instruction to the instruction at the return address, nested, from the \
        shadow call stack bufmon uses; named after the function with --symbols, else \
        its address;\n\
        - MMIO DEVICE (needs mmio): an instant per access, `read 0x8` / `write 0x0` after \
        the register's offset in the device's region (from mtree.txt; `@PADDR` without \
        it), with offset, paddr, value, size, pc, vcpu (and symbol) as arguments.")]
    Perfetto {
        /// Capture directory.
        #[arg(long, value_name = "DIR")]
        trace: PathBuf,
        /// The trace file to write (e.g. capture.perfetto-trace).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// An ELF or System.map-style file: slices are named after the
        /// functions, and MMIO events get a `symbol` argument.
        #[arg(long, value_name = "FILE")]
        symbols: Option<PathBuf>,
    },
    /// Print a shell completion script (bash: `source <(trace-query completions bash)`).
    Completions {
        #[arg(value_enum)]
        shell: trace_cli::Shell,
    },
    /// Print the man page (roff), or write one page per subcommand into DIR.
    Man {
        /// Write trace-query.1, trace-query-bufmon.1, ... into this directory.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

const QUERY_EXAMPLES: &str = "\
Examples:
  trace-query --trace cap/ --tables
  trace-query --trace cap/ \"select device, type, count(*) from mmio group by device, type\"
  trace-query --trace cap/ \"select icount, pc, value from mmio where device = 'systick' and paddr = 0xe000e018\"
  trace-query --trace cap/ --symbols fw.elf \"select symbol, count(*) from mem group by symbol order by 2 desc\"
  trace-query --trace 'runs/*' --format csv \"select capture, count(*) from mmio group by capture\"";

fn open(dir: &PathBuf) -> Result<Capture> {
    let cap = Capture::open(dir)?;
    for w in cap.warnings() {
        eprintln!("trace-query: warning: {w}");
    }
    Ok(cap)
}

/// The captures `--trace` names: one, unnamed (its output as for one
/// capture), or several (a pattern, or `--trace` again), each with its name.
fn open_many(trace: &[String]) -> Result<Vec<(Option<String>, Capture)>> {
    if let [one] = trace {
        if !one.contains(['*', '?']) {
            return Ok(vec![(None, open(&PathBuf::from(one))?)]);
        }
    }
    let dirs = dataset::expand(trace)?;
    let ds = dataset::Dataset::open(&dirs)?;
    Ok(ds
        .into_captures()
        .into_iter()
        .map(|(name, cap)| {
            for w in cap.warnings() {
                eprintln!("trace-query: warning: {name}: {w}");
            }
            (Some(name), cap)
        })
        .collect())
}

/// Where an analyzer writes the lines of capture `name`: each starts with
/// the name when there are several captures.
fn lines_of<'a>(out: &'a mut dyn Write, name: Option<&str>) -> Box<dyn Write + 'a> {
    match name {
        Some(name) => Box::new(line_prefix::LinePrefix::capture(out, name)),
        None => Box::new(out),
    }
}

fn run(cli: Cli) -> Result<()> {
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    match cli.command {
        None => {
            let q = cli.query;
            if q.trace.is_empty() {
                bail!("--trace DIR is required (see trace-query --help)");
            }
            let one = q.trace.len() == 1 && !q.trace[0].contains(['*', '?']);
            if !one {
                return run_dataset(&q, &mut out);
            }
            let cap = open(&PathBuf::from(&q.trace[0]))?;
            if q.tables {
                if q.sql.is_some() {
                    bail!("give either --tables or a SQL query, not both");
                }
                for t in cap.table_info()? {
                    if t.view {
                        writeln!(
                            out,
                            "{} ({} rows, a view of block_exec and code)",
                            t.name, t.rows
                        )?;
                    } else {
                        writeln!(
                            out,
                            "{} ({} rows, {} part{})",
                            t.name,
                            t.rows,
                            t.parts,
                            if t.parts == 1 { "" } else { "s" }
                        )?;
                    }
                    for (c, dt) in &t.columns {
                        writeln!(out, "  {c}: {dt}")?;
                    }
                }
                out.flush()?;
                return Ok(());
            }
            let symbols = load_symbols(&q)?;
            let Some(query) = q.sql else {
                bail!("give a SQL query or --tables (see trace-query --help)");
            };
            let answer = sql::answer_sql_with(&cap, &query, symbols.as_ref())?;
            write_answer(&cap, answer, q.format, &mut out)?;
        }
        Some(Command::Bufmon {
            trace,
            buffers,
            symbols,
        }) => {
            let text = std::fs::read_to_string(&buffers)
                .with_context(|| format!("reading {}", buffers.display()))?;
            let bufs = bufmon::parse_buffers(&text, &buffers.display().to_string())?;
            let symbols = symbols.as_deref().map(symbols::Symbols::load).transpose()?;
            for (name, cap) in open_many(&trace)? {
                let mut w = lines_of(&mut out, name.as_deref());
                let r = match &symbols {
                    Some(s) => bufmon::bufmon_with_symbols(&cap, &bufs, &mut w, s)?,
                    None => bufmon::bufmon(&cap, &bufs, &mut w)?,
                };
                let of = name.map(|n| format!("{n}: ")).unwrap_or_default();
                match r.callers {
                    bufmon::Callers::ShadowStack => {}
                    bufmon::Callers::NoInsnTable => eprintln!(
                        "trace-query: note: {of}no insn table, so every caller is 0 (record insn to get callers)"
                    ),
                    bufmon::Callers::NoCodeTable => eprintln!(
                        "trace-query: note: {of}no code table, so every caller is 0"
                    ),
                }
            }
        }
        Some(Command::MmioJson { trace, phys }) => {
            let captures = open_many(&trace)?;
            let phys = match phys {
                PhysArg::Absolute => mmio_json::PhysAddr::Absolute,
                PhysArg::Offset => mmio_json::PhysAddr::Offset,
            };
            for (name, cap) in &captures {
                mmio_json::MmioJsonLog::check(cap, phys)
                    .with_context(|| format!("capture {}", name.as_deref().unwrap_or(&trace[0])))?;
            }
            let mut log = mmio_json::MmioJsonLog::begin(&mut out)?;
            for (name, cap) in &captures {
                log.capture(cap, phys, name.as_deref(), stream::window_rows())?;
            }
            let r = log.finish()?;
            if r.outside_map > 0 {
                eprintln!(
                    "trace-query: warning: {} of {} accesses lie outside the capture's memory \
                     map (mtree.txt), and their phys_addr is the absolute address",
                    r.outside_map, r.accesses
                );
            }
        }
        Some(Command::Execlog { trace, symbols }) => {
            let symbols = symbols.as_deref().map(symbols::Symbols::load).transpose()?;
            for (name, cap) in open_many(&trace)? {
                let mut w = lines_of(&mut out, name.as_deref());
                let r = match &symbols {
                    Some(s) => execlog::execlog_with_symbols(&cap, &mut w, s)?,
                    None => execlog::execlog(&cap, &mut w)?,
                };
                if r.missing_code > 0 {
                    eprintln!(
                        "trace-query: warning: {}{} executed instructions have no row in the \
                         code table (printed with opcode 0x0 and empty disassembly)",
                        name.map(|n| format!("{n}: ")).unwrap_or_default(),
                        r.missing_code
                    );
                }
            }
        }
        Some(Command::Completions { shell }) => {
            trace_cli::completions(shell, Cli::command(), "trace-query", &mut out)?;
        }
        Some(Command::Man { out_dir }) => {
            trace_cli::man_pages(Cli::command(), out_dir.as_deref(), &mut out)?;
        }
        Some(Command::Timeline { trace, out: path }) => {
            let cap = open(&trace)?;
            let f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            let mut w = BufWriter::new(f);
            let r = timeline::timeline(&cap, &mut w)?;
            w.flush()
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "trace-query: wrote {} ({} accesses, {} device lanes)",
                path.display(),
                r.accesses,
                r.lanes.len()
            );
        }
        Some(Command::Perfetto {
            trace,
            out: path,
            symbols,
        }) => {
            let symbols = symbols.as_deref().map(symbols::Symbols::load).transpose()?;
            let cap = open(&trace)?;
            // Written under a temporary name, renamed when complete: a
            // failed export leaves no truncated trace behind.
            let mut partial = path.clone().into_os_string();
            partial.push(".partial");
            let partial = PathBuf::from(partial);
            let f = File::create(&partial)
                .with_context(|| format!("creating {}", partial.display()))?;
            let mut w = BufWriter::with_capacity(1 << 16, f);
            let written = perfetto::perfetto(&cap, &mut w, symbols.as_ref()).and_then(|r| {
                w.flush()
                    .with_context(|| format!("writing {}", partial.display()))?;
                drop(w);
                std::fs::rename(&partial, &path).with_context(|| {
                    format!("renaming {} to {}", partial.display(), path.display())
                })?;
                Ok(r)
            });
            match written {
                Ok(r) => report_perfetto(&path, &r),
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(e);
                }
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// What `perfetto` wrote, and what it could not do, on stderr.
fn report_perfetto(path: &std::path::Path, r: &perfetto::PerfettoReport) {
    if let Some(problem) = &r.mtree_problem {
        eprintln!("trace-query: warning: {problem}: MMIO events are named by physical address");
    } else if !r.register_offsets && !r.devices.is_empty() {
        eprintln!(
            "trace-query: note: no mtree.txt in the capture, so MMIO events are named by \
             physical address, not register offset"
        );
    }
    match r.functions {
        perfetto::Functions::ShadowStack => {}
        perfetto::Functions::NoInsnTable => eprintln!(
            "trace-query: note: no insn table, so no vCPU tracks (record insn to get function slices)"
        ),
        perfetto::Functions::NoCodeTable => eprintln!(
            "trace-query: note: no code table, so the vCPU tracks have no function slices"
        ),
    }
    eprintln!(
        "trace-query: wrote {} ({} MMIO events on {} device tracks, {} function slices on {} \
         vCPU tracks; timestamps: 1 ns = 1 guest instruction)",
        path.display(),
        r.devices.values().sum::<u64>(),
        r.devices.len(),
        r.vcpus.values().sum::<u64>(),
        r.vcpus.len()
    );
}

/// Prints a query result in `format` (with a note when the table format
/// shows only the first and last rows).
fn write_result(df: &DataFrame, format: FormatArg, out: &mut impl Write) -> Result<()> {
    let format = match format {
        FormatArg::Table => output::Format::Table,
        FormatArg::Csv => output::Format::Csv,
        FormatArg::Json => output::Format::Json,
    };
    if format == output::Format::Table {
        let limit = std::env::var("POLARS_FMT_MAX_ROWS")
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(output::TABLE_MAX_ROWS as i64);
        if limit >= 0 && df.height() as i64 > limit {
            eprintln!(
                "trace-query: note: {} rows, the table shows the first and last ones; \
                 use --format csv, or POLARS_FMT_MAX_ROWS=-1 to see all",
                df.height()
            );
        }
    }
    output::write_frame(df, format, out)
}

fn load_symbols(q: &QueryArgs) -> Result<Option<symbols::Symbols>> {
    q.symbols.as_deref().map(symbols::Symbols::load).transpose()
}

/// SQL or `--tables` over several captures as one dataset.
fn run_dataset(q: &QueryArgs, out: &mut impl Write) -> Result<()> {
    let dirs = dataset::expand(&q.trace)?;
    let ds = dataset::Dataset::open(&dirs)?;
    for (name, cap) in ds.captures() {
        for w in cap.warnings() {
            eprintln!("trace-query: warning: {name}: {w}");
        }
    }
    if q.tables {
        if q.sql.is_some() {
            bail!("give either --tables or a SQL query, not both");
        }
        writeln!(
            out,
            "{} captures: {}",
            ds.captures().len(),
            ds.captures()
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        for name in ds.table_names() {
            let lf = ds.scan(&name)?;
            let schema = lf.clone().collect_schema()?;
            let n = ds.captures()[0].1.collect(lf.select([len().alias("n")]))?;
            let rows = n
                .column("n")?
                .cast(&DataType::UInt64)?
                .u64()?
                .get(0)
                .unwrap_or(0);
            writeln!(out, "{name} ({rows} rows)")?;
            for (c, dt) in schema.iter() {
                writeln!(out, "  {c}: {dt}")?;
            }
        }
        return Ok(());
    }
    let Some(query) = &q.sql else {
        bail!("give a SQL query or --tables (see trace-query --help)");
    };
    let symbols = load_symbols(q)?;
    let answer = ds.answer_sql(query, symbols.as_ref())?;
    write_answer(&ds.captures()[0].1, answer, q.format, out)
}

/// Writes a query's answer: CSV and JSON as the engine makes the rows (a
/// result of any size in bounded memory), a table whole (it shows the
/// first and last rows). `cap` names a damaged part if the query fails.
fn write_answer(
    cap: &Capture,
    answer: sql::Answer,
    format: FormatArg,
    out: &mut impl Write,
) -> Result<()> {
    let lf = match answer {
        sql::Answer::Computed(df) => return write_result(&df, format, out),
        sql::Answer::Plan(lf) if format == FormatArg::Table => {
            return write_result(&cap.collect(*lf)?, format, out);
        }
        sql::Answer::Plan(lf) => *lf,
    };
    let format = match format {
        FormatArg::Json => output::Format::Json,
        _ => output::Format::Csv,
    };
    let mut first = true;
    cap.collect_in_batches(lf, |df| {
        output::write_batch(&df, format, first, out)?;
        first = false;
        Ok(())
    })?;
    out.flush()?;
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            || c.to_string().contains("Broken pipe")
    })
}

fn main() -> ExitCode {
    trace_cli::keep_freed_memory();
    output::set_table_env_defaults();
    let cli = Cli::parse();
    // polars may panic on damaged data: report it as an error, not a crash.
    std::panic::set_hook(Box::new(|_| {}));
    let res = std::panic::catch_unwind(|| run(cli)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(anyhow!("internal error: {msg}"))
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trace-query: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
