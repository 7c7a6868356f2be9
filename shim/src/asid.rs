//! The address-space id recorded with each memory access (`Event.asid`): the
//! value of the architecture's MMU context register, as PANDA records it
//! (Arm TTBR0, x86 CR3, RISC-V satp). Cores without an MMU (Cortex-M) have no
//! such register, and their accesses carry 0.
//!
//! Reading a register needs a callback registered with `QEMU_PLUGIN_CB_R_REGS`
//! and goes through QEMU's gdbstub register code, which is dear: the memory
//! callback reads it only when the value it read last may be stale, at the
//! first event it emits after that, into the vCPU's slot here (see
//! `Shim::asid_of`). When is it stale ([`Staleness`])? On AArch64, after an
//! instruction that writes TTBR0_EL1 (found by its encoding at translation),
//! and when the vCPU resumes (a reset, e.g. PSCI CPU_ON, sets it again).
//! Elsewhere, at every executed block: a write to these registers ends the
//! translated block in QEMU, so every access of a block sees the value its
//! first access saw.

use qemu_plugin_sys::*;
use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int, c_uint, CStr};

// GLib, resolved from the QEMU process that loads us.
extern "C" {
    fn g_byte_array_new() -> *mut GByteArray;
    fn g_byte_array_set_size(array: *mut GByteArray, length: c_uint) -> *mut GByteArray;
    fn g_array_free(array: *mut GArray, free_segment: c_int) -> *mut c_char;
}

/// The context register's name in QEMU's register list, per architecture.
const CONTEXT_REGISTERS: &[&str] = &["TTBR0_EL1", "TTBR0", "cr3", "satp"];

/// When a value read from the context register may no longer hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Staleness {
    /// After an instruction [`writes_ttbr0_el1`] finds, or a vCPU resume.
    OnWrites,
    /// At every executed block (no decoder for this architecture's writes).
    EveryBlock,
}

/// Whether the AArch64 instruction `bytes` writes TTBR0_EL1: `msr
/// ttbr0_el1, xN` (op0=3 op1=0 CRn=2 CRm=0 op2=0) or, from EL2 with VHE,
/// `msr ttbr0_el12, xN` (op1=5). Every other way to change it is a reset.
pub fn writes_ttbr0_el1(bytes: &[u8]) -> bool {
    let Some(word) = bytes.get(..4) else {
        return false;
    };
    let word = u32::from_le_bytes(word.try_into().unwrap()) & !0x1f; // Rt
    word == 0xd518_2000 || word == 0xd51d_2000
}

/// One vCPU's context register and last value read.
pub struct AsidSlot {
    register: UnsafeCell<*mut qemu_plugin_register>,
    buffer: UnsafeCell<*mut GByteArray>,
    value: UnsafeCell<u64>,
}

// Safety: only the thread running the vCPU touches its slot (as for VcpuSlot).
unsafe impl Sync for AsidSlot {}
// Safety: its pointers are QEMU's register handle and a GLib byte array,
// usable from any thread.
unsafe impl Send for AsidSlot {}

impl AsidSlot {
    pub fn new() -> AsidSlot {
        AsidSlot {
            register: UnsafeCell::new(std::ptr::null_mut()),
            buffer: UnsafeCell::new(std::ptr::null_mut()),
            value: UnsafeCell::new(0),
        }
    }

    /// Finds the vCPU's context register. Must run on the vCPU's thread
    /// (QEMU's register list is the current vCPU's); returns when a value
    /// read from it goes stale, or `None` when the core has none.
    ///
    /// # Safety
    /// On the vCPU's own thread, in one of its callbacks (QEMU needs a
    /// `current_cpu`), before any other use of the slot.
    pub unsafe fn init(&self) -> Option<Staleness> {
        // Safety: in a callback on the vCPU's thread (the caller's guarantee).
        let list = unsafe { qemu_plugin_get_registers() };
        if list.is_null() {
            return None;
        }
        // Safety: QEMU's list is a GArray of `len` descriptors, zero-terminated
        // so `data` is non-null even when empty; freed only after the last use.
        let descriptors = unsafe {
            std::slice::from_raw_parts(
                (*list).data as *const qemu_plugin_reg_descriptor,
                (*list).len as usize,
            )
        };
        let name_of = |d: &qemu_plugin_reg_descriptor| {
            // Safety: QEMU names each register with an interned C string.
            unsafe { CStr::from_ptr(d.name) }
                .to_string_lossy()
                .into_owned()
        };
        let found = CONTEXT_REGISTERS.iter().find_map(|&want| {
            descriptors
                .iter()
                .find(|d| name_of(d).eq_ignore_ascii_case(want))
                .map(|d| (want, d.handle))
        });
        // Safety: the list is ours to free (QEMU's API); `found` holds copies.
        unsafe { g_array_free(list, 1) };
        let (name, handle) = found?;
        // Safety: only this vCPU's thread touches its slot (the caller's
        // guarantee); `g_byte_array_new` has no precondition.
        unsafe {
            *self.register.get() = handle;
            *self.buffer.get() = g_byte_array_new();
        }
        Some(match name {
            "TTBR0_EL1" => Staleness::OnWrites,
            _ => Staleness::EveryBlock,
        })
    }

    /// Reads the register (in a callback registered with `R_REGS`).
    ///
    /// # Safety
    /// On the vCPU's own thread, in a callback registered with
    /// `QEMU_PLUGIN_CB_R_REGS` if `init` found a register.
    #[inline]
    pub unsafe fn refresh(&self) {
        // Safety: only this vCPU's thread touches its slot (the caller's guarantee).
        let register = unsafe { *self.register.get() };
        if register.is_null() {
            return;
        }
        // Safety: likewise, this vCPU's thread's alone.
        let buffer = unsafe { *self.buffer.get() };
        // Safety: `init` made `buffer` along with the (non-null) register.
        unsafe { g_byte_array_set_size(buffer, 0) };
        // Safety: an R_REGS callback of this vCPU (the caller's guarantee), with
        // QEMU's handle for its register.
        let n = unsafe { qemu_plugin_read_register(register, buffer) };
        if n > 0 {
            let mut bytes = [0u8; 8];
            let len = (n as usize).min(8);
            // Safety: QEMU appended `n >= len` bytes to the emptied buffer.
            unsafe { std::ptr::copy_nonoverlapping((*buffer).data, bytes.as_mut_ptr(), len) };
            // Target byte order: the little-endian guests we support.
            // Safety: only this vCPU's thread touches its slot.
            unsafe { *self.value.get() = u64::from_le_bytes(bytes) };
        }
    }

    #[inline(always)]
    pub fn value(&self) -> u64 {
        // Safety: read on the vCPU's thread (its memory callbacks), the only
        // one that writes it (`refresh`).
        unsafe { *self.value.get() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_writes_to_ttbr0_el1_by_encoding() {
        let le = |w: u32| w.to_le_bytes();
        assert!(writes_ttbr0_el1(&le(0xd518_2000))); // msr ttbr0_el1, x0
        assert!(writes_ttbr0_el1(&le(0xd518_2014))); // msr ttbr0_el1, x20
        assert!(writes_ttbr0_el1(&le(0xd51d_2002))); // msr ttbr0_el12, x2
        assert!(!writes_ttbr0_el1(&le(0xd538_2000))); // mrs x0, ttbr0_el1
        assert!(!writes_ttbr0_el1(&le(0xd518_2020))); // msr ttbr1_el1, x0
        assert!(!writes_ttbr0_el1(&le(0xd503_201f))); // nop
        assert!(!writes_ttbr0_el1(&[0x00, 0x20])); // too short
    }
}
