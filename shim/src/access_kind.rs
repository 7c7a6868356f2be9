//! What kind of access a `qemu_plugin_meminfo_t` describes (store, sign
//! extension, byte order, size), remembered per vCPU.
//!
//! QEMU answers each of these through its own exported function: four calls
//! per access, about 3% of QEMU's time in a full capture of an OS boot. Each
//! answer depends on the meminfo value alone (the API's `meminfo` is a plain
//! integer that QEMU builds from the access's operation and direction), and a
//! guest uses few distinct values, so a small table keyed by the value
//! answers almost every access with one load and one comparison.

use qemu_plugin_sys::*;
use std::cell::UnsafeCell;
use trace_schema::chunk::{FLAG_BIG_ENDIAN, FLAG_SIGN_EXTENDED, FLAG_STORE};

/// Entries of the table (a power of two).
const ENTRIES: usize = 64;

/// A valid entry: `meminfo << 32 | VALID | size << 8 | flags`.
const VALID: u64 = 1 << 31;

/// One vCPU's table. Only that vCPU's thread touches it (as its ring
/// producer), so it needs no synchronisation.
pub struct AccessKinds {
    entries: UnsafeCell<[u64; ENTRIES]>,
}

impl AccessKinds {
    pub fn new() -> AccessKinds {
        AccessKinds {
            entries: UnsafeCell::new([0; ENTRIES]),
        }
    }

    /// `(flags, size in bytes)` of the access `info` describes: the
    /// `MemAccess.flags` bits for store, sign extension and byte order.
    ///
    /// # Safety
    /// Only from the callbacks of this table's vCPU (see the type's docs).
    #[inline(always)]
    pub unsafe fn of(&self, info: qemu_plugin_meminfo_t) -> (u8, u8) {
        // Safety: only this vCPU's callbacks call us (the caller's guarantee),
        // one at a time on its thread: this is the only reference.
        let entries = unsafe { &mut *self.entries.get() };
        let at = (info.wrapping_mul(0x9e37_79b1) >> 26) as usize % ENTRIES;
        let entry = entries[at];
        if entry >> 32 == info as u64 && entry & VALID != 0 {
            return (entry as u8, (entry >> 8) as u8);
        }
        // Safety: `ask_qemu` has no precondition (it decodes `info`).
        let (flags, size) = unsafe { ask_qemu(info) };
        entries[at] = (info as u64) << 32 | VALID | (size as u64) << 8 | flags as u64;
        (flags, size)
    }
}

/// # Safety
/// None: QEMU's `qemu_plugin_mem_*` only decode the bits of `info`, a plain
/// integer (see the module docs), on any thread.
#[cold]
unsafe fn ask_qemu(info: qemu_plugin_meminfo_t) -> (u8, u8) {
    let mut flags = 0;
    // Safety: these QEMU functions read nothing but the integer `info`.
    unsafe {
        if qemu_plugin_mem_is_store(info) {
            flags |= FLAG_STORE;
        }
        if qemu_plugin_mem_is_sign_extended(info) {
            flags |= FLAG_SIGN_EXTENDED;
        }
        if qemu_plugin_mem_is_big_endian(info) {
            flags |= FLAG_BIG_ENDIAN;
        }
        (flags, 1u8 << qemu_plugin_mem_size_shift(info))
    }
}
