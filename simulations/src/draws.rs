//! Seeded per-derivation and per-node draws that the mesh run and the central baseline
//! ([`crate::central`]) share, so that both face the same build times, failures and crashes.
//!
//! The world's single RNG stream depends on the order of events, which differs between a mesh run
//! and a central schedule. These draws do not: each is a pure function of the seed and of what it
//! is about, hashed with blake3:
//! - the `nth` build started of derivation `d` (counting every build of `d` on any node, from 0)
//!   takes [`Draws::jitter`]`(d, nth)` times the derivation's duration (×3 when emulated) and
//!   fails transiently when [`Draws::flaky`]`(d, nth)`;
//! - node `i`'s `nth` crash comes [`Draws::uptime_ms`]`(i, nth)` after it (re)started and lasts
//!   [`Draws::downtime_ms`]`(i, nth)`.
//!
//! Broken derivations are flagged in the DAG itself ([`crate::dag::DrvSpec::broken`]), which both
//! runs read.

use crate::SimConfig;

/// The shared draws of one run (a seed and the probabilities and ranges they follow).
#[derive(Debug, Clone)]
pub struct Draws {
    seed: u64,
    flaky: f64,
    churn: f64,
    downtime_ms: (u64, u64),
}

impl Draws {
    /// The draws of `cfg`'s seed.
    pub fn new(cfg: &SimConfig) -> Draws {
        Draws { seed: cfg.seed, flaky: cfg.flaky, churn: cfg.churn, downtime_ms: cfg.downtime_ms }
    }

    fn raw(&self, tag: u8, a: u64, b: u64) -> u64 {
        let mut h = blake3::Hasher::new_derive_key("buildmesh-sim shared draws v1");
        h.update(&self.seed.to_le_bytes());
        h.update(&[tag]);
        h.update(&a.to_le_bytes());
        h.update(&b.to_le_bytes());
        let mut x = [0u8; 8];
        x.copy_from_slice(&h.finalize().as_bytes()[..8]);
        u64::from_le_bytes(x)
    }

    /// A uniform float in [0, 1).
    fn unit(&self, tag: u8, a: u64, b: u64) -> f64 {
        (self.raw(tag, a, b) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// The factor (0.8–1.25) by which the `nth` build of derivation `drv` deviates from its duration.
    pub fn jitter(&self, drv: u32, nth: u32) -> f64 {
        0.8 + 0.45 * self.unit(1, u64::from(drv), u64::from(nth))
    }

    /// Whether the `nth` build of derivation `drv` fails transiently (a timeout).
    pub fn flaky(&self, drv: u32, nth: u32) -> bool {
        self.flaky > 0.0 && self.unit(2, u64::from(drv), u64::from(nth)) < self.flaky
    }

    /// How long node `node` runs after its start or its `nth` restart before it crashes again
    /// (`None`: no churn). Exponential with mean one hour / churn, at least 1 ms.
    pub fn uptime_ms(&self, node: u32, nth: u32) -> Option<u64> {
        if self.churn <= 0.0 {
            return None;
        }
        let u = self.unit(3, u64::from(node), u64::from(nth)).max(1e-12);
        Some(((-u.ln() * 3_600_000.0 / self.churn) as u64).max(1))
    }

    /// How long node `node` stays down after its `nth` crash (uniform in the configured range).
    pub fn downtime_ms(&self, node: u32, nth: u32) -> u64 {
        let (lo, hi) = self.downtime_ms;
        lo + self.raw(4, u64::from(node), u64::from(nth)) % (hi - lo + 1)
    }

    /// A build's duration: `base_ms` (×3 when emulated) times its jitter, at least 1 ms.
    pub fn build_ms(&self, base_ms: u64, emulated: bool, drv: u32, nth: u32) -> u64 {
        let slow = if emulated { 3.0 } else { 1.0 };
        ((base_ms as f64 * slow * self.jitter(drv, nth)) as u64).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_depend_on_the_seed_and_the_subject_only() {
        let cfg = SimConfig { flaky: 0.5, churn: 1.0, ..SimConfig::default() };
        let (a, b) = (Draws::new(&cfg), Draws::new(&cfg));
        assert_eq!(a.jitter(3, 1), b.jitter(3, 1));
        assert_ne!(a.jitter(3, 1), a.jitter(3, 2));
        let other = Draws::new(&SimConfig { seed: 2, ..cfg.clone() });
        assert_ne!(a.jitter(3, 1), other.jitter(3, 1));
        let flaky = (0..1000).filter(|n| a.flaky(7, *n)).count();
        assert!((400..600).contains(&flaky), "{flaky} of 1000 at p = 0.5");
        assert!((0..100).all(|n| (30_000..=600_000).contains(&a.downtime_ms(1, n))));
        let mean = (0..2000).map(|n| a.uptime_ms(1, n).unwrap()).sum::<u64>() / 2000;
        assert!((3_000_000..4_200_000).contains(&mean), "mean uptime {mean} ms at 1 crash/h");
        assert_eq!(Draws::new(&SimConfig::default()).uptime_ms(0, 0), None);
    }
}
