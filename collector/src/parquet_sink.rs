//! The writer thread: turns full batches into Parquet parts.
//!
//! The drain thread hands each full batch over through an `rtrb` ring of
//! capacity 2 and waits while it is full. That bounded hand-over is the point
//! of using rtrb here: at most two batches wait per capture (plus the one
//! being written and the ones being filled), so when the disk or the Parquet
//! encoder is slower than the guest, memory stays bounded and the drain slows
//! down, which (with `overflow=block`) slows the guest down, instead of the
//! collector growing until it is killed. It is also wait-free for the drain
//! thread in the common case, unlike a mutex-protected queue.
//!
//! Every part is written as `DIR/<table>/.part-NNNNNN.parquet.tmp`, fsynced,
//! then renamed to `part-NNNNNN.parquet` (and the directory fsynced), so a
//! reader never sees a partial part, even after a crash.
//!
//! Each part carries what it completes (see `trace_schema::commit`): per
//! vCPU, the records whose rows of its table are all in it or in earlier
//! parts. Once the part is in place the writer updates the commit record and
//! hands it to `on_commit` (which publishes it in the segment).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use trace_schema::commit::Committed;

use crate::columns::Columns;
use crate::parquet_file::PartWriter;
use crate::tables::{Batch, DeviceList, DeviceNames, Table};

/// Batches waiting for the writer thread.
const QUEUE: usize = 2;

/// One part to write.
pub struct Part {
    pub number: u32,
    pub batch: Batch,
    pub devices: DeviceList,
    /// Per vCPU: the records whose rows of this table are all in this part or
    /// earlier ones (`trace_schema::commit`).
    pub covers: Vec<u64>,
}

/// What the writer has done so far, readable from any thread.
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
}

/// Called by the writer thread after each part it wrote.
pub type OnPart = Box<dyn FnMut(&SinkProgress) + Send>;
/// Called by the writer thread with the commit record after each part.
pub type OnCommit = Box<dyn FnMut(&Committed) + Send>;

/// The drain thread's end of the writer.
pub struct PartSink {
    producer: rtrb::Producer<Part>,
    thread: Option<JoinHandle<Result<()>>>,
    progress: Arc<SinkProgress>,
    next_part: [u32; 5],
    first_part: [u32; 5],
}

impl PartSink {
    /// Starts the writer thread, writing under `dir`; each table's parts are
    /// numbered from `first_part` (0, or after an earlier capture's parts);
    /// `commit` is the commit record the parts update.
    pub fn start(
        dir: PathBuf,
        names: Arc<dyn DeviceNames>,
        first_part: [u32; 5],
        mut commit: Committed,
        mut on_part: OnPart,
        mut on_commit: OnCommit,
    ) -> Result<PartSink> {
        let (producer, mut consumer) = rtrb::RingBuffer::<Part>::new(QUEUE);
        let progress = Arc::new(SinkProgress::default());
        let p = progress.clone();
        let thread = std::thread::Builder::new()
            .name("parquet-writer".into())
            .spawn(move || -> Result<()> {
                let mut parquet = PartWriter::default();
                loop {
                    let mut part = match consumer.pop() {
                        Ok(part) => part,
                        Err(_) if consumer.is_abandoned() => match consumer.pop() {
                            Ok(part) => part,
                            Err(_) => return Ok(()),
                        },
                        Err(_) => {
                            std::thread::park_timeout(Duration::from_millis(20));
                            continue;
                        }
                    };
                    let table = part.batch.table();
                    let (number, covers) = (part.number, std::mem::take(&mut part.covers));
                    // A panic (in polars, say) must end as an error the drain
                    // thread sees: a writer that just vanished would leave it
                    // waiting forever for room in the queue.
                    let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        write_part(&mut parquet, &dir, part, names.as_ref())
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
                    match written {
                        Ok((bytes, rows)) => {
                            p.bytes_written.fetch_add(bytes, Ordering::Relaxed);
                            p.rows_written[table.index()].fetch_add(rows, Ordering::Relaxed);
                            p.parts_written[table.index()].fetch_add(1, Ordering::Relaxed);
                            // The part is in place: it now counts as written.
                            let t = table.index();
                            commit.parts[t] = number as u64 + 1;
                            for (counts, c) in commit.events.iter_mut().zip(covers) {
                                counts[t] = c;
                            }
                            on_commit(&commit);
                            on_part(&p);
                        }
                        Err(e) => {
                            *p.error.lock().unwrap() = Some(format!("{e:#}"));
                            p.failed.store(true, Ordering::Release);
                            return Err(e);
                        }
                    }
                }
            })
            .context("cannot start the Parquet writer thread")?;
        Ok(PartSink {
            producer,
            thread: Some(thread),
            progress,
            next_part: first_part,
            first_part,
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
    /// completes (`Part::covers`), waiting while two are already queued.
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
        let writer = self
            .thread
            .as_ref()
            .expect("sink used after finish")
            .thread()
            .clone();
        loop {
            if self.progress.failed.load(Ordering::Acquire) {
                let e = self
                    .progress
                    .error
                    .lock()
                    .unwrap()
                    .clone()
                    .unwrap_or_default();
                return Err(anyhow!("the Parquet writer failed: {e}"));
            }
            match self.producer.push(part) {
                Ok(()) => {
                    writer.unpark();
                    return Ok(());
                }
                Err(rtrb::PushError::Full(p)) => {
                    part = p;
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    }

    /// Waits until every part handed over is written.
    pub fn finish(mut self) -> Result<()> {
        let thread = self.thread.take().expect("finish called twice");
        drop(self.producer);
        thread.thread().unpark();
        thread
            .join()
            .map_err(|_| anyhow!("the Parquet writer thread panicked"))?
    }
}

/// Writes one part; returns its size in bytes and its rows.
fn write_part(
    parquet: &mut PartWriter,
    dir: &Path,
    part: Part,
    names: &dyn DeviceNames,
) -> Result<(u64, u64)> {
    let table = part.batch.table();
    let tdir = dir.join(table.name());
    std::fs::create_dir_all(&tdir).with_context(|| format!("cannot create {}", tdir.display()))?;
    let rows = part.batch.len() as u64;
    let columns = part
        .batch
        .into_columns(&part.devices, names)
        .with_context(|| format!("cannot build a {} part", table.name()))?;
    let tmp = tdir.join(format!(".part-{:06}.parquet.tmp", part.number));
    let dest = tdir.join(format!("part-{:06}.parquet", part.number));
    let written = write_file(parquet, &tmp, &dest, &tdir, columns);
    if written.is_err() {
        // Disk full (or any other failure): do not leave the partial part
        // behind, using the space the final capture.json still needs.
        let _ = std::fs::remove_file(&tmp);
    }
    Ok((written?, rows))
}

/// Writes `columns` to `tmp`, syncs it, renames it to `dest`; returns its size.
fn write_file(
    parquet: &mut PartWriter,
    tmp: &Path,
    dest: &Path,
    tdir: &Path,
    columns: Columns,
) -> Result<u64> {
    let file = File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    parquet
        .write(columns, &mut w)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    let file = w
        .into_inner()
        .map_err(|e| anyhow!("cannot write {}: {}", tmp.display(), e.error()))?;
    file.sync_all()
        .with_context(|| format!("cannot sync {}", tmp.display()))?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    drop(file);
    std::fs::rename(tmp, dest)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dest.display()))?;
    // The rename itself must reach the disk for the part to survive a crash.
    if let Ok(d) = File::open(tdir) {
        let _ = d.sync_all();
    }
    Ok(bytes)
}
