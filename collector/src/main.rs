//! `trace-collector`: see `--help`, and the library's docs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use trace_collector::{AttachArgs, RunArgs, DEFAULT_PART_ROWS};
use trace_schema::options::{EventSet, Overflow};

const LONG_ABOUT: &str = "\
Captures what a QEMU running the trace shim (libtrace_shim.so) records -- memory \
accesses, MMIO accesses, executed instructions -- into a directory of Parquet \
tables (see docs/capture-format.md).

`attach` captures a QEMU that is already running with `-plugin libtrace_shim.so,...`; \
`run` starts QEMU itself with the shim loaded and captures it from its first instruction.

The capture ends when QEMU exits (complete), when the QEMU process disappears \
(killed: the capture holds everything drained until then), or on SIGINT/SIGTERM: \
`attach` then detaches and QEMU runs on; `run` asks QEMU to exit (SIGTERM) and \
keeps draining until it has, or stops at once on a second signal. If a `run` \
collector is killed outright (SIGKILL), the kernel sends its QEMU SIGTERM. A \
summary is printed on stderr at the end.

Exit status:
  0  the capture was written (whatever way QEMU ended; see the summary and capture.json)
  1  error: the capture could not be made or finished (message on stderr)
  2  usage error (bad command line)";

#[derive(Parser)]
#[command(name = "trace-collector", version, about = "Out-of-process trace collector for QEMU", long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args)]
struct Output {
    /// Capture directory (created if needed).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Replace a capture already in DIR (only its files are removed).
    #[arg(long)]
    overwrite: bool,
    /// Rows per Parquet part file.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PART_ROWS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    part_rows: u64,
    /// Threads encoding Parquet parts (default: the cores left once QEMU's
    /// vCPUs and the drain have theirs, at least 1, at most 4; each costs
    /// up to two parts' batches of memory, ~40 MiB for `mem`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=64))]
    threads: Option<u64>,
    /// Cut a part of each table whose rows wait this long (e.g. `5s`,
    /// `500ms`, `1m`; `0`: only full parts), so that queries of a running
    /// capture see rows at most about this old. Costs one small part per
    /// table per period while that table's rows trickle.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_flush_every)]
    flush_every: FlushEvery,
    /// No progress line (it is shown only when stderr is a terminal anyway).
    #[arg(long)]
    quiet: bool,
    /// Your names for MMIO devices: lines `<QEMU region name> <name>` or
    /// `<start>-<end> <name>` (hex, inclusive); they win over the built-in names.
    #[arg(long, value_name = "FILE")]
    device_map: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Capture a running QEMU that was started with -plugin libtrace_shim.so.
    #[command(after_help = ATTACH_EXAMPLES)]
    Attach {
        /// The QEMU process id.
        #[arg(long)]
        pid: u32,
        /// QMP socket of that QEMU (its -qmp unix:PATH,server=on): saves `info mtree -f` as DIR/mtree.txt.
        #[arg(long, value_name = "PATH")]
        qmp: Option<PathBuf>,
        /// Continue the capture in DIR (of this same QEMU, e.g. after its
        /// collector was killed): new parts follow the old ones, records the old
        /// capture committed are not written again, and what was lost in
        /// between is counted in stats.
        #[arg(long, conflicts_with = "overwrite")]
        append: bool,
        /// What to record: any of mem, mmio, insn (comma separated). Default:
        /// the shim's events option (its -plugin ...,events=).
        #[arg(long, value_parser = parse_events)]
        events: Option<EventSet>,
        /// When a ring is full during this capture: block (QEMU waits;
        /// lossless) or drop (events are counted as lost). Default: the
        /// shim's overflow option.
        #[arg(long, value_parser = parse_overflow)]
        overflow: Option<Overflow>,
        /// Detach after this long (e.g. 10s, 500ms, 2m); QEMU runs on.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        duration: Option<std::time::Duration>,
        /// End the capture as a vCPU is about to execute the instruction at
        /// this guest (virtual) address, hex (0x...) or decimal: its accesses
        /// and everything after are not in the capture.
        #[arg(long, value_name = "ADDR", value_parser = parse_address)]
        until_pc: Option<u64>,
        /// End the capture after the first access to this device (a name of
        /// the mmio table's device column, e.g. systick); needs --qmp.
        #[arg(long, value_name = "NAME")]
        until_device: Option<String>,
        /// Start the recording as a vCPU is about to execute the instruction
        /// at this guest (virtual) address, hex (0x...) or decimal: its
        /// accesses are the window's first (with insn, instructions from the
        /// next block); until then QEMU runs instrumented, recording nothing.
        #[arg(long, value_name = "ADDR", value_parser = parse_address)]
        from_pc: Option<u64>,
        /// Start the recording with the first access to this device (a name
        /// of the mmio table's device column); needs --qmp.
        #[arg(long, value_name = "NAME")]
        from_device: Option<String>,
        /// End each vCPU's window at its instruction N (icount, as the
        /// capture's rows number them): its events before it, exactly; the
        /// collector detaches once every vCPU has reached it.
        #[arg(long, value_name = "N", value_parser = parse_icount)]
        until_icount: Option<u64>,
        /// End the capture after its first N events: memory accesses (an
        /// MMIO access counts once), or executed instructions with
        /// --events insn (not both kinds together).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        max_events: Option<u64>,
        #[command(flatten)]
        output: Output,
    },
    /// Start QEMU with the shim and capture it.
    #[command(after_help = RUN_EXAMPLES)]
    Run {
        /// What to record: any of mem, mmio, insn (comma separated).
        #[arg(long, default_value = "mem,mmio")]
        events: String,
        /// Event ring size per vCPU, KiB, a power of two (default: the shim's, 16384).
        #[arg(long, value_name = "KIB")]
        ring_kib: Option<u64>,
        /// Meta ring size per vCPU, KiB, a power of two (default: the shim's, 4096).
        #[arg(long, value_name = "KIB")]
        meta_kib: Option<u64>,
        /// When a ring is full: block (QEMU waits; lossless) or drop (events are counted as lost).
        #[arg(long, default_value = "block", value_parser = ["block", "drop"])]
        overflow: String,
        /// Where the code table's disassembly comes from (with insn): fast (the
        /// shim's capstone handles, checked against QEMU's text per block) or
        /// qemu (QEMU's call per instruction). Both give QEMU's text.
        #[arg(long, default_value = "fast", value_parser = ["fast", "qemu"])]
        disas: String,
        /// The QEMU plugin (default: libtrace_shim.so beside this executable).
        #[arg(long, value_name = "PATH")]
        shim: Option<PathBuf>,
        #[command(flatten)]
        output: Output,
        /// The QEMU command line; -plugin and -qmp options are appended, and -S
        /// (QEMU starts paused until its memory map has been read; then it is resumed).
        #[arg(last = true, required = true, value_name = "QEMU COMMAND")]
        qemu: Vec<String>,
    },
    /// Print a shell completion script (bash: `source <(trace-collector completions bash)`).
    Completions {
        #[arg(value_enum)]
        shell: trace_cli::Shell,
    },
    /// Print the man page (roff), or write one page per subcommand into DIR.
    Man {
        /// Write trace-collector.1, trace-collector-run.1, ... into this directory.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

const RUN_EXAMPLES: &str = "\
Examples:
  # Every memory and MMIO access of a firmware, from its first instruction:
  trace-collector run --out cap/ -- qemu-system-arm -M lm3s6965evb -nographic -kernel fw.elf
  # Every executed instruction too, losing none (QEMU waits when a ring is full):
  trace-collector run --events mem,mmio,insn --out cap/ -- qemu-system-aarch64 -M virt ...
  # Keep QEMU at full speed instead, counting what could not be recorded:
  trace-collector run --overflow drop --out cap/ -- qemu-system-arm ...";

const ATTACH_EXAMPLES: &str = "\
Examples:
  # QEMU keeps the shim loaded and runs at plain speed until a collector attaches:
  qemu-system-aarch64 ... -plugin libtrace_shim.so -qmp unix:/tmp/q.sock,server=on,wait=off &
  # 10 seconds of MMIO accesses, with device names from QEMU's memory map:
  trace-collector attach --pid $! --qmp /tmp/q.sock --out a/ --events mmio --duration 10s
  # Everything until Ctrl-C (QEMU runs on, detached):
  trace-collector attach --pid $! --out b/ --events mem,mmio,insn
  # Until the guest first touches SysTick, or reaches an address:
  trace-collector attach --pid $! --qmp /tmp/q.sock --out c/ --until-device systick
  trace-collector attach --pid $! --out d/ --until-pc 0x400134
  # From the guest's first access to SysTick, or from an address, 10 seconds:
  trace-collector attach --pid $! --qmp /tmp/q.sock --out g/ --from-device systick --duration 10s
  trace-collector attach --pid $! --out h/ --from-pc 0x400200 --until-pc 0x400280
  # The first million accesses; each vCPU's events before its instruction 10^9:
  trace-collector attach --pid $! --out e/ --events mem,mmio --max-events 1000000
  trace-collector attach --pid $! --out f/ --until-icount 1000000000";

fn main() -> ExitCode {
    trace_collector::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Completions { shell } => {
            let mut out = std::io::stdout();
            return finish(trace_cli::completions(
                shell,
                Cli::command(),
                "trace-collector",
                &mut out,
            ));
        }
        Cmd::Man { out_dir } => {
            let mut out = std::io::stdout();
            return finish(trace_cli::man_pages(
                Cli::command(),
                out_dir.as_deref(),
                &mut out,
            ));
        }
        Cmd::Attach {
            pid,
            qmp,
            append,
            events,
            overflow,
            duration,
            until_pc,
            until_device,
            until_icount,
            max_events,
            from_pc,
            from_device,
            output,
        } => trace_collector::attach(&AttachArgs {
            pid,
            out: output.out,
            overwrite: output.overwrite,
            append,
            qmp,
            device_map: output.device_map,
            part_rows: output.part_rows as usize,
            flush_every: output.flush_every.0,
            threads: output.threads.map(|t| t as usize),
            show_progress: !output.quiet,
            events,
            overflow,
            duration,
            until_pc,
            until_device,
            until_icount,
            max_events,
            from_pc,
            from_device,
        }),
        Cmd::Run {
            events,
            ring_kib,
            meta_kib,
            overflow,
            disas,
            shim,
            output,
            qemu,
        } => trace_collector::run(&RunArgs {
            out: output.out,
            overwrite: output.overwrite,
            events,
            ring_kib,
            meta_kib,
            overflow,
            disas,
            shim,
            device_map: output.device_map,
            part_rows: output.part_rows as usize,
            flush_every: output.flush_every.0,
            threads: output.threads.map(|t| t as usize),
            show_progress: !output.quiet,
            qemu,
        }),
    };
    finish(result.map(|summary| eprint!("{summary}")))
}

/// The exit status of a command, its error on stderr.
fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trace-collector: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `attach --events`.
fn parse_events(text: &str) -> Result<EventSet, String> {
    match EventSet::parse(text) {
        Ok(e) if e.is_empty() => Err("give at least one of mem, mmio, insn".into()),
        Ok(e) => Ok(e),
        Err(e) => Err(e.message),
    }
}

/// `attach --overflow`.
fn parse_overflow(text: &str) -> Result<Overflow, String> {
    Overflow::parse(text).ok_or_else(|| format!("'{text}': block or drop"))
}

/// `attach --until-pc`: an address, hex with 0x or decimal.
fn parse_address(text: &str) -> Result<u64, String> {
    parse_u64(text).map_err(|_| format!("'{text}' is not an address (hex with 0x, or decimal)"))
}

/// `attach --until-icount`: an instruction index, decimal or hex with 0x.
fn parse_icount(text: &str) -> Result<u64, String> {
    parse_u64(text)
        .map_err(|_| format!("'{text}' is not an instruction index (decimal, or hex with 0x)"))
}

fn parse_u64(text: &str) -> Result<u64, std::num::ParseIntError> {
    let t = text.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    }
}

/// `attach --duration`: a period, not 0.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    parse_flush_every(text)?
        .0
        .ok_or_else(|| format!("'{text}': a duration longer than 0"))
}

/// `--flush-every`: a period, or none (`0`).
#[derive(Clone, Copy, Debug)]
struct FlushEvery(Option<std::time::Duration>);

fn parse_flush_every(text: &str) -> Result<FlushEvery, String> {
    let t = text.trim();
    let (number, unit) = t.split_at(
        t.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len()),
    );
    let n: f64 = number.parse().map_err(|_| {
        format!("'{text}' is not a duration: a number and ms, s or m (e.g. 5s, 500ms; 0 for none)")
    })?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("'{text}': unknown unit '{unit}' (ms, s or m)")),
    };
    if !seconds.is_finite() || seconds > 86_400.0 {
        return Err(format!("'{text}': at most a day"));
    }
    Ok(FlushEvery(
        (seconds > 0.0).then(|| std::time::Duration::from_secs_f64(seconds)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn flush_periods() {
        let p = |t| parse_flush_every(t).map(|f| f.0);
        assert_eq!(p("5s"), Ok(Some(Duration::from_secs(5))));
        assert_eq!(p("500ms"), Ok(Some(Duration::from_millis(500))));
        assert_eq!(p("2m"), Ok(Some(Duration::from_secs(120))));
        assert_eq!(p("3"), Ok(Some(Duration::from_secs(3))));
        assert_eq!(p("0"), Ok(None));
        assert!(p("5h").unwrap_err().contains("unknown unit 'h'"));
        assert!(p("soon").unwrap_err().contains("not a duration"));
        assert!(p("2d").is_err());
    }
}
