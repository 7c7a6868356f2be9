//! A Parquet part built column by column, straight from the batch's
//! vectors: each column is encoded (`encodings`), given its statistics and
//! compressed as soon as it is added, then the file is assembled by
//! polars-parquet's file writer, which also stores the Arrow schema readers
//! take the column types from.
//!
//! Each column is one data page (after a dictionary page for dictionary
//! columns): a part is at most a few MiB per column, and one page per chunk
//! keeps the chunk's statistics exactly the page's (polars-parquet would
//! otherwise merge the pages' min and max of u64 columns as signed values).
//!
//! Every column is nullable (OPTIONAL), as polars writes them, so every
//! reader sees the schemas it saw before this writer.

use std::io::Write;

use anyhow::{anyhow, Result};
use polars_arrow::datatypes::{ArrowDataType, ArrowSchema, Field};
use polars_parquet::parquet::compression::Compression;
use polars_parquet::parquet::page::{
    CompressedDataPage, CompressedDictPage, DataPageHeader, DataPageHeaderV1, FormatEncoding,
};
use polars_parquet::parquet::statistics::ParquetStatistics;
use polars_parquet::parquet::{CowBuffer, FallibleStreamingIterator};
use polars_parquet::write::{
    CompressedPage, CompressionOptions, DynIter, DynStreamingIterator, FileWriter,
    StatisticsOptions, Version, WriteOptions,
};

use crate::write::encodings::{self, Bitmap};

/// How a u64 column's values are laid out in its page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum U64Layout {
    /// DELTA_BINARY_PACKED: for values that grow by small steps (`icount`)
    /// or stay the same for long runs (`asid`).
    Delta,
    /// BYTE_STREAM_SPLIT: for addresses, whose high bytes barely change: once
    /// each byte position is a stream of its own, zstd takes little of them.
    ByteStreamSplit,
    /// PLAIN: for data values, too varied for anything else to pay.
    Plain,
}

/// A page's bytes, compressed, with what its header needs.
enum EncodedPage {
    Dict {
        compressed: Vec<u8>,
        uncompressed: usize,
        values: usize,
    },
    Data {
        compressed: Vec<u8>,
        uncompressed: usize,
        encoding: FormatEncoding,
        statistics: ParquetStatistics,
    },
}

/// One zstd context per level, kept from part to part (a context is ~1 MiB
/// of tables to set up). One per writer thread.
#[derive(Default)]
pub struct Compressors {
    zstd: Vec<(i32, zstd::bulk::Compressor<'static>)>,
}

impl Compressors {
    fn compress(&mut self, level: i32, bytes: &[u8]) -> Result<Vec<u8>> {
        let at = match self.zstd.iter().position(|(l, _)| *l == level) {
            Some(at) => at,
            None => {
                let c = zstd::bulk::Compressor::new(level)
                    .map_err(|e| anyhow!("cannot set up zstd level {level}: {e}"))?;
                self.zstd.push((level, c));
                self.zstd.len() - 1
            }
        };
        Ok(self.zstd[at].1.compress(bytes)?)
    }
}

/// A part being built: add its columns in order, then `write` it.
pub struct PartBuilder<'a> {
    rows: usize,
    schema: ArrowSchema,
    columns: Vec<Vec<EncodedPage>>,
    compressors: &'a mut Compressors,
    /// Reused for each page's uncompressed bytes.
    scratch: Vec<u8>,
}

/// zstd level of most columns: as fast as zstd goes while still finding the
/// repeats addresses and counters are made of.
pub const LEVEL: i32 = 1;
/// zstd level of data values: the most bytes, and the least to find in them
/// (-1 took 11% less time than 1 for 3% more bytes on the arm64 boot's
/// values, benches/RESULTS.md).
pub const VALUE_LEVEL: i32 = -1;

impl<'a> PartBuilder<'a> {
    pub fn new(rows: usize, compressors: &'a mut Compressors) -> PartBuilder<'a> {
        PartBuilder {
            rows,
            schema: ArrowSchema::default(),
            columns: Vec::new(),
            compressors,
            scratch: Vec::new(),
        }
    }

    fn field(&mut self, name: &str, dtype: ArrowDataType) {
        self.schema
            .insert(name.into(), Field::new(name.into(), dtype, true));
    }

    /// Compresses `self.scratch` as a data page of `encoding`.
    fn data_page(
        &mut self,
        level: i32,
        encoding: FormatEncoding,
        statistics: ParquetStatistics,
    ) -> Result<EncodedPage> {
        Ok(EncodedPage::Data {
            compressed: self.compressors.compress(level, &self.scratch)?,
            uncompressed: self.scratch.len(),
            encoding,
            statistics,
        })
    }

    /// A u64 column without nulls.
    pub fn u64s(
        &mut self,
        name: &str,
        values: &[u64],
        layout: U64Layout,
        level: i32,
    ) -> Result<()> {
        debug_assert_eq!(values.len(), self.rows, "column {name}");
        self.field(name, ArrowDataType::UInt64);
        let mut page = std::mem::take(&mut self.scratch);
        page.clear();
        encodings::all_valid_levels(values.len(), &mut page);
        let (encoding, range) = match layout {
            U64Layout::Delta => (
                FormatEncoding::DELTA_BINARY_PACKED,
                encodings::delta_binary_packed(values, &mut page),
            ),
            U64Layout::ByteStreamSplit => (
                FormatEncoding::BYTE_STREAM_SPLIT,
                encodings::byte_stream_split(values, &mut page),
            ),
            U64Layout::Plain => (
                FormatEncoding::PLAIN,
                encodings::plain_u64_slice(values, &mut page),
            ),
        };
        self.scratch = page;
        let stats = u64_statistics(range, 0);
        let page = self.data_page(level, encoding, stats)?;
        self.columns.push(vec![page]);
        Ok(())
    }

    /// A UInt32 column of values in a narrow range (a block's instruction
    /// count: 1 to 1024), as a dictionary of every value from the smallest
    /// to the largest and each row's key (its value less the smallest)
    /// bit-packed: no lookup and no search for runs per row.
    pub fn narrow_u32s(&mut self, name: &str, values: &[u32]) -> Result<()> {
        debug_assert_eq!(values.len(), self.rows, "column {name}");
        let (min, max) = values
            .iter()
            .fold((u32::MAX, 0), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        if values.is_empty() || max - min >= 1 << 16 {
            return self.u32s(name, values);
        }
        self.field(name, ArrowDataType::UInt32);
        let mut plain = Vec::with_capacity((max - min + 1) as usize * 4);
        for v in min..=max {
            plain.extend_from_slice(&v.to_le_bytes());
        }
        let stats = ParquetStatistics {
            null_count: Some(0),
            min_value: Some(min.to_le_bytes().to_vec()),
            max_value: Some(max.to_le_bytes().to_vec()),
            ..empty_statistics()
        };
        let dict = EncodedPage::Dict {
            compressed: self.compressors.compress(LEVEL, &plain)?,
            uncompressed: plain.len(),
            values: (max - min + 1) as usize,
        };
        let mut page = std::mem::take(&mut self.scratch);
        page.clear();
        encodings::all_valid_levels(values.len(), &mut page);
        let width = encodings::bit_width((max - min) as u64);
        page.push(width as u8);
        encodings::bit_packed_u32s(values, min, width, &mut page);
        self.scratch = page;
        let data = self.data_page(LEVEL, FormatEncoding::RLE_DICTIONARY, stats)?;
        self.columns.push(vec![dict, data]);
        Ok(())
    }

    /// A column of a few distinct small integers (`slots` bounds them), as a
    /// dictionary of the values met and each row's key into it, found in a
    /// table indexed by the value: no hashing per row. `dtype` is the
    /// column's type (UInt8 or UInt32). A value at or above `slots` (only a
    /// corrupt ring makes one) makes the column a PLAIN one instead.
    pub fn small_integers<T: Copy + Into<u64>>(
        &mut self,
        name: &str,
        values: &[T],
        slots: usize,
        dtype: ArrowDataType,
    ) -> Result<()> {
        debug_assert_eq!(values.len(), self.rows, "column {name}");
        const NONE: u32 = u32::MAX;
        let mut key_of = vec![NONE; slots];
        let mut dict: Vec<u64> = Vec::new();
        let mut keys = Vec::with_capacity(values.len());
        for &v in values {
            let Some(k) = key_of.get_mut(v.into() as usize) else {
                return self.plain_integers(name, values, dtype);
            };
            if *k == NONE {
                *k = dict.len() as u32;
                dict.push(v.into());
            }
            keys.push(*k);
        }
        self.field(name, dtype);
        let mut plain = Vec::with_capacity(dict.len() * 4);
        for &v in &dict {
            plain.extend_from_slice(&(v as u32).to_le_bytes());
        }
        let (min, max) = (dict.iter().min(), dict.iter().max());
        let stats = ParquetStatistics {
            null_count: Some(0),
            min_value: min.map(|&m| (m as u32).to_le_bytes().to_vec()),
            max_value: max.map(|&m| (m as u32).to_le_bytes().to_vec()),
            ..empty_statistics()
        };
        self.dictionary_column(&plain, dict.len(), &keys, stats)
    }

    /// `small_integers`' way out: the values as 4-byte PLAIN integers.
    fn plain_integers<T: Copy + Into<u64>>(
        &mut self,
        name: &str,
        values: &[T],
        dtype: ArrowDataType,
    ) -> Result<()> {
        self.field(name, dtype);
        let mut page = std::mem::take(&mut self.scratch);
        page.clear();
        encodings::all_valid_levels(values.len(), &mut page);
        for &v in values {
            page.extend_from_slice(&(v.into() as u32).to_le_bytes());
        }
        self.scratch = page;
        let min = values.iter().map(|&v| v.into() as u32).min();
        let max = values.iter().map(|&v| v.into() as u32).max();
        let stats = ParquetStatistics {
            null_count: Some(0),
            min_value: min.map(|m| m.to_le_bytes().to_vec()),
            max_value: max.map(|m| m.to_le_bytes().to_vec()),
            ..empty_statistics()
        };
        let page = self.data_page(LEVEL, FormatEncoding::PLAIN, stats)?;
        self.columns.push(vec![page]);
        Ok(())
    }

    /// A dictionary page of `entries` PLAIN values, then a data page of the
    /// rows' keys into it (RLE_DICTIONARY).
    fn dictionary_column(
        &mut self,
        plain: &[u8],
        entries: usize,
        keys: &[u32],
        statistics: ParquetStatistics,
    ) -> Result<()> {
        let dict = EncodedPage::Dict {
            compressed: self.compressors.compress(LEVEL, plain)?,
            uncompressed: plain.len(),
            values: entries,
        };
        let mut page = std::mem::take(&mut self.scratch);
        page.clear();
        let width = encodings::bit_width(entries.saturating_sub(1) as u64);
        encodings::all_valid_levels(keys.len(), &mut page);
        page.push(width as u8);
        encodings::rle_hybrid(keys, width, &mut page);
        self.scratch = page;
        let data = self.data_page(LEVEL, FormatEncoding::RLE_DICTIONARY, statistics)?;
        self.columns.push(vec![dict, data]);
        Ok(())
    }

    /// A u32 column PLAIN, without nulls.
    pub fn u32s(&mut self, name: &str, values: &[u32]) -> Result<()> {
        self.plain_integers(name, values, ArrowDataType::UInt32)
    }

    /// A u32 column PLAIN, null where a value is `None`.
    pub fn nullable_u32s(&mut self, name: &str, values: &[Option<u32>]) -> Result<()> {
        debug_assert_eq!(values.len(), self.rows, "column {name}");
        self.field(name, ArrowDataType::UInt32);
        let mut page = std::mem::take(&mut self.scratch);
        page.clear();
        encodings::definition_levels(values.iter().map(Option::is_some), &mut page);
        for v in values.iter().flatten() {
            page.extend_from_slice(&v.to_le_bytes());
        }
        self.scratch = page;
        let present = || values.iter().flatten();
        let stats = ParquetStatistics {
            null_count: Some(values.iter().filter(|v| v.is_none()).count() as i64),
            min_value: present().min().map(|m| m.to_le_bytes().to_vec()),
            max_value: present().max().map(|m| m.to_le_bytes().to_vec()),
            ..empty_statistics()
        };
        let page = self.data_page(LEVEL, FormatEncoding::PLAIN, stats)?;
        self.columns.push(vec![page]);
        Ok(())
    }

    /// A Binary (`dtype` Binary) or String (`dtype` Utf8View) column
    /// without nulls, PLAIN: for columns of many distinct values, written
    /// once per translation (`code`) or per capture (`stats`).
    pub fn byte_arrays<'v>(
        &mut self,
        name: &str,
        values: impl Iterator<Item = &'v [u8]> + Clone,
        dtype: ArrowDataType,
    ) -> Result<()> {
        self.field(name, dtype);
        let mut page = std::mem::take(&mut self.scratch);
        page.clear();
        encodings::all_valid_levels(self.rows, &mut page);
        for v in values.clone() {
            page.extend_from_slice(&(v.len() as u32).to_le_bytes());
            page.extend_from_slice(v);
        }
        self.scratch = page;
        let stats = ParquetStatistics {
            null_count: Some(0),
            min_value: values.clone().min().map(<[u8]>::to_vec),
            max_value: values.max().map(<[u8]>::to_vec),
            ..empty_statistics()
        };
        let page = self.data_page(LEVEL, FormatEncoding::PLAIN, stats)?;
        self.columns.push(vec![page]);
        Ok(())
    }

    /// A column whose rows come in `runs` of one value (value, rows), of
    /// type `dtype` (UInt32 or UInt64): a dictionary of the values and one
    /// RLE run of keys per run, no step per row.
    pub fn runs(&mut self, name: &str, runs: &[(u64, u64)], dtype: ArrowDataType) -> Result<()> {
        debug_assert_eq!(
            runs.iter().map(|r| r.1).sum::<u64>(),
            self.rows as u64,
            "column {name}"
        );
        let wide = dtype == ArrowDataType::UInt64;
        self.field(name, dtype);
        let mut dict: Vec<u64> = Vec::new();
        let mut keys = Vec::with_capacity(runs.len());
        for &(value, rows) in runs {
            // Few distinct values (vCPUs, address spaces): a linear search.
            let key = match dict.iter().position(|&d| d == value) {
                Some(k) => k,
                None => {
                    dict.push(value);
                    dict.len() - 1
                }
            };
            keys.push((key as u32, rows));
        }
        let mut plain = Vec::with_capacity(dict.len() * 8);
        for &v in &dict {
            if wide {
                plain.extend_from_slice(&v.to_le_bytes());
            } else {
                plain.extend_from_slice(&(v as u32).to_le_bytes());
            }
        }
        let bytes = |v: u64| {
            if wide {
                v.to_le_bytes().to_vec()
            } else {
                (v as u32).to_le_bytes().to_vec()
            }
        };
        let stats = ParquetStatistics {
            null_count: Some(0),
            min_value: dict.iter().min().map(|&m| bytes(m)),
            max_value: dict.iter().max().map(|&m| bytes(m)),
            ..empty_statistics()
        };
        let entries = dict.len();
        let dict = EncodedPage::Dict {
            compressed: self.compressors.compress(LEVEL, &plain)?,
            uncompressed: plain.len(),
            values: entries,
        };
        let mut page = std::mem::take(&mut self.scratch);
        page.clear();
        encodings::all_valid_levels(self.rows, &mut page);
        let width = encodings::bit_width(entries.saturating_sub(1) as u64);
        page.push(width as u8);
        encodings::rle_runs(keys.into_iter(), width, &mut page);
        self.scratch = page;
        let data = self.data_page(LEVEL, FormatEncoding::RLE_DICTIONARY, stats)?;
        self.columns.push(vec![dict, data]);
        Ok(())
    }

    /// A String column of two values: row `i` is `values[bit(i) as usize]`,
    /// bit-packed (for loads and stores, which come in no runs).
    pub fn two_strings(&mut self, name: &str, bits: &Bitmap, values: [&str; 2]) -> Result<()> {
        self.field(name, ArrowDataType::Utf8View);
        let used = [bits.any_false, bits.any_true];
        let n = self.rows;
        let present = || values.iter().zip(used).filter(|(_, u)| *u).map(|(s, _)| *s);
        let stats = ParquetStatistics {
            null_count: Some(0),
            min_value: present().min().map(|s| s.as_bytes().to_vec()),
            max_value: present().max().map(|s| s.as_bytes().to_vec()),
            ..empty_statistics()
        };
        let mut plain = Vec::new();
        for s in values {
            plain.extend_from_slice(&(s.len() as u32).to_le_bytes());
            plain.extend_from_slice(s.as_bytes());
        }
        let dict = EncodedPage::Dict {
            compressed: self.compressors.compress(LEVEL, &plain)?,
            uncompressed: plain.len(),
            values: 2,
        };
        let mut page = std::mem::take(&mut self.scratch);
        page.clear();
        encodings::all_valid_levels(n, &mut page);
        page.push(1);
        encodings::bit_packed_bits(bits, &mut page);
        self.scratch = page;
        let data = self.data_page(LEVEL, FormatEncoding::RLE_DICTIONARY, stats)?;
        self.columns.push(vec![dict, data]);
        Ok(())
    }

    /// A Boolean column without nulls: row `i` is bit `i` of `bits`.
    pub fn bits(&mut self, name: &str, bits: &Bitmap) -> Result<()> {
        self.field(name, ArrowDataType::Boolean);
        let n = self.rows;
        let mut page = std::mem::take(&mut self.scratch);
        page.clear();
        encodings::all_valid_levels(n, &mut page);
        page.extend_from_slice(&bits.bytes);
        self.scratch = page;
        let stats = ParquetStatistics {
            null_count: Some(0),
            min_value: (n > 0).then(|| vec![!bits.any_false as u8]),
            max_value: (n > 0).then(|| vec![bits.any_true as u8]),
            ..empty_statistics()
        };
        let page = self.data_page(LEVEL, FormatEncoding::PLAIN, stats)?;
        self.columns.push(vec![page]);
        Ok(())
    }

    /// A u64 column PLAIN whose only rows with a value are `present`
    /// (row, value; rows ascending), null elsewhere.
    pub fn sparse_u64s(&mut self, name: &str, present: &[(u32, u64)], level: i32) -> Result<()> {
        self.field(name, ArrowDataType::UInt64);
        let mut page = std::mem::take(&mut self.scratch);
        page.clear();
        encodings::sparse_levels(self.rows, present.iter().map(|p| p.0), &mut page);
        let range = encodings::plain_u64(present.iter().map(|p| p.1), &mut page);
        self.scratch = page;
        let stats = u64_statistics(range, (self.rows - present.len()) as i64);
        let page = self.data_page(level, FormatEncoding::PLAIN, stats)?;
        self.columns.push(vec![page]);
        Ok(())
    }

    /// A String column given as a dictionary whose only rows with a value
    /// are `present` (row, key into `dict`; rows ascending), null elsewhere.
    pub fn sparse_strings(
        &mut self,
        name: &str,
        present: &[(u32, u32)],
        dict: &[&str],
    ) -> Result<()> {
        self.field(name, ArrowDataType::Utf8View);
        let mut used = vec![false; dict.len()];
        for &(_, k) in present {
            used[k as usize] = true;
        }
        let values = || dict.iter().zip(&used).filter(|(_, &u)| u).map(|(s, _)| *s);
        let stats = ParquetStatistics {
            null_count: Some((self.rows - present.len()) as i64),
            min_value: values().min().map(|s| s.as_bytes().to_vec()),
            max_value: values().max().map(|s| s.as_bytes().to_vec()),
            ..empty_statistics()
        };
        let mut plain = Vec::new();
        for s in dict {
            plain.extend_from_slice(&(s.len() as u32).to_le_bytes());
            plain.extend_from_slice(s.as_bytes());
        }
        let dict_page = EncodedPage::Dict {
            compressed: self.compressors.compress(LEVEL, &plain)?,
            uncompressed: plain.len(),
            values: dict.len(),
        };
        let mut page = std::mem::take(&mut self.scratch);
        page.clear();
        encodings::sparse_levels(self.rows, present.iter().map(|p| p.0), &mut page);
        let width = encodings::bit_width(dict.len().saturating_sub(1) as u64);
        page.push(width as u8);
        let keys: Vec<u32> = present.iter().map(|p| p.1).collect();
        encodings::rle_hybrid(&keys, width, &mut page);
        self.scratch = page;
        let data = self.data_page(LEVEL, FormatEncoding::RLE_DICTIONARY, stats)?;
        self.columns.push(vec![dict_page, data]);
        Ok(())
    }

    /// Writes the part to `w` as one Parquet file (one row group); returns
    /// its size in bytes.
    pub fn write<W: Write>(self, w: W) -> Result<u64> {
        let options = WriteOptions {
            statistics: StatisticsOptions::default(),
            // Only read for the Compression recorded in the file: pages are
            // compressed as they are added.
            compression: CompressionOptions::Zstd(None),
            version: Version::V1,
            data_page_size: None,
        };
        let mut writer = FileWriter::try_new(w, self.schema, options)?;
        let descriptors: Vec<_> = writer
            .parquet_schema()
            .columns()
            .iter()
            .map(|c| c.descriptor.clone())
            .collect();
        if descriptors.len() != self.columns.len() {
            return Err(anyhow!(
                "a part of {} columns for a schema of {}",
                self.columns.len(),
                descriptors.len()
            ));
        }
        let rows = self.rows;
        let chunks: Vec<Vec<CompressedPage>> = self
            .columns
            .into_iter()
            .zip(descriptors)
            .map(|(pages, descriptor)| {
                pages
                    .into_iter()
                    .map(|page| match page {
                        EncodedPage::Dict {
                            compressed,
                            uncompressed,
                            values,
                        } => CompressedPage::Dict(CompressedDictPage::new(
                            CowBuffer::Owned(compressed),
                            Compression::Zstd,
                            uncompressed,
                            values,
                            false,
                        )),
                        EncodedPage::Data {
                            compressed,
                            uncompressed,
                            encoding,
                            statistics,
                        } => CompressedPage::Data(CompressedDataPage::new(
                            DataPageHeader::V1(DataPageHeaderV1 {
                                num_values: rows as i32,
                                encoding,
                                definition_level_encoding: FormatEncoding::RLE,
                                repetition_level_encoding: FormatEncoding::RLE,
                                statistics: Some(statistics),
                            }),
                            CowBuffer::Owned(compressed),
                            Compression::Zstd,
                            uncompressed,
                            descriptor.clone(),
                            rows,
                        )),
                    })
                    .collect()
            })
            .collect();
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
}

fn empty_statistics() -> ParquetStatistics {
    ParquetStatistics {
        max: None,
        min: None,
        null_count: None,
        distinct_count: None,
        max_value: None,
        min_value: None,
        is_max_value_exact: None,
        is_min_value_exact: None,
    }
}

/// Statistics of u64 values of unsigned `(min, max)` (the columns' logical
/// type is unsigned); `encodings::NO_VALUES` for none.
fn u64_statistics((min, max): encodings::MinMax, nulls: i64) -> ParquetStatistics {
    let any = min <= max;
    ParquetStatistics {
        null_count: Some(nulls),
        min_value: any.then(|| min.to_le_bytes().to_vec()),
        max_value: any.then(|| max.to_le_bytes().to_vec()),
        ..empty_statistics()
    }
}

/// A column chunk's compressed pages, handed to the file writer one by one.
pub struct OwnedPages {
    pages: std::vec::IntoIter<CompressedPage>,
    current: Option<CompressedPage>,
}

impl OwnedPages {
    pub fn new(pages: Vec<CompressedPage>) -> OwnedPages {
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

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::*;

    fn read(file: Vec<u8>) -> DataFrame {
        ParquetReader::new(std::io::Cursor::new(file))
            .finish()
            .unwrap()
    }

    /// Every column kind reads back exactly, u64 extremes included, with
    /// the types readers expect.
    #[test]
    fn a_built_part_reads_back_exactly() {
        let n = 300_000usize;
        let icount: Vec<u64> = (0..n as u64 - 2)
            .map(|i| i * 3 + (i % 7))
            .chain([u64::MAX - 1, 0])
            .collect();
        let vaddr: Vec<u64> = (0..n as u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let value: Vec<u64> = (0..n as u64).map(|i| i << 40).collect();
        let wide: Vec<(u32, u64)> = (0..n as u32)
            .filter(|i| i % 11 == 3)
            .map(|i| (i, i as u64 * 5))
            .collect();
        let sizes: Vec<u8> = (0..n).map(|i| [1, 2, 4, 8, 16][i % 5]).collect();
        let vcpus: Vec<u32> = (0..n).map(|i| (i / 1000 % 3) as u32).collect();
        let runs: Vec<(u64, u64)> = vec![(7, 1), (u64::MAX, 150_000), (7, n as u64 - 150_001)];
        let stores: Vec<bool> = (0..n).map(|i| i % 3 == 0).collect();
        let devices: Vec<(u32, u32)> = (0..n as u32)
            .filter(|i| i % 5 == 0)
            .map(|i| (i, i % 2))
            .collect();
        let mut compressors = Compressors::default();
        let mut part = PartBuilder::new(n, &mut compressors);
        part.u64s("icount", &icount, U64Layout::Delta, LEVEL)
            .unwrap();
        part.u64s("vaddr", &vaddr, U64Layout::ByteStreamSplit, LEVEL)
            .unwrap();
        part.u64s("value", &value, U64Layout::Plain, VALUE_LEVEL)
            .unwrap();
        part.sparse_u64s("value_hi", &wide, VALUE_LEVEL).unwrap();
        part.small_integers("size", &sizes, 256, ArrowDataType::UInt8)
            .unwrap();
        part.small_integers("vcpu", &vcpus, 2, ArrowDataType::UInt32)
            .unwrap();
        part.runs("asid", &runs, ArrowDataType::UInt64).unwrap();
        part.two_strings("type", &Bitmap::from_fn(n, |i| stores[i]), ["R", "W"])
            .unwrap();
        part.sparse_strings("device", &devices, &["uart", "systick"])
            .unwrap();
        part.bits("io", &Bitmap::from_fn(n, |i| i % 5 == 0))
            .unwrap();
        let insns: Vec<u32> = (0..n as u32).map(|i| 1 + (i * 13) % 512).collect();
        part.narrow_u32s("insns", &insns).unwrap();
        let mut file = Vec::new();
        let size = part.write(&mut file).unwrap();
        assert_eq!(size, file.len() as u64);
        let back = read(file);
        let mut value_hi = vec![None; n];
        for &(r, v) in &wide {
            value_hi[r as usize] = Some(v);
        }
        let mut device = vec![None; n];
        for &(r, k) in &devices {
            device[r as usize] = Some(["uart", "systick"][k as usize]);
        }
        let asid: Vec<u64> = runs
            .iter()
            .flat_map(|&(v, rows)| std::iter::repeat_n(v, rows as usize))
            .collect();
        let expected = df!(
            "icount" => &icount,
            "vaddr" => &vaddr,
            "value" => &value,
            "value_hi" => value_hi,
            "size" => &sizes,
            // vcpu 2 is out of the table's range: written PLAIN.
            "vcpu" => &vcpus,
            "asid" => asid,
            "type" => stores.iter().map(|&w| if w { "W" } else { "R" }).collect::<Vec<_>>(),
            "device" => device,
            "io" => (0..n).map(|i| i % 5 == 0).collect::<Vec<_>>(),
            "insns" => &insns,
        )
        .unwrap();
        assert_eq!(back.schema(), expected.schema());
        assert!(back.equals_missing(&expected), "{back} != {expected}");
    }

    /// The statistics readers use to skip parts: unsigned min and max.
    #[test]
    fn statistics_are_unsigned_min_and_max() {
        let mut compressors = Compressors::default();
        let mut part = PartBuilder::new(3, &mut compressors);
        part.u64s("pc", &[5, u64::MAX, 7], U64Layout::ByteStreamSplit, LEVEL)
            .unwrap();
        let mut file = Vec::new();
        part.write(&mut file).unwrap();
        let meta = polars_parquet::read::read_metadata(&mut std::io::Cursor::new(file)).unwrap();
        let column = &meta.row_groups[0].parquet_columns()[0];
        let stats = column
            .statistics(&meta.footer_buf)
            .unwrap()
            .unwrap()
            .serialize();
        assert_eq!(stats.min_value, Some(5u64.to_le_bytes().to_vec()));
        assert_eq!(stats.max_value, Some(u64::MAX.to_le_bytes().to_vec()));
    }

    /// An empty part is a valid file of the same schema.
    #[test]
    fn an_empty_part_is_valid() {
        let mut compressors = Compressors::default();
        let mut part = PartBuilder::new(0, &mut compressors);
        part.u64s("icount", &[], U64Layout::Delta, LEVEL).unwrap();
        part.small_integers::<u32>("vcpu", &[], 4096, ArrowDataType::UInt32)
            .unwrap();
        part.two_strings("type", &Bitmap::from_fn(0, |_| false), ["R", "W"])
            .unwrap();
        let mut file = Vec::new();
        part.write(&mut file).unwrap();
        let back = read(file);
        assert_eq!(back.height(), 0);
        assert_eq!(back.width(), 3);
    }
}
