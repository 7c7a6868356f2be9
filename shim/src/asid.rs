//! The address-space id recorded with each memory access (`Event.asid`): the
//! value of the architecture's MMU context register, as PANDA records it
//! (Arm TTBR0, x86 CR3, RISC-V satp). Cores without an MMU (Cortex-M) have no
//! such register, and their accesses carry 0.
//!
//! Reading a register needs a callback registered with `QEMU_PLUGIN_CB_R_REGS`
//! and goes through QEMU's gdbstub register code, which is dear: the memory
//! callback reads it at most once per executed block, when it first emits an
//! event there, into the vCPU's slot here (see `Shim::asid_of`). That is
//! exact: a write to these registers ends the translated block in QEMU, so
//! every access of a block sees the value its first access saw.

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

/// One vCPU's context register and last value read.
pub struct AsidSlot {
    register: UnsafeCell<*mut qemu_plugin_register>,
    buffer: UnsafeCell<*mut GByteArray>,
    value: UnsafeCell<u64>,
}

// Safety: only the thread running the vCPU touches its slot (as for VcpuSlot).
unsafe impl Sync for AsidSlot {}
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
    /// (QEMU's register list is the current vCPU's); returns whether the core
    /// has one.
    pub unsafe fn init(&self) -> bool {
        let list = unsafe { qemu_plugin_get_registers() };
        if list.is_null() {
            return false;
        }
        let descriptors = unsafe {
            std::slice::from_raw_parts(
                (*list).data as *const qemu_plugin_reg_descriptor,
                (*list).len as usize,
            )
        };
        let name_of = |d: &qemu_plugin_reg_descriptor| {
            unsafe { CStr::from_ptr(d.name) }
                .to_string_lossy()
                .into_owned()
        };
        let found = CONTEXT_REGISTERS
            .iter()
            .find_map(|want| {
                descriptors
                    .iter()
                    .find(|d| name_of(d).eq_ignore_ascii_case(want))
            })
            .map(|d| d.handle);
        unsafe { g_array_free(list, 1) };
        match found {
            Some(handle) => unsafe {
                *self.register.get() = handle;
                *self.buffer.get() = g_byte_array_new();
                true
            },
            None => false,
        }
    }

    /// Reads the register (in a callback registered with `R_REGS`).
    #[inline]
    pub unsafe fn refresh(&self) {
        let register = unsafe { *self.register.get() };
        if register.is_null() {
            return;
        }
        let buffer = unsafe { *self.buffer.get() };
        unsafe { g_byte_array_set_size(buffer, 0) };
        let n = unsafe { qemu_plugin_read_register(register, buffer) };
        if n > 0 {
            let mut bytes = [0u8; 8];
            let len = (n as usize).min(8);
            unsafe { std::ptr::copy_nonoverlapping((*buffer).data, bytes.as_mut_ptr(), len) };
            // Target byte order: the little-endian guests we support.
            unsafe { *self.value.get() = u64::from_le_bytes(bytes) };
        }
    }

    #[inline(always)]
    pub fn value(&self) -> u64 {
        unsafe { *self.value.get() }
    }
}
