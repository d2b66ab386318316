//! Nix's base-32 encoding ("nix32").
//!
//! The alphabet omits `e`, `o`, `u` and `t`; there is no padding; an encoding of `n` bytes has
//! `ceil(8n/5)` characters, and the *last* byte comes first (character `k` from the left encodes the
//! bits `[5(L-1-k), 5(L-k))` of the little-endian bit string). A decoder must reject a non-zero carry.
//! Source: Nix `src/libutil/hash.cc` and `doc/manual/source/protocols/nix32.md`.

use thiserror::Error;

/// The 32 characters of the Nix base-32 alphabet, in digit order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Why a nix32 string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Nix32Error {
    /// A character outside [`ALPHABET`], at the given byte offset.
    #[error("invalid nix32 character {found:?} at offset {offset}")]
    InvalidChar {
        /// The offending character.
        found: char,
        /// Its byte offset in the input.
        offset: usize,
    },
    /// The high bits of the first character do not fit in the decoded length.
    #[error("nix32 string has non-zero bits beyond its decoded length")]
    NonZeroCarry,
    /// The string does not have the length the caller expected.
    #[error("nix32 string has length {found}, expected {expected}")]
    WrongLength {
        /// Length found.
        found: usize,
        /// Length expected.
        expected: usize,
    },
}

/// The number of nix32 characters that encode `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    if n == 0 { 0 } else { (n * 8 - 1) / 5 + 1 }
}

/// The number of bytes that `len` nix32 characters decode to.
pub const fn decoded_len(len: usize) -> usize {
    len * 5 / 8
}

/// Encode bytes as nix32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = vec![0u8; len];
    encode_into(bytes, &mut out);
    // Every byte is from `ALPHABET` (ASCII).
    String::from_utf8(out).unwrap_or_default()
}

/// Encode bytes as nix32 into `out`, which must be exactly [`encoded_len`]`(bytes.len())` long
/// (for encoding without allocating, e.g. into a stack array).
///
/// # Panics
/// When `out` has another length.
pub fn encode_into(bytes: &[u8], out: &mut [u8]) {
    let len = encoded_len(bytes.len());
    assert_eq!(out.len(), len, "nix32 output buffer length");
    for (k, o) in out.iter_mut().enumerate() {
        let n = len - 1 - k;
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let low = u16::from(bytes[i]) >> j;
        let high = if i + 1 < bytes.len() { u16::from(bytes[i + 1]) << (8 - j) } else { 0 };
        *o = ALPHABET[usize::from((low | high) & 0x1f)];
    }
}

/// The nix32 of a 20-byte store path digest, on the stack.
pub fn encode_20(bytes: &[u8; 20]) -> [u8; 32] {
    let mut out = [0u8; 32];
    encode_into(bytes, &mut out);
    out
}

/// Digit value of each byte, or `INVALID`.
const INVALID: u8 = 0xff;
const DIGITS: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut i = 0;
    while i < 32 {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
};

fn digit_of(c: u8) -> Option<u8> {
    match DIGITS[usize::from(c)] {
        INVALID => None,
        d => Some(d),
    }
}

/// Decode a nix32 string of any length into `decoded_len(s.len())` bytes.
pub fn decode(s: &str) -> Result<Vec<u8>, Nix32Error> {
    let input = s.as_bytes();
    let size = decoded_len(input.len());
    let mut out = vec![0u8; size];
    for n in 0..input.len() {
        let pos = input.len() - n - 1;
        let c = input[pos];
        let digit = digit_of(c).ok_or_else(|| {
            // `pos` may sit inside a multi-byte character: report the character that contains it.
            let start = (0..=pos).rev().find(|&k| s.is_char_boundary(k)).unwrap_or(0);
            Nix32Error::InvalidChar { found: s[start..].chars().next().unwrap_or('\u{fffd}'), offset: pos }
        })?;
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let value = u16::from(digit) << j;
        if i < size {
            out[i] |= (value & 0xff) as u8;
        } else if value & 0xff != 0 {
            return Err(Nix32Error::NonZeroCarry);
        }
        let carry = (value >> 8) as u8;
        if i + 1 < size {
            out[i + 1] |= carry;
        } else if carry != 0 {
            return Err(Nix32Error::NonZeroCarry);
        }
    }
    Ok(out)
}

/// Decode a nix32 string that must encode exactly `N` bytes.
pub fn decode_fixed<const N: usize>(s: &str) -> Result<[u8; N], Nix32Error> {
    if s.len() != encoded_len(N) {
        return Err(Nix32Error::WrongLength { found: s.len(), expected: encoded_len(N) });
    }
    let input = s.as_bytes();
    let mut out = [0u8; N];
    for n in 0..input.len() {
        let pos = input.len() - n - 1;
        let Some(digit) = digit_of(input[pos]) else {
            // Let the general decoder name the character.
            return decode(s).map(|_| out);
        };
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let value = u16::from(digit) << j;
        if i < N {
            out[i] |= (value & 0xff) as u8;
        } else if value & 0xff != 0 {
            return Err(Nix32Error::NonZeroCarry);
        }
        let carry = (value >> 8) as u8;
        if i + 1 < N {
            out[i + 1] |= carry;
        } else if carry != 0 {
            return Err(Nix32Error::NonZeroCarry);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vectors() {
        let bytes = hex::decode("8a12321522fd91efbd60ebb2481af88580f61600").unwrap();
        assert_eq!(encode(&bytes), "00bgd045z0d4icpbc2yyz4gx48ak44la");
        assert_eq!(decode("00bgd045z0d4icpbc2yyz4gx48ak44la").unwrap(), bytes);
        assert_eq!(encode(&[0x1f]), "0z");
        assert_eq!(decode("0z").unwrap(), vec![0x1f]);
        assert_eq!(encode(&[]), "");
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(decode("0e"), Err(Nix32Error::InvalidChar { found: 'e', offset: 1 })));
        // "z" in the top position of a 1-byte (2-char) encoding overflows 8 bits.
        assert_eq!(decode("zz"), Err(Nix32Error::NonZeroCarry));
        assert!(decode_fixed::<20>("0z").is_err());
    }

    proptest! {
        #[test]
        fn fixed_decoder_agrees_with_the_general_one(s in "[0-9a-z]{32}") {
            let general = decode(&s).map(|v| <[u8; 20]>::try_from(v).unwrap());
            prop_assert_eq!(decode_fixed::<20>(&s), general.clone());
            if let Ok(d) = general {
                prop_assert_eq!(&encode_20(&d)[..], s.as_bytes());
            }
        }

        #[test]
        fn roundtrip(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let s = encode(&bytes);
            prop_assert_eq!(s.len(), encoded_len(bytes.len()));
            prop_assert_eq!(decode(&s).unwrap(), bytes);
        }
    }
}
