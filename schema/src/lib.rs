//! The contract between the two sides of the shared memory: the QEMU shim
//! (producer) and the collector (consumer).
//!
//! - [`attach`]: the attach handshake between the shim and its collectors.
//! - [`chunk`]: the event ring's messages, chunks of fixed-size Cap'n Proto
//!   records, and their offsets.
//! - [`layout`]: the segment's header, per-vCPU blocks and their validation.
//! - [`ring`]: the lock-free SPSC ring both sides use.
//! - [`commit`]: what a collector has durably written, left for the next one.
//! - [`options`]: the shim's `-plugin ...,opt=val` options.
//! - [`events_capnp`]: code generated from `events.capnp`.

pub mod attach;
pub mod chunk;
pub mod commit;
pub mod layout;
pub mod options;
pub mod ring;
pub mod sync;

#[allow(clippy::all, unused, unsafe_op_in_unsafe_fn)]
pub mod events_capnp {
    include!(concat!(env!("OUT_DIR"), "/events_capnp.rs"));
}
