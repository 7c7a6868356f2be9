//! Hex formatting at the guest's pointer width.

/// Number of hex digits for a guest pointer of `bits` bits (8 for 32-bit
/// guests, 16 for 64-bit guests). Never less than 1.
pub fn ptr_digits(bits: u32) -> usize {
    (bits.max(4) as usize).div_ceil(4)
}

/// Formats `v` as lowercase hex zero-padded to `digits` digits, without a
/// prefix. Values wider than `digits` are printed in full, never truncated.
pub fn hex_pad(v: u64, digits: usize) -> String {
    format!("{v:0digits$x}")
}

/// Formats the value of a 16-byte access (low and high halves) as 32 hex
/// digits (or `digits`, if more).
pub fn hex_pad128(lo: u64, hi: u64, digits: usize) -> String {
    let v = (u128::from(hi) << 64) | u128::from(lo);
    let digits = digits.max(32);
    format!("{v:0digits$x}")
}

/// The little-endian bytes of an access of `size` bytes (`value` then
/// `value_hi` for 16-byte accesses), in memory order.
pub fn access_bytes(size: u8, value: u64, value_hi: Option<u64>) -> Vec<u8> {
    let mut bytes = value.to_le_bytes().to_vec();
    bytes.extend_from_slice(&value_hi.unwrap_or(0).to_le_bytes());
    bytes.truncate(usize::from(size).min(16));
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths() {
        assert_eq!(ptr_digits(32), 8);
        assert_eq!(ptr_digits(64), 16);
        assert_eq!(ptr_digits(0), 1);
        assert_eq!(hex_pad(0x43e, 8), "0000043e");
        assert_eq!(hex_pad(0x1_0000_0000, 8), "100000000");
        assert_eq!(hex_pad(u64::MAX, 16), "ffffffffffffffff");
        assert_eq!(hex_pad128(1, 0, 8), "00000000000000000000000000000001");
        assert_eq!(hex_pad128(1, 2, 8), "00000000000000020000000000000001");
    }

    #[test]
    fn bytes_in_memory_order() {
        assert_eq!(access_bytes(1, 0xab, None), vec![0xab]);
        assert_eq!(
            access_bytes(4, 0x1122_3344, None),
            vec![0x44, 0x33, 0x22, 0x11]
        );
        let b = access_bytes(16, 0x0706_0504_0302_0100, Some(0x0f0e_0d0c_0b0a_0908));
        assert_eq!(b, (0u8..16).collect::<Vec<_>>());
    }
}
