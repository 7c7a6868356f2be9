//! The shim's options, as QEMU hands them over: `-plugin libtrace_shim.so,events=mem+mmio,wait=on`
//! gives the plugin `["events=mem+mmio", "wait=on"]`.
//!
//! Parsing lives here rather than in the shim so that the collector can check
//! `--events` before starting QEMU, and so that it is unit-tested and fuzzed
//! without a QEMU.

use crate::layout::{MAX_RING_BYTES, MIN_RING_BYTES};

/// The option strings QEMU passes to a plugin's `qemu_plugin_install` as
/// `argc`/`argv` (the shim's and the benchmark plugins'), as Rust strings
/// (invalid UTF-8 replaced).
///
/// # Safety
/// `argv` must point to `argc` NUL-terminated strings (QEMU's guarantee).
pub unsafe fn plugin_args(
    argc: std::ffi::c_int,
    argv: *const *const std::ffi::c_char,
) -> Vec<String> {
    (0..argc.max(0) as usize)
        .map(|i| {
            // Safety: `i < argc`, and the caller guarantees `argv` holds `argc`
            // C strings; the text is copied out at once.
            unsafe { std::ffi::CStr::from_ptr(*argv.add(i)) }
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// What to record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventSet {
    /// Every data access (RAM and I/O).
    pub mem: bool,
    /// I/O (MMIO) data accesses. Implied by `mem`.
    pub mmio: bool,
    /// Every executed instruction (as executed blocks + their instruction table).
    pub insn: bool,
}

impl EventSet {
    /// Parses `mem+mmio+insn` (also accepts `,` as separator, for the collector's `--events`).
    pub fn parse(s: &str) -> Result<EventSet, OptionError> {
        let mut set = EventSet::default();
        for part in s.split(['+', ',']) {
            match part.trim() {
                "mem" => set.mem = true,
                "mmio" => set.mmio = true,
                "insn" => set.insn = true,
                other => {
                    return Err(OptionError::new(
                        "events",
                        s,
                        &format!("unknown event kind {other:?}: expected any of mem, mmio, insn joined with '+'"),
                    ))
                }
            }
        }
        Ok(set)
    }

    /// Any memory callback needed at all.
    pub fn wants_memory(&self) -> bool {
        self.mem || self.mmio
    }

    /// As a bit set (`mem` 1, `mmio` 2, `insn` 4): how `Header::requested_events`
    /// and `Header::instrumented_events` hold it. 0 is the empty set.
    pub fn bits(&self) -> u32 {
        self.mem as u32 | (self.mmio as u32) << 1 | (self.insn as u32) << 2
    }

    /// The set of `bits` (other bits ignored).
    pub fn from_bits(bits: u32) -> EventSet {
        EventSet {
            mem: bits & 1 != 0,
            mmio: bits & 2 != 0,
            insn: bits & 4 != 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bits() == 0
    }

    pub fn to_option(&self) -> String {
        let mut parts = Vec::new();
        if self.mem {
            parts.push("mem");
        }
        if self.mmio {
            parts.push("mmio");
        }
        if self.insn {
            parts.push("insn");
        }
        parts.join("+")
    }
}

/// What the shim does when a vCPU's ring is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Wait for the collector (lossless; the guest slows down to its speed).
    Block,
    /// Count the event as lost and go on.
    Drop,
}

impl Overflow {
    /// `block` or `drop`, as the shim's option and `attach --overflow` say it.
    pub fn parse(value: &str) -> Option<Overflow> {
        match value {
            "block" => Some(Overflow::Block),
            "drop" => Some(Overflow::Drop),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::Block => "block",
            Overflow::Drop => "drop",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShimOptions {
    pub events: EventSet,
    /// Bytes of each vCPU's event ring.
    pub ring_bytes: u64,
    /// Bytes of each vCPU's meta ring (device names, translated blocks).
    pub meta_ring_bytes: u64,
    pub overflow: Overflow,
    /// Hold the guest until a collector attaches.
    pub wait: bool,
    /// Where the disassembly of translated instructions comes from.
    pub disas: Disas,
    /// What the shim costs while no collector is attached.
    pub idle: Idle,
}

/// `idle=`: what the shim does while no collector is attached (before the
/// first, and after a collector detached; not after one died, see
/// `attach::State::Detached`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idle {
    /// `Free` on cores without an MMU (Cortex-M and -R: firmware, whose
    /// busy loops may never translate or idle), `Lazy` on the others (an
    /// OS guest, where the per-block test costs a translating guest most).
    Auto,
    /// Nothing: QEMU's translated code has no memory, instruction or block
    /// callbacks, only a per-block test of a flag the shim raises when a
    /// collector attaches. `icount` then counts only the instructions run
    /// while a collector was attached.
    Free,
    /// As `Free`, without the per-block test: the shim notices an attach
    /// when a vCPU next translates a block or goes idle, which an OS guest
    /// does all the time but a firmware's busy loop may never do (the
    /// attach then waits for it; the collector warns).
    Lazy,
    /// Keep counting instructions (the shim stays instrumented for its
    /// `events`, recording nothing): `icount` stays the vCPU's instruction
    /// count since QEMU started, across detached spans, at the cost of a
    /// capture's instrumentation.
    Count,
}

/// `disas=`: both give QEMU's text (`qemu_plugin_insn_disas`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disas {
    /// Capstone handles kept open by the shim, QEMU's call where the mode
    /// is in doubt (shim/src/disas.rs): on the arm64 boot about one QEMU
    /// call per block instead of one per instruction (5x fewer).
    Fast,
    /// QEMU's call for every instruction (about 7 µs each on ARM).
    Qemu,
}

impl Default for ShimOptions {
    fn default() -> Self {
        ShimOptions {
            events: EventSet {
                mem: true,
                mmio: true,
                insn: false,
            },
            ring_bytes: 16 << 20,
            meta_ring_bytes: 4 << 20,
            overflow: Overflow::Block,
            wait: false,
            disas: Disas::Fast,
            idle: Idle::Auto,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionError {
    pub option: String,
    pub message: String,
}

impl OptionError {
    fn new(option: &str, value: &str, why: &str) -> OptionError {
        OptionError {
            option: option.to_string(),
            message: format!("{option}={value}: {why}"),
        }
    }
}

impl std::fmt::Display for OptionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "trace shim option {}", self.message)
    }
}

impl std::error::Error for OptionError {}

pub const OPTION_NAMES: &str = "events, ring_kib, meta_kib, overflow, wait, disas, idle";

impl ShimOptions {
    /// Parses the `key=value` arguments QEMU passes to the plugin.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<ShimOptions, OptionError> {
        let mut o = ShimOptions::default();
        for arg in args {
            let arg = arg.as_ref();
            let Some((key, value)) = arg.split_once('=') else {
                return Err(OptionError {
                    option: arg.to_string(),
                    message: format!(
                        "{arg:?} is not of the form key=value (options: {OPTION_NAMES})"
                    ),
                });
            };
            match key {
                "events" => o.events = EventSet::parse(value)?,
                "ring_kib" => o.ring_bytes = ring_kib(key, value)?,
                "meta_kib" => o.meta_ring_bytes = ring_kib(key, value)?,
                "overflow" => {
                    o.overflow = Overflow::parse(value)
                        .ok_or_else(|| OptionError::new(key, value, "expected block or drop"))?
                }
                "wait" => {
                    o.wait = match value {
                        "on" | "true" | "yes" => true,
                        "off" | "false" | "no" => false,
                        _ => return Err(OptionError::new(key, value, "expected on or off")),
                    }
                }
                "disas" => {
                    o.disas = match value {
                        "fast" => Disas::Fast,
                        "qemu" => Disas::Qemu,
                        _ => return Err(OptionError::new(key, value, "expected fast or qemu")),
                    }
                }
                "idle" => {
                    o.idle = match value {
                        "auto" => Idle::Auto,
                        "free" => Idle::Free,
                        "lazy" => Idle::Lazy,
                        "count" => Idle::Count,
                        _ => {
                            return Err(OptionError::new(
                                key,
                                value,
                                "expected auto, free, lazy or count",
                            ))
                        }
                    }
                }
                _ => {
                    return Err(OptionError {
                        option: key.to_string(),
                        message: format!("{key:?} is unknown (options: {OPTION_NAMES})"),
                    })
                }
            }
        }
        Ok(o)
    }
}

fn ring_kib(key: &str, value: &str) -> Result<u64, OptionError> {
    let kib: u64 = value
        .parse()
        .map_err(|_| OptionError::new(key, value, "expected a whole number of KiB"))?;
    let bytes = kib.saturating_mul(1024);
    if !bytes.is_power_of_two() || !(MIN_RING_BYTES..=MAX_RING_BYTES).contains(&bytes) {
        return Err(OptionError::new(
            key,
            value,
            &format!(
                "expected a power of two from {} to {} KiB",
                MIN_RING_BYTES / 1024,
                MAX_RING_BYTES / 1024
            ),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_full_set() {
        let o = ShimOptions::parse::<&str>(&[]).unwrap();
        assert_eq!(o, ShimOptions::default());
        let o = ShimOptions::parse(&[
            "events=mem+mmio+insn",
            "ring_kib=64",
            "overflow=drop",
            "wait=on",
            "disas=qemu",
            "idle=count",
        ])
        .unwrap();
        assert_eq!(
            o.events,
            EventSet {
                mem: true,
                mmio: true,
                insn: true
            }
        );
        assert_eq!(o.ring_bytes, 64 * 1024);
        assert_eq!(o.overflow, Overflow::Drop);
        assert!(o.wait);
        assert_eq!(o.disas, Disas::Qemu);
        assert_eq!(o.idle, Idle::Count);
        assert_eq!(EventSet::from_bits(o.events.bits()), o.events);
        assert!(EventSet::from_bits(0).is_empty());
    }

    #[test]
    fn errors_name_the_option() {
        for (arg, option) in [
            ("bogus=1", "bogus"),
            ("events=mem+cache", "events"),
            ("ring_kib=3", "ring_kib"),
            ("ring_kib=-1", "ring_kib"),
            ("ring_kib=99999999999999999", "ring_kib"),
            ("overflow=maybe", "overflow"),
            ("wait=2", "wait"),
            ("disas=capstone", "disas"),
            ("idle=sleep", "idle"),
            ("noequals", "noequals"),
        ] {
            let e = ShimOptions::parse(&[arg]).unwrap_err();
            assert_eq!(e.option, option, "{arg}");
            assert!(e.to_string().contains(option), "{e}");
        }
    }
}
