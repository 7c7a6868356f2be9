//! A shadow call stack per vCPU, rebuilt from the executed instructions
//! (`insn`) and their disassembly (`code`): which function called the code
//! running at each instruction. bufmon takes its `caller` from it, the
//! Perfetto export its function slices.
//!
//! A call is an instruction whose disassembly [`is_call`]; it pushes its
//! return address (its `pc + size`). Reaching one of the top
//! [`RETURN_SEARCH_DEPTH`] return addresses returns from that call and
//! every call above it (like PANDA's callstack_instr, which tolerates a few
//! missed returns). analyzers/README.md (bufmon) describes the rules.

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use polars::prelude::*;

use crate::capture_dir::Capture;

/// True when `disas` is a call instruction: `bl`, `blx`, `bl<cond>`,
/// `blx<cond>` (ARM/Thumb), `blr`/`blraa`... (AArch64), `call*`/`lcall`
/// (x86), `jal`/`jalr` linking `ra`/`x1` and `c.jal`/`c.jalr` (RISC-V; MIPS
/// `jal`/`jalr` too).
pub fn is_call(disas: &str) -> bool {
    const COND: [&str; 17] = [
        "eq", "ne", "cs", "hs", "cc", "lo", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt",
        "le", "al",
    ];
    let d = disas.trim();
    let (mnem, ops) = match d.find(char::is_whitespace) {
        Some(i) => (&d[..i], d[i..].trim()),
        None => (d, ""),
    };
    let mnem = mnem.to_ascii_lowercase();
    let m = mnem
        .strip_suffix(".w")
        .or_else(|| mnem.strip_suffix(".n"))
        .unwrap_or(&mnem);
    if m.starts_with("call") || m == "lcall" {
        return true;
    }
    if m == "bl" || m == "blx" || m == "blr" || m.starts_with("blra") {
        return true;
    }
    let cond = |rest: Option<&str>| rest.is_some_and(|c| COND.contains(&c));
    if cond(m.strip_prefix("blx")) || cond(m.strip_prefix("bl")) {
        return true;
    }
    if m == "c.jal" || m == "c.jalr" {
        return true;
    }
    if m == "jal" || m == "jalr" {
        let operands: Vec<&str> = ops.split(',').map(str::trim).collect();
        return match operands.as_slice() {
            [""] => false,
            // pseudo-instruction `jal offset` / `jalr rs`: links ra
            [_] => true,
            [link, ..] => matches!(*link, "ra" | "x1" | "$ra" | "$31"),
            [] => false,
        };
    }
    false
}

/// The call instructions of a capture, from `code`.
pub struct CallSites {
    /// (block, pc) of each call -> its return address.
    calls: HashMap<(u64, u64), u64>,
    /// Every return address.
    returns: HashSet<u64>,
}

impl CallSites {
    /// Reads the call instructions from the capture's `code` table.
    pub fn read(cap: &Capture) -> Result<CallSites> {
        let lf = cap.scan("code")?.select([
            col("block").cast(DataType::UInt64),
            col("pc").cast(DataType::UInt64),
            col("size").cast(DataType::UInt64),
            col("disas"),
        ]);
        let df = cap.collect(lf)?;
        let block = df.column("block")?.u64()?;
        let pc = df.column("pc")?.u64()?;
        let size = df.column("size")?.u64()?;
        let disas = df.column("disas")?.str()?;
        let mut calls = HashMap::new();
        let mut returns = HashSet::new();
        for i in 0..df.height() {
            let (Some(b), Some(p), Some(s), Some(d)) =
                (block.get(i), pc.get(i), size.get(i), disas.get(i))
            else {
                continue;
            };
            if is_call(d) {
                let ret = p.wrapping_add(s);
                calls.insert((b, p), ret);
                returns.insert(ret);
            }
        }
        Ok(CallSites { calls, returns })
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// The return address of the instruction at `pc` of translated block
    /// `block`, when it is a call.
    pub fn return_address(&self, block: u64, pc: u64) -> Option<u64> {
        self.calls.get(&(block, pc)).copied()
    }

    /// Whether some call returns to `pc` (only such instructions can pop).
    pub fn is_return_address(&self, pc: u64) -> bool {
        self.returns.contains(&pc)
    }

    /// Every pc that can push or pop: the calls and the return addresses
    /// (sorted, each once), to read only those instructions.
    pub fn pcs(&self) -> Vec<u64> {
        let mut pcs: Vec<u64> = self.calls.keys().map(|&(_, pc)| pc).collect();
        pcs.extend(self.returns.iter().copied());
        pcs.sort_unstable();
        pcs.dedup();
        pcs
    }
}

/// Entries of the shadow stack searched for a return address (like PANDA's
/// callstack_instr, which tolerates a few missed returns).
pub const RETURN_SEARCH_DEPTH: usize = 16;
/// Deepest shadow stack kept; older entries are dropped beyond it.
pub const MAX_STACK: usize = 1 << 16;

/// One shadow stack of return addresses per vCPU.
#[derive(Default)]
pub struct ShadowStacks {
    stacks: HashMap<u32, Vec<u64>>,
}

impl ShadowStacks {
    /// Execution of `vcpu` reached `pc`: when it is one of the top return
    /// addresses, the calls above it (and it) have returned. Returns how
    /// many entries were popped (0 when `pc` is none of them).
    pub fn reach(&mut self, vcpu: u32, pc: u64) -> usize {
        let s = self.stacks.entry(vcpu).or_default();
        let n = s.len();
        for i in (n.saturating_sub(RETURN_SEARCH_DEPTH)..n).rev() {
            if s[i] == pc {
                s.truncate(i);
                return n - i;
            }
        }
        0
    }

    /// `vcpu` called a function that returns to `ret`.
    pub fn call(&mut self, vcpu: u32, ret: u64) {
        let s = self.stacks.entry(vcpu).or_default();
        if s.len() >= MAX_STACK {
            s.remove(0);
        }
        s.push(ret);
    }

    /// The top return address of `vcpu`'s stack: the caller of the code
    /// running now (0 when the stack is empty).
    pub fn top(&self, vcpu: u32) -> u64 {
        self.stacks
            .get(&vcpu)
            .and_then(|s| s.last().copied())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls() {
        for d in [
            "bl #0x1234",
            "blx r3",
            "bleq #0x100",
            "bl.w #0x10",
            "blr x8",
            "call 0x401000",
            "callq *%rax",
            "jal ra,0x80000010",
            "jalr ra,a5,0",
            "jalr ra,0(a5)",
            "jal 0x100",
            "c.jalr a5",
        ] {
            assert!(is_call(d), "{d}");
        }
        for d in [
            "b #0x10",
            "bls #0x10",
            "blt #0x10",
            "ble #0x10",
            "blo #0x10",
            "bx lr",
            "jal zero,0x80000010",
            "jalr zero,0(ra)",
            "ret",
            "jmp 0x10",
            "mov r0, r1",
            "",
        ] {
            assert!(!is_call(d), "{d}");
        }
    }

    #[test]
    fn shadow_stack() {
        let mut s = ShadowStacks::default();
        s.call(0, 0x104);
        s.call(0, 0x204);
        assert_eq!(s.top(0), 0x204);
        assert_eq!(s.reach(0, 0x300), 0, "not a return address on the stack");
        assert_eq!(s.reach(0, 0x104), 2, "returned through both");
        assert_eq!(s.top(0), 0);
        assert_eq!(s.top(1), 0);
    }
}
