//! Protobuf's wire format written by hand, so that tests compute expected
//! encodings and digests without the code under test (or prost).

/// Appends `n` as a base-128 varint.
pub fn varint(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Appends a length-delimited field (bytes, string or message).
pub fn ld(field: u64, data: &[u8], out: &mut Vec<u8>) {
    varint(field << 3 | 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// Appends a varint field, omitted when 0 (proto3's default).
pub fn uint(field: u64, n: u64, out: &mut Vec<u8>) {
    if n != 0 {
        varint(field << 3, out);
        varint(n, out);
    }
}
