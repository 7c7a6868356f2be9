//! A minimal Protocol Buffers encoder: the wire format of the fields a
//! Perfetto trace needs (varints, strings, nested messages), written by hand
//! rather than generated, so that the export needs no `.proto` compiler and
//! no dependency (see `perfetto.rs`).
//!
//! Wire format (protobuf.dev, "Encoding"): each field is a key, `field
//! number << 3 | wire type`, as a varint, then its value: a varint (wire
//! type 0) or a length as a varint followed by that many bytes (wire type 2,
//! for strings, bytes and embedded messages).

/// Wire type of varint fields (`uint32`, `uint64`, `bool`, enums).
const VARINT: u64 = 0;
/// Wire type of length-delimited fields (strings, bytes, messages).
const LEN: u64 = 2;

/// Appends `v` as a base-128 varint, low 7-bit groups first.
pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// One message being encoded. Fields are appended in the order written;
/// [`Message::message`] encodes an embedded message in place.
#[derive(Debug, Default, Clone)]
pub struct Message {
    buf: Vec<u8>,
}

impl Message {
    pub fn new() -> Message {
        Message::default()
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Empties the message, keeping its allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    fn key(&mut self, field: u32, wire_type: u64) {
        put_varint(&mut self.buf, (u64::from(field) << 3) | wire_type);
    }

    /// A `uint64`, `uint32` or enum field.
    pub fn uint(&mut self, field: u32, v: u64) -> &mut Self {
        self.key(field, VARINT);
        put_varint(&mut self.buf, v);
        self
    }

    /// A `bool` field.
    pub fn bool(&mut self, field: u32, v: bool) -> &mut Self {
        self.uint(field, u64::from(v))
    }

    /// A `string` field.
    pub fn string(&mut self, field: u32, s: &str) -> &mut Self {
        self.bytes_field(field, s.as_bytes())
    }

    /// A `bytes` field, or an embedded message already encoded.
    pub fn bytes_field(&mut self, field: u32, b: &[u8]) -> &mut Self {
        self.key(field, LEN);
        put_varint(&mut self.buf, b.len() as u64);
        self.buf.extend_from_slice(b);
        self
    }

    /// An embedded message whose fields `fill` writes. Its length, known only
    /// afterwards, is inserted before it (moving the message's bytes by the
    /// length's 1 to 10 bytes, which costs less than a buffer per message).
    pub fn message(&mut self, field: u32, fill: impl FnOnce(&mut Message)) -> &mut Self {
        self.key(field, LEN);
        let start = self.buf.len();
        fill(self);
        let mut len = Vec::with_capacity(10);
        put_varint(&mut len, (self.buf.len() - start) as u64);
        self.buf.splice(start..start, len);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        let enc = |v: u64| {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            b
        };
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(1), [0x01]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]); // protobuf.dev's example
        assert_eq!(
            enc(u64::MAX),
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    #[test]
    fn fields_and_embedded_messages() {
        // protobuf.dev's examples: `Test1 { a: 150 }` is 08 96 01 and
        // `Test2 { b: "testing" }` is 12 07 74 65 73 74 69 6e 67; `Test3 {
        // c: Test1 { a: 150 } }` is 1a 03 08 96 01.
        let mut m = Message::new();
        m.uint(1, 150);
        assert_eq!(m.bytes(), [0x08, 0x96, 0x01]);
        m.clear();
        m.string(2, "testing");
        assert_eq!(m.bytes(), b"\x12\x07testing");
        m.clear();
        m.message(3, |t| {
            t.uint(1, 150);
        });
        assert_eq!(m.bytes(), [0x1a, 0x03, 0x08, 0x96, 0x01]);
        // A field number above 15 takes a two-byte key; bool is a varint.
        m.clear();
        m.bool(60, true);
        assert_eq!(m.bytes(), [0xe0, 0x03, 0x01]);
    }

    #[test]
    fn an_embedded_message_longer_than_127_bytes_gets_a_two_byte_length() {
        let long = "x".repeat(200);
        let mut m = Message::new();
        m.uint(1, 7).message(2, |inner| {
            inner.string(1, &long);
        });
        let mut want = vec![0x08, 0x07, 0x12, 0xcb, 0x01, 0x0a, 0xc8, 0x01];
        want.extend_from_slice(long.as_bytes());
        assert_eq!(m.bytes(), want);
    }
}
