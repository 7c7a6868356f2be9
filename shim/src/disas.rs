//! The disassembly of translated instructions: the text QEMU's
//! `qemu_plugin_insn_disas` gives, at a fraction of its cost.
//!
//! QEMU opens a new capstone handle at every call (disas/capstone.c), and
//! capstone 4 fills a table of every instruction of the architecture at a
//! handle's first decode: about 7 µs a call, 2.4 of the 11 CPU-s that the
//! shim and ring of an `events=insn` capture of the arm64 boot took
//! (benches/RESULTS.md, 2026-12-02). We keep handles open, one
//! per mode and translating thread, in the capstone library QEMU itself
//! loaded, with the options QEMU sets (`CS_OPT_SKIPDATA` on, the text
//! "mnemonic op_str"): for a given mode, our text is then the same function
//! of an instruction's bytes and address as QEMU's. That holds only if a
//! handle forgets each instruction once decoded: capstone's ARM decoder
//! keeps the state of a Thumb `IT` instruction in the handle and applies
//! it to the next ones ("addne r5, #1" where QEMU, with its fresh handle,
//! says "adds r5, #1"). `cs_disasm` clears that state at each call
//! (`cs_disasm_iter` does not), so we decode with it.
//!
//! The plugin API does not say which mode QEMU disassembles a block in (A64,
//! A32 or T32, M-profile, v8; x86's 64-, 32- or 16-bit code), so QEMU says it: its text for a block's first
//! instruction keeps the modes that give the same text. A later instruction
//! on which the modes kept disagree is asked of QEMU again, which narrows
//! them. A block never mixes modes (QEMU ends a block where the mode
//! changes), so every text is the one QEMU would have given. On that boot
//! QEMU is asked about once per block (64.5k) instead of once per
//! instruction (336k). Except where the address says the mode: an AArch32
//! PC has 32 bits, so an aarch64 block above 4 GiB (a kernel's, all of that
//! boot's but its /init) is A64, which QEMU disassembles with capstone's
//! ARM64 mode and nothing else (target/arm `arm_disas_set_info`): it starts
//! with that mode kept, and QEMU is asked only where it cannot decode. With no mode
//! left, no capstone in the process, a target other than ARM and x86 (RISC-V:
//! QEMU disassembles it with its own disassembler, disas/riscv.c, not
//! capstone, so no handle of ours could give its text), or `disas=qemu`,
//! every instruction is QEMU's call.

use qemu_plugin_sys::{qemu_plugin_insn, qemu_plugin_insn_disas};
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};

/// capstone's `csh`.
type Csh = usize;

/// An architecture and mode, as `cs_open` takes them (capstone.h).
#[derive(Clone, Copy)]
struct Mode {
    arch: c_int,
    mode: c_int,
}

const CS_ARCH_ARM: c_int = 0;
const CS_ARCH_ARM64: c_int = 1;
const CS_ARCH_X86: c_int = 3;
const CS_MODE_ARM: c_int = 0;
const CS_MODE_16: c_int = 1 << 1;
const CS_MODE_32: c_int = 1 << 2;
const CS_MODE_64: c_int = 1 << 3;
const CS_MODE_THUMB: c_int = 1 << 4;
const CS_MODE_MCLASS: c_int = 1 << 5;
const CS_MODE_V8: c_int = 1 << 6;
const CS_OPT_SYNTAX: c_int = 1;
const CS_OPT_SYNTAX_ATT: usize = 2;
const CS_OPT_SKIPDATA: c_int = 5;
const CS_OPT_ON: usize = 3;
const CS_MNEMONIC_SIZE: usize = 32;
const CS_OP_STR_SIZE: usize = 160;

const A64: Mode = Mode {
    arch: CS_ARCH_ARM64,
    mode: 0,
};
const fn a32(extra: c_int) -> Mode {
    Mode {
        arch: CS_ARCH_ARM,
        mode: CS_MODE_ARM | extra,
    }
}
const fn t32(extra: c_int) -> Mode {
    Mode {
        arch: CS_ARCH_ARM,
        mode: CS_MODE_THUMB | extra,
    }
}
const fn x86(mode: c_int) -> Mode {
    Mode {
        arch: CS_ARCH_X86,
        mode,
    }
}

/// The modes QEMU may disassemble a block of this target in (target/arm
/// `arm_disas_set_info`: A64; or A32/T32, plus v8 on a v8 core, plus
/// M-class on an M-profile one; little-endian: a big-endian block matches
/// none and is left to QEMU), or, on x86 (target/i386
/// `x86_disas_set_info`), the code segment's: 64-bit (long mode), 32-bit or
/// 16-bit (real mode, and 16-bit protected mode), as a PC passes through
/// them while it boots.
fn modes_of(target: &str) -> (&'static [Mode], Option<usize>) {
    const AARCH64: [Mode; 3] = [A64, a32(CS_MODE_V8), t32(CS_MODE_V8)];
    const ARM: [Mode; 6] = [
        t32(CS_MODE_MCLASS),
        t32(CS_MODE_MCLASS | CS_MODE_V8),
        t32(0),
        a32(0),
        t32(CS_MODE_V8),
        a32(CS_MODE_V8),
    ];
    const X86_64: [Mode; 3] = [x86(CS_MODE_64), x86(CS_MODE_32), x86(CS_MODE_16)];
    const I386: [Mode; 2] = [x86(CS_MODE_32), x86(CS_MODE_16)];
    match target {
        "aarch64" => (&AARCH64, Some(0)),
        "arm" => (&ARM, None),
        "x86_64" => (&X86_64, None),
        "i386" => (&I386, None),
        _ => (&[], None),
    }
}

// capstone.h's signatures.
type CsVersion = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_uint;
type CsOpen = unsafe extern "C" fn(c_int, c_int, *mut Csh) -> c_int;
type CsOption = unsafe extern "C" fn(Csh, c_int, usize) -> c_int;
type CsDisasm = unsafe extern "C" fn(Csh, *const u8, usize, u64, usize, *mut *mut c_void) -> usize;
type CsFree = unsafe extern "C" fn(*mut c_void, usize);

/// capstone's entry points in the library QEMU loaded, and where its
/// `cs_insn` keeps the text.
struct Capstone {
    open: CsOpen,
    option: CsOption,
    disasm: CsDisasm,
    free: CsFree,
    /// Offsets of `mnemonic` and `op_str` in `cs_insn`: after `id` (u32),
    /// `address` (u64), `size` (u16, at 16) and `bytes`, 16 of them in
    /// capstone 4 and 24 in capstone 5.
    mnemonic_at: usize,
    op_str_at: usize,
}

impl Capstone {
    /// The capstone QEMU is linked with, if it is and its version is one
    /// whose `cs_insn` we know.
    fn loaded() -> Option<Capstone> {
        /// # Safety
        /// None: `name` is a C string; what the address is used as is the
        /// caller's business.
        unsafe fn symbol(name: &CStr) -> Option<*mut c_void> {
            // Safety: `name` is a C string; `dlsym` is thread-safe.
            let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
            (!p.is_null()).then_some(p)
        }
        // Safety: each symbol is capstone's function of that name, typed as in
        // capstone.h (the same in versions 4 and 5, the only ones kept);
        // `cs_version` writes the two ints it is handed.
        unsafe {
            let version = std::mem::transmute::<*mut c_void, CsVersion>(symbol(c"cs_version")?);
            let (mut major, mut minor) = (0, 0);
            version(&mut major, &mut minor);
            let bytes = match major {
                4 => 16,
                5 => 24,
                _ => return None,
            };
            let mnemonic_at = 4 + 4 + 8 + 2 + bytes;
            Some(Capstone {
                open: std::mem::transmute::<*mut c_void, CsOpen>(symbol(c"cs_open")?),
                option: std::mem::transmute::<*mut c_void, CsOption>(symbol(c"cs_option")?),
                disasm: std::mem::transmute::<*mut c_void, CsDisasm>(symbol(c"cs_disasm")?),
                free: std::mem::transmute::<*mut c_void, CsFree>(symbol(c"cs_free")?),
                mnemonic_at,
                op_str_at: mnemonic_at + CS_MNEMONIC_SIZE,
            })
        }
    }

    /// A handle set up as QEMU's `cap_disas_start` sets its own; never
    /// closed (a few per translating thread).
    fn open(&self, mode: Mode) -> Option<Handle> {
        let mut csh: Csh = 0;
        // Safety: `cs_open` writes the handle it returns success for.
        unsafe {
            if (self.open)(mode.arch, mode.mode, &mut csh) != 0 {
                return None;
            }
            // "Disassemble" unknown instructions as ".byte", as QEMU does.
            (self.option)(csh, CS_OPT_SKIPDATA, CS_OPT_ON);
            if mode.arch == CS_ARCH_X86 {
                // QEMU prints x86 in AT&T syntax (and ignores a capstone
                // built without it, as we do: then both print Intel's).
                (self.option)(csh, CS_OPT_SYNTAX, CS_OPT_SYNTAX_ATT);
            }
        }
        Some(Handle { csh })
    }

    /// The text of the instruction `bytes` at `pc`, as QEMU's
    /// `cap_disas_plugin` prints it, or `None` when capstone decodes
    /// something else than exactly these bytes.
    fn text(&self, handle: &Handle, pc: u64, bytes: &[u8]) -> Option<String> {
        let mut insn: *mut c_void = std::ptr::null_mut();
        // Safety: `cs_disasm` reads `bytes` and, when it decodes one
        // instruction, points `insn` at a `cs_insn` it allocated, which we
        // read within its size (offsets above) and free once.
        unsafe {
            // One instruction, from a clear IT state (see the module's
            // comment); allocates one `cs_insn` (translation time, not the
            // events' path).
            if (self.disasm)(handle.csh, bytes.as_ptr(), bytes.len(), pc, 1, &mut insn) != 1 {
                return None;
            }
            let at = insn as *const u8;
            let size = at.add(16).cast::<u16>().read_unaligned();
            let text = if usize::from(size) == bytes.len() {
                let mnemonic = c_text(at.add(self.mnemonic_at), CS_MNEMONIC_SIZE);
                let op_str = c_text(at.add(self.op_str_at), CS_OP_STR_SIZE);
                mnemonic.zip(op_str).map(|(m, o)| format!("{m} {o}"))
            } else {
                None // capstone decoded something else than these bytes
            };
            (self.free)(insn, 1);
            text
        }
    }
}

/// The NUL-terminated text in the `len` bytes at `p`.
///
/// # Safety
/// `p` must point to `len` readable bytes, unchanged for `'a`.
unsafe fn c_text<'a>(p: *const u8, len: usize) -> Option<std::borrow::Cow<'a, str>> {
    // Safety: the caller's guarantee.
    let bytes = unsafe { std::slice::from_raw_parts(p, len) };
    let end = bytes.iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&bytes[..end]))
}

struct Handle {
    csh: Csh,
}

thread_local! {
    /// This thread's handles, by index in `Disassembler::modes`, opened at
    /// first use (`None` inside: that mode failed to open here).
    static HANDLES: RefCell<Vec<Option<Option<Handle>>>> = const { RefCell::new(Vec::new()) };
}

/// What disassembles the instructions of translated blocks.
pub struct Disassembler {
    capstone: Option<Capstone>,
    modes: &'static [Mode],
    /// The mode (index in `modes`) of every block above 4 GiB, if the
    /// target says it (see the module's comment).
    above_4g: Option<usize>,
}

impl Disassembler {
    /// For a QEMU of `target` (`qemu_info_t::target_name`); `only_qemu`:
    /// every instruction by QEMU's call (`disas=qemu`).
    pub fn new(target: &str, only_qemu: bool) -> Disassembler {
        let (modes, above_4g) = if only_qemu {
            (&[][..], None)
        } else {
            modes_of(target)
        };
        Disassembler {
            capstone: if modes.is_empty() {
                None
            } else {
                Capstone::loaded()
            },
            modes,
            above_4g,
        }
    }

    /// The disassembler of one translated block's instructions, in order.
    pub fn block(&self) -> BlockDisassembly<'_> {
        BlockDisassembly {
            disassembler: self,
            kept: Kept::default(),
        }
    }

    /// Our text of an instruction in mode `m` (index in `modes`).
    fn text(&self, m: usize, pc: u64, bytes: &[u8]) -> Option<String> {
        let capstone = self.capstone.as_ref()?;
        HANDLES.with(|handles| {
            let mut handles = handles.borrow_mut();
            if handles.len() < self.modes.len() {
                handles.resize_with(self.modes.len(), || None);
            }
            let handle = handles[m].get_or_insert_with(|| capstone.open(self.modes[m]));
            capstone.text(handle.as_ref()?, pc, bytes)
        })
    }
}

/// See the module's comment.
pub struct BlockDisassembly<'a> {
    disassembler: &'a Disassembler,
    kept: Kept,
}

impl BlockDisassembly<'_> {
    /// The text QEMU gives for `insn` (at `pc`, made of `bytes`), the next
    /// instruction of the block; `None` where QEMU gives none.
    ///
    /// # Safety
    /// `insn` is an instruction of the block being translated.
    pub unsafe fn next(
        &mut self,
        insn: *mut qemu_plugin_insn,
        pc: u64,
        bytes: &[u8],
    ) -> Option<String> {
        let d = self.disassembler;
        if let (None, Some(m), true) = (self.kept.0, d.above_4g, pc > u32::MAX as u64) {
            self.kept = Kept(Some(1 << m));
        }
        self.kept.next(
            d.modes.len(),
            // Safety: `insn` is an instruction of the block being translated
            // (our caller's guarantee); the closure runs within this call.
            || unsafe { qemu_text(insn) },
            |m| d.text(m, pc, bytes),
        )
    }
}

/// The modes (bits by index in `Disassembler::modes`) whose text agreed
/// with QEMU's on every instruction of the block QEMU disassembled; `None`
/// before the first.
#[derive(Default)]
struct Kept(Option<u32>);

impl Kept {
    /// The next instruction's text: the one every mode kept gives, or
    /// `qemu`'s, which then narrows the modes kept. `ours(m)`: mode `m`'s
    /// text, `None` when it cannot decode the instruction.
    fn next(
        &mut self,
        modes: usize,
        qemu: impl FnOnce() -> Option<String>,
        ours: impl Fn(usize) -> Option<String>,
    ) -> Option<String> {
        let kept = match self.0 {
            None => (1u32 << modes) - 1,
            Some(0) => return qemu(),
            Some(kept) => {
                let mut texts = modes_in(kept).map(&ours);
                let first = texts.next().flatten();
                if first.is_some() && texts.all(|t| t == first) {
                    return first;
                }
                kept
            }
        };
        let text = qemu();
        self.0 = Some(
            modes_in(kept)
                .filter(|&m| text.is_some() && ours(m) == text)
                .fold(0, |bits, m| bits | 1 << m),
        );
        text
    }
}

/// The indices of the bits set in `bits`.
fn modes_in(bits: u32) -> impl Iterator<Item = usize> {
    (0..32).filter(move |m| bits & (1 << m) != 0)
}

/// QEMU's text for `insn`.
///
/// # Safety
/// `insn` must be an instruction of the block being translated (in the
/// translation callback).
unsafe fn qemu_text(insn: *mut qemu_plugin_insn) -> Option<String> {
    // Safety: `insn` is valid (as required above).
    let p = unsafe { qemu_plugin_insn_disas(insn) };
    if p.is_null() {
        return None;
    }
    // Safety: non-null: a NUL-terminated string, ours until freed below.
    let text = unsafe { CStr::from_ptr(p as *const c_char) }
        .to_string_lossy()
        .into_owned();
    // QEMU hands over a g_strdup'ed string; g_free is free.
    // Safety: freed once, with `text` copied out first.
    unsafe { libc::free(p as *mut c_void) };
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Three modes; QEMU's is mode 1. Modes 0 and 1 read the same text
    /// except for instruction 2; mode 2 reads everything differently.
    fn text(mode: usize, insn: usize) -> Option<String> {
        match (mode, insn) {
            (0, 2) => Some("mrs r0, apsr".into()),
            (1, 2) => Some("mrs r0, primask".into()),
            (2, _) => Some(format!("other {insn}")),
            (_, 4) => None, // neither 0 nor 1 can decode it
            _ => Some(format!("insn {insn}")),
        }
    }

    /// The texts of a block of `n` instructions, and which of them were
    /// asked of QEMU.
    fn block(n: usize, modes: usize) -> (Vec<Option<String>>, Vec<usize>) {
        block_from(Kept::default(), n, modes)
    }

    /// `block`, from the modes `kept`.
    fn block_from(mut kept: Kept, n: usize, modes: usize) -> (Vec<Option<String>>, Vec<usize>) {
        let asked = std::cell::RefCell::new(Vec::new());
        let texts = (0..n)
            .map(|i| {
                let qemu_calls = Cell::new(0);
                let t = kept.next(
                    modes,
                    || {
                        qemu_calls.set(1);
                        asked.borrow_mut().push(i);
                        text(1, i).or(Some(String::new()))
                    },
                    |m| text(m, i),
                );
                assert!(qemu_calls.get() <= 1);
                t
            })
            .collect();
        (texts, asked.into_inner())
    }

    #[test]
    fn qemu_is_asked_where_the_modes_kept_disagree() {
        let (texts, asked) = block(4, 3);
        let want: Vec<_> = (0..4).map(|i| text(1, i)).collect();
        assert_eq!(texts, want);
        // The first instruction keeps modes 0 and 1; they disagree on the
        // third, where QEMU's text keeps mode 1 only.
        assert_eq!(asked, vec![0, 2]);
    }

    #[test]
    fn an_instruction_no_mode_decodes_is_qemus_and_so_is_the_rest() {
        let (texts, asked) = block(7, 3);
        assert_eq!(texts[4], Some(String::new()));
        assert_eq!(texts[5], text(1, 5));
        // 4: no mode decodes it, so none is kept after it.
        assert_eq!(asked, vec![0, 2, 4, 5, 6]);
    }

    #[test]
    fn a_block_whose_mode_is_known_asks_qemu_only_what_it_cannot_decode() {
        let (texts, asked) = block_from(Kept(Some(1 << 1)), 7, 3);
        assert_eq!(texts[..4], (0..4).map(|i| text(1, i)).collect::<Vec<_>>());
        assert_eq!(texts[4], Some(String::new()));
        assert_eq!(asked, vec![4, 5, 6]);
    }

    #[test]
    fn only_aarch64_knows_a_mode_from_the_address() {
        assert_eq!(modes_of("aarch64").1, Some(0));
        assert_eq!(modes_of("aarch64").0[0].arch, CS_ARCH_ARM64);
        for t in ["arm", "x86_64", "i386", "riscv64"] {
            assert_eq!(modes_of(t).1, None, "{t}");
        }
    }

    #[test]
    fn without_modes_every_instruction_is_qemus() {
        let (texts, asked) = block(3, 0);
        assert_eq!(texts, (0..3).map(|i| text(1, i)).collect::<Vec<_>>());
        assert_eq!(asked, vec![0, 1, 2]);
    }
}
