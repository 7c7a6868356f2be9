//! One part's columns as one Parquet file, each column encoded and
//! compressed for what it holds.
//!
//! polars' own writer tries a dictionary for every column and drops it when
//! the column has too many distinct values; on a trace that attempt was most
//! of the collector's CPU. Its lower layer (`polars-parquet`) encodes pages
//! with an encoding we choose, but knows neither BYTE_STREAM_SPLIT for
//! integers nor a zstd level below 1, and makes a new zstd context for every
//! page. So pages are encoded by `polars-parquet` and finished here: split
//! into byte streams where that pays, and compressed with one reused zstd
//! context per level.
//!
//! | columns | encoding | zstd level | why |
//! |---|---|---|---|
//! | `icount`, `asid` | DELTA_BINARY_PACKED | 1 | `icount` grows by small steps within a vCPU (~0.09 B/row); `asid` is the same for long runs |
//! | `vaddr`, `paddr`, `pc`, `block` | BYTE_STREAM_SPLIT | 1 | addresses: their high bytes barely change, so once each byte position is a stream of its own, zstd takes ~0.35 B/row (PLAIN: ~0.7) in about half the time; `pc` needs no dictionary (no hashing per row) |
//! | `value`, `value_hi` | PLAIN | -1 | data: too many distinct values for a dictionary, and byte streams compress worse |
//! | `type`, `device`, `region`, `plugin_device` of `mem`/`mmio` | a dictionary, given as built from the batch's codes (`columns::dictionary`) | 1 | a handful of distinct strings; nothing to hash per row |
//! | `vcpu`, `size` of `mem`/`mmio`, `vcpu`, `insns` of `block_exec` | a dictionary, given as built from the values (`columns::small_integers`) | 1 | a few small integers; a table lookup per row, no hashing |
//! | everything else | polars' default: a dictionary (plain if that fails), plain for booleans | 1 | small tables |
//!
//! Figures: the arm64 boot's `mem` rows, measured column by column in
//! benches/RESULTS.md ("Bytes on disk"). Min/max statistics are kept: they
//! let readers skip row groups (trace-query's icount windows rely on them).
//! Every Parquet reader we know of (polars, DuckDB, pyarrow) reads these
//! encodings.

use std::io::Write;

use anyhow::{anyhow, Result};
#[cfg(test)]
use polars::prelude::DataFrame;
use polars_arrow::array::Array;
use polars_parquet::parquet::compression::Compression;
use polars_parquet::parquet::page::{CompressedDataPage, CompressedDictPage, DictPage};
use polars_parquet::parquet::page::{DataPage, DataPageHeader, FormatEncoding};
use polars_parquet::parquet::{CowBuffer, FallibleStreamingIterator};
use polars_parquet::write::{
    array_to_columns, get_dtype_encoding, CompressedPage, CompressionOptions, DynIter,
    DynStreamingIterator, Encoding, FileWriter, Page, StatisticsOptions, Version, WriteOptions,
};

use crate::columns::Columns;

/// How a column's pages are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnEncoding {
    /// polars' default for the column's type: a dictionary for numbers and
    /// strings (plain if it has too many values), plain for booleans, and
    /// the given dictionary for a dictionary array.
    Default,
    Plain,
    DeltaBinaryPacked,
    /// BYTE_STREAM_SPLIT: byte `k` of every value, then byte `k + 1`, ...
    /// Only for 8-byte integer columns without nulls (else PLAIN).
    ByteStreamSplit,
}

/// How one column is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColumnCoding {
    pub encoding: ColumnEncoding,
    pub zstd_level: i32,
}

/// The coding of a column, chosen by its name (see the module docs).
pub fn coding_of(column: &str) -> ColumnCoding {
    let encoding = match column {
        "icount" | "asid" => ColumnEncoding::DeltaBinaryPacked,
        "vaddr" | "paddr" | "pc" | "block" => ColumnEncoding::ByteStreamSplit,
        "value" | "value_hi" => ColumnEncoding::Plain,
        _ => ColumnEncoding::Default,
    };
    // Data values are the most bytes to compress and compress least:
    // level -1 takes 11% less time than 1 for 3% more bytes (16.8M of the
    // arm64 boot's values, 1 MiB pages).
    let zstd_level = match column {
        "value" | "value_hi" => -1,
        _ => 1,
    };
    ColumnCoding {
        encoding,
        zstd_level,
    }
}

/// Writes Parquet parts, keeping one zstd context per level from part to
/// part (a context is ~1 MiB of tables to set up). One per writer thread.
#[derive(Default)]
pub struct PartWriter {
    zstd: Vec<(i32, zstd::bulk::Compressor<'static>)>,
}

impl PartWriter {
    /// Writes `columns` to `w` as one Parquet file (one row group); returns
    /// the file's size in bytes.
    pub fn write<W: Write>(&mut self, columns: Columns, w: W) -> Result<u64> {
        let Columns {
            schema,
            arrays,
            rows,
        } = columns;
        let options = WriteOptions {
            statistics: StatisticsOptions::default(),
            // Only read for the Compression recorded in the file: pages are
            // compressed by `compress` below.
            compression: CompressionOptions::Zstd(None),
            version: Version::V1,
            data_page_size: None,
        };
        let names: Vec<String> = schema.iter_names().map(|n| n.to_string()).collect();
        let mut writer = FileWriter::try_new(w, schema, options)?;
        let fields = writer.parquet_schema().fields().to_vec();
        let mut chunks = Vec::with_capacity(arrays.len());
        for ((array, field), name) in arrays.into_iter().zip(fields).zip(&names) {
            let coding = coding_of(name);
            let split = coding.encoding == ColumnEncoding::ByteStreamSplit
                && array.null_count() == 0
                && is_8_byte_integer(array.as_ref());
            let encodings = match coding.encoding {
                ColumnEncoding::Default => get_dtype_encoding(array.dtype()),
                ColumnEncoding::Plain | ColumnEncoding::ByteStreamSplit => vec![Encoding::Plain],
                ColumnEncoding::DeltaBinaryPacked => vec![Encoding::DeltaBinaryPacked],
            };
            let zstd = self.compressor(coding.zstd_level)?;
            for pages in array_to_columns(array, field, options, &encodings)? {
                let mut chunk = Vec::new();
                for page in pages {
                    let page = if split {
                        byte_stream_split(page?)
                    } else {
                        page?
                    };
                    chunk.push(compress(zstd, page)?);
                }
                chunks.push(chunk);
            }
        }
        let group = DynIter::new(
            chunks
                .into_iter()
                .map(|chunk| Ok(DynStreamingIterator::new(OwnedPages::new(chunk)))),
        );
        writer.write(rows as u64, group)?;
        // With no footer metadata given, the writer stores the Arrow schema,
        // from which readers (polars) take the column types.
        Ok(writer.end(None)?)
    }

    fn compressor(&mut self, level: i32) -> Result<&mut zstd::bulk::Compressor<'static>> {
        let at = match self.zstd.iter().position(|(l, _)| *l == level) {
            Some(at) => at,
            None => {
                let c = zstd::bulk::Compressor::new(level)
                    .map_err(|e| anyhow!("cannot set up zstd level {level}: {e}"))?;
                self.zstd.push((level, c));
                self.zstd.len() - 1
            }
        };
        Ok(&mut self.zstd[at].1)
    }
}

/// Writes `df` to `w` as one Parquet file; returns the file's size in bytes.
#[cfg(test)]
pub fn write<W: Write>(df: &DataFrame, w: W) -> Result<u64> {
    PartWriter::default().write(Columns::from_frame(df.clone()), w)
}

fn is_8_byte_integer(array: &dyn Array) -> bool {
    use polars_arrow::datatypes::ArrowDataType as T;
    matches!(array.dtype(), T::UInt64 | T::Int64)
}

/// A PLAIN page of 8-byte values without nulls, as BYTE_STREAM_SPLIT: the
/// values (the end of the buffer, after the definition levels) transposed so
/// that byte `k` of every value comes before byte `k + 1` of any.
fn byte_stream_split(page: Page) -> Page {
    let Page::Data(data) = &page else {
        return page;
    };
    let DataPageHeader::V1(mut header) = data.header().clone() else {
        return page;
    };
    if header.encoding != FormatEncoding::PLAIN {
        return page;
    }
    let n = header.num_values as usize;
    let plain = data.buffer();
    let Some(start) = plain.len().checked_sub(n * 8) else {
        return page;
    };
    let mut buffer = Vec::with_capacity(plain.len());
    buffer.extend_from_slice(&plain[..start]);
    split_bytes(&plain[start..], &mut buffer);
    header.encoding = FormatEncoding::BYTE_STREAM_SPLIT;
    Page::Data(DataPage::new(
        DataPageHeader::V1(header),
        CowBuffer::Owned(buffer),
        data.descriptor.clone(),
        data.num_rows.unwrap_or(n),
    ))
}

/// Appends `values` (8-byte little-endian values) to `out` as their 8 byte
/// streams: byte 0 of every value, then byte 1, ... Eight values at a time, as an 8×8 byte
/// matrix transposed in registers (three rounds of block swaps), so that
/// both the reads and the 8 streams of writes go in order.
fn split_bytes(values: &[u8], out: &mut Vec<u8>) {
    let n = values.len() / 8;
    let base = out.len();
    out.resize(base + n * 8, 0);
    let out = &mut out[base..];
    let whole = n / 8 * 8;
    for i in (0..whole).step_by(8) {
        let mut x = [0u64; 8];
        for (r, word) in x.iter_mut().enumerate() {
            let at = (i + r) * 8;
            *word = u64::from_le_bytes(values[at..at + 8].try_into().unwrap());
        }
        // Row r is value i + r, byte c of a row its column c; each round
        // swaps the off-diagonal blocks of the blocks of the round before
        // (4×4, then 2×2, then 1×1 bytes), which transposes the matrix.
        // Written out so that the matrix stays in registers.
        #[inline(always)]
        fn swap(x: &mut [u64; 8], r: usize, half: usize, shift: u32, low: u64) {
            let (a, b) = (x[r], x[r + half]);
            x[r] = (a & low) | ((b & low) << shift);
            x[r + half] = ((a >> shift) & low) | (b & !low);
        }
        const L4: u64 = 0x0000_0000_ffff_ffff;
        const L2: u64 = 0x0000_ffff_0000_ffff;
        const L1: u64 = 0x00ff_00ff_00ff_00ff;
        swap(&mut x, 0, 4, 32, L4);
        swap(&mut x, 1, 4, 32, L4);
        swap(&mut x, 2, 4, 32, L4);
        swap(&mut x, 3, 4, 32, L4);
        swap(&mut x, 0, 2, 16, L2);
        swap(&mut x, 1, 2, 16, L2);
        swap(&mut x, 4, 2, 16, L2);
        swap(&mut x, 5, 2, 16, L2);
        swap(&mut x, 0, 1, 8, L1);
        swap(&mut x, 2, 1, 8, L1);
        swap(&mut x, 4, 1, 8, L1);
        swap(&mut x, 6, 1, 8, L1);
        for (c, word) in x.iter().enumerate() {
            let at = c * n + i;
            out[at..at + 8].copy_from_slice(&word.to_le_bytes());
        }
    }
    for i in whole..n {
        for c in 0..8 {
            out[c * n + i] = values[i * 8 + c];
        }
    }
}

/// Compresses one page with `zstd`.
fn compress(zstd: &mut zstd::bulk::Compressor<'static>, page: Page) -> Result<CompressedPage> {
    Ok(match page {
        Page::Data(data) => {
            let uncompressed = data.buffer().len();
            let compressed = zstd.compress(data.buffer())?;
            let rows = data.num_rows.unwrap_or(data.num_values());
            CompressedPage::Data(CompressedDataPage::new(
                data.header().clone(),
                CowBuffer::Owned(compressed),
                Compression::Zstd,
                uncompressed,
                data.descriptor,
                rows,
            ))
        }
        Page::Dict(dict) => {
            let DictPage {
                buffer,
                num_values,
                is_sorted,
            } = dict;
            let uncompressed = buffer.len();
            let compressed = zstd.compress(&buffer)?;
            CompressedPage::Dict(CompressedDictPage::new(
                CowBuffer::Owned(compressed),
                Compression::Zstd,
                uncompressed,
                num_values,
                is_sorted,
            ))
        }
    })
}

/// A column chunk's compressed pages, handed to the file writer one by one.
struct OwnedPages {
    pages: std::vec::IntoIter<CompressedPage>,
    current: Option<CompressedPage>,
}

impl OwnedPages {
    fn new(pages: Vec<CompressedPage>) -> OwnedPages {
        OwnedPages {
            pages: pages.into_iter(),
            current: None,
        }
    }
}

impl FallibleStreamingIterator for OwnedPages {
    type Item = CompressedPage;
    type Error = polars::prelude::PolarsError;

    fn advance(&mut self) -> Result<(), Self::Error> {
        self.current = self.pages.next();
        Ok(())
    }

    fn get(&self) -> Option<&CompressedPage> {
        self.current.as_ref()
    }
}

/// A part's rows, from its footer.
pub fn part_rows(path: &std::path::Path) -> Result<u64> {
    let mut f = std::fs::File::open(path)?;
    Ok(polars_parquet::read::read_metadata(&mut f)?.num_rows as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::*;

    #[test]
    fn split_bytes_is_the_byte_stream_split() {
        for n in [0usize, 1, 7, 8, 9, 64, 1003] {
            let values: Vec<u8> = (0..n * 8).map(|i| (i * 7 + i / 8) as u8).collect();
            let mut naive = vec![0u8; n * 8];
            for i in 0..n {
                for c in 0..8 {
                    naive[c * n + i] = values[i * 8 + c];
                }
            }
            let mut split = vec![9];
            split_bytes(&values, &mut split);
            assert_eq!(split[0], 9);
            assert_eq!(&split[1..], &naive[..], "{n} values");
        }
    }

    /// Every encoding chosen here reads back exactly, u64 extremes included
    /// (DELTA_BINARY_PACKED stores u64 as wrapping i64 deltas), across
    /// several pages (BYTE_STREAM_SPLIT transposes each page on its own).
    #[test]
    fn a_written_file_reads_back_exactly() {
        let n = 300_000u64;
        let icount: Vec<u64> = (0..n)
            .map(|i| i * 3)
            .chain([u64::MAX - 1, u64::MAX])
            .collect();
        let vaddr: Vec<u64> = (0..n + 2)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let pc: Vec<u64> = (0..n + 2).map(|i| 0x1000 + (i % 7) * 4).collect();
        let value: Vec<Option<u64>> = (0..n + 2)
            .map(|i| (i % 11 != 0).then_some(i << 40))
            .collect();
        let typ: Vec<&str> = (0..n + 2)
            .map(|i| if i % 3 == 0 { "W" } else { "R" })
            .collect();
        let io: Vec<bool> = (0..n + 2).map(|i| i % 5 == 0).collect();
        let df = df!(
            "icount" => icount,
            "vaddr" => vaddr,
            "pc" => pc,
            "value" => value,
            "type" => typ,
            "io" => io,
        )
        .unwrap();
        let dir = std::env::temp_dir().join(format!("parquet-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.parquet");
        let size = write(&df, std::fs::File::create(&path).unwrap()).unwrap();
        assert_eq!(size, std::fs::metadata(&path).unwrap().len());
        assert_eq!(part_rows(&path).unwrap(), n + 2);
        let back = ParquetReader::new(std::fs::File::open(&path).unwrap())
            .finish()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(back.equals_missing(&df), "{back} != {df}");
    }
}
