//! `trace-collector`: the out-of-process side of the QEMU trace shim.
//!
//! It attaches to a QEMU process's shared-memory segment (created by the
//! shim, layout in `trace_schema::layout`), drains every vCPU's rings and
//! writes the capture directory described in docs/capture-format.md.
//!
//! The library API is what the binary uses:
//! - [`attach`]: capture an already running QEMU ([`AttachArgs`]);
//! - [`run`]: start QEMU with the shim and capture it ([`RunArgs`]);
//! - both return a [`Summary`], whose `Display` is the final report.
//!
//! The device named in the `mmio.device` column comes from a
//! `tables::DeviceNames` resolver (`CaptureSetup::names`):
//! `memory_map::MapDeviceNames`, built from QEMU's memory map (mtree.txt)
//! and the user's `--device-map`.
//!
//! The pipeline, a directory each:
//! - `qemu/`: the QEMU side: `segment_view` (open, check, map and attach to
//!   a QEMU's segment), `launch` (`run`: start QEMU with the shim), `qmp`
//!   (`info mtree -f`), `memory_map` (device names from it), `signals`.
//! - `drain.rs` and `drain/`: the rings to batches of rows, block events,
//!   what each part completes; `described_blocks` (the blocks whose `code`
//!   rows we have).
//! - `write/`: batches to Parquet parts: `tables` (batches and their
//!   columns), `access_batch` (the rows of `mem` and `mmio`),
//!   `parquet_part` (a part built column by column), `encodings` (Parquet's
//!   value encodings), `parquet_sink` (encoder threads, parts put in place
//!   atomically and in order), `parquet_file` (a part's footer).
//! - `capture/`: one capture: `session` (the drain loop, its end and
//!   summary), `directory` (the capture directory and capture.json),
//!   `append` (`--append`).
//! - `losses`: the ledger of a session's lost events.
//! - `progress`: the progress line.

mod capture;
mod drain;
mod losses;
mod progress;
mod qemu;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
mod write;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use trace_schema::options::EventSet;

use anyhow::Result;

pub use capture::session::{Ending, Summary};
pub use qemu::launch::{RunArgs, SHIM_FILE};
pub use qemu::memory_map;
pub use qemu::segment_view::SegmentError;
pub use write::tables::Table;

use capture::{append, directory, session};
use qemu::{launch, qmp, segment_view, signals};

/// glibc's malloc keeps freed memory for the next batches (see
/// [`trace_cli::keep_freed_memory`]); the binary calls it first thing, and
/// so does the drain benchmark, to measure what the binary does.
pub use trace_cli::keep_freed_memory;

/// How long `attach` waits for the segment of a QEMU that has a `-plugin`
/// option but has not created its segment yet.
pub const SEGMENT_WAIT: Duration = Duration::from_secs(10);

/// How long `attach` waits for the segment of a process whose command line
/// has no `-plugin` option (yet: it may not have exec'd QEMU).
pub const EXEC_WAIT: Duration = Duration::from_millis(500);

/// Rows per Parquet part unless told otherwise. 256 Ki rows keep the
/// collector's peak RSS under 256 MiB (benches/RESULTS.md: 187 MiB, against
/// 551 MiB with 1 Mi rows, for a 4% longer capture).
pub const DEFAULT_PART_ROWS: usize = 1 << 18;

/// Most Parquet encoder threads by default: each holds up to two parts'
/// batches (~40 MiB for `mem` at the default part size), and the collector
/// keeps under 256 MiB.
pub const MAX_DEFAULT_THREADS: usize = 4;

/// Parquet encoder threads when not told: the cores left once QEMU's
/// `n_vcpus` vCPU threads and the drain thread have one each, at least 1 and
/// at most `MAX_DEFAULT_THREADS`.
pub fn default_threads(n_vcpus: u32) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores
        .saturating_sub(n_vcpus as usize + 1)
        .clamp(1, MAX_DEFAULT_THREADS)
}

/// Arguments of `trace-collector attach`.
#[derive(Debug, Clone)]
pub struct AttachArgs {
    /// The QEMU process.
    pub pid: u32,
    pub out: PathBuf,
    pub overwrite: bool,
    /// Continue the capture already in `out` (of the same QEMU).
    pub append: bool,
    /// A QMP socket of that QEMU, to save `info mtree -f` as mtree.txt.
    pub qmp: Option<PathBuf>,
    /// The user's device names (`memory_map::DeviceMap` format).
    pub device_map: Option<PathBuf>,
    pub part_rows: usize,
    /// Cut parts of tables whose rows waited this long (`None`: only full parts).
    pub flush_every: Option<Duration>,
    /// Parquet encoder threads (`None`: `default_threads`).
    pub threads: Option<usize>,
    pub show_progress: bool,
    /// What to record (`None`: the shim's `events` option).
    pub events: Option<EventSet>,
    /// What a full ring does (`None`: the shim's `overflow` option).
    pub overflow: Option<trace_schema::options::Overflow>,
    /// Detach after this long (`None`: at SIGINT/SIGTERM or QEMU's end).
    pub duration: Option<Duration>,
    /// End the capture as a vCPU is about to execute the instruction at
    /// this guest address.
    pub until_pc: Option<u64>,
    /// End the capture after the first access to this device (a name of the
    /// `device` column; needs `qmp` for QEMU's memory map).
    pub until_device: Option<String>,
    /// Each vCPU's events before this instruction index (icount).
    pub until_icount: Option<u64>,
    /// The first this many events (accesses, or instructions for insn).
    pub max_events: Option<u64>,
    /// Start the recording as a vCPU is about to execute the instruction at
    /// this guest address.
    pub from_pc: Option<u64>,
    /// Start it with the first access to this device (needs `qmp`).
    pub from_device: Option<String>,
}

/// Captures the running QEMU `args.pid` until it exits, dies, or we get
/// SIGINT/SIGTERM (then we detach and QEMU runs on).
pub fn attach(args: &AttachArgs) -> Result<Summary> {
    let user_names = memory_map::load_device_map(args.device_map.as_deref())?;
    let signals = signals::install()?;
    // A QEMU started with a -plugin option may still be starting: give it
    // time to create its segment. Any other process gets a moment only: the
    // `$!` of `qemu-system-... &` can still be the shell, before its exec.
    let seg = segment_view::Segment::open_waiting(args.pid, |waited| {
        if signals.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            return Err(segment_view::SegmentError::Interrupted(args.pid));
        }
        let starting = directory::qemu_command(args.pid)
            .iter()
            .any(|a| a.contains("plugin"));
        Ok(waited < if starting { SEGMENT_WAIT } else { EXEC_WAIT })
    })?;
    directory::check(&args.out, args.overwrite, args.append)?;
    seg.check_not_attached()?;
    let append = if args.append {
        append::previous_capture(&args.out)?
    } else {
        None
    };
    if append.is_none() {
        directory::clear(&args.out)?;
    }
    let fetch = args.qmp.clone().map(|sock| {
        let view = *seg.view();
        qmp::MtreeFetch::start(
            sock,
            args.out.join("mtree.txt"),
            Duration::from_secs(2),
            false,
            move |map| memory_map::publish_memory_ranges(&view, map),
            |_| {},
        )
    });
    let ranges_of = |device: &Option<String>, option: &str| match device {
        None => Ok(Vec::new()),
        Some(name) => device_ranges_now(fetch.as_deref(), &args.out, &user_names, name, option),
    };
    let until_ranges = ranges_of(&args.until_device, "--until-device")?;
    let from_ranges = ranges_of(&args.from_device, "--from-device")?;
    let setup = session::CaptureSetup {
        out: args.out.clone(),
        part_rows: args.part_rows,
        flush_every: args.flush_every,
        threads: args.threads,
        names: Arc::new(memory_map::MapDeviceNames::new(
            args.out.join("mtree.txt"),
            fetch.clone(),
            args.qmp.clone(),
            user_names,
        )),
        show_progress: args.show_progress,
        append,
        window: session::WindowRequest {
            events: args.events,
            overflow: args.overflow,
            duration: args.duration,
            until_pc: args.until_pc,
            until_ranges,
            until_icount: args.until_icount,
            max_events: args.max_events,
            from_pc: args.from_pc,
            from_ranges,
        },
    };
    let mut captured = session::capture(&seg, &setup, session::Owner::Attach, signals)?;
    match fetch {
        Some(m) => captured.warnings.extend(m.wait(Duration::from_secs(5))),
        None if captured.json.tables.contains_key("mmio") => captured.warnings.push(
            "without --qmp, MMIO rows carry the plugin API's device names (QEMU calls an \
             unnamed region anonXXXXXXXX) and a null region: start QEMU with -qmp \
             unix:PATH,server=on,wait=off and attach with --qmp PATH for QEMU's memory map"
                .into(),
        ),
        None => {}
    }
    let exit = session::attach_qemu_exit(captured.ending);
    captured.complete(exit)
}

/// `attach --until-device NAME`: the address ranges of device `name` in the
/// memory map QMP gave (`fetch`, into `out`/mtree.txt), read before the
/// attach so that no access to it can come first.
fn device_ranges_now(
    fetch: Option<&qmp::MtreeFetch>,
    out: &std::path::Path,
    user: &memory_map::DeviceMap,
    name: &str,
    option: &str,
) -> Result<Vec<(u64, u64)>> {
    let Some(fetch) = fetch else {
        anyhow::bail!("{option} needs --qmp: devices are named from QEMU's memory map");
    };
    if let Some(problem) = fetch.wait(DEVICE_MAP_WAIT) {
        anyhow::bail!(
            "{option}: {problem} (a QEMU its shim holds with wait=on answers QMP only \
             once a collector has attached: start it without wait=on)"
        );
    }
    let text = std::fs::read_to_string(out.join("mtree.txt"))?;
    let map = memory_map::MemoryMap::parse(&text)
        .map_err(|e| anyhow::anyhow!("{option}: QEMU's memory map: {e}"))?;
    let ranges = memory_map::device_ranges(&map, user, name)
        .map_err(|e| anyhow::anyhow!("{option}: {e}"))?;
    if ranges.len() > trace_schema::layout::MAX_STOP_RANGES {
        anyhow::bail!(
            "{option}: '{name}' has {} regions, more than the {} the shim can watch",
            ranges.len(),
            trace_schema::layout::MAX_STOP_RANGES
        );
    }
    Ok(ranges)
}

/// How long `--until-device` and `--from-device` wait for QEMU's memory map.
const DEVICE_MAP_WAIT: Duration = Duration::from_secs(5);

/// Starts QEMU (`args.qemu`) with the shim and captures it until it exits.
/// SIGINT/SIGTERM are forwarded to QEMU as SIGTERM.
pub fn run(args: &RunArgs) -> Result<Summary> {
    let signals = signals::install()?;
    launch::run(args, signals)
}
