//! The Parquet value encodings the collector writes, straight from a batch's
//! column vectors into a page's bytes: no Arrow array, no iterator adaptor,
//! nothing allocated per value.
//!
//! Written by hand because they are the collector's hot loop: polars-parquet
//! encodes from Arrow arrays (a copy of every column first) and through
//! generic iterators, which was most of the writer's time
//! (benches/RESULTS.md, "The writer"). Each function appends to `out`; the
//! layouts are those of the Parquet format specification (Encodings.md), and
//! the tests decode what they write with polars-parquet's decoders, or read a
//! whole file back with polars.

/// Appends `v` as an unsigned LEB128 varint.
#[inline]
pub fn uleb128(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `v` zigzag-encoded as a LEB128 varint.
#[inline]
pub fn zigzag_uleb128(out: &mut Vec<u8>, v: i64) {
    uleb128(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// `pub fn NAME(ARGS) -> RET` that runs `HERE(ARGS)` compiled for AVX2
/// where the CPU has it. The encoders' running minimum and maximum of u64
/// values need 64-bit compares, which SSE2 (all that x86-64 is sure to
/// have) lacks: with AVX2 they run in vector registers (DELTA_BINARY_PACKED
/// of 1M icounts 2.1–2.3 → 1.5 ns a value; BYTE_STREAM_SPLIT 0.95 →
/// 0.8–0.86). (A generic closure-taking wrapper did not carry the feature
/// into the closure's code.)
macro_rules! with_avx2_where_present {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $here:ident;) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                /// # Safety
                /// Only on a CPU with AVX2.
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    $here($($arg),*)
                }
                // Safety: the CPU has AVX2 (checked just above).
                return unsafe { avx2($($arg),*) };
            }
            $here($($arg),*)
        }
    };
}

/// Bits needed for `v` (0 for 0).
#[inline]
pub fn bit_width(v: u64) -> u32 {
    64 - v.leading_zeros()
}

/// Appends 8 values of `width` bits each (0..=64), packed least significant
/// bit first: exactly `width` bytes. Bits of a value above `width` must be 0.
#[inline]
fn pack8(values: &[u64; 8], width: u32, out: &mut Vec<u8>) {
    if width == 0 {
        return;
    }
    if width <= 8 {
        // 8 values of at most 8 bits: one word.
        let mut acc = 0u64;
        for (k, &v) in values.iter().enumerate() {
            acc |= v << (k as u32 * width);
        }
        out.extend_from_slice(&acc.to_le_bytes()[..width as usize]);
        return;
    }
    // Gathered in a buffer and appended once: growing the page first (a
    // memset per 8 values) was a third of this function's time.
    let mut dst = [0u8; 64];
    let mut acc: u128 = 0;
    let mut bits = 0u32;
    let mut at = 0;
    for &v in values {
        acc |= (v as u128) << bits;
        bits += width;
        if bits >= 64 {
            dst[at..at + 8].copy_from_slice(&(acc as u64).to_le_bytes());
            at += 8;
            acc >>= 64;
            bits -= 64;
        }
    }
    // 8 × width bits is a whole number of bytes: what is left is too.
    let rest = (bits / 8) as usize;
    dst[at..at + rest].copy_from_slice(&(acc as u64).to_le_bytes()[..rest]);
    out.extend_from_slice(&dst[..width as usize]);
}

/// Appends `values` bit-packed with `width` bits each, in groups of 8 (the
/// last group padded with zeros).
fn bit_pack(values: &[u32], width: u32, out: &mut Vec<u8>) {
    for group in values.chunks(8) {
        let mut g = [0u64; 8];
        for (d, &v) in g.iter_mut().zip(group) {
            *d = v as u64;
        }
        pack8(&g, width, out);
    }
}

/// Most 8-value groups in one bit-packed run: its header then fits one byte
/// (the format allows more, but some readers expect no more).
const MAX_GROUPS_PER_RUN: usize = 63;

/// Appends `values` (each below `1 << width`, `width` ≤ 32) in the
/// RLE/bit-packed hybrid encoding, without a length prefix: runs of 8 or
/// more equal values as RLE runs, the rest bit-packed.
pub fn rle_hybrid(values: &[u32], width: u32, out: &mut Vec<u8>) {
    let n = values.len();
    let mut literals_from = 0;
    let mut i = 0;
    while i < n {
        let v = values[i];
        let mut j = i + 1;
        while j < n && values[j] == v {
            j += 1;
        }
        // A bit-packed run holds whole groups of 8: the literals before an
        // RLE run take the first values of the run up to a group boundary.
        let pad = (8 - (i - literals_from) % 8) % 8;
        if j - i >= pad + 8 {
            let run_from = i + pad;
            bit_packed_runs(&values[literals_from..run_from], width, out);
            rle_run(v, (j - run_from) as u64, width, out);
            literals_from = j;
        }
        i = j;
    }
    bit_packed_runs(&values[literals_from..], width, out);
}

fn bit_packed_runs(values: &[u32], width: u32, out: &mut Vec<u8>) {
    for run in values.chunks(8 * MAX_GROUPS_PER_RUN) {
        let groups = run.len().div_ceil(8);
        uleb128(out, (groups as u64) << 1 | 1);
        bit_pack(run, width, out);
    }
}

fn rle_run(value: u32, count: u64, width: u32, out: &mut Vec<u8>) {
    if count == 0 {
        return;
    }
    uleb128(out, count << 1);
    out.extend_from_slice(&value.to_le_bytes()[..width.div_ceil(8) as usize]);
}

/// Appends definition levels (1 where `valid`, else 0) as a data page V1
/// stores them: a 4-byte length, then the RLE/bit-packed hybrid with 1 bit
/// per level.
pub fn definition_levels(valid: impl Iterator<Item = bool>, out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    let levels: Vec<u32> = valid.map(u32::from).collect();
    rle_hybrid(&levels, 1, out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Definition levels of a column without nulls: one RLE run of 1s.
pub fn all_valid_levels(n: usize, out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    if n > 0 {
        rle_run(1, n as u64, 1, out);
    }
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Appends `runs` of equal values (value, count; each value below
/// `1 << width`) as RLE runs of the RLE/bit-packed hybrid, without a length
/// prefix: for columns whose rows come in runs (a chunk's vCPU, its address
/// space), written in one step per run rather than per row.
pub fn rle_runs(runs: impl Iterator<Item = (u32, u64)>, width: u32, out: &mut Vec<u8>) {
    for (value, count) in runs {
        rle_run(value, count, width, out);
    }
}

/// Appends the definition levels of `n` rows of which only those in
/// `present` (ascending) hold a value, as a data page V1 stores them (a
/// 4-byte length, then the hybrid encoding, 1 bit per level), as RLE runs
/// of 0s and 1s: one step per run, not per row (the rows present are few,
/// as in `value_hi`, or all of them, as in `mmio.device`).
pub fn sparse_levels(n: usize, present: impl Iterator<Item = u32>, out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    // The run of rows present being gathered: [from, to).
    let (mut from, mut to) = (0usize, 0usize);
    for row in present {
        let row = row as usize;
        if row != to {
            rle_run(1, (to - from) as u64, 1, out);
            rle_run(0, (row - to) as u64, 1, out);
            from = row;
        }
        to = row + 1;
    }
    rle_run(1, (to - from) as u64, 1, out);
    rle_run(0, (n - to) as u64, 1, out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Appends `values` less `base` (each difference below `1 << width`),
/// bit-packed in the RLE/bit-packed hybrid, without a length prefix and
/// without looking for runs.
pub fn bit_packed_u32s(values: &[u32], base: u32, width: u32, out: &mut Vec<u8>) {
    for run in values.chunks(8 * MAX_GROUPS_PER_RUN) {
        uleb128(out, (run.len().div_ceil(8) as u64) << 1 | 1);
        for group in run.chunks(8) {
            let mut g = [0u64; 8];
            for (d, &v) in g.iter_mut().zip(group) {
                *d = (v - base) as u64;
            }
            pack8(&g, width, out);
        }
    }
}

/// One bit per row, least significant bit first: the bytes of PLAIN
/// booleans, and of the bit-packed runs of 1-bit keys. With whether any
/// row is false and any true (the column's statistics).
pub struct Bitmap {
    pub bytes: Vec<u8>,
    pub any_false: bool,
    pub any_true: bool,
}

impl Bitmap {
    /// Row `i` is `bit(i)`, for `rows` rows.
    #[cfg(test)]
    pub fn from_fn(rows: usize, bit: impl Fn(usize) -> bool) -> Bitmap {
        let mut bytes = vec![0u8; rows.div_ceil(8)];
        for i in (0..rows).filter(|&i| bit(i)) {
            bytes[i / 8] |= 1 << (i % 8);
        }
        let ones: usize = bytes.iter().map(|b| b.count_ones() as usize).sum();
        Bitmap {
            bytes,
            any_false: ones < rows,
            any_true: ones > 0,
        }
    }

    /// Row `i` is whether `flags[i]` has bit `mask` (a single bit) set.
    /// Eight rows at a time: their bits, moved to each byte's lowest, are
    /// gathered into the top byte of one multiplication (bit `k` of the
    /// product's top byte can only come from byte `k`), instead of a
    /// closure call and a shift per row.
    pub fn of_flag(flags: &[u8], mask: u8) -> Bitmap {
        debug_assert!(mask.is_power_of_two());
        const LOWEST: u64 = 0x0101_0101_0101_0101;
        const GATHER: u64 = 0x0102_0408_1020_4080;
        let shift = mask.trailing_zeros();
        let mut bytes = Vec::with_capacity(flags.len().div_ceil(8));
        let (mut or, mut and) = (0u8, 0xffu8);
        let mut eights = flags.chunks_exact(8);
        for eight in eights.by_ref() {
            let lowest = (u64::from_le_bytes(eight.try_into().unwrap()) >> shift) & LOWEST;
            let byte = (lowest.wrapping_mul(GATHER) >> 56) as u8;
            or |= byte;
            and &= byte;
            bytes.push(byte);
        }
        let rest = eights.remainder();
        if !rest.is_empty() {
            let mut byte = 0u8;
            for (k, &f) in rest.iter().enumerate() {
                byte |= ((f & mask != 0) as u8) << k;
            }
            let full = (1u8 << rest.len()) - 1;
            or |= byte;
            and &= byte | !full;
            bytes.push(byte);
        }
        Bitmap {
            bytes,
            any_false: !flags.is_empty() && and != 0xff,
            any_true: or != 0,
        }
    }
}

/// Appends `bits` as the RLE/bit-packed hybrid of width 1, without a length
/// prefix: bit-packed runs only (no search for runs of equal values).
pub fn bit_packed_bits(bits: &Bitmap, out: &mut Vec<u8>) {
    for run in bits.bytes.chunks(MAX_GROUPS_PER_RUN) {
        uleb128(out, (run.len() as u64) << 1 | 1);
        out.extend_from_slice(run);
    }
}

/// DELTA_BINARY_PACKED's block and miniblock sizes.
const DELTA_BLOCK: usize = 128;
const DELTA_MINIBLOCKS: usize = 4;
const DELTA_MINIBLOCK: usize = DELTA_BLOCK / DELTA_MINIBLOCKS;

with_avx2_where_present! {
    /// Appends `values` in DELTA_BINARY_PACKED, as 64-bit integers (the
    /// differences wrap, so u64 values read back exactly as the same bits).
    pub fn delta_binary_packed(values: &[u64], out: &mut Vec<u8>) -> MinMax
        = delta_binary_packed_here;
}

#[inline(always)]
fn delta_binary_packed_here(values: &[u64], out: &mut Vec<u8>) -> MinMax {
    let mut range = values.first().map_or(NO_VALUES, |&v| (v, v));
    uleb128(out, DELTA_BLOCK as u64);
    uleb128(out, DELTA_MINIBLOCKS as u64);
    uleb128(out, values.len() as u64);
    zigzag_uleb128(out, values.first().copied().unwrap_or(0) as i64);
    let mut deltas = [0i64; DELTA_BLOCK];
    let mut rest = values;
    while rest.len() > 1 {
        let block = (rest.len() - 1).min(DELTA_BLOCK);
        let mut min = i64::MAX;
        for k in 0..block {
            range = widen(range, rest[k + 1]);
            let d = rest[k + 1].wrapping_sub(rest[k]) as i64;
            deltas[k] = d;
            min = min.min(d);
        }
        zigzag_uleb128(out, min);
        // Each miniblock's width, then the miniblocks that hold values
        // (a last, partial one padded with zeros).
        let used = block.div_ceil(DELTA_MINIBLOCK);
        let mut widths = [0u8; DELTA_MINIBLOCKS];
        for (m, w) in widths.iter_mut().enumerate().take(used) {
            let mini = &deltas[m * DELTA_MINIBLOCK..block.min((m + 1) * DELTA_MINIBLOCK)];
            let max = mini
                .iter()
                .map(|&d| d.wrapping_sub(min) as u64)
                .fold(0, u64::max);
            *w = bit_width(max) as u8;
        }
        out.extend_from_slice(&widths);
        for (m, &w) in widths.iter().enumerate().take(used) {
            for g in 0..DELTA_MINIBLOCK / 8 {
                let mut group = [0u64; 8];
                for (k, slot) in group.iter_mut().enumerate() {
                    let at = m * DELTA_MINIBLOCK + g * 8 + k;
                    if at < block {
                        *slot = deltas[at].wrapping_sub(min) as u64;
                    }
                }
                pack8(&group, w as u32, out);
            }
        }
        rest = &rest[block..];
    }
    range
}

/// Unsigned min and max of the values seen, `(u64::MAX, 0)` for none: the
/// encoders below return them, computed while the values are in registers
/// (a second pass over a part's column would read it from memory again).
pub type MinMax = (u64, u64);

pub const NO_VALUES: MinMax = (u64::MAX, 0);

#[inline(always)]
fn widen((lo, hi): MinMax, v: u64) -> MinMax {
    (lo.min(v), hi.max(v))
}

/// Values `byte_stream_split` transposes into its staging block at a time.
const SPLIT_BLOCK: usize = 512;

with_avx2_where_present! {
    /// Appends `values` as BYTE_STREAM_SPLIT: byte 0 of every value, then byte
    /// 1, ... Sixteen values at a time, as a 16×8 byte matrix transposed in
    /// registers (`transpose16`), into a staging block of 512 values' streams
    /// that is then copied to the 8 streams of the page. Written straight to the
    /// page, the 8 streams' stores (a page's length apart, so the same address
    /// modulo 4 KiB) made each next load wait on them (4K aliasing): 5.4 ns a
    /// value, against ~1 with the staging block.
    pub fn byte_stream_split(values: &[u64], out: &mut Vec<u8>) -> MinMax
        = byte_stream_split_here;
}

#[inline(always)]
fn byte_stream_split_here(values: &[u64], out: &mut Vec<u8>) -> MinMax {
    let n = values.len();
    out.reserve(n * 8);
    // Every byte of the spare room below is written before `set_len`: no
    // zeroing first (a memset of the whole page was 1.5% of the drain's
    // time).
    let page = &mut out.spare_capacity_mut()[..n * 8];
    let mut lo = u64::MAX;
    let mut hi = 0;
    let mut staging = [[0u8; SPLIT_BLOCK]; 8];
    for (b, block) in values.chunks(SPLIT_BLOCK).enumerate() {
        for &v in block {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        let mut groups = block.chunks_exact(16);
        for (g, group) in groups.by_ref().enumerate() {
            transpose16(group.try_into().unwrap(), &mut staging, 16 * g);
        }
        let whole = block.len() - groups.remainder().len();
        for (i, &v) in groups.remainder().iter().enumerate() {
            for (stream, byte) in staging.iter_mut().zip(v.to_le_bytes()) {
                stream[whole + i] = byte;
            }
        }
        let at = b * SPLIT_BLOCK;
        for (c, stream) in staging.iter().enumerate() {
            let dst = &mut page[c * n + at..c * n + at + block.len()];
            for (d, &s) in dst.iter_mut().zip(&stream[..block.len()]) {
                d.write(s);
            }
        }
    }
    // Safety: the loop above wrote all `n * 8` bytes after the old length
    // (each stream `c` its `n` bytes at `c * n`), within the room reserved.
    unsafe { out.set_len(out.len() + n * 8) };
    (lo, hi)
}

/// Writes byte `c` of each of the 16 `values` to `staging[c][at..at + 16]`.
///
/// SSE2 (every x86-64 has it): the 16 values are 8 registers of 2; in each
/// of four rounds, registers k and k + 4 are interleaved byte by byte
/// (`unpacklo`/`unpackhi`) into registers 2k and 2k + 1. Number a byte by
/// its register (3 bits) then its place in it (4 bits): a round rotates that
/// 7-bit number left by one, so four take (value, byte) to (byte, value),
/// each register one stream.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn transpose16(values: &[u64; 16], staging: &mut [[u8; SPLIT_BLOCK]; 8], at: usize) {
    use std::arch::x86_64::*;
    assert!(at + 16 <= SPLIT_BLOCK);
    // Safety: SSE2 is part of x86-64; the loads read the 128 bytes of
    // `values`, the stores write `staging[c][at..at + 16]`, in bounds
    // (asserted above); unaligned loads and stores.
    unsafe {
        let p = values.as_ptr() as *const __m128i;
        let mut r: [__m128i; 8] = std::array::from_fn(|k| _mm_loadu_si128(p.add(k)));
        for _ in 0..4 {
            r = [
                _mm_unpacklo_epi8(r[0], r[4]),
                _mm_unpackhi_epi8(r[0], r[4]),
                _mm_unpacklo_epi8(r[1], r[5]),
                _mm_unpackhi_epi8(r[1], r[5]),
                _mm_unpacklo_epi8(r[2], r[6]),
                _mm_unpackhi_epi8(r[2], r[6]),
                _mm_unpacklo_epi8(r[3], r[7]),
                _mm_unpackhi_epi8(r[3], r[7]),
            ];
        }
        for (stream, reg) in staging.iter_mut().zip(r) {
            _mm_storeu_si128(stream[at..at + 16].as_mut_ptr() as *mut __m128i, reg);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn transpose16(values: &[u64; 16], staging: &mut [[u8; SPLIT_BLOCK]; 8], at: usize) {
    transpose16_in_words(values, staging, at)
}

/// `transpose16` without SSE2: two 8×8 byte matrices transposed in u64
/// registers (three rounds of block swaps each).
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline(always)]
fn transpose16_in_words(values: &[u64; 16], staging: &mut [[u8; SPLIT_BLOCK]; 8], at: usize) {
    // Row r is value r, byte c of a row its column c; each round swaps the
    // off-diagonal blocks of the blocks of the round before (4×4, then 2×2,
    // then 1×1 bytes), which transposes the matrix.
    #[inline(always)]
    fn swap(x: &mut [u64; 8], r: usize, half: usize, shift: u32, low: u64) {
        let (a, b) = (x[r], x[r + half]);
        x[r] = (a & low) | ((b & low) << shift);
        x[r + half] = ((a >> shift) & low) | (b & !low);
    }
    const L4: u64 = 0x0000_0000_ffff_ffff;
    const L2: u64 = 0x0000_ffff_0000_ffff;
    const L1: u64 = 0x00ff_00ff_00ff_00ff;
    for half in 0..2 {
        let mut x: [u64; 8] = values[8 * half..8 * half + 8].try_into().unwrap();
        for r in 0..4 {
            swap(&mut x, r, 4, 32, L4);
        }
        for r in [0, 1, 4, 5] {
            swap(&mut x, r, 2, 16, L2);
        }
        for r in [0, 2, 4, 6] {
            swap(&mut x, r, 1, 8, L1);
        }
        let to = at + 8 * half;
        for (stream, word) in staging.iter_mut().zip(x) {
            stream[to..to + 8].copy_from_slice(&word.to_le_bytes());
        }
    }
}

/// Appends `values` PLAIN: 8 little-endian bytes each.
pub fn plain_u64(values: impl Iterator<Item = u64>, out: &mut Vec<u8>) -> MinMax {
    let mut range = NO_VALUES;
    for v in values {
        range = widen(range, v);
        out.extend_from_slice(&v.to_le_bytes());
    }
    range
}

with_avx2_where_present! {
    /// Appends `values` PLAIN, as `plain_u64` does, from a slice: one copy.
    pub fn plain_u64_slice(values: &[u64], out: &mut Vec<u8>) -> MinMax
        = plain_u64_slice_here;
}

#[inline(always)]
fn plain_u64_slice_here(values: &[u64], out: &mut Vec<u8>) -> MinMax {
    let (mut lo, mut hi) = NO_VALUES;
    for &v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if cfg!(target_endian = "little") {
        // Safety: a u64 slice's memory is as many initialised bytes, 8 per
        // value, here in little-endian order as PLAIN stores them.
        out.extend_from_slice(unsafe {
            std::slice::from_raw_parts(values.as_ptr() as *const u8, values.len() * 8)
        });
    } else {
        for &v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars_parquet::parquet::encoding::hybrid_rle::HybridRleDecoder;

    fn decode_hybrid(bytes: &[u8], width: u32, n: usize) -> Vec<u32> {
        HybridRleDecoder::new(bytes, width, n).collect().unwrap()
    }

    #[test]
    fn rle_hybrid_round_trips_runs_literals_and_their_mix() {
        let cases: Vec<(Vec<u32>, u32)> = vec![
            (vec![], 1),
            (vec![1; 1000], 1),
            ((0..1000).map(|i| i % 2).collect(), 1),
            ((0..1000).map(|i| (i * 7 % 5) as u32).collect(), 3),
            // A run that starts off a group boundary, a run too short to
            // pay, long literal stretches (more than one bit-packed run).
            (
                [vec![3; 3], vec![5; 20], vec![1, 2, 1, 2], vec![7; 9]]
                    .concat()
                    .into_iter()
                    .chain((0..3000).map(|i| i % 8))
                    .collect(),
                3,
            ),
            ((0..77).map(|i| i * 1000).collect(), 17),
            (vec![u32::MAX; 20], 32),
        ];
        for (values, width) in cases {
            let mut out = Vec::new();
            rle_hybrid(&values, width, &mut out);
            assert_eq!(
                decode_hybrid(&out, width, values.len()),
                values,
                "width {width}"
            );
        }
    }

    #[test]
    fn sparse_levels_mark_exactly_the_rows_present() {
        let cases: Vec<(usize, Vec<u32>)> = vec![
            (0, vec![]),
            (1000, vec![]),
            (1000, (0..1000).collect()),
            (1000, vec![0, 999]),
            (5000, vec![3, 4, 100, 101, 102, 2000, 4999]),
            (300, (0..300).step_by(2).collect()),
            (300, (0..300).filter(|i| i % 70 < 3).collect()),
        ];
        for (n, present) in cases {
            let mut out = Vec::new();
            sparse_levels(n, present.iter().copied(), &mut out);
            let len = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
            assert_eq!(out.len(), 4 + len);
            let mut expected = vec![0u32; n];
            for &r in &present {
                expected[r as usize] = 1;
            }
            assert_eq!(
                decode_hybrid(&out[4..], 1, n),
                expected,
                "{n} rows, {present:?}"
            );
        }
    }

    #[test]
    fn packed_u32s_decode() {
        for n in [0usize, 1, 7, 8, 9, 8 * 63, 8 * 63 + 5, 3000] {
            let values: Vec<u32> = (0..n as u32).map(|i| 3 + (i * 7) % 29).collect();
            let mut out = Vec::new();
            bit_packed_u32s(&values, 3, 5, &mut out);
            let expected: Vec<u32> = values.iter().map(|v| v - 3).collect();
            assert_eq!(decode_hybrid(&out, 5, n), expected, "{n}");
        }
    }

    #[test]
    fn rle_runs_and_packed_bits_decode() {
        let mut out = Vec::new();
        rle_runs([(3, 5), (0, 0), (1, 2), (3, 1)].into_iter(), 2, &mut out);
        assert_eq!(decode_hybrid(&out, 2, 8), vec![3, 3, 3, 3, 3, 1, 1, 3]);
        for n in [0, 1, 8, 9, 1000, 8 * 63 + 1] {
            let mut out = Vec::new();
            bit_packed_bits(&Bitmap::from_fn(n, |i| i % 3 == 1), &mut out);
            let expected: Vec<u32> = (0..n).map(|i| (i % 3 == 1) as u32).collect();
            assert_eq!(decode_hybrid(&out, 1, n), expected, "{n}");
        }
    }

    #[test]
    fn a_flag_bitmap_is_the_rows_bits() {
        // Every byte value in every place of an 8-row group, then lengths
        // with a partial last group, all false and all true.
        let all: Vec<u8> = (0..=255u8)
            .flat_map(|b| [b, !b, b, 0, b, 0xff, b, 1])
            .collect();
        for flags in [
            all.clone(),
            all[..13].to_vec(),
            all[3..20].to_vec(),
            vec![],
            vec![0; 11],
            vec![0xff; 11],
        ] {
            for mask in (0..8).map(|s| 1u8 << s) {
                let got = Bitmap::of_flag(&flags, mask);
                let expected = Bitmap::from_fn(flags.len(), |i| flags[i] & mask != 0);
                assert_eq!(got.bytes, expected.bytes, "mask {mask:#x}");
                assert_eq!(
                    (got.any_false, got.any_true),
                    (expected.any_false, expected.any_true),
                    "mask {mask:#x}, {} rows",
                    flags.len()
                );
            }
        }
    }

    #[test]
    fn definition_levels_carry_their_length() {
        let valid: Vec<bool> = (0..100).map(|i| i % 3 != 0).collect();
        let mut out = vec![9];
        definition_levels(valid.iter().copied(), &mut out);
        let len = u32::from_le_bytes(out[1..5].try_into().unwrap()) as usize;
        assert_eq!(out.len(), 5 + len);
        let levels = decode_hybrid(&out[5..], 1, 100);
        assert_eq!(levels, valid.iter().map(|&v| v as u32).collect::<Vec<_>>());
        let mut all = Vec::new();
        all_valid_levels(1000, &mut all);
        assert_eq!(decode_hybrid(&all[4..], 1, 1000), vec![1; 1000]);
    }

    #[test]
    fn pack8_packs_every_width() {
        for width in 0..=64u32 {
            let mask = if width == 64 {
                u64::MAX
            } else {
                (1u64 << width) - 1
            };
            let values: [u64; 8] = std::array::from_fn(|k| {
                (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(k as u64 + 1)) & mask
            });
            let mut out = Vec::new();
            pack8(&values, width, &mut out);
            assert_eq!(out.len(), width as usize);
            // Read the bits back one by one.
            for (k, &v) in values.iter().enumerate() {
                let mut got = 0u64;
                for b in 0..width {
                    let bit = k as u32 * width + b;
                    got |= ((out[(bit / 8) as usize] >> (bit % 8)) as u64 & 1) << b;
                }
                assert_eq!(got, v, "width {width} value {k}");
            }
        }
    }

    #[test]
    fn transposes_in_registers_and_in_words_agree() {
        let values: [u64; 16] =
            std::array::from_fn(|i| 0x0706_0504_0302_0100u64 + 0x1010_1010_1010_1010 * i as u64);
        let mut a = [[0u8; SPLIT_BLOCK]; 8];
        let mut b = [[0u8; SPLIT_BLOCK]; 8];
        transpose16(&values, &mut a, 32);
        transpose16_in_words(&values, &mut b, 32);
        assert_eq!(a, b);
        for (c, stream) in a.iter().enumerate() {
            let expected: Vec<u8> = values.iter().map(|v| v.to_le_bytes()[c]).collect();
            assert_eq!(&stream[32..48], &expected[..], "stream {c}");
        }
    }

    #[test]
    fn byte_stream_split_transposes() {
        for n in [
            0usize, 1, 7, 8, 9, 15, 16, 17, 64, 511, 512, 513, 1003, 5000,
        ] {
            let values: Vec<u64> = (0..n as u64)
                .map(|i| i.wrapping_mul(0x0102_0304_0506_0708) ^ (i << 56))
                .collect();
            let mut naive = vec![0u8; n * 8];
            for (i, v) in values.iter().enumerate() {
                for (c, b) in v.to_le_bytes().into_iter().enumerate() {
                    naive[c * n + i] = b;
                }
            }
            let mut split = vec![9];
            let range = byte_stream_split(&values, &mut split);
            assert_eq!(split[0], 9);
            assert_eq!(&split[1..], &naive[..], "{n} values");
            let expected = values.iter().fold(NO_VALUES, |r, &v| widen(r, v));
            assert_eq!(range, expected);
        }
    }
}
