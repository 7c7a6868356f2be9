//! From the rings to the table batches: reading event chunks and meta
//! messages, resolving device ids, and turning block events into
//! `block_exec` rows (block, first icount, instructions that ran).
//!
//! Block events: a chunk of blocks says "these blocks ran, the first from
//! icount i"; each but the last ran whole (the shim starts a new chunk after
//! a block that stopped early), so each block's icount follows from the
//! lengths before it, which every block id carries. How many of a chunk's
//! last block's instructions ran is only known from the vCPU's next block
//! (icount j): `min(len(B), j - i)` (a block can stop early on an
//! exception). So the last block of each vCPU stays pending until the next
//! one arrives, or until the end of the capture, where the count is
//! `final_icount - i` if QEMU exited (the shim published `final_icount`) and
//! the whole block otherwise.
//!
//! Events are numbered per vCPU (`trace_schema::commit`): a chunk says how
//! many came before it, which must be how many we counted. What a part
//! completes: a full batch is handed over between two chunks, and with it,
//! per vCPU, the index of the first event whose rows of that table are not
//! all in it (or in earlier parts): the pending block's (its `block_exec`
//! row is not written yet) or the next one. In an appended capture, an
//! event's rows of a table are not written again when the capture already
//! holds them (`skip_below`).

pub mod described_blocks;
pub mod device_ids;
pub mod window_end;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use capnp::message::ReaderOptions;
use polars::prelude::PlHashSet;
use trace_format::stats as stat;
use trace_schema::chunk::{self, Chunk};
use trace_schema::events_capnp::meta;
use trace_schema::layout::SegmentView;
use trace_schema::options::EventSet;
use trace_schema::ring::{Consumer, DrainError};
use trace_schema::sync::Ordering;

use crate::drain::described_blocks::DescribedBlocks;
use crate::drain::device_ids::DeviceIds;
use crate::drain::window_end::WindowEnd;
use crate::losses::{LossLedger, LostEvents};
use crate::write::parquet_sink::{PartSink, SinkProgress};
use crate::write::tables::{
    AccessBatch, Batch, BlockExecBatch, CodeBatch, DeviceList, DeviceNames, StatsBatch, Table,
    NO_DEVICE,
};

/// Rows a fresh batch has room for before it grows.
const INITIAL_ROWS: usize = 4096;

/// Why handling one record failed.
enum Fail {
    /// The record is not what the protocol allows.
    Corrupt(String),
    /// Anything else (the writer failed, a nested drain failed): already
    /// a complete message.
    Other(anyhow::Error),
}

impl Fail {
    fn into_error(self) -> anyhow::Error {
        match self {
            Fail::Corrupt(why) => anyhow!(why),
            Fail::Other(e) => e,
        }
    }
}

/// A block event whose instruction count is not known yet.
#[derive(Clone, Copy, Debug)]
struct Pending {
    icount: u64,
    id: u64,
    /// The event's index in its vCPU's event stream (`trace_schema::commit`).
    index: u64,
}

/// Everything but the rings, so that the event ring of one vCPU can be drained
/// while the meta rings are drained from inside its callback.
struct State {
    view: SegmentView,
    mem_on: bool,
    mmio_on: bool,
    insn_on: bool,
    part_rows: usize,
    sink: PartSink,

    mem: AccessBatch,
    mmio: AccessBatch,
    block_exec: BlockExecBatch,
    code: CodeBatch,
    rows_sent: [u64; 5],

    /// The devices the vCPUs named, and their ids.
    devices: DeviceIds,
    /// The blocks whose `code` rows we have.
    blocks: DescribedBlocks,
    /// Blocks whose Meta did not arrive (lost, or announced to an earlier
    /// collector).
    missing_blocks: PlHashSet<u64>,
    pending: Vec<Option<Pending>>,

    /// Per vCPU: the ring index (`commit::event_index`) of the next record.
    next_index: Vec<u64>,
    /// Per vCPU, per table (`Table::index`): the record's rows of that table
    /// are in the capture already when its index is below this (an appended
    /// capture re-reading what the previous collector committed).
    skip_below: Vec<[u64; 5]>,
    /// Per vCPU: records all of whose rows the capture already held.
    skipped: Vec<u64>,
    /// Per table: its batch is full; hand it over after this record.
    flush_due: [bool; 5],
    /// Per table: when its last batch was handed over (or the drain began).
    flushed_at: [Instant; 5],

    events: Vec<u64>,
    /// Per vCPU: the shim's `full_ring_waits` and `full_ring_wait_ns` when
    /// this drain began (its stats count the waits since).
    waits_at_start: Vec<(u64, u64)>,
    metas: u64,
    blocks_unknown: u64,
    devices_unknown: u64,
    events_unexpected: u64,
    /// `--until-icount`, `--max-events`: the rows past it are not written.
    window: WindowEnd,
    /// Per vCPU: the icount of its first event drained (the least of its
    /// chunks' first).
    first_icount: Vec<Option<u64>>,
    /// Told of each device name's first access (`DeviceNames::noticed`).
    names: Option<Arc<dyn DeviceNames>>,
    /// By device index: its first access was told to `names`.
    noticed: Vec<bool>,
}

/// Drains a segment's rings into table batches and hands full batches to
/// the Parquet writer.
pub struct Drainer {
    event_rings: Vec<Consumer>,
    meta_rings: Vec<Consumer>,
    st: State,
}

/// Where a drain starts in the rings, and what it must not write again.
pub struct Resume {
    /// Per vCPU: the ring index of the first record to drain (the released
    /// position when we attached).
    pub first_index: Vec<u64>,
    /// Per vCPU, per table: records below this index get no rows in that
    /// table (0: none).
    pub skip_below: Vec<[u64; 5]>,
    /// Blocks described to an earlier collector whose `code` rows the
    /// capture holds: their `code` rows are not written again.
    pub known_blocks: Vec<u64>,
}

/// The result of a capture's drain.
#[derive(Debug, Clone, Default)]
pub struct DrainReport {
    /// Rows written per table, for the tables of the capture.
    pub rows: Vec<(Table, u64)>,
    /// Event records drained per vCPU.
    pub events: Vec<u64>,
    /// Events lost per vCPU, by cause.
    pub lost: LostEvents,
    /// Records skipped per vCPU: already in the (appended) capture.
    pub events_skipped: Vec<u64>,
    /// Per vCPU: the times QEMU waited for room in a full ring during the
    /// drain (`overflow=block`), and the nanoseconds those waits took.
    pub full_ring_waits: Vec<u64>,
    pub full_ring_wait_ns: Vec<u64>,
    pub devices: Vec<String>,
    /// Per vCPU: the icount of its first event drained, if any.
    pub first_icount: Vec<Option<u64>>,
    /// Per vCPU: the icount its window ended at (`--until-icount`,
    /// `--max-events`), if it did.
    pub window_ended_at: Vec<Option<u64>>,
}

impl Drainer {
    /// A drainer for the rings of `view`, writing the tables `events` implies.
    pub fn new(
        view: SegmentView,
        events: EventSet,
        part_rows: usize,
        sink: PartSink,
        resume: Resume,
    ) -> Drainer {
        let n = view.geometry.n_vcpus;
        let (mut event_rings, mut meta_rings) = (Vec::new(), Vec::new());
        for v in 0..n {
            let c = view.vcpu(v);
            // Safety: the view's mapping outlives the drainer (the capture owns
            // both), and we are the only consumer: we hold the attach.
            unsafe {
                let mut events = Consumer::new(
                    &c.event_ring,
                    view.event_data(v),
                    view.geometry.event_ring_bytes,
                );
                // The events before our first: counted on from there.
                events.set_weight(resume.first_index[v as usize]);
                event_rings.push(events);
                meta_rings.push(Consumer::new(
                    &c.meta_ring,
                    view.meta_data(v),
                    view.geometry.meta_ring_bytes,
                ));
            }
        }
        let part_rows = part_rows.max(1);
        let cap = part_rows.min(INITIAL_ROWS);
        let blocks = resume.known_blocks.into_iter().collect();
        let waits_at_start = (0..n).map(|v| full_ring_waits(&view, v)).collect();
        Drainer {
            event_rings,
            meta_rings,
            st: State {
                view,
                mem_on: events.mem,
                mmio_on: events.mem || events.mmio,
                insn_on: events.insn,
                part_rows,
                sink,
                mem: AccessBatch::with_capacity(if events.mem { cap } else { 0 }),
                mmio: AccessBatch::with_capacity(if events.mem || events.mmio { cap } else { 0 }),
                block_exec: BlockExecBatch::with_capacity(if events.insn { cap } else { 0 }),
                code: CodeBatch::default(),
                rows_sent: [0; 5],
                devices: DeviceIds::new(n as usize, Arc::new(Vec::new())),
                blocks,
                missing_blocks: PlHashSet::default(),
                pending: vec![None; n as usize],
                next_index: resume.first_index,
                skip_below: resume.skip_below,
                skipped: vec![0; n as usize],
                flush_due: [false; 5],
                flushed_at: [Instant::now(); 5],
                events: vec![0; n as usize],
                waits_at_start,
                metas: 0,
                blocks_unknown: 0,
                devices_unknown: 0,
                events_unexpected: 0,
                window: WindowEnd::new(n as usize, events, None, None).expect("no end"),
                first_icount: vec![None; n as usize],
                names: None,
                noticed: Vec::new(),
            },
        }
    }

    /// The drainer telling `names` of each device name's first access.
    pub fn with_device_names(mut self, names: Arc<dyn DeviceNames>) -> Drainer {
        self.st.names = Some(names);
        self
    }

    /// The drainer writing only the rows inside `window`.
    pub fn with_window_end(mut self, window: WindowEnd) -> Drainer {
        self.st.window = window;
        self
    }

    /// Whether the window's end in events has passed (`--until-icount`,
    /// `--max-events`): the collector detaches.
    pub fn window_over(&self) -> bool {
        self.st.window.over()
    }

    /// The tables this drainer writes.
    pub fn tables(&self) -> Vec<Table> {
        Table::for_events(self.st.mem_on, self.st.mmio_on, self.st.insn_on)
    }

    /// Drains every vCPU's meta ring, then its event ring, once. Returns the
    /// number of records drained.
    pub fn drain_once(&mut self) -> Result<u64> {
        let mut n = 0;
        for v in 0..self.event_rings.len() {
            n += self.st.drain_meta(&mut self.meta_rings, v)?;
            n += self.drain_events(v)?;
        }
        Ok(n)
    }

    fn drain_events(&mut self, v: usize) -> Result<u64> {
        let Drainer {
            event_rings,
            meta_rings,
            st,
        } = self;
        let base = st.view.event_data(v as u32) as usize;
        let r = event_rings[v].drain(|bytes| {
            let offset = bytes.as_ptr() as usize - base;
            st.on_chunk(v, bytes, meta_rings).map_err(|f| match f {
                Fail::Corrupt(why) => {
                    anyhow!("corrupt event ring of vCPU {v}: record at ring offset {offset}: {why}")
                }
                Fail::Other(e) => e,
            })
        });
        match r {
            Ok(n) => Ok(n as u64),
            Err(DrainError::Ring(e)) => Err(anyhow!("corrupt event ring of vCPU {v}: {e}")),
            Err(DrainError::Consumer(e)) => Err(e),
        }
    }

    /// Event records drained so far, all vCPUs.
    pub fn events_drained(&self) -> u64 {
        self.st.events.iter().sum()
    }

    /// How long QEMU's vCPUs have waited on a full ring since the drain
    /// began (`overflow=block`), all vCPUs together.
    pub fn full_ring_wait(&self) -> std::time::Duration {
        let ns = (0..self.st.view.geometry.n_vcpus)
            .map(|v| self.st.full_ring_waits_since_start(v).1)
            .sum();
        std::time::Duration::from_nanos(ns)
    }

    /// The devices seen so far, if they changed since the last call.
    /// Hands over the rows of each table whose last part was cut `age` ago
    /// or more (`--flush-every`): none waits much longer to be queryable.
    /// Between records, so a part holds whole records as when it fills.
    pub fn flush_older_than(&mut self, age: Duration) -> Result<()> {
        let st = &mut self.st;
        for t in [Table::Mem, Table::Mmio, Table::BlockExec, Table::Code] {
            if st.batch_len(t) > 0 && st.flushed_at[t.index()].elapsed() >= age {
                st.flush(t).map_err(Fail::into_error)?;
            }
        }
        Ok(())
    }

    pub fn take_new_devices(&mut self) -> Option<DeviceList> {
        self.st.devices.take_new()
    }

    pub fn sink_progress(&self) -> &Arc<SinkProgress> {
        self.st.sink.progress()
    }

    /// Ends the capture's tables: counts each vCPU's last block, writes the
    /// partial batches, an empty part for each table that has none, and the
    /// stats table; waits for the writer.
    pub fn finish(mut self, losses: &LossLedger, qemu_exited: bool) -> Result<DrainReport> {
        let Drainer { meta_rings, st, .. } = &mut self;
        let n = st.view.geometry.n_vcpus;
        for v in 0..n as usize {
            if let Some(p) = st.pending[v].take() {
                let end = qemu_exited.then(|| {
                    st.view
                        .vcpu(v as u32)
                        .counters
                        .final_icount
                        .load(Ordering::Relaxed)
                });
                st.block_ran(v, p, end, meta_rings).map_err(|f| match f {
                    Fail::Corrupt(why) => anyhow!("vCPU {v}: {why}"),
                    Fail::Other(e) => e,
                })?;
            }
        }
        let tables = self.tables();
        let st = &mut self.st;
        // What is left, and an empty part for each table that has none (so
        // that every table of the capture exists).
        for &t in &tables {
            if t != Table::Stats && (st.batch_len(t) > 0 || st.sink.parts_sent(t) == 0) {
                st.flush(t).map_err(Fail::into_error)?;
            }
        }

        let mut report = DrainReport {
            events: st.events.clone(),
            events_skipped: st.skipped.clone(),
            devices: st.devices.names().as_ref().clone(),
            first_icount: st.first_icount.clone(),
            window_ended_at: st.window.ended_at().to_vec(),
            ..Default::default()
        };
        let mut stats = StatsBatch::default();
        let during = losses.during(&st.view);
        for v in 0..n {
            let c = &st.view.vcpu(v).counters;
            let lost = during.get(v as usize).copied().unwrap_or(0);
            let before = losses.before_attach().get(v as usize).copied().unwrap_or(0);
            let died = losses.collector_died(v as usize);
            report.lost.during.push(lost);
            report.lost.before_attach.push(before);
            stats.push(stat::EVENTS.name, Some(v), st.events[v as usize]);
            stats.push(stat::EVENTS_LOST.name, Some(v), lost);
            stats.push(stat::EVENTS_LOST_BEFORE_ATTACH.name, Some(v), before);
            let mut died_max = 0;
            for &t in &tables {
                if matches!(t, Table::Mem | Table::Mmio | Table::BlockExec) {
                    let n = died[t.index()];
                    died_max = died_max.max(n);
                    let name = stat::EVENTS_LOST_COLLECTOR_DIED.for_table(t.name());
                    stats.push(name, Some(v), n);
                }
            }
            report.lost.collector_died.push(died_max);
            stats.push(
                stat::EVENTS_ALREADY_CAPTURED.name,
                Some(v),
                st.skipped[v as usize],
            );
            stats.push(
                stat::EVENTS_AFTER_WINDOW.name,
                Some(v),
                st.window.after()[v as usize],
            );
            stats.push(
                stat::META_LOST.name,
                Some(v),
                c.meta_lost.load(Ordering::Relaxed),
            );
            let (waits, wait_ns) = st.full_ring_waits_since_start(v);
            stats.push(stat::FULL_RING_WAITS.name, Some(v), waits);
            stats.push(stat::FULL_RING_WAIT_NS.name, Some(v), wait_ns);
            report.full_ring_waits.push(waits);
            report.full_ring_wait_ns.push(wait_ns);
            if qemu_exited {
                stats.push(
                    stat::FINAL_ICOUNT.name,
                    Some(v),
                    c.final_icount.load(Ordering::Relaxed),
                );
                stats.push(
                    stat::EVENTS_WRITTEN.name,
                    Some(v),
                    c.events_written.load(Ordering::Relaxed),
                );
            }
        }
        stats.push(
            stat::EVENTS_LOST_UNCOUNTED.name,
            None,
            losses.uncounted() as u64,
        );
        stats.push(stat::META_RECORDS.name, None, st.metas);
        stats.push(stat::BLOCKS_UNKNOWN.name, None, st.blocks_unknown);
        stats.push(stat::DEVICES_UNKNOWN.name, None, st.devices_unknown);
        stats.push(stat::EVENTS_UNEXPECTED.name, None, st.events_unexpected);
        for &t in &tables {
            if t != Table::Stats {
                stats.push(
                    stat::ROWS.for_table(t.name()),
                    None,
                    st.rows_sent[t.index()],
                );
                report.rows.push((t, st.rows_sent[t.index()]));
            }
        }
        report.rows.push((Table::Stats, stats.len() as u64));
        let devices = st.devices.names().clone();
        let covers = st.cover(Table::Stats);
        st.sink.send(Batch::Stats(stats), &devices, covers)?;
        self.st.sink.finish()?;
        Ok(report)
    }
}

impl State {
    /// Drains vCPU `v`'s meta ring.
    fn drain_meta(&mut self, rings: &mut [Consumer], v: usize) -> Result<u64> {
        let base = self.view.meta_data(v as u32) as usize;
        let r = rings[v].drain(|bytes| {
            let offset = bytes.as_ptr() as usize - base;
            self.on_meta(v, bytes).map(|()| 1).map_err(|f| match f {
                Fail::Corrupt(why) => {
                    anyhow!("corrupt meta ring of vCPU {v}: record at ring offset {offset}: {why}")
                }
                Fail::Other(e) => e,
            })
        });
        match r {
            Ok(n) => Ok(n as u64),
            Err(DrainError::Ring(e)) => Err(anyhow!("corrupt meta ring of vCPU {v}: {e}")),
            Err(DrainError::Consumer(e)) => Err(e),
        }
    }

    fn drain_all_metas(&mut self, rings: &mut [Consumer]) -> Result<(), Fail> {
        for v in 0..rings.len() {
            self.drain_meta(rings, v).map_err(Fail::Other)?;
        }
        Ok(())
    }

    fn on_meta(&mut self, v: usize, bytes: &[u8]) -> Result<(), Fail> {
        self.metas += 1;
        // Copy out of shared memory first: the reader must not see bytes change.
        let mut words = capnp::Word::allocate_zeroed_vec(bytes.len().div_ceil(8));
        capnp::Word::words_to_bytes_mut(&mut words)[..bytes.len()].copy_from_slice(bytes);
        let mut slice = capnp::Word::words_to_bytes(&words);
        let bad = |e: capnp::Error| Fail::Corrupt(format!("not a Meta message: {e}"));
        let msg = capnp::serialize::read_message_from_flat_slice(&mut slice, ReaderOptions::new())
            .map_err(bad)?;
        let root = msg.get_root::<meta::Reader>().map_err(bad)?;
        match root
            .which()
            .map_err(|e| Fail::Corrupt(format!("unknown Meta kind {}", e.0)))?
        {
            meta::Device(d) => {
                let d = d.map_err(bad)?;
                let name = d.get_name().map_err(bad)?;
                let name = String::from_utf8_lossy(name.as_bytes());
                self.devices.announce(v, d.get_id(), &name);
            }
            meta::Block(b) => {
                let b = b.map_err(bad)?;
                let id = b.get_id();
                if self.blocks.contains(id) {
                    return Ok(()); // announced again (a new attach): known already
                }
                let insns = b.get_insns().map_err(bad)?;
                if insns.len() as u64 != chunk::block_insns(id) {
                    return Err(Fail::Corrupt(format!(
                        "block {id:#x} has {} instructions, its id says {}",
                        insns.len(),
                        chunk::block_insns(id)
                    )));
                }
                for (i, insn) in insns.iter().enumerate() {
                    let pc = insn.get_pc();
                    if self.insn_on {
                        let bytes = insn.get_bytes().map_err(bad)?;
                        let disas = insn.get_disas().map_err(bad)?;
                        let symbol = insn.get_symbol().map_err(bad)?;
                        self.code.push(
                            id,
                            i as u32,
                            pc,
                            bytes,
                            &String::from_utf8_lossy(disas.as_bytes()),
                            &String::from_utf8_lossy(symbol.as_bytes()),
                        );
                        if self.code.len() >= self.part_rows {
                            self.flush(Table::Code)?;
                        }
                    }
                }
                self.blocks.insert(id);
            }
        }
        Ok(())
    }

    /// Handles one chunk of vCPU `v`'s event ring; returns how many events
    /// it holds (its weight in the ring: `trace_schema::commit`).
    #[inline]
    fn on_chunk(&mut self, v: usize, bytes: &[u8], metas: &mut [Consumer]) -> Result<u64, Fail> {
        let c = chunk::parse(bytes).map_err(|why| Fail::Corrupt(why.to_string()))?;
        let h = *c.header();
        if h.vcpu as usize != v {
            return Err(Fail::Corrupt(format!("the chunk says vCPU {}", h.vcpu)));
        }
        if h.first_index != self.next_index[v] {
            return Err(Fail::Corrupt(format!(
                "the chunk follows {} events, not the {} drained before it",
                h.first_index, self.next_index[v]
            )));
        }
        let first = self.next_index[v];
        // A vCPU's chunks of accesses and of blocks each come in icount
        // order, not with each other: its first event is the least first.
        let chunk_first = match c {
            Chunk::Accesses(..) => c
                .accesses()
                .next()
                .map_or(h.icount, |a| h.icount.wrapping_add(a.icount_delta as u64)),
            Chunk::Blocks(..) => h.icount,
        };
        let known = &mut self.first_icount[v];
        *known = Some(known.map_or(chunk_first, |k| k.min(chunk_first)));
        match c {
            Chunk::Accesses(..) => self.on_accesses(v, &c, metas)?,
            Chunk::Blocks(..) => self.on_blocks(v, &c, metas)?,
        }
        // Between two chunks: a part never holds only some of an event's
        // rows of its table.
        if self.flush_due != [false; 5] {
            for t in [Table::Mem, Table::Mmio, Table::BlockExec] {
                if std::mem::take(&mut self.flush_due[t.index()]) {
                    self.flush(t)?;
                }
            }
        }
        Ok(self.next_index[v] - first)
    }

    /// The accesses of chunk `c` of vCPU `v`.
    fn on_accesses(&mut self, v: usize, c: &Chunk, metas: &mut [Consumer]) -> Result<(), Fail> {
        let h = *c.header();
        let skip = self.skip_below[v];
        let (mem_from, mmio_from) = (skip[Table::Mem.index()], skip[Table::Mmio.index()]);
        if self.mem_on {
            self.mem.start_run(v as u32, h.asid);
        }
        if self.mmio_on {
            self.mmio.start_run(v as u32, h.asid);
        }
        let first = self.next_index[v];
        if self.mem_on && first >= mem_from && first >= mmio_from && self.inside_window(c) {
            // The common case: every access is a row of `mem`, and the I/O
            // ones of `mmio` too.
            let before = self.mem.devices.len();
            let n = self
                .mem
                .push_chunk(h.icount, c.records())
                .map_err(|why| Fail::Corrupt(why.into()))?;
            self.next_index[v] += n;
            self.events[v] += n;
            for i in before..self.mem.devices.len() {
                let (row, id) = self.mem.devices[i];
                let device = self.device(v, id as u16, metas)?;
                self.notice(
                    device,
                    self.mem.paddr[row as usize],
                    (v as u32, self.mem.icount[row as usize]),
                );
                self.mem.devices[i].1 = device;
                if self.mmio_on {
                    self.mmio.push_row_of(&self.mem, row as usize, device);
                }
            }
            self.flush_due[Table::Mem.index()] |= self.mem.len() >= self.part_rows;
            self.flush_due[Table::Mmio.index()] |= self.mmio.len() >= self.part_rows;
            return Ok(());
        }
        let mut accesses = c.accesses().peekable();
        while let Some(a) = accesses.next() {
            if a.is_high_half() {
                return Err(Fail::Corrupt(
                    "the high half of a 16-byte access follows no low half".into(),
                ));
            }
            let high = match accesses.peek() {
                Some(next) if next.is_high_half() => {
                    let next = accesses.next().unwrap();
                    if a.size != 16 {
                        return Err(Fail::Corrupt(format!(
                            "a high half follows a {}-byte access",
                            a.size
                        )));
                    }
                    next.value
                }
                _ if a.size > 8 => {
                    return Err(Fail::Corrupt(format!(
                        "a {}-byte access without its high half",
                        a.size
                    )))
                }
                _ => 0,
            };
            let index = self.next_index[v];
            self.next_index[v] += 1;
            let (held_mem, held_mmio) = (index < mem_from, index < mmio_from);
            if (!self.mem_on || held_mem) && held_mmio {
                self.skipped[v] += 1;
                continue;
            }
            self.events[v] += 1;
            let io = a.is_io();
            if !(self.mem_on || (io && self.mmio_on)) {
                // A RAM access in a capture of MMIO only.
                self.events_unexpected += 1;
                continue;
            }
            let icount = h.icount.wrapping_add(a.icount_delta as u64);
            if !self.window.take(v, icount) {
                continue;
            }
            let device = if io {
                let device = self.device(v, a.device, metas)?;
                self.notice(device, a.paddr, (v as u32, icount));
                device
            } else {
                NO_DEVICE
            };
            if self.mem_on && !held_mem {
                self.mem.push(icount, &a, high, device);
            }
            if io && self.mmio_on && !held_mmio {
                self.mmio.push(icount, &a, high, device);
            }
        }
        self.flush_due[Table::Mem.index()] |= self.mem.len() >= self.part_rows;
        self.flush_due[Table::Mmio.index()] |= self.mmio.len() >= self.part_rows;
        Ok(())
    }

    /// The blocks of chunk `c` of vCPU `v`: each becomes the pending block,
    /// whose predecessor's row is then written.
    fn on_blocks(&mut self, v: usize, c: &Chunk, metas: &mut [Consumer]) -> Result<(), Fail> {
        if !self.insn_on {
            let n = c.blocks().count() as u64;
            self.next_index[v] += n;
            self.events[v] += n;
            self.events_unexpected += n;
            return Ok(());
        }
        let held_below = self.skip_below[v][Table::BlockExec.index()];
        let mut icount = c.header().icount;
        let ids = c.records();
        let n = ids.len() / 8;
        let id_at = |k: usize| u64::from_le_bytes(ids[8 * k..8 * k + 8].try_into().unwrap());
        // The block before this chunk ended where this chunk starts.
        if let (Some(prev), true) = (self.pending[v].take(), n > 0) {
            self.block_ran(v, prev, Some(icount), metas)?;
        }
        let first = self.next_index[v];
        self.next_index[v] += n as u64;
        // Blocks held already count as skipped, the others as events.
        let held = (held_below.saturating_sub(first) as usize).min(n) as u64;
        self.skipped[v] += held;
        self.events[v] += n as u64 - held;
        // Every block of a chunk but the last ran whole (the shim starts a
        // new chunk after a block that stopped early): its row is known now.
        let whole = n.saturating_sub(1);
        let held = held.min(whole as u64) as usize;
        for k in 0..held {
            icount = icount.wrapping_add(chunk::block_insns(id_at(k)));
        }
        if self.window.is_open_ended() {
            // Every block is inside: first look up the descriptions, then
            // add the rows in one loop (a fifth less drain time than a
            // row at a time, each with its window and lookup).
            for k in held..whole {
                self.count_if_undescribed(id_at(k), metas)?;
            }
            icount = self
                .block_exec
                .push_whole(v as u32, icount, &ids[8 * held..8 * whole]);
        } else {
            for k in held..whole {
                let id = id_at(k);
                let len = chunk::block_insns(id);
                let ran = self.window.take_insns(v, icount, len);
                if ran > 0 {
                    self.count_if_undescribed(id, metas)?;
                    self.block_exec.push(v as u32, icount, id, ran as u32);
                }
                icount = icount.wrapping_add(len);
            }
        }
        // The last waits for the next block (or the end) to say how much of
        // it ran. A block held already still becomes the pending one: the
        // next block's row needs its icount.
        if n > 0 {
            self.pending[v] = Some(Pending {
                icount,
                id: id_at(n - 1),
                index: first + n as u64 - 1,
            });
        }
        self.flush_due[Table::BlockExec.index()] |= self.block_exec.len() >= self.part_rows;
        Ok(())
    }

    /// Whether every access of chunk `c` is inside the window
    /// (counted in if so); else they are taken one at a time.
    #[inline]
    fn inside_window(&mut self, c: &Chunk) -> bool {
        if self.window.is_open_ended() {
            return true;
        }
        let base = c.header().icount;
        let (mut n, mut last) = (0, base);
        for a in c.accesses().filter(|a| !a.is_high_half()) {
            n += 1;
            last = base.wrapping_add(a.icount_delta as u64);
        }
        self.window.take_all(n, last)
    }

    /// Per vCPU: the index of its first record whose rows of table `t` may
    /// not all be in batches yet: for `block_exec` the pending block's (its
    /// row comes when the next block arrives), else the next record's.
    fn cover(&self, t: Table) -> Vec<u64> {
        (0..self.next_index.len())
            .map(|v| match self.pending[v] {
                Some(p) if t == Table::BlockExec => p.index,
                _ => self.next_index[v],
            })
            .collect()
    }

    /// Tells `names` of the first access to capture-wide device `device`,
    /// at `paddr`, made by (vCPU, icount) `at`.
    #[inline]
    fn notice(&mut self, device: u32, paddr: u64, at: (u32, u64)) {
        if device == NO_DEVICE || self.noticed.get(device as usize) == Some(&true) {
            return;
        }
        self.notice_first(device, paddr, at);
    }

    #[cold]
    #[inline(never)]
    fn notice_first(&mut self, device: u32, paddr: u64, at: (u32, u64)) {
        let i = device as usize;
        if self.noticed.len() <= i {
            self.noticed.resize(i + 1, false);
        }
        self.noticed[i] = true;
        if let (Some(names), Some(name)) = (&self.names, self.devices.names().get(i)) {
            names.noticed(paddr, name, at);
        }
    }

    /// The capture-wide index of vCPU `v`'s device `id`.
    fn device(&mut self, v: usize, id: u16, metas: &mut [Consumer]) -> Result<u32, Fail> {
        if id == chunk::NO_DEVICE {
            self.devices_unknown += 1;
            return Ok(NO_DEVICE);
        }
        if let Some(i) = self.devices.get(v, id) {
            return Ok(i);
        }
        // Published after our last pass over this vCPU's meta ring.
        self.drain_meta(metas, v).map_err(Fail::Other)?;
        Ok(match self.devices.get(v, id) {
            Some(i) => i,
            None => {
                self.devices_unknown += 1;
                NO_DEVICE
            }
        })
    }

    /// Writes the `block_exec` row of block event `p` on vCPU `v`, whose
    /// vCPU had executed `end` instructions when its next block started (or
    /// when QEMU exited); `None`: the whole block ran.
    #[inline]
    fn block_ran(
        &mut self,
        v: usize,
        p: Pending,
        end: Option<u64>,
        metas: &mut [Consumer],
    ) -> Result<(), Fail> {
        if p.index < self.skip_below[v][Table::BlockExec.index()] {
            return Ok(()); // its row is in the capture already
        }
        let len = chunk::block_insns(p.id);
        let n = match end {
            Some(end) => len.min(end.saturating_sub(p.icount)),
            None => len,
        };
        let n = if n > 0 {
            self.window.take_insns(v, p.icount, n)
        } else {
            0
        };
        if n > 0 {
            self.count_if_undescribed(p.id, metas)?;
            self.block_exec.push(v as u32, p.icount, p.id, n as u32);
        }
        self.flush_due[Table::BlockExec.index()] |= self.block_exec.len() >= self.part_rows;
        Ok(())
    }

    /// Counts block `id` in `blocks_unknown` if no meta record describes
    /// it, drained so far or waiting in the meta rings.
    #[inline]
    fn count_if_undescribed(&mut self, id: u64, metas: &mut [Consumer]) -> Result<(), Fail> {
        if !self.blocks.contains(id) && !self.look_for_block(id, metas)? {
            self.blocks_unknown += 1;
        }
        Ok(())
    }

    /// Whether block `id`, not described in the meta records drained so
    /// far, is described now (rare: kept out of `block_ran`'s line).
    #[cold]
    #[inline(never)]
    fn look_for_block(&mut self, id: u64, metas: &mut [Consumer]) -> Result<bool, Fail> {
        if self.missing_blocks.contains(&id) {
            return Ok(false);
        }
        // Its Meta may sit in another vCPU's meta ring (translated there).
        self.drain_all_metas(metas)?;
        let known = self.blocks.contains(id);
        if !known {
            // A Meta is published before the block's first event: after
            // this pass it can never arrive. Do not look again.
            self.missing_blocks.insert(id);
        }
        Ok(known)
    }

    /// vCPU `v`'s (`full_ring_waits`, `full_ring_wait_ns`) since this drain
    /// began.
    fn full_ring_waits_since_start(&self, v: u32) -> (u64, u64) {
        let (waits, ns) = full_ring_waits(&self.view, v);
        let (waits0, ns0) = self.waits_at_start[v as usize];
        (waits.saturating_sub(waits0), ns.saturating_sub(ns0))
    }

    fn batch_len(&self, t: Table) -> usize {
        match t {
            Table::Mem => self.mem.len(),
            Table::Mmio => self.mmio.len(),
            Table::BlockExec => self.block_exec.len(),
            Table::Code => self.code.len(),
            Table::Stats => 0,
        }
    }

    /// Hands table `t`'s batch to the writer (even an empty one).
    fn flush(&mut self, t: Table) -> Result<(), Fail> {
        if t == Table::BlockExec && self.code.len() > 0 {
            // The blocks of these rows are described in `code` rows not
            // written yet: write them first (the writer keeps the order), so
            // that a part of block_exec is never on disk without its blocks'
            // pcs. A collector that continues a killed one's capture then
            // knows every block the kept parts executed.
            self.flush(Table::Code)?;
        }
        // A table that filled a batch is likely to fill the next: reserve it whole.
        // A part ends after the chunk that filled it: room for one more
        // chunk's rows, so the vectors never grow (a copy of every column).
        let cap = if self.batch_len(t) >= self.part_rows {
            self.part_rows + chunk::MAX_BLOCKS.max(chunk::MAX_ACCESSES)
        } else {
            0
        };
        let batch = match t {
            Table::Mem => Batch::Mem(std::mem::replace(
                &mut self.mem,
                AccessBatch::with_capacity(cap),
            )),
            Table::Mmio => Batch::Mmio(std::mem::replace(
                &mut self.mmio,
                AccessBatch::with_capacity(cap),
            )),
            Table::BlockExec => Batch::BlockExec(std::mem::replace(
                &mut self.block_exec,
                BlockExecBatch::with_capacity(cap),
            )),
            Table::Code => Batch::Code(std::mem::take(&mut self.code)),
            Table::Stats => unreachable!("stats are written by finish"),
        };
        self.rows_sent[t.index()] += batch.len() as u64;
        self.flushed_at[t.index()] = Instant::now();
        let covers = self.cover(t);
        self.sink
            .send(batch, self.devices.names(), covers)
            .map_err(Fail::Other)
    }
}

/// vCPU `v`'s (`full_ring_waits`, `full_ring_wait_ns`) counters.
fn full_ring_waits(view: &SegmentView, v: u32) -> (u64, u64) {
    let c = &view.vcpu(v).counters;
    (
        c.full_ring_waits.load(Ordering::Relaxed),
        c.full_ring_wait_ns.load(Ordering::Relaxed),
    )
}
