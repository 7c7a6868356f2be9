//! An SVG timeline of MMIO accesses: one horizontal lane per device
//! (alphabetical), icount on the x axis, reads (blue, upper half of the
//! lane) and writes (red, lower half) binned into pixel-wide columns. A
//! column's height and opacity grow with the log of its access count, so
//! millions of accesses still render into a small file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;

use anyhow::Result;
use polars::prelude::*;

use crate::capture_dir::{Capture, UNKNOWN_DEVICE};

/// Width of the plot area in pixels (= number of bins).
pub const PLOT_WIDTH: u32 = 1000;
const LABEL_WIDTH: u32 = 190;
const RIGHT_MARGIN: u32 = 30;
const TOP: u32 = 50;
const SUB_H: u32 = 16; // height of the read (and of the write) half of a lane
const LANE_GAP: u32 = 6;
const AXIS_H: u32 = 50;
const READ_COLOUR: &str = "#1f77b4";
const WRITE_COLOUR: &str = "#d62728";

/// What [`timeline`] drew.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimelineReport {
    /// Device names, one lane each, top to bottom.
    pub lanes: Vec<String>,
    /// Accesses drawn.
    pub accesses: u64,
}

#[derive(Default)]
struct Lane {
    reads: BTreeMap<u32, u64>,
    writes: BTreeMap<u32, u64>,
    n_reads: u64,
    n_writes: u64,
}

/// Writes the SVG picture of the capture's `mmio` table to `w`.
pub fn timeline(cap: &Capture, w: &mut dyn Write) -> Result<TimelineReport> {
    // Fails early, naming the analyzer, when there is no mmio table.
    cap.require("mmio", "timeline")?;
    let range = crate::stream::icount_range(cap, "mmio", None)?;
    let mut lanes: BTreeMap<String, Lane> = BTreeMap::new();
    let (lo, hi) = range.map_or((0, 0), |r| (r.lo, r.hi));
    if range.is_some() {
        let span = (hi - lo) as f64 + 1.0;
        let scale = f64::from(PLOT_WIDTH) / span;
        // Counted part by part: only one part's columns are in memory.
        for part in cap.scan_parts("mmio")? {
            let binned = part
                .select([
                    ((col("icount").cast(DataType::UInt64) - lit(lo)).cast(DataType::Float64)
                        * lit(scale))
                    .cast(DataType::UInt32)
                    .alias("bin"),
                    col("type"),
                    col("device"),
                ])
                .group_by([col("device"), col("type"), col("bin")])
                .agg([len().cast(DataType::UInt64).alias("n")]);
            let df = cap.collect(binned)?;
            let device = df.column("device")?.str()?;
            let ty = df.column("type")?.str()?;
            let bin = df.column("bin")?.u32()?;
            let n = df.column("n")?.u64()?;
            for i in 0..df.height() {
                let name = device.get(i).unwrap_or(UNKNOWN_DEVICE).to_owned();
                let b = bin.get(i).unwrap_or(0).min(PLOT_WIDTH - 1);
                let c = n.get(i).unwrap_or(0);
                let lane = lanes.entry(name).or_default();
                if ty.get(i) == Some("W") {
                    *lane.writes.entry(b).or_default() += c;
                    lane.n_writes += c;
                } else {
                    *lane.reads.entry(b).or_default() += c;
                    lane.n_reads += c;
                }
            }
        }
    }
    let report = TimelineReport {
        lanes: lanes.keys().cloned().collect(),
        accesses: lanes.values().map(|l| l.n_reads + l.n_writes).sum(),
    };
    let svg = render(cap, &lanes, lo, hi, report.accesses);
    w.write_all(svg.as_bytes())?;
    w.flush()?;
    Ok(report)
}

fn render(cap: &Capture, lanes: &BTreeMap<String, Lane>, lo: u64, hi: u64, total: u64) -> String {
    let lane_h = 2 * SUB_H + LANE_GAP;
    let n_lanes = lanes.len() as u32;
    let plot_h = n_lanes.max(1) * lane_h;
    let width = LABEL_WIDTH + PLOT_WIDTH + RIGHT_MARGIN;
    let height = TOP + plot_h + AXIS_H;
    let x0 = LABEL_WIDTH;
    let max = lanes
        .values()
        .flat_map(|l| l.reads.values().chain(l.writes.values()))
        .copied()
        .max()
        .unwrap_or(1)
        .max(1);
    let level = |c: u64| ((1.0 + c as f64).ln() / (1.0 + max as f64).ln()).clamp(0.0, 1.0);

    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"11\">"
    );
    let _ = writeln!(
        s,
        "<title>MMIO timeline of {}</title>",
        xml_escape(&cap.dir().display().to_string())
    );
    let _ = writeln!(
        s,
        "<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>"
    );
    let _ = writeln!(
        s,
        "<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">MMIO accesses over \
         icount: {total} accesses, {n_lanes} devices, icount {lo}..{hi}</text>"
    );
    // legend
    let lx = x0 + PLOT_WIDTH - 200;
    let _ = writeln!(
        s,
        "<g class=\"legend\"><rect x=\"{lx}\" y=\"28\" width=\"10\" height=\"10\" \
         fill=\"{READ_COLOUR}\"/><text x=\"{}\" y=\"37\">read</text><rect x=\"{}\" y=\"28\" \
         width=\"10\" height=\"10\" fill=\"{WRITE_COLOUR}\"/><text x=\"{}\" y=\"37\">write</text>\
         <text x=\"{}\" y=\"37\" fill=\"#555\">(log scale)</text></g>",
        lx + 14,
        lx + 60,
        lx + 74,
        lx + 120
    );
    if lanes.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" fill=\"#555\">no MMIO accesses in this capture</text>",
            x0 + 10,
            TOP + SUB_H
        );
    }
    for (k, (name, lane)) in lanes.iter().enumerate() {
        let y = TOP + k as u32 * lane_h;
        let _ = writeln!(s, "<g class=\"lane\" data-device=\"{}\">", xml_escape(name));
        if k % 2 == 1 {
            let _ = writeln!(
                s,
                "<rect x=\"0\" y=\"{}\" width=\"{width}\" height=\"{lane_h}\" fill=\"#f4f4f4\"/>",
                y - LANE_GAP / 2
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            x0 - 8,
            y + SUB_H,
            xml_escape(&truncate(name, 28))
        );
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"9\" fill=\"#555\">R {} / W {}</text>",
            x0 - 8,
            y + 2 * SUB_H - 2,
            lane.n_reads,
            lane.n_writes
        );
        for (bins, colour, top) in [
            (&lane.reads, READ_COLOUR, y),
            (&lane.writes, WRITE_COLOUR, y + SUB_H),
        ] {
            for (&b, &c) in bins {
                let lv = level(c);
                let h = (f64::from(SUB_H) * (0.25 + 0.75 * lv)).max(1.0);
                let _ = writeln!(
                    s,
                    "<rect x=\"{}\" y=\"{:.1}\" width=\"1\" height=\"{h:.1}\" fill=\"{colour}\" \
                     fill-opacity=\"{:.2}\"><title>{c}</title></rect>",
                    x0 + b,
                    f64::from(top + SUB_H) - h,
                    0.35 + 0.65 * lv
                );
            }
        }
        let _ = writeln!(s, "</g>");
    }
    // axis
    let ay = TOP + plot_h;
    let _ = writeln!(
        s,
        "<line x1=\"{x0}\" y1=\"{ay}\" x2=\"{}\" y2=\"{ay}\" stroke=\"black\"/>",
        x0 + PLOT_WIDTH
    );
    let span = (hi - lo) as f64 + 1.0;
    for v in ticks(lo, hi) {
        let px = ((v - lo) as f64 / span * f64::from(PLOT_WIDTH)).round() as u32;
        let _ = writeln!(
            s,
            "<line x1=\"{x}\" y1=\"{ay}\" x2=\"{x}\" y2=\"{}\" stroke=\"black\"/><text x=\"{x}\" \
             y=\"{}\" text-anchor=\"middle\">{}</text>",
            ay + 5,
            ay + 18,
            si(v),
            x = x0 + px.min(PLOT_WIDTH)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">icount</text>",
        x0 + PLOT_WIDTH / 2,
        ay + 36
    );
    let _ = writeln!(s, "</svg>");
    s
}

/// Axis ticks: multiples of a round step (1, 2 or 5 times a power of ten)
/// in `lo..=hi+1`, at most 11 of them.
fn ticks(lo: u64, hi: u64) -> Vec<u64> {
    let end = u128::from(hi) + 1;
    let span = end - u128::from(lo);
    // The smallest round step giving at most 10 intervals.
    let mut base = 1u128;
    let step = loop {
        if let Some(&m) = [1u128, 2, 5].iter().find(|&&m| span <= 10 * m * base) {
            break m * base;
        }
        base *= 10;
    };
    let mut v = u128::from(lo).div_ceil(step) * step;
    let mut out = Vec::new();
    while v <= end && v <= u128::from(u64::MAX) {
        out.push(v as u64);
        v += step;
    }
    out
}

/// 12500000 -> "12.5M".
fn si(v: u64) -> String {
    for (div, suffix) in [
        (1_000_000_000_000u64, "T"),
        (1_000_000_000, "G"),
        (1_000_000, "M"),
        (1_000, "k"),
    ] {
        if v >= div {
            let x = v as f64 / div as f64;
            let s = format!("{x:.3}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            return format!("{s}{suffix}");
        }
    }
    v.to_string()
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn axis() {
        assert_eq!(super::ticks(9, 11), vec![9, 10, 11, 12]);
        assert_eq!(
            super::ticks(0, 999),
            (0..=10).map(|i| i * 100).collect::<Vec<_>>()
        );
        assert_eq!(
            super::ticks(u64::MAX - 1, u64::MAX),
            vec![u64::MAX - 1, u64::MAX]
        );
        assert_eq!(
            super::ticks(9, 19_999_991),
            (1..=9).map(|i| i * 2_000_000).collect::<Vec<_>>()
        );
        assert_eq!(super::si(12_500_000), "12.5M");
        assert_eq!(super::si(4_000), "4k");
        assert_eq!(super::si(999), "999");
    }
}
