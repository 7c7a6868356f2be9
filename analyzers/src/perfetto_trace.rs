//! Writing a Perfetto trace: a `Trace` message, i.e. a stream of
//! `TracePacket`s, each a track (`TrackDescriptor`) or an event on one
//! (`TrackEvent`: an instant, or the begin or end of a slice), the format
//! ui.perfetto.dev and Perfetto's trace processor open.
//!
//! Field numbers are those of Perfetto's published protos
//! (protos/perfetto/trace/: trace.proto, trace_packet.proto,
//! track_event/track_descriptor.proto, track_event/track_event.proto,
//! track_event/debug_annotation.proto, interned_data/interned_data.proto),
//! checked against the compiled protos of the `perfetto` Python package
//! 0.59.1 (`perfetto_trace_pb2`), which tests/perfetto/check_trace.py uses to
//! read our traces back.
//!
//! Event names and debug annotation names are interned: each string is sent
//! once, in the `interned_data` of the first packet that uses it, and events
//! refer to it by its id (`iid`). Interned data belongs to a packet sequence:
//! every packet carries the same `trusted_packet_sequence_id`, the first
//! one says `SEQ_INCREMENTAL_STATE_CLEARED` (the table starts empty here),
//! and every event says `SEQ_NEEDS_INCREMENTAL_STATE` (it cannot be read
//! without the packets before it).

use std::collections::HashMap;
use std::io::Write;

use anyhow::Result;

use crate::protobuf::{put_varint, Message};

/// Field numbers of the messages we write.
mod field {
    /// `Trace.packet`.
    pub const TRACE_PACKET: u32 = 1;

    pub mod packet {
        pub const TIMESTAMP: u32 = 8;
        pub const TRUSTED_PACKET_SEQUENCE_ID: u32 = 10;
        pub const TRACK_EVENT: u32 = 11;
        pub const INTERNED_DATA: u32 = 12;
        pub const SEQUENCE_FLAGS: u32 = 13;
        pub const TRACK_DESCRIPTOR: u32 = 60;
    }

    pub mod track_descriptor {
        pub const UUID: u32 = 1;
        pub const NAME: u32 = 2;
        pub const PARENT_UUID: u32 = 5;
        pub const CHILD_ORDERING: u32 = 11;
        pub const SIBLING_ORDER_RANK: u32 = 12;
        pub const DESCRIPTION: u32 = 14;
    }

    pub mod track_event {
        pub const DEBUG_ANNOTATIONS: u32 = 4;
        pub const TYPE: u32 = 9;
        pub const NAME_IID: u32 = 10;
        pub const TRACK_UUID: u32 = 11;
    }

    pub mod debug_annotation {
        pub const NAME_IID: u32 = 1;
        pub const UINT_VALUE: u32 = 3;
        pub const STRING_VALUE: u32 = 6;
        pub const POINTER_VALUE: u32 = 7;
    }

    pub mod interned_data {
        /// Of `EventName`s.
        pub const EVENT_NAMES: u32 = 2;
        /// Of `DebugAnnotationName`s.
        pub const DEBUG_ANNOTATION_NAMES: u32 = 3;
    }

    /// `EventName` and `DebugAnnotationName` alike.
    pub mod interned_name {
        pub const IID: u32 = 1;
        pub const NAME: u32 = 2;
    }
}

/// `TracePacket.SequenceFlags`.
const SEQ_INCREMENTAL_STATE_CLEARED: u64 = 1;
const SEQ_NEEDS_INCREMENTAL_STATE: u64 = 2;
/// `TrackDescriptor.ChildTracksOrdering.EXPLICIT`: children sorted by
/// their `sibling_order_rank`.
const CHILD_ORDERING_EXPLICIT: u64 = 3;
/// Our one packet sequence (any non-zero number: we are its only writer).
const SEQUENCE_ID: u64 = 1;

/// `TrackEvent.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    SliceBegin = 1,
    SliceEnd = 2,
    Instant = 3,
}

/// A debug annotation's value. Pointers are shown in hex by Perfetto's UI,
/// unsigned integers in decimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Uint(u64),
    Pointer(u64),
    Str(&'a str),
}

/// A track: a row of Perfetto's UI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Track<'a> {
    pub uuid: u64,
    pub name: &'a str,
    pub description: Option<&'a str>,
    /// The track it is shown under (a group in the UI).
    pub parent: Option<u64>,
    /// Its place among its parent's children (the parent orders them
    /// explicitly when `orders_children`).
    pub rank: Option<i32>,
    pub orders_children: bool,
}

/// Writes packets to `out` as they come: only the interning tables stay in
/// memory (one entry per distinct name).
pub struct TraceWriter<'a> {
    out: &'a mut dyn Write,
    packet: Message,
    framed: Vec<u8>,
    event_names: HashMap<String, u64>,
    annotation_names: HashMap<&'static str, u64>,
    started: bool,
    packets: u64,
}

impl<'a> TraceWriter<'a> {
    /// A writer whose events may use the debug annotation names `annotations`
    /// (interned in the first packet).
    pub fn new(out: &'a mut dyn Write, annotations: &[&'static str]) -> TraceWriter<'a> {
        let annotation_names = annotations
            .iter()
            .enumerate()
            .map(|(i, &n)| (n, i as u64 + 1))
            .collect();
        TraceWriter {
            out,
            packet: Message::new(),
            framed: Vec::new(),
            event_names: HashMap::new(),
            annotation_names,
            started: false,
            packets: 0,
        }
    }

    /// Packets written so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Starts a packet of our sequence; the first one clears the sequence's
    /// incremental state and interns the annotation names.
    fn begin_packet(&mut self, needs_interned: bool) {
        self.packet.clear();
        self.packet
            .uint(field::packet::TRUSTED_PACKET_SEQUENCE_ID, SEQUENCE_ID);
        if !self.started {
            self.started = true;
            let mut names: Vec<(&str, u64)> = self
                .annotation_names
                .iter()
                .map(|(&n, &i)| (n, i))
                .collect();
            names.sort_by_key(|&(_, iid)| iid);
            self.packet
                .uint(field::packet::SEQUENCE_FLAGS, SEQ_INCREMENTAL_STATE_CLEARED);
            self.packet.message(field::packet::INTERNED_DATA, |d| {
                for (name, iid) in names {
                    d.message(field::interned_data::DEBUG_ANNOTATION_NAMES, |n| {
                        n.uint(field::interned_name::IID, iid)
                            .string(field::interned_name::NAME, name);
                    });
                }
            });
        } else if needs_interned {
            self.packet
                .uint(field::packet::SEQUENCE_FLAGS, SEQ_NEEDS_INCREMENTAL_STATE);
        }
    }

    /// Frames the packet as `Trace.packet` and writes it.
    fn end_packet(&mut self) -> Result<()> {
        self.framed.clear();
        put_varint(
            &mut self.framed,
            u64::from(field::TRACE_PACKET) << 3 | 2, // length-delimited
        );
        put_varint(&mut self.framed, self.packet.bytes().len() as u64);
        self.out.write_all(&self.framed)?;
        self.out.write_all(self.packet.bytes())?;
        self.packets += 1;
        Ok(())
    }

    /// Declares a track (before its events).
    pub fn track(&mut self, t: &Track) -> Result<()> {
        use field::track_descriptor as f;
        self.begin_packet(false);
        self.packet.message(field::packet::TRACK_DESCRIPTOR, |d| {
            d.uint(f::UUID, t.uuid).string(f::NAME, t.name);
            if let Some(p) = t.parent {
                d.uint(f::PARENT_UUID, p);
            }
            if let Some(desc) = t.description {
                d.string(f::DESCRIPTION, desc);
            }
            if t.orders_children {
                d.uint(f::CHILD_ORDERING, CHILD_ORDERING_EXPLICIT);
            }
            if let Some(rank) = t.rank {
                // int32: a negative rank is its 64-bit two's complement.
                d.uint(f::SIBLING_ORDER_RANK, i64::from(rank) as u64);
            }
        });
        self.end_packet()
    }

    /// An event at `ts` on track `track`. `name` is needed for an instant or
    /// a slice's begin (a slice's end closes the track's innermost open
    /// slice); `annotations` use names given to [`TraceWriter::new`].
    pub fn event(
        &mut self,
        ts: u64,
        track: u64,
        kind: EventType,
        name: Option<&str>,
        annotations: &[(&'static str, Value)],
    ) -> Result<()> {
        self.begin_packet(true);
        self.packet.uint(field::packet::TIMESTAMP, ts);
        let name_iid = name.map(|n| self.intern_event_name(n));
        let mut ann = Vec::with_capacity(annotations.len());
        for (n, v) in annotations {
            let Some(&iid) = self.annotation_names.get(n) else {
                anyhow::bail!("internal error: debug annotation name {n:?} was not declared");
            };
            ann.push((iid, *v));
        }
        self.packet.message(field::packet::TRACK_EVENT, |e| {
            use field::debug_annotation as a;
            e.uint(field::track_event::TYPE, kind as u64)
                .uint(field::track_event::TRACK_UUID, track);
            if let Some(iid) = name_iid {
                e.uint(field::track_event::NAME_IID, iid);
            }
            for (iid, v) in ann {
                e.message(field::track_event::DEBUG_ANNOTATIONS, |d| {
                    d.uint(a::NAME_IID, iid);
                    match v {
                        Value::Uint(u) => d.uint(a::UINT_VALUE, u),
                        Value::Pointer(p) => d.uint(a::POINTER_VALUE, p),
                        Value::Str(s) => d.string(a::STRING_VALUE, s),
                    };
                });
            }
        });
        self.end_packet()
    }

    /// The iid of event name `name`; a new name is added to the packet's
    /// interned data (which must come before its track event: the packet
    /// is being written).
    fn intern_event_name(&mut self, name: &str) -> u64 {
        if let Some(&iid) = self.event_names.get(name) {
            return iid;
        }
        let iid = self.event_names.len() as u64 + 1;
        self.event_names.insert(name.to_owned(), iid);
        self.packet.message(field::packet::INTERNED_DATA, |d| {
            d.message(field::interned_data::EVENT_NAMES, |n| {
                n.uint(field::interned_name::IID, iid)
                    .string(field::interned_name::NAME, name);
            });
        });
        iid
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_framed_and_names_interned_once() {
        let mut out = Vec::new();
        let mut w = TraceWriter::new(&mut out, &["pc"]);
        w.track(&Track {
            uuid: 5,
            name: "t",
            description: None,
            parent: None,
            rank: None,
            orders_children: false,
        })
        .unwrap();
        w.event(
            7,
            5,
            EventType::Instant,
            Some("e"),
            &[("pc", Value::Pointer(0x10))],
        )
        .unwrap();
        w.event(8, 5, EventType::Instant, Some("e"), &[]).unwrap();
        assert_eq!(w.packets(), 3);
        let want: Vec<u8> = [
            // packet 1: sequence 1, incremental state cleared, annotation
            // name 1 = "pc", track 5 "t"
            &[0x0a, 0x16][..],
            &[0x50, 0x01, 0x68, 0x01],
            &[0x62, 0x08, 0x1a, 0x06, 0x08, 0x01, 0x12, 0x02, b'p', b'c'],
            &[0xe2, 0x03, 0x05, 0x08, 0x05, 0x12, 0x01, b't'],
            // packet 2: sequence 1, needs incremental state, ts 7, event
            // name 1 = "e", instant on track 5 named 1, pc = pointer 0x10
            &[0x0a, 0x1d],
            &[0x50, 0x01, 0x68, 0x02, 0x40, 0x07],
            &[0x62, 0x07, 0x12, 0x05, 0x08, 0x01, 0x12, 0x01, b'e'],
            &[0x5a, 0x0c, 0x48, 0x03, 0x58, 0x05, 0x50, 0x01],
            &[0x22, 0x04, 0x08, 0x01, 0x38, 0x10],
            // packet 3: the name is not sent again
            &[0x0a, 0x0e],
            &[0x50, 0x01, 0x68, 0x02, 0x40, 0x08],
            &[0x5a, 0x06, 0x48, 0x03, 0x58, 0x05, 0x50, 0x01],
        ]
        .concat();
        assert_eq!(out, want);
    }
}
