//! Nix's base-32 encoding ("nix32"), as used in store paths and `sha256:1b8m…` hashes.
//!
//! It differs from RFC 4648 base32 in two ways:
//!
//! - the alphabet is `0123456789abcdfghijklmnpqrsvwxyz` (no `e`, `o`, `t`, `u`), and
//! - the bytes are read as one little-endian integer whose 5-bit groups are printed
//!   most significant first, so the *last* character holds the *lowest* bits of the
//!   *first* byte. There is no padding.
//!
//! An input of `n` bytes encodes to [`encoded_len`]`(n)` = ⌈8n/5⌉ characters. When
//! 8n is not a multiple of 5, the first character carries fewer than 5 bits of data
//! and its unused high bits must be zero: [`decode`] rejects a string where they are
//! not, as Nix does (`invalid base-32 hash`), so every byte string has exactly one
//! encoding.
//!
//! ```
//! use cairn_nix::nixbase32;
//!
//! let digest = [0xffu8; 20];
//! let s = nixbase32::encode(&digest);
//! assert_eq!(s, "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz");
//! assert_eq!(nixbase32::decode_fixed::<20>(&s).unwrap(), digest);
//! assert!(nixbase32::decode("e").is_err());
//! ```

/// The 32 characters of Nix's alphabet, indexed by digit value.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Marks bytes that are not in [`ALPHABET`] in [`DECODE_TABLE`].
const INVALID: u8 = 0xff;

/// Digit value of every byte, or [`INVALID`].
const DECODE_TABLE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Why a string is not valid nixbase32 (of the expected length).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Nixbase32Error {
    /// No byte string encodes to this many characters (e.g. 3: one byte needs 2
    /// characters, two bytes need 4).
    #[error("invalid nixbase32 length {len}: no byte string encodes to {len} characters")]
    InvalidLength {
        /// Length of the input, in bytes.
        len: usize,
    },
    /// The input decodes to a different number of bytes than required.
    #[error(
        "nixbase32 string of {len} characters has the wrong length: expected {expected} characters ({expected_bytes} bytes)"
    )]
    WrongLength {
        /// Length of the input, in bytes.
        len: usize,
        /// The length a valid input would have.
        expected: usize,
        /// The number of bytes required.
        expected_bytes: usize,
    },
    /// A byte that is not in [`ALPHABET`].
    #[error("invalid nixbase32 character {byte:?} at offset {position}", byte = char::from(*.byte))]
    InvalidChar {
        /// Offset of the byte in the input.
        position: usize,
        /// The offending byte.
        byte: u8,
    },
    /// The unused high bits of the first character are not zero, so the string is
    /// not the encoding of any byte string (Nix rejects it as well).
    #[error("invalid nixbase32: unused bits of the first character {byte:?} are not zero", byte = char::from(*.byte))]
    NonZeroPadding {
        /// The first character of the input.
        byte: u8,
    },
}

/// Number of characters that encode `n` bytes: ⌈8n/5⌉.
///
/// ```
/// use cairn_nix::nixbase32::encoded_len;
/// assert_eq!(encoded_len(20), 32); // store path digests
/// assert_eq!(encoded_len(32), 52); // sha256
/// assert_eq!(encoded_len(0), 0);
/// ```
pub const fn encoded_len(n: usize) -> usize {
    (n * 8).div_ceil(5)
}

/// Number of bytes that `n` characters decode to, ⌊5n/8⌋, if `n` is the length of
/// some encoding ([`encoded_len`] of something), else `None`.
///
/// ```
/// use cairn_nix::nixbase32::decoded_len;
/// assert_eq!(decoded_len(52), Some(32));
/// assert_eq!(decoded_len(3), None);
/// ```
pub const fn decoded_len(n: usize) -> Option<usize> {
    // n * 5 cannot overflow for any slice length that fits in memory... but a caller
    // may pass any usize, so use checked arithmetic.
    let Some(bits) = n.checked_mul(5) else {
        return None;
    };
    let bytes = bits / 8;
    if encoded_len(bytes) == n {
        Some(bytes)
    } else {
        None
    }
}

/// Encodes `input` in nixbase32.
pub fn encode(input: &[u8]) -> String {
    let len = encoded_len(input.len());
    let mut out = vec![0u8; len];
    encode_into(input, &mut out);
    // Every byte written comes from ALPHABET, which is ASCII.
    String::from_utf8(out).unwrap_or_else(|_| unreachable!("nixbase32 alphabet is ASCII"))
}

/// Encodes `input` into `out`, which must be exactly [`encoded_len`]`(input.len())`
/// bytes long.
///
/// # Panics
///
/// If `out` has the wrong length.
pub fn encode_into(input: &[u8], out: &mut [u8]) {
    assert_eq!(
        out.len(),
        encoded_len(input.len()),
        "nixbase32::encode_into: output buffer has the wrong length"
    );
    // The input is a little-endian integer and the output prints its 5-bit groups
    // most significant first, so the output is filled from its end. Each whole
    // 5-byte group is 40 bits, exactly 8 characters.
    let mut end = out.len();
    let mut chunks = input.chunks_exact(5);
    for chunk in &mut chunks {
        let mut v = chunk.iter().rev().fold(0u64, |v, &b| v << 8 | u64::from(b));
        for slot in out[end - 8..end].iter_mut().rev() {
            *slot = ALPHABET[(v & 0x1f) as usize];
            v >>= 5;
        }
        end -= 8;
    }
    // The last 0 to 4 bytes are the most significant and go first.
    let rest = chunks.remainder();
    let mut v = rest.iter().rev().fold(0u64, |v, &b| v << 8 | u64::from(b));
    for slot in out[..end].iter_mut().rev() {
        *slot = ALPHABET[(v & 0x1f) as usize];
        v >>= 5;
    }
    debug_assert_eq!(end, encoded_len(rest.len()));
}

/// Decodes a nixbase32 string of any valid length.
///
/// Rejects lengths that no byte string encodes to, characters outside
/// [`ALPHABET`] (with their offset), and non-zero unused bits in the first character.
pub fn decode(input: impl AsRef<[u8]>) -> Result<Vec<u8>, Nixbase32Error> {
    let input = input.as_ref();
    let n = decoded_len(input.len()).ok_or(Nixbase32Error::InvalidLength { len: input.len() })?;
    let mut out = vec![0u8; n];
    decode_into(input, &mut out)?;
    Ok(out)
}

/// Decodes a nixbase32 string that must decode to exactly `N` bytes, that is be
/// [`encoded_len`]`(N)` characters long.
pub fn decode_fixed<const N: usize>(input: impl AsRef<[u8]>) -> Result<[u8; N], Nixbase32Error> {
    let input = input.as_ref();
    let mut out = [0u8; N];
    if input.len() != encoded_len(N) {
        return Err(Nixbase32Error::WrongLength {
            len: input.len(),
            expected: encoded_len(N),
            expected_bytes: N,
        });
    }
    decode_into(input, &mut out)?;
    Ok(out)
}

/// Decodes `input` into `out`; `input.len()` must be `encoded_len(out.len())`.
fn decode_into(input: &[u8], out: &mut [u8]) -> Result<(), Nixbase32Error> {
    debug_assert_eq!(input.len(), encoded_len(out.len()));
    // The mirror of `encode_into`: the last 8 characters are the first 5 bytes, and
    // so on; the first `head` characters hold the last `out.len() % 5` bytes and, in
    // the first character, the unused high bits.
    let groups = out.len() / 5;
    let head = input.len() - 8 * groups;
    // OR of all digit values: INVALID has bits above the low 5 set.
    let mut seen = 0u8;
    for (k, dst) in out.chunks_exact_mut(5).enumerate() {
        let end = input.len() - 8 * k;
        let mut v = 0u64;
        for &c in &input[end - 8..end] {
            let d = DECODE_TABLE[usize::from(c)];
            seen |= d;
            v = v << 5 | u64::from(d & 0x1f);
        }
        for b in dst.iter_mut() {
            *b = v as u8;
            v >>= 8;
        }
    }
    let mut v = 0u64;
    for &c in &input[..head] {
        let d = DECODE_TABLE[usize::from(c)];
        seen |= d;
        v = v << 5 | u64::from(d & 0x1f);
    }
    if seen & !0x1f != 0 {
        let position = input
            .iter()
            .position(|&c| !is_valid_char(c))
            .unwrap_or_else(|| unreachable!("an invalid digit was seen"));
        return Err(Nixbase32Error::InvalidChar {
            position,
            byte: input[position],
        });
    }
    for b in out[5 * groups..].iter_mut() {
        *b = v as u8;
        v >>= 8;
    }
    if v != 0 {
        return Err(Nixbase32Error::NonZeroPadding { byte: input[0] });
    }
    Ok(())
}

/// Whether `c` is in [`ALPHABET`].
pub const fn is_valid_char(c: u8) -> bool {
    DECODE_TABLE[c as usize] != INVALID
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // From Nix: `nix hash to-base32 --type sha256 <hex of sha256("")>`.
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(
            encode(&bytes),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
        assert_eq!(
            decode("0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73").unwrap(),
            bytes
        );
    }

    #[test]
    fn lengths() {
        assert_eq!(encoded_len(16), 26);
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        assert_eq!(encoded_len(64), 103);
        for n in 0..200 {
            assert_eq!(decoded_len(encoded_len(n)), Some(n));
            assert_eq!(encode(&vec![0u8; n]).len(), encoded_len(n));
        }
        assert_eq!(decoded_len(1), None);
        assert_eq!(decoded_len(usize::MAX), None);
    }

    #[test]
    fn errors() {
        assert_eq!(decode("abc"), Err(Nixbase32Error::InvalidLength { len: 3 }));
        assert_eq!(
            decode("0e"),
            Err(Nixbase32Error::InvalidChar {
                position: 1,
                byte: b'e'
            })
        );
        // One byte: 2 chars, 10 bits, 2 spare bits in the first char.
        assert_eq!(decode("7z"), Ok(vec![0xff]));
        assert_eq!(
            decode("8z"),
            Err(Nixbase32Error::NonZeroPadding { byte: b'8' })
        );
        // The first bad character is named, wherever it is.
        assert_eq!(
            decode(format!("{}e{}e", "0".repeat(40), "0".repeat(10))),
            Err(Nixbase32Error::InvalidChar {
                position: 40,
                byte: b'e'
            })
        );
        // A bad character wins over bad padding.
        assert_eq!(
            decode("8e"),
            Err(Nixbase32Error::InvalidChar {
                position: 1,
                byte: b'e'
            })
        );
        assert!(matches!(
            decode_fixed::<20>("00"),
            Err(Nixbase32Error::WrongLength { .. })
        ));
    }
}
