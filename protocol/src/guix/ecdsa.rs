//! ECDSA over edwards25519 exactly as libgcrypt computes it for Guix (not EdDSA).
//!
//! Guix keys come from `(genkey (ecdsa (curve Ed25519) (flags rfc6979)))` and sign
//! `(data (flags rfc6979) (hash sha256 #H#))`; libgcrypt (`cipher/ecc-ecdsa.c`) then does plain
//! ECDSA on the twisted Edwards curve with base point G of prime order n = 2^252 + 2774…8493:
//! - z = H >> 3 (the leftmost 253 bits: the bit length of n, `_gcry_dsa_normalize_hash`);
//! - sign: k from RFC 6979 with HMAC-SHA-256 (`_gcry_dsa_gen_rfc6979_k`), r = x(kG) mod n,
//!   s = k⁻¹(z + r·d) mod n, retrying (next RFC 6979 candidate) when r or s is 0;
//! - verify: 0 < r, s < n, X = (z·s⁻¹)G + (r·s⁻¹)Q, accept iff x(X) mod n = r;
//!
//! where x(P) is the affine Edwards x-coordinate. The curve arithmetic is curve25519-dalek's
//! (`EdwardsPoint`, `Scalar`, `vartime_double_scalar_mul_basepoint`); dalek does not expose x, so
//! [`x_coordinate`] recovers it from the compressed point (y and the sign of x) with num-bigint
//! modular arithmetic, and verification avoids even that square root: x(X) mod n = r holds iff
//! one of the at most 8 integers r + j·n below p is X's x, which the curve equation
//! x²(d·y² + 1) = y² − 1 and the sign bit decide with a few multiplications.

use std::sync::OnceLock;

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use hmac::{Hmac, KeyInit, Mac};
use num_bigint::BigUint;
use sha2::Sha256;

/// The group order n (= ℓ of Ed25519), big-endian.
pub const ORDER_BE: [u8; 32] = [
    0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x14, 0xde, 0xf9,
    0xde, 0xa2, 0xf7, 0x9c, 0xd6, 0x58, 0x12, 0x63, 0x1a, 0x5c, 0xf5, 0xd3, 0xed,
];

struct Field {
    p: BigUint,
    n: BigUint,
    d: BigUint,
    sqrt_m1: BigUint,
    /// (p - 5) / 8, the exponent of RFC 8032's square root.
    exp: BigUint,
}

fn field() -> &'static Field {
    static FIELD: OnceLock<Field> = OnceLock::new();
    FIELD.get_or_init(|| {
        let p = (BigUint::from(1u8) << 255u32) - BigUint::from(19u8);
        let n = BigUint::from_bytes_be(&ORDER_BE);
        // d = -121665 / 121666 mod p.
        let inv = BigUint::from(121666u32).modpow(&(&p - BigUint::from(2u8)), &p);
        let d = (&p - BigUint::from(121665u32)) * inv % &p;
        // sqrt(-1) = 2^((p-1)/4).
        let sqrt_m1 = BigUint::from(2u8).modpow(&((&p - BigUint::from(1u8)) >> 2u32), &p);
        let exp = (&p - BigUint::from(5u8)) >> 3u32;
        Field { p, n, d, sqrt_m1, exp }
    })
}

/// y (as an integer, possibly ≥ p as dalek accepts it) and the sign bit of x from a compressed point.
fn split_compressed(point: &CompressedEdwardsY) -> (BigUint, bool) {
    let mut bytes = point.to_bytes();
    let sign = bytes[31] >> 7 == 1;
    bytes[31] &= 0x7f;
    (BigUint::from_bytes_le(&bytes) % &field().p, sign)
}

/// u = y² − 1 and v = d·y² + 1 (mod p): x² = u / v on the curve.
fn curve_uv(y: &BigUint) -> (BigUint, BigUint) {
    let f = field();
    let y2 = y * y % &f.p;
    let u = (&y2 + &f.p - BigUint::from(1u8)) % &f.p;
    let v = (&f.d * &y2 + BigUint::from(1u8)) % &f.p;
    (u, v)
}

/// The affine x-coordinate of a point, as an integer in [0, p).
pub fn x_coordinate(point: &EdwardsPoint) -> BigUint {
    let f = field();
    let (y, sign) = split_compressed(&point.compress());
    let (u, v) = curve_uv(&y);
    // RFC 8032 5.1.3: x = u·v³·(u·v⁷)^((p−5)/8), times sqrt(−1) when v·x² = −u.
    let v3 = &v * &v % &f.p * &v % &f.p;
    let v7 = &v3 * &v3 % &f.p * &v % &f.p;
    let mut x = &u * &v3 % &f.p * (&u * &v7 % &f.p).modpow(&f.exp, &f.p) % &f.p;
    let vx2 = &v * &x % &f.p * &x % &f.p;
    if vx2 != u {
        x = x * &f.sqrt_m1 % &f.p;
    }
    if x.bit(0) != sign && x != BigUint::ZERO {
        x = &f.p - x;
    }
    x
}

/// Whether x(point) ≡ r (mod n), for 0 < r < n.
fn x_matches(point: &EdwardsPoint, r: &BigUint) -> bool {
    let f = field();
    let (y, sign) = split_compressed(&point.compress());
    let (u, v) = curve_uv(&y);
    let mut candidate = r.clone();
    while candidate < f.p {
        if candidate.bit(0) == sign && &candidate * &candidate % &f.p * &v % &f.p == u {
            return true;
        }
        candidate += &f.n;
    }
    false
}

/// The 32-byte big-endian form of a value below 2^256.
fn be32(value: &BigUint) -> [u8; 32] {
    let bytes = value.to_bytes_be();
    let mut out = [0u8; 32];
    out[32 - bytes.len()..].copy_from_slice(&bytes);
    out
}

fn scalar_from_be(bytes: &[u8; 32]) -> Option<Scalar> {
    let mut le = *bytes;
    le.reverse();
    Option::from(Scalar::from_canonical_bytes(le))
}

fn scalar_be(s: &Scalar) -> [u8; 32] {
    let mut be = s.to_bytes();
    be.reverse();
    be
}

/// z = H >> (8·len − 253) as a scalar (libgcrypt's normalised hash, reduced mod n).
fn hash_scalar(hash: &[u8]) -> Scalar {
    let h = BigUint::from_bytes_be(hash);
    let bits = 8 * hash.len() as u64;
    let z = if bits > 253 { h >> (bits - 253) } else { h };
    let reduced = z % &field().n;
    let mut le = be32(&reduced);
    le.reverse();
    Scalar::from_bytes_mod_order(le)
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// RFC 6979 nonce candidates as libgcrypt draws them for n of 253 bits and SHA-256 (one HMAC
/// block per candidate, k = T >> 3, next candidate after K = HMAC(V‖0), V = HMAC(V)). `x` is the
/// secret `d` as libgcrypt holds it (int2octets of the unreduced value), `hash` the signed hash.
struct Rfc6979 {
    k: [u8; 32],
    v: [u8; 32],
}

impl Rfc6979 {
    fn new(x: &[u8; 32], hash: &[u8]) -> Rfc6979 {
        // bits2octets(h1): z1 = h >> (hbits − 253), minus n once if ≥ n, as 32 bytes.
        let f = field();
        let h = BigUint::from_bytes_be(hash);
        let bits = 8 * hash.len() as u64;
        let mut z1 = if bits > 253 { h >> (bits - 253) } else { h };
        if z1 >= f.n {
            z1 -= &f.n;
        }
        let h1 = be32(&z1);
        let v = [1u8; 32];
        let k = [0u8; 32];
        let k = hmac(&k, &[&v, &[0], x, &h1]);
        let v = hmac(&k, &[&v]);
        let k = hmac(&k, &[&v, &[1], x, &h1]);
        let v = hmac(&k, &[&v]);
        Rfc6979 { k, v }
    }

    /// The next k with 0 < k < n.
    fn next_k(&mut self) -> Scalar {
        loop {
            self.v = hmac(&self.k, &[&self.v]);
            let t = BigUint::from_bytes_be(&self.v) >> 3u32;
            let candidate = scalar_from_be(&be32(&t)).filter(|k| *k != Scalar::ZERO);
            // Whether taken or not, the state moves on as libgcrypt's does before a retry.
            self.k = hmac(&self.k, &[&self.v, &[0]]);
            self.v = hmac(&self.k, &[&self.v]);
            if let Some(k) = candidate {
                return k;
            }
        }
    }
}

/// An ECDSA signature: r and s, both in [1, n).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcdsaSignature {
    /// r, big-endian.
    pub r: [u8; 32],
    /// s, big-endian.
    pub s: [u8; 32],
}

/// Signs `hash` (the bytes inside `(hash sha256 #…#)`) with secret `d` (`d_be`: its big-endian
/// bytes as the key holds them, which seed RFC 6979; `d`: the same value mod n).
pub fn sign_hash(d_be: &[u8; 32], d: &Scalar, hash: &[u8]) -> EcdsaSignature {
    let z = hash_scalar(hash);
    let mut nonces = Rfc6979::new(d_be, hash);
    loop {
        // libgcrypt takes the first valid candidate; on r = 0 or s = 0 it redraws with one
        // "extra loop", which is the next candidate here.
        let k = nonces.next_k();
        let point = EdwardsPoint::mul_base(&k);
        let r_int = x_coordinate(&point) % &field().n;
        let r_be = be32(&r_int);
        let Some(r) = scalar_from_be(&r_be) else { continue };
        if r == Scalar::ZERO {
            continue;
        }
        let s = k.invert() * (z + r * d);
        if s == Scalar::ZERO {
            continue;
        }
        return EcdsaSignature { r: r_be, s: scalar_be(&s) };
    }
}

/// Verifies an ECDSA signature (r, s as big-endian integers of any length) over `hash` under the
/// public point `q`. Returns false for r or s outside [1, n).
pub fn verify_hash(q: &EdwardsPoint, hash: &[u8], r: &[u8], s: &[u8]) -> bool {
    let (Some(r_be), Some(s_be)) = (fixed_be(r), fixed_be(s)) else { return false };
    let (Some(r_scalar), Some(s_scalar)) = (scalar_from_be(&r_be), scalar_from_be(&s_be)) else {
        return false;
    };
    if r_scalar == Scalar::ZERO || s_scalar == Scalar::ZERO {
        return false;
    }
    let w = s_scalar.invert();
    let u1 = hash_scalar(hash) * w;
    let u2 = r_scalar * w;
    let point = EdwardsPoint::vartime_double_scalar_mul_basepoint(&u2, q, &u1);
    x_matches(&point, &BigUint::from_bytes_be(&r_be))
}

/// A big-endian unsigned integer of any length as 32 bytes, if it fits.
fn fixed_be(bytes: &[u8]) -> Option<[u8; 32]> {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let digits = &bytes[start..];
    if digits.len() > 32 {
        return None;
    }
    let mut out = [0u8; 32];
    out[32 - digits.len()..].copy_from_slice(digits);
    Some(out)
}

/// Decompresses a 32-byte Edwards point encoding (little-endian y, sign of x in the top bit).
pub fn decompress(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
    CompressedEdwardsY(*bytes).decompress()
}

/// The minimal big-endian bytes of a 32-byte big-endian integer (libgcrypt's `%M` form: no
/// leading zero bytes; zero is empty).
pub fn minimal_be(bytes: &[u8; 32]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(32);
    &bytes[start..]
}
