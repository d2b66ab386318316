//! Small helpers over the seeded RNG (no other source of randomness is used).

use rand_chacha::ChaCha8Rng;
use rand_core::Rng;

/// A uniform float in [0, 1).
pub(crate) fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// True with probability `p`.
pub(crate) fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    p > 0.0 && unit(rng) < p
}

/// A uniform index in 0..n (n ≥ 1).
pub(crate) fn pick(rng: &mut ChaCha8Rng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// Uniform in lo..=hi.
pub(crate) fn between(rng: &mut ChaCha8Rng, (lo, hi): (u64, u64)) -> u64 {
    lo + rng.next_u64() % (hi - lo + 1)
}

/// Log-uniform in lo..=hi.
pub(crate) fn log_uniform(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> u64 {
    let (a, b) = ((lo.max(1)) as f64, (hi.max(lo).max(1)) as f64);
    let x = a * (b / a).powf(unit(rng));
    (x as u64).clamp(lo, hi)
}
