//! The QEMU side: its segment, starting it, asking it over QMP, its memory
//! map, and the signals that end a capture.

pub mod launch;
pub mod memory_map;
pub mod qmp;
pub mod segment_view;
pub mod signals;
