//! The writer threads: turn full batches into Parquet parts, in parallel,
//! and put the parts in place in the order they were handed over.
//!
//! The drain thread hands part `k` to encoder `k mod N` through that
//! encoder's `rtrb` ring of capacity 1, and waits while it is full. That
//! bounded hand-over is the point of using rtrb here: at most one batch waits
//! per encoder (plus the one it encodes and the ones being filled), so when
//! the disk or the encoders are slower than the guest, memory stays bounded
//! and the drain slows down, which (with `overflow=block`) slows the guest
//! down, instead of the collector growing until it is killed. It is also
//! wait-free for the drain thread in the common case, unlike a
//! mutex-protected queue.
//!
//! Each encoder writes its part as `DIR/<table>/.part-NNNNNN.parquet.tmp` and
//! fsyncs it; the committer thread then takes the encoders' results in the
//! order the parts were handed over (part `k` from encoder `k mod N`, whose
//! results come in order), renames each to `part-NNNNNN.parquet` and fsyncs
//! the directory, so a reader never sees a partial part, even after a crash,
//! and parts appear in the order the drain made them (a `block_exec` part
//! never before the `code` part describing its blocks).
//!
//! Each part carries what it completes (see `trace_schema::commit`): per
//! vCPU, the records whose rows of its table are all in it or in earlier
//! parts. Once the part is in place the committer updates the commit record
//! and hands it to `on_commit` (which publishes it in the segment).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use trace_schema::commit::Committed;

use crate::write::parquet_part::Compressors;
use crate::write::tables::{Batch, DeviceList, DeviceNames, Table};

/// Batches waiting for each encoder.
const QUEUE: usize = 1;

/// How long an idle thread sleeps before it looks again (it is also woken
/// when there is work).
const IDLE: Duration = Duration::from_millis(20);

/// One part to write.
pub struct Part {
    pub number: u32,
    pub batch: Batch,
    pub devices: DeviceList,
    /// Per vCPU: the records whose rows of this table are all in this part or
    /// earlier ones (`trace_schema::commit`).
    pub covers: Vec<u64>,
}

/// A part encoded into its temporary file, for the committer.
struct Encoded {
    table: Table,
    number: u32,
    covers: Vec<u64>,
    tmp: PathBuf,
    bytes: u64,
    rows: u64,
}

/// What the writers have done so far, readable from any thread.
#[derive(Default)]
pub struct SinkProgress {
    pub bytes_written: AtomicU64,
    pub rows_written: [AtomicU64; 5],
    pub parts_written: [AtomicU64; 5],
    failed: AtomicBool,
    error: Mutex<Option<String>>,
}

impl SinkProgress {
    pub fn rows(&self, t: Table) -> u64 {
        self.rows_written[t.index()].load(Ordering::Relaxed)
    }

    /// Records the first failure; every thread of the sink then stops, and
    /// the drain's next hand-over reports it.
    fn fail(&self, e: &anyhow::Error) {
        let mut error = self.error.lock().unwrap();
        if error.is_none() {
            *error = Some(format!("{e:#}"));
        }
        self.failed.store(true, Ordering::Release);
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

/// Called by the committer after each part it put in place.
pub type OnPart = Box<dyn FnMut(&SinkProgress) + Send>;
/// Called by the committer with the commit record after each part.
pub type OnCommit = Box<dyn FnMut(&Committed) + Send>;

/// An encoder thread and the drain's end of its queue.
struct Encoder {
    queue: rtrb::Producer<Part>,
    thread: JoinHandle<()>,
}

/// The drain thread's end of the writers.
pub struct PartSink {
    encoders: Vec<Encoder>,
    committer: Option<JoinHandle<()>>,
    /// Parts handed over so far (the next part goes to encoder
    /// `handed % encoders.len()`).
    handed: u64,
    progress: Arc<SinkProgress>,
    next_part: [u32; 5],
    first_part: [u32; 5],
    /// The capture directory.
    dir: PathBuf,
}

impl PartSink {
    /// Starts `threads` encoder threads (at least 1) and the committer,
    /// writing under `dir`; each table's parts are numbered from
    /// `first_part` (0, or after an earlier capture's parts); `commit` is the
    /// commit record the parts update.
    pub fn start(
        dir: PathBuf,
        names: Arc<dyn DeviceNames>,
        first_part: [u32; 5],
        threads: usize,
        commit: Committed,
        on_part: OnPart,
        on_commit: OnCommit,
    ) -> Result<PartSink> {
        let progress = Arc::new(SinkProgress::default());
        let threads = threads.max(1);
        let committer_slot: Arc<Mutex<Option<Thread>>> = Arc::new(Mutex::new(None));
        let mut encoders = Vec::new();
        let mut results = Vec::new();
        for i in 0..threads {
            let (queue, parts) = rtrb::RingBuffer::<Part>::new(QUEUE);
            // One result waits to be put in place at most: an encoder then
            // leaves at most two temporary files behind if it is killed.
            let (done, done_rx) = rtrb::RingBuffer::<Encoded>::new(1);
            let (dir, names, progress) = (dir.clone(), names.clone(), progress.clone());
            let committer = committer_slot.clone();
            let thread = std::thread::Builder::new()
                .name(format!("parquet-encoder-{i}"))
                .spawn(move || {
                    encode_parts(parts, done, &dir, names.as_ref(), &progress, &committer)
                })
                .context("cannot start a Parquet encoder thread")?;
            encoders.push(Encoder { queue, thread });
            results.push(done_rx);
        }
        let p = progress.clone();
        let committer = std::thread::Builder::new()
            .name("parquet-committer".into())
            .spawn(move || commit_parts(results, commit, &p, on_part, on_commit))
            .context("cannot start the Parquet committer thread")?;
        *committer_slot.lock().unwrap() = Some(committer.thread().clone());
        Ok(PartSink {
            encoders,
            committer: Some(committer),
            handed: 0,
            progress,
            next_part: first_part,
            first_part,
            dir,
        })
    }

    pub fn progress(&self) -> &Arc<SinkProgress> {
        &self.progress
    }

    /// Parts handed over so far for `table` by this sink.
    pub fn parts_sent(&self, table: Table) -> u32 {
        self.next_part[table.index()] - self.first_part[table.index()]
    }

    /// Hands a batch over as the next part of its table, with what it
    /// completes (`Part::covers`), waiting while its encoder is busy.
    pub fn send(&mut self, batch: Batch, devices: &DeviceList, covers: Vec<u64>) -> Result<()> {
        let table = batch.table();
        let number = self.next_part[table.index()];
        self.push(Part {
            number,
            batch,
            devices: devices.clone(),
            covers,
        })?;
        self.next_part[table.index()] += 1;
        Ok(())
    }

    fn push(&mut self, mut part: Part) -> Result<()> {
        let n = self.encoders.len() as u64;
        let encoder = &mut self.encoders[(self.handed % n) as usize];
        loop {
            if self.progress.failed() {
                let e = self
                    .progress
                    .error
                    .lock()
                    .unwrap()
                    .clone()
                    .unwrap_or_default();
                return Err(anyhow!("the Parquet writer failed: {e}"));
            }
            match encoder.queue.push(part) {
                Ok(()) => {
                    encoder.thread.thread().unpark();
                    self.handed += 1;
                    return Ok(());
                }
                Err(rtrb::PushError::Full(p)) => {
                    part = p;
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    }

    /// Waits until every part handed over is written and in place.
    pub fn finish(mut self) -> Result<()> {
        self.shut_down()?;
        match self.progress.error.lock().unwrap().clone() {
            Some(e) => Err(anyhow!("{e}")),
            None => Ok(()),
        }
    }

    /// Lets the threads write and put in place what was handed over, and
    /// joins them; a second call does nothing.
    fn shut_down(&mut self) -> Result<()> {
        let Some(committer) = self.committer.take() else {
            return Ok(());
        };
        let mut panicked = None;
        for e in std::mem::take(&mut self.encoders) {
            drop(e.queue);
            e.thread.thread().unpark();
            if e.thread.join().is_err() {
                panicked = Some(anyhow!("a Parquet encoder thread panicked"));
            }
        }
        committer.thread().unpark();
        if committer.join().is_err() {
            panicked = Some(anyhow!("the Parquet committer thread panicked"));
        }
        // After a failure, parts encoded but never put in place (the
        // committer stops at the failure, an encoder may finish one after)
        // are temporary files nobody will rename: remove them, as a failed
        // encoder removes its own. Every thread has ended.
        if self.progress.failed() {
            remove_temporaries(&self.dir);
        }
        panicked.map_or(Ok(()), Err)
    }
}

/// A sink dropped without `finish` (the drain stopped on an error, for
/// example when a part could not be handed over because the disk is full)
/// still ends its threads and removes the temporary files of a failure:
/// the process may exit right after, and nothing else would.
impl Drop for PartSink {
    fn drop(&mut self) {
        let _ = self.shut_down();
    }
}

/// An encoder thread: writes each part of its queue to its temporary file
/// and hands the result to the committer, until the queue is abandoned or
/// the sink failed.
fn encode_parts(
    mut parts: rtrb::Consumer<Part>,
    mut done: rtrb::Producer<Encoded>,
    dir: &Path,
    names: &dyn DeviceNames,
    progress: &SinkProgress,
    committer: &Mutex<Option<Thread>>,
) {
    let mut compressors = Compressors::default();
    loop {
        if progress.failed() {
            return;
        }
        let part = match parts.pop() {
            Ok(part) => part,
            Err(_) if parts.is_abandoned() => match parts.pop() {
                Ok(part) => part,
                Err(_) => return,
            },
            Err(_) => {
                std::thread::park_timeout(IDLE);
                continue;
            }
        };
        let table = part.batch.table();
        // A panic (in polars, say) must end as an error the drain thread
        // sees: a writer that just vanished would leave it waiting forever
        // for room in the queue.
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            encode_part(&mut compressors, dir, part, names)
        }))
        .unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(anyhow!(
                "internal error writing a {} part: {msg}",
                table.name()
            ))
        });
        let mut encoded = match written {
            Ok(e) => e,
            Err(e) => {
                progress.fail(&e);
                return;
            }
        };
        // Room comes as the committer takes results: wait for it.
        loop {
            match done.push(encoded) {
                Ok(()) => break,
                Err(rtrb::PushError::Full(e)) => {
                    encoded = e;
                    if progress.failed() {
                        return;
                    }
                    std::thread::park_timeout(Duration::from_millis(1));
                }
            }
        }
        if let Some(t) = committer.lock().unwrap().as_ref() {
            t.unpark();
        }
    }
}

/// The committer thread: puts the parts in place in the order they were
/// handed over, updating the commit record after each.
fn commit_parts(
    mut results: Vec<rtrb::Consumer<Encoded>>,
    mut commit: Committed,
    progress: &SinkProgress,
    mut on_part: OnPart,
    mut on_commit: OnCommit,
) {
    let mut next = 0usize;
    loop {
        if progress.failed() {
            return;
        }
        let n = results.len();
        let from = &mut results[next % n];
        let part = match from.pop() {
            Ok(part) => part,
            // The encoder has exited: every part it had is committed (its
            // results come in order), and since parts go round, so has
            // every later one.
            Err(_) if from.is_abandoned() => match from.pop() {
                Ok(part) => part,
                Err(_) => return,
            },
            Err(_) => {
                std::thread::park_timeout(IDLE);
                continue;
            }
        };
        next += 1;
        match put_in_place(&part) {
            Ok(()) => {
                let t = part.table.index();
                progress
                    .bytes_written
                    .fetch_add(part.bytes, Ordering::Relaxed);
                progress.rows_written[t].fetch_add(part.rows, Ordering::Relaxed);
                progress.parts_written[t].fetch_add(1, Ordering::Relaxed);
                // The part is in place: it now counts as written.
                commit.parts[t] = part.number as u64 + 1;
                for (counts, c) in commit.events.iter_mut().zip(part.covers) {
                    counts[t] = c;
                }
                on_commit(&commit);
                on_part(progress);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&part.tmp);
                progress.fail(&e);
                return;
            }
        }
    }
}

/// Removes the `.part-*.parquet.tmp` files in `dir`'s table directories.
fn remove_temporaries(dir: &Path) {
    let Ok(tables) = std::fs::read_dir(dir) else {
        return;
    };
    for table in tables.flatten() {
        let Ok(files) = std::fs::read_dir(table.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".part-") && name.ends_with(".parquet.tmp") {
                let _ = std::fs::remove_file(f.path());
            }
        }
    }
}

/// Renames an encoded part's temporary file into place and syncs its
/// directory: the rename itself must reach the disk for the part to
/// survive a crash.
fn put_in_place(part: &Encoded) -> Result<()> {
    let tdir = part
        .tmp
        .parent()
        .expect("a part's file is in its table's directory");
    let dest = tdir.join(format!("part-{:06}.parquet", part.number));
    std::fs::rename(&part.tmp, &dest)
        .with_context(|| format!("cannot rename {} to {}", part.tmp.display(), dest.display()))?;
    if let Ok(d) = File::open(tdir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes one part to its temporary file and syncs it.
fn encode_part(
    compressors: &mut Compressors,
    dir: &Path,
    part: Part,
    names: &dyn DeviceNames,
) -> Result<Encoded> {
    let table = part.batch.table();
    let tdir = dir.join(table.name());
    std::fs::create_dir_all(&tdir).with_context(|| format!("cannot create {}", tdir.display()))?;
    let rows = part.batch.len() as u64;
    let tmp = tdir.join(format!(".part-{:06}.parquet.tmp", part.number));
    let written = write_file(&tmp, |w| {
        part.batch
            .write(&part.devices, names, compressors, w)
            .with_context(|| format!("cannot build a {} part", table.name()))
    });
    match written {
        Ok(bytes) => Ok(Encoded {
            table,
            number: part.number,
            covers: part.covers,
            tmp,
            bytes,
            rows,
        }),
        Err(e) => {
            // Disk full (or any other failure): do not leave the partial
            // part behind, using the space the final capture.json still needs.
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Writes a part to `tmp` with `write` and syncs it; returns its size.
fn write_file(tmp: &Path, write: impl FnOnce(&mut BufWriter<File>) -> Result<u64>) -> Result<u64> {
    let file = File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    write(&mut w).with_context(|| format!("cannot write {}", tmp.display()))?;
    let file = w
        .into_inner()
        .map_err(|e| anyhow!("cannot write {}: {}", tmp.display(), e.error()))?;
    file.sync_all()
        .with_context(|| format!("cannot sync {}", tmp.display()))?;
    Ok(file.metadata().map(|m| m.len()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use crate::write::tables::{PluginDeviceNames, StatsBatch};

    /// The drain's error path drops the sink without `finish` (a part
    /// could not be handed over: the disk is full). A part an encoder
    /// finished after the failure must not stay behind as a temporary file
    /// once the sink is gone, and what was put in place before stays.
    #[test]
    fn a_failed_sink_dropped_without_finish_removes_its_temporary_parts() {
        let d = TempDir::new("sink-dropped");
        let mut sink = PartSink::start(
            d.0.clone(),
            Arc::new(PluginDeviceNames),
            [0; 5],
            2,
            Committed::default(),
            Box::new(|_| {}),
            Box::new(|_| {}),
        )
        .unwrap();
        let devices = DeviceList::default();
        sink.send(Batch::Stats(StatsBatch::default()), &devices, vec![])
            .unwrap();
        while sink.progress().parts_written[Table::Stats.index()].load(Ordering::Relaxed) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // What an encoder still busy at the failure would leave.
        std::fs::create_dir_all(d.0.join("mem")).unwrap();
        let late = d.0.join("mem/.part-000003.parquet.tmp");
        std::fs::write(&late, "encoded after the failure").unwrap();
        sink.progress.fail(&anyhow!("No space left on device"));
        let e = sink
            .send(Batch::Stats(StatsBatch::default()), &devices, vec![])
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("No space left on device"),
            "{e:#}"
        );

        drop(sink);
        assert!(!late.exists());
        assert!(d.0.join("stats/part-000000.parquet").exists());
    }
}
