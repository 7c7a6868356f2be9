//! One capture: attach, drain until QEMU exits (or dies, or we are told to
//! stop), finish the tables, and describe the result.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering as StdOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use trace_format::End;
use trace_schema::commit;
use trace_schema::layout::COMMIT_STREAMS;
use trace_schema::options::{EventSet, Overflow, ShimOptions};
use trace_schema::ring::Consumer;

use crate::capture::append::{self, AppendPlan};
use crate::capture::directory::{self, CaptureJson, WriteCaptureJson, FORMAT_VERSION};
use crate::drain::window_end::WindowEnd;
use crate::drain::{DrainReport, Drainer, Resume};
use crate::losses::{LossLedger, LostEvents};
use crate::progress::{Progress, TICK};
use crate::qemu::segment_view::{process_alive, Segment};
use crate::write::parquet_sink::{PartSink, SinkProgress};
use crate::write::tables::{DeviceNames, Table};

/// How often we check that QEMU is still alive.
const ALIVE_CHECK: Duration = Duration::from_millis(100);
/// How long a detach waits for the vCPUs to publish the events they have
/// gathered in their open chunks (a vCPU halted since before we asked
/// answers only when it wakes; it has nothing gathered).
const FLUSH_WAIT: Duration = Duration::from_millis(200);
/// How long after the attach we say that the shim has not started recording.
const NOT_INSTRUMENTED_WARNING: Duration = Duration::from_secs(2);
/// `run`: how long QEMU gets to exit after we forwarded a SIGTERM.
pub const RUN_STOP_GRACE: Duration = Duration::from_secs(10);

/// What a capture needs besides the segment.
pub struct CaptureSetup {
    pub out: PathBuf,
    pub part_rows: usize,
    /// Cut parts of tables whose rows waited this long (`None`: only full parts).
    pub flush_every: Option<Duration>,
    /// Parquet encoder threads (`None`: `crate::default_threads`).
    pub threads: Option<usize>,
    pub names: Arc<dyn DeviceNames>,
    pub show_progress: bool,
    /// `--append`: the capture.json of the capture in `out` to continue
    /// (`None`: `out` holds no capture, start one).
    pub append: Option<CaptureJson>,
    /// What `attach` asks for this capture (`run`: the default, the
    /// shim's own options from QEMU's first instruction to its exit).
    pub window: WindowRequest,
}

/// What a collector that attaches asks of this capture: what to record and
/// where its window starts and ends.
#[derive(Clone, Debug, Default)]
pub struct WindowRequest {
    /// `attach --events`: what the shim is to record (`None`: its `events`
    /// option).
    pub events: Option<EventSet>,
    /// `attach --overflow`: what a full ring does (`None`: the shim's
    /// `overflow` option).
    pub overflow: Option<Overflow>,
    /// `attach --duration`: detach this long after attaching.
    pub duration: Option<Duration>,
    /// `attach --until-pc`: the shim stops the recording as a vCPU is about
    /// to execute the instruction at this address.
    pub until_pc: Option<u64>,
    /// `attach --until-device`: the shim stops the recording after the first
    /// I/O access inside these (first, last) physical address ranges.
    pub until_ranges: Vec<(u64, u64)>,
    /// `attach --until-icount`: each vCPU's events before this instruction.
    pub until_icount: Option<u64>,
    /// `attach --max-events`: the first this many events.
    pub max_events: Option<u64>,
    /// `attach --from-pc`: the shim starts the recording as a vCPU is about
    /// to execute the instruction at this address.
    pub from_pc: Option<u64>,
    /// `attach --from-device`: the shim starts the recording with the first
    /// I/O access inside these (first, last) physical address ranges.
    pub from_ranges: Vec<(u64, u64)>,
}

/// How the capture ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The shim announced QEMU's exit: every event is in the capture.
    QemuExited,
    /// The QEMU process vanished without the shim announcing it (killed).
    QemuDied,
    /// SIGINT/SIGTERM: we detached (`attach`), or QEMU did not exit in time
    /// after we forwarded the signal (`run`).
    Interrupted,
    /// `attach --duration` ran out, or a window's end (`--until-pc`,
    /// `--until-device`, `--until-icount`, `--max-events`) was reached: we
    /// detached.
    WindowEnded,
}

impl Ending {
    /// How `capture.json` says it.
    pub fn end(self) -> End {
        match self {
            Ending::QemuExited => End::QemuExited,
            Ending::QemuDied => End::QemuDied,
            Ending::Interrupted => End::Interrupted,
            Ending::WindowEnded => End::WindowEnded,
        }
    }
}

/// Who owns QEMU: decides what a SIGINT/SIGTERM does.
#[derive(Clone, Copy, Debug)]
pub enum Owner {
    /// `attach`: detach and finish; QEMU runs on.
    Attach,
    /// `run`: forward SIGTERM to QEMU and keep draining until it exits (at
    /// most `RUN_STOP_GRACE`); a second signal stops at once.
    Run { child: u32 },
}

/// The events the shim records, from its option string in the header.
pub fn shim_events(options: &str) -> Result<EventSet> {
    let args: Vec<&str> = options.split(',').filter(|a| !a.is_empty()).collect();
    match ShimOptions::parse(&args) {
        Ok(o) => Ok(o.events),
        // Options of a newer shim we do not know: only `events` matters here.
        Err(_) => match args.iter().find_map(|a| a.strip_prefix("events=")) {
            Some(ev) => {
                EventSet::parse(ev).map_err(|e| anyhow!("the shim's options {options:?}: {e}"))
            }
            None => Ok(ShimOptions::default().events),
        },
    }
}

/// What a full ring does in the shim's option string (`block` unless it
/// says `overflow=drop`).
pub fn shim_overflow(options: &str) -> Overflow {
    options
        .split(',')
        .find_map(|a| a.strip_prefix("overflow="))
        .and_then(Overflow::parse)
        .unwrap_or(ShimOptions::default().overflow)
}

/// A finished drain, before QEMU's exit status is known.
pub struct Captured {
    pub json: CaptureJson,
    pub report: DrainReport,
    pub ending: Ending,
    pub duration: Duration,
    pub bytes_written: u64,
    pub warnings: Vec<String>,
    out: PathBuf,
}

/// Attaches to `seg` and captures into `setup.out` (already checked and
/// cleared) until the end.
pub fn capture(
    seg: &Segment,
    setup: &CaptureSetup,
    owner: Owner,
    signals: &AtomicU32,
) -> Result<Captured> {
    let started = Instant::now();
    let header = seg.header();
    let options = header.options();
    let events = match setup.window.events {
        Some(e) => e,
        None => shim_events(&options)?,
    };
    if let Some(previous) = setup.append.as_ref().filter(|p| !p.events.is_empty()) {
        if previous.events != events.to_option() {
            bail!(
                "--append: {} recorded events {}, this attach asks for {}",
                setup.out.display(),
                previous.events,
                events.to_option()
            );
        }
    }
    // Read by the shim once it sees the attach (below).
    trace_schema::attach::set_request(
        header,
        &trace_schema::attach::Request {
            events: setup.window.events,
            overflow: setup.window.overflow,
            stop_at_pc: setup.window.until_pc,
            stop_ranges: &setup.window.until_ranges,
            start_at_pc: setup.window.from_pc,
            start_ranges: &setup.window.from_ranges,
        },
    );
    let n_vcpus = seg.view().geometry.n_vcpus;
    let window_end = WindowEnd::new(
        n_vcpus as usize,
        events,
        setup.window.until_icount,
        setup.window.max_events,
    )
    .map_err(|e| anyhow!(e))?;
    if setup.append.is_some() && !window_end.is_open_ended() {
        bail!("--append continues a capture whole: it takes no --until-icount or --max-events");
    }
    let pid = seg.pid();
    let command = directory::qemu_command(pid);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let tables = Table::for_events(events.mem, events.mmio, events.insn);

    let attached = seg.attach()?;
    let mut warnings = Vec::new();
    if let Some(dead) = attached.took_over_from {
        warnings.push(format!(
            "took over from collector pid {dead}, which had died"
        ));
    }
    let lost_at_attach = LossLedger::counters(seg.view());
    // A collector that detached (the state it left is Waiting) wrote what
    // it drained; one that died (Attached or Detached) may not have.
    let previous_died = attached.previous != trace_schema::attach::State::Waiting;
    let resumed = or_detach(
        seg,
        resume_point(seg, setup, &command, &options, previous_died),
    )?;
    let ResumePoint {
        committed,
        first_index,
        lost_collector_died,
        mut plan,
    } = resumed;
    let mut losses = LossLedger::new(lost_at_attach, &plan.lost_accounted, lost_collector_died);
    if attached.losses_uncounted {
        losses.set_uncounted();
        if setup.append.is_some() {
            warnings.push(
                "after the collector before us died, the shim stopped counting the events it \
                 could not deliver (start QEMU's shim with idle=count to have them counted): \
                 the capture misses more before this session than events_lost_before_attach \
                 says"
                    .into(),
            );
        }
    }
    if !plan.removed.is_empty() {
        warnings.push(format!(
            "removed {} part(s) the previous collector wrote but had not recorded as written",
            plan.removed.len()
        ));
    }
    let previous = setup.append.clone().unwrap_or_default();
    let base_rows = plan.rows;
    let json = Arc::new(Mutex::new(CaptureJson {
        format_version: FORMAT_VERSION,
        complete: false,
        collector_version: env!("CARGO_PKG_VERSION").to_string(),
        qemu_pid: pid,
        collector_pids: previous
            .collector_pids
            .iter()
            .copied()
            .chain([std::process::id()])
            .collect(),
        guest_pointer_bits: directory::guest_pointer_bits(&command, exe.as_deref()),
        qemu_command: command,
        shim_options: options.clone(),
        events: events.to_option(),
        overflow: setup
            .window
            .overflow
            .unwrap_or_else(|| shim_overflow(&options))
            .as_str()
            .to_string(),
        window: trace_format::Window {
            attached_at: trace_format::Window::now(),
            ..Default::default()
        },
        n_vcpus,
        devices: previous.devices.clone(),
        tables: tables
            .iter()
            .map(|t| (t.name().to_string(), base_rows[t.index()]))
            .collect(),
        ..Default::default()
    }));

    // The record our parts update: continuing the previous one when we
    // continue its directory; else ours starts where we start draining
    // (records before that are not ours to write).
    let start = commit::Committed {
        collector_pid: std::process::id(),
        parts: std::array::from_fn(|t| plan.first_part[t] as u64),
        events: match &setup.append {
            Some(_) => committed.events.clone(),
            None => first_index.iter().map(|&i| [i; 5]).collect(),
        },
    };
    let sink = or_detach(
        seg,
        start_sink(
            seg,
            setup,
            &json,
            &tables,
            base_rows,
            plan.first_part,
            start,
        ),
    )?;
    let resume = Resume {
        first_index,
        skip_below: plan.skip_below.clone(),
        known_blocks: std::mem::take(&mut plan.blocks),
    };
    let mut drainer = Drainer::new(*seg.view(), events, setup.part_rows, sink, resume)
        .with_window_end(window_end)
        .with_device_names(setup.names.clone());
    let mut progress = Progress::new(setup.show_progress);
    or_detach(seg, json.lock().unwrap().write(&setup.out))?;
    let mut reserve = directory::SpaceReserve::new(&setup.out);

    let result = Watch {
        seg,
        owner,
        signals,
        json: &json,
        flush_every: setup.flush_every,
        deadline: setup.window.duration.map(|d| started + d),
        duration: setup.window.duration,
        armed: setup.window.from_pc.is_some() || !setup.window.from_ranges.is_empty(),
        events,
        warned_not_instrumented: false,
        progress: &mut progress,
        warnings: &mut warnings,
        losses: &mut losses,
    }
    .drain_until_end(&mut drainer);
    progress.finish();

    let ending = match result {
        Ok(e) => e,
        Err(err) => {
            losses.stop(seg.view());
            seg.detach();
            let sink_progress = drainer.sink_progress().clone();
            // Keep what was drained: the batches so far become parts.
            let _ = drainer.finish(&losses, false);
            let mut j = json.lock().unwrap();
            for t in &tables {
                let base = base_rows[t.index()];
                j.tables
                    .insert(t.name().to_string(), base + sink_progress.rows(*t));
            }
            j.end = Some(End::Error);
            j.error = Some(format!("{err:#}"));
            j.duration_seconds = started.elapsed().as_secs_f64();
            reserve.release();
            let _ = j.write(&setup.out);
            return Err(err);
        }
    };

    if ending == Ending::QemuDied {
        // The shim never got to remove its segment's name.
        seg.unlink();
    }
    let bytes = drainer.sink_progress().clone();
    let qemu_exited = ending == Ending::QemuExited;
    let report = drainer.finish(&losses, qemu_exited)?;
    let mut json = json.lock().unwrap().clone();
    record_end(&mut json, &report, &previous, base_rows, ending);
    json.duration_seconds = started.elapsed().as_secs_f64();
    reserve.release();
    json.write(&setup.out)?;
    Ok(Captured {
        json,
        report,
        ending,
        duration: started.elapsed(),
        bytes_written: bytes.bytes_written.load(StdOrdering::Relaxed),
        warnings,
        out: setup.out.clone(),
    })
}

/// The Parquet writer of a capture into `setup.out`: after each part it
/// updates capture.json's row counts (`base_rows`: the appended capture's
/// rows before this session) and publishes the commit record (`start`: the
/// one it continues) in the segment, for the collector after us.
fn start_sink(
    seg: &Segment,
    setup: &CaptureSetup,
    json: &Arc<Mutex<CaptureJson>>,
    tables: &[Table],
    base_rows: [u64; COMMIT_STREAMS],
    first_part: [u32; COMMIT_STREAMS],
    start: commit::Committed,
) -> Result<PartSink> {
    let on_part = {
        let json = json.clone();
        let out = setup.out.clone();
        let tables = tables.to_vec();
        Box::new(move |p: &SinkProgress| {
            let mut j = json.lock().unwrap();
            for t in &tables {
                let base = base_rows[t.index()];
                j.tables.insert(t.name().to_string(), base + p.rows(*t));
            }
            if let Err(e) = j.write(&out) {
                eprintln!("trace-collector: warning: {e:#}");
            }
        })
    };
    let on_commit = {
        let view = *seg.view();
        Box::new(move |c: &commit::Committed| commit::publish(&view, c))
    };
    let threads = setup
        .threads
        .unwrap_or_else(|| crate::default_threads(seg.view().geometry.n_vcpus));
    PartSink::start(
        setup.out.clone(),
        setup.names.clone(),
        first_part,
        threads,
        start,
        on_part,
        on_commit,
    )
}

/// capture.json at the end of a session: the devices and rows of its
/// report, how it ended, and the losses added to those of the sessions
/// before (`previous`: the appended capture's capture.json, or empty).
fn record_end(
    json: &mut CaptureJson,
    report: &DrainReport,
    previous: &CaptureJson,
    base_rows: [u64; COMMIT_STREAMS],
    ending: Ending,
) {
    for d in &report.devices {
        if !json.devices.contains(d) {
            json.devices.push(d.clone());
        }
    }
    for (t, rows) in &report.rows {
        json.tables
            .insert(t.name().to_string(), base_rows[t.index()] + *rows);
    }
    json.end = Some(ending.end());
    json.window.ended_at = Some(trace_format::Window::now());
    json.window.first_icount = report.first_icount.clone();
    json.window.end_icount = report.window_ended_at.clone();
    let (during, before_attach, collector_died) = report.lost.totals();
    json.events_lost = previous.events_lost + during;
    json.events_lost_before_attach = previous.events_lost_before_attach + before_attach;
    json.events_lost_collector_died = previous.events_lost_collector_died + collector_died;
}

/// What the drain loop watches and updates besides the drainer: QEMU's
/// segment and life, our signals, the progress line, capture.json's device
/// list, the warnings and the loss ledger.
struct Watch<'a> {
    seg: &'a Segment,
    owner: Owner,
    signals: &'a AtomicU32,
    json: &'a Mutex<CaptureJson>,
    flush_every: Option<Duration>,
    /// `--duration`: when to detach.
    deadline: Option<Instant>,
    /// `--duration` itself: with a start trigger, it counts from the start.
    duration: Option<Duration>,
    /// The recording waits for a start trigger (`--from-pc`,
    /// `--from-device`) that has not been seen to fire yet.
    armed: bool,
    /// What we asked the shim to record.
    events: EventSet,
    warned_not_instrumented: bool,
    progress: &'a mut Progress,
    warnings: &'a mut Vec<String>,
    losses: &'a mut LossLedger,
}

impl Watch<'_> {
    /// Drains until QEMU exits or dies, or we are told to stop.
    fn drain_until_end(&mut self, drainer: &mut Drainer) -> Result<Ending> {
        let seg = self.seg;
        // 0, not the current count: a signal that arrived while we were
        // still attaching (the counter starts at 0 when the handlers are
        // installed) is a request to stop too, not something to forget.
        let mut seen_signals = 0;
        let mut grace: Option<Instant> = None;
        let mut last_tick = Instant::now();
        let mut last_alive = Instant::now();
        loop {
            // Read before draining: everything the shim published before it
            // set the flag is then in this pass.
            let exited = seg.qemu_exited();
            let drained = drainer.drain_once()?;
            if exited {
                return Ok(Ending::QemuExited);
            }
            let now = Instant::now();
            let mut stop = false;
            let sigs = self.signals.load(StdOrdering::Relaxed);
            if sigs != seen_signals {
                seen_signals = sigs;
                match self.owner {
                    Owner::Run { child } if grace.is_none() => {
                        let _ = kill(Pid::from_raw(child as i32), Signal::SIGTERM);
                        grace = Some(now + RUN_STOP_GRACE);
                        self.progress.println(
                            "trace-collector: asking QEMU to exit; interrupt again to stop now",
                        );
                    }
                    _ => stop = true,
                }
            }
            if grace.is_some_and(|g| now > g) {
                self.warnings.push(format!(
                    "QEMU did not exit within {} s of SIGTERM",
                    RUN_STOP_GRACE.as_secs()
                ));
                stop = true;
            }
            if stop {
                return self.detach(drainer);
            }
            if self.armed {
                self.check_started(now);
            }
            if self.deadline.is_some_and(|d| now >= d)
                || seg.stopped_by_shim()
                || drainer.window_over()
            {
                self.detach(drainer)?;
                return Ok(Ending::WindowEnded);
            }
            if now.duration_since(last_alive) >= ALIVE_CHECK {
                last_alive = now;
                if !process_alive(seg.pid()) {
                    // Gone: nothing more can arrive. It may have set the flag last thing.
                    let exited = seg.qemu_exited();
                    drainer.drain_once()?;
                    return Ok(if exited {
                        Ending::QemuExited
                    } else {
                        Ending::QemuDied
                    });
                }
            }
            if now.duration_since(last_tick) >= TICK {
                last_tick = now;
                self.tick(drainer)?;
            }
            if drained == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Stops the recording first, then asks for a flush and drains: what
    /// the shim gathered before it saw the recording stop it publishes into
    /// the rings (asked by the flush), and gathers nothing after. Then lets
    /// the segment go.
    fn detach(&mut self, drainer: &mut Drainer) -> Result<Ending> {
        let seg = self.seg;
        self.losses.stop(seg.view());
        seg.stop_recording();
        let epoch = seg.request_flush();
        let asked = Instant::now();
        let drained = (|| {
            while !seg.flushed(epoch) && asked.elapsed() < FLUSH_WAIT {
                drainer.drain_once()?;
                std::thread::sleep(Duration::from_millis(1));
            }
            for _ in 0..1000 {
                if drainer.drain_once()? == 0 {
                    break;
                }
            }
            Ok(())
        })();
        seg.detach();
        drained.map(|()| Ending::Interrupted)
    }

    /// The start trigger fired (the shim went from `Armed` to `Attached`):
    /// notes when in capture.json, and `--duration` counts from there.
    fn check_started(&mut self, now: Instant) {
        if trace_schema::attach::State::of(self.seg.header())
            != Ok(trace_schema::attach::State::Attached)
        {
            return;
        }
        self.armed = false;
        self.json.lock().unwrap().window.started_at = Some(trace_format::Window::now());
        if let Some(d) = self.duration {
            self.deadline = Some(now + d);
        }
    }

    /// Notes in capture.json when the shim's code is instrumented for our
    /// events (the window's events start there); says so once if that
    /// takes long (`idle=lazy` waits for a vCPU to translate or idle).
    fn check_instrumented(&mut self) {
        let mut j = self.json.lock().unwrap();
        if j.window.instrumented_at.is_some() {
            return;
        }
        let now = trace_format::Window::now();
        // Acquire: pairs with the shim's Release (informational).
        let instrumented = self
            .seg
            .header()
            .instrumented_events
            .load(StdOrdering::Acquire);
        if instrumented == self.events.bits() {
            j.window.instrumented_at = Some(now);
        } else if now - j.window.attached_at > NOT_INSTRUMENTED_WARNING.as_secs_f64()
            && !self.warned_not_instrumented
        {
            self.warned_not_instrumented = true;
            let note = format!(
                "the shim has not started recording {} s after the attach: with its option \
                 idle=lazy it starts when a vCPU next translates code or goes idle, which a \
                 guest in a busy loop may never do (idle=free starts within a block)",
                NOT_INSTRUMENTED_WARNING.as_secs()
            );
            self.progress
                .println(&format!("trace-collector: warning: {note}"));
            self.warnings.push(note);
        }
    }

    /// Every `TICK`: our heartbeat, a flush request (what the vCPUs gathered
    /// reaches us at least this often, however slowly their chunks fill),
    /// the attach checked, parts cut of rows older than `flush_every`, new
    /// device names into capture.json, progress.
    fn tick(&mut self, drainer: &mut Drainer) -> Result<()> {
        let seg = self.seg;
        seg.heartbeat();
        seg.request_flush();
        self.check_instrumented();
        if seg.reclaim()? {
            self.warnings
                .push("the shim had marked us detached; attached again".into());
        }
        if let Some(age) = self.flush_every {
            drainer.flush_older_than(age)?;
        }
        if let Some(devices) = drainer.take_new_devices() {
            let mut j = self.json.lock().unwrap();
            for d in devices.iter() {
                if !j.devices.contains(d) {
                    j.devices.push(d.clone());
                }
            }
        }
        let p = drainer.sink_progress();
        self.progress.update(
            drainer.events_drained(),
            p.bytes_written.load(StdOrdering::Relaxed),
            self.losses.during(seg.view()).iter().sum(),
            drainer.full_ring_wait(),
        );
        Ok(())
    }
}

/// `r`, after detaching from `seg` if it is an error: the shim must not stay
/// attached to a collector that is giving up before its capture started.
fn or_detach<T>(seg: &Segment, r: Result<T>) -> Result<T> {
    if r.is_err() {
        seg.detach();
    }
    r
}

/// Where a capture starts, from what the collectors before it left.
struct ResumePoint {
    /// The commit record found in the segment.
    committed: commit::Committed,
    /// Per vCPU: the index of the first record we drain (the released position).
    first_index: Vec<u64>,
    /// Per vCPU, per table: records drained by a collector that died and
    /// whose rows of that table were never written.
    lost_collector_died: Vec<[u64; 5]>,
    /// How the directory is continued (an empty plan: a new capture).
    plan: AppendPlan,
}

/// Reads the commit record and the rings' released positions (we hold the
/// attach, so nobody moves them), and prepares the directory for `--append`.
fn resume_point(
    seg: &Segment,
    setup: &CaptureSetup,
    command: &[String],
    options: &str,
    previous_died: bool,
) -> Result<ResumePoint> {
    let view = seg.view();
    let n_vcpus = view.geometry.n_vcpus;
    // Records between what was committed and where the rings were released
    // were drained by a collector that died: they are lost.
    let committed = commit::read(view);
    let first_index = (0..n_vcpus)
        .map(|v| {
            // Safety: the view's mapping outlives this consumer, and we
            // hold the attach: no other consumer reads the ring.
            let mut ring = unsafe {
                Consumer::new(
                    &view.vcpu(v).event_ring,
                    view.event_data(v),
                    view.geometry.event_ring_bytes,
                )
            };
            // A ring that is corrupt at its released position fails the
            // drain's first pass, which reports it (in capture.json too):
            // until then, count on from what the last consumer left.
            commit::index_at_tail(&mut ring).unwrap_or(ring.weight())
        })
        .collect::<Vec<u64>>();
    let lost_collector_died = first_index
        .iter()
        .zip(&committed.events)
        .map(|(&released, done)| {
            std::array::from_fn(|t| match previous_died {
                true => released.saturating_sub(done[t]),
                false => 0,
            })
        })
        .collect();
    let plan = match &setup.append {
        Some(previous) => append::prepare(
            &setup.out,
            previous.clone(),
            seg.pid(),
            command,
            options,
            &committed,
        )?,
        None => AppendPlan {
            skip_below: vec![[0; 5]; n_vcpus as usize],
            lost_accounted: vec![0; n_vcpus as usize],
            ..Default::default()
        },
    };
    Ok(ResumePoint {
        committed,
        first_index,
        lost_collector_died,
        plan,
    })
}

impl Captured {
    /// Records how QEMU ended, marks the capture complete, and summarizes.
    pub fn complete(mut self, qemu_exit: String) -> Result<Summary> {
        self.json.qemu_exit = Some(qemu_exit.clone());
        self.json.complete = true;
        self.json
            .write(&self.out)
            .context("cannot write the final capture.json")?;
        Ok(Summary {
            out: self.out,
            qemu_pid: self.json.qemu_pid,
            ending: self.ending,
            qemu_exit,
            rows: self.report.rows,
            events: self.report.events,
            lost: self.report.lost,
            events_already_captured: self.report.events_skipped,
            full_ring_waits: self.report.full_ring_waits.iter().sum(),
            full_ring_wait: Duration::from_nanos(self.report.full_ring_wait_ns.iter().sum()),
            bytes_written: self.bytes_written,
            duration: self.duration,
            warnings: self.warnings,
        })
    }
}

/// The result of a capture, printed at the end.
#[derive(Debug, Clone)]
pub struct Summary {
    pub out: PathBuf,
    pub qemu_pid: u32,
    pub ending: Ending,
    /// How QEMU ended, in words (as in capture.json's `qemu_exit`).
    pub qemu_exit: String,
    /// Rows per table.
    pub rows: Vec<(Table, u64)>,
    /// Event records drained per vCPU.
    pub events: Vec<u64>,
    /// Events lost per vCPU, by cause.
    pub lost: LostEvents,
    /// Records drained again that the appended capture already held.
    pub events_already_captured: Vec<u64>,
    /// How often, and how long in all, QEMU waited for room in a full ring
    /// (`overflow=block`): the time the collector held the guest back.
    pub full_ring_waits: u64,
    pub full_ring_wait: Duration,
    pub bytes_written: u64,
    pub duration: Duration,
    pub warnings: Vec<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "trace-collector: capture written to {}",
            self.out.display()
        )?;
        writeln!(f, "  QEMU (pid {}): {}", self.qemu_pid, self.qemu_exit)?;
        let rows: Vec<String> = self
            .rows
            .iter()
            .map(|(t, n)| format!("{} {n}", t.name()))
            .collect();
        writeln!(f, "  rows: {}", rows.join(", "))?;
        writeln!(f, "  events drained: {}", self.events.iter().sum::<u64>())?;
        let (lost, before, died) = self.lost.totals();
        if lost == 0 {
            writeln!(f, "  events lost: none")?;
        } else {
            let per: Vec<String> = self
                .lost
                .during
                .iter()
                .enumerate()
                .filter(|(_, &n)| n > 0)
                .map(|(v, n)| format!("vCPU {v}: {n}"))
                .collect();
            writeln!(f, "  events lost: {lost} ({})", per.join(", "))?;
        }
        if before > 0 {
            writeln!(f, "  events lost before we attached: {before}")?;
        }
        if died > 0 {
            writeln!(
                f,
                "  events lost by a collector that died before writing them: {died}"
            )?;
        }
        let again: u64 = self.events_already_captured.iter().sum();
        if again > 0 {
            writeln!(
                f,
                "  events already in the capture, not written again: {again}"
            )?;
        }
        if self.full_ring_waits > 0 {
            writeln!(
                f,
                "  QEMU waited {:.2} s for room in a full ring ({} waits, overflow=block)",
                self.full_ring_wait.as_secs_f64(),
                self.full_ring_waits
            )?;
        }
        writeln!(
            f,
            "  {:.1} MiB written in {:.1} s",
            self.bytes_written as f64 / (1 << 20) as f64,
            self.duration.as_secs_f64()
        )?;
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        Ok(())
    }
}

/// How an `attach` capture describes QEMU's end (QEMU is not our child).
pub fn attach_qemu_exit(ending: Ending) -> String {
    match ending {
        Ending::QemuExited => "exited (the shim reported its exit)".into(),
        Ending::QemuDied => "QEMU exited without finishing (killed?)".into(),
        Ending::Interrupted | Ending::WindowEnded => {
            "still running (the collector detached)".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_end_adds_its_rows_and_losses_to_the_sessions_before() {
        let previous = CaptureJson {
            events_lost: 5,
            events_lost_before_attach: 1,
            devices: vec!["uart".into()],
            ..Default::default()
        };
        let report = DrainReport {
            rows: vec![(Table::Mem, 7), (Table::Stats, 3)],
            lost: LostEvents {
                during: vec![2, 3],
                before_attach: vec![0, 4],
                collector_died: vec![6, 0],
            },
            devices: vec!["uart".into(), "systick".into()],
            ..Default::default()
        };
        let mut json = previous.clone();
        let mut base = [0; COMMIT_STREAMS];
        base[Table::Mem.index()] = 10;
        record_end(&mut json, &report, &previous, base, Ending::Interrupted);
        assert_eq!(json.tables["mem"], 17);
        assert_eq!(json.tables["stats"], 3);
        assert_eq!(json.devices, ["uart", "systick"]);
        assert_eq!(
            (
                json.events_lost,
                json.events_lost_before_attach,
                json.events_lost_collector_died
            ),
            (10, 5, 6)
        );
        assert_eq!(json.end, Some(End::Interrupted));
    }
}
