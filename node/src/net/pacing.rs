//! Request sizes of a chunked fetch ([`NetHandle::fetch_chunked`](super::NetHandle::fetch_chunked))
//! paced to the throughput seen so far, so that a slow peer's chunks arrive within the request
//! timeout.
//!
//! The requests of a fetch share one path, and the responder sends their answers in turn: a
//! request sent while `B` bytes of earlier answers wait on the responder's side is answered (and
//! its stream's protocol confirmed) only after they have left, `B / throughput` seconds later.
//! With fixed 1 MiB chunks, 4 in flight, that was 34 s on a volunteer's 1 Mbit/s uplink
//! (0.12 MiB/s) and 68 s on ADSL (512 kbit/s): every request outlived the 30 s request timeout
//! (or the 10 s in which a new stream must be confirmed), its bytes were thrown away, and the
//! fetch failed. Paced, the bytes in flight are what the path carries in [`PACE`] at the
//! throughput measured since the fetch started (bytes of answered requests over elapsed time,
//! which errs low while requests are still arriving): requests of that / `window` bytes, between
//! the plan's smallest and largest, and fewer of them in flight (at least 2) when even the
//! smallest ones would exceed it. The first request is one of the smallest size; on a fast path the requests
//! reach the largest size within a few round trips.

use std::time::{Duration, Instant};

use super::ChunkPlan;

/// The time the bytes in flight of a paced fetch should take at its measured throughput (at most
/// a quarter of the request timeout).
pub(crate) const PACE: Duration = Duration::from_secs(3);

/// Sizes the requests of one chunked fetch, and counts them.
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    started: Instant,
    /// Bytes of the answered requests.
    answered: u64,
    /// The largest and smallest request, in bytes.
    max: u32,
    min: u32,
    window: usize,
    /// The time the bytes in flight should take at the throughput seen so far.
    budget: Duration,
    /// Requests sized so far, and the smallest and largest of them (for the log).
    pub(crate) requests: u64,
    pub(crate) smallest: u32,
    pub(crate) largest: u32,
}

impl Pacer {
    /// A pacer for `plan` under a request timeout of `timeout`, starting at `now`.
    pub(crate) fn new(plan: &ChunkPlan, timeout: Duration, now: Instant) -> Pacer {
        Pacer {
            started: now,
            answered: 0,
            max: plan.chunk_size,
            min: plan.min_chunk.clamp(1, plan.chunk_size.max(1)),
            window: plan.window.max(1),
            budget: PACE.min(timeout / 4),
            requests: 0,
            smallest: u32::MAX,
            largest: 0,
        }
    }

    /// The bytes the requests in flight should add up to at `now` (`None`: not paced).
    fn target(&self, now: Instant) -> Option<f64> {
        if self.min >= self.max {
            return None;
        }
        if self.answered == 0 {
            // One request of the smallest size until the first answer tells the throughput.
            return Some(f64::from(self.min));
        }
        let secs = now.saturating_duration_since(self.started).as_secs_f64().max(1e-3);
        Some(self.answered as f64 / secs * self.budget.as_secs_f64())
    }

    /// The size of the next request at `now` (before the object's remaining length cuts it).
    pub(crate) fn next_len(&self, now: Instant) -> u32 {
        match self.target(now) {
            None => self.max,
            Some(t) => (t / self.window as f64).clamp(f64::from(self.min), f64::from(self.max)) as u32,
        }
    }

    /// How many requests may be in flight at `now`: the plan's window, or fewer when the
    /// smallest requests of the whole window would take longer than the pace, but at least 2
    /// (one being answered while the next waits: the path never idles between requests).
    pub(crate) fn window(&self, now: Instant) -> usize {
        match self.target(now) {
            None => self.window,
            Some(t) => ((t / f64::from(self.min)).ceil() as usize).clamp(2.min(self.window), self.window),
        }
    }

    /// Counts a request of `len` bytes sent.
    pub(crate) fn sent(&mut self, len: u32) {
        self.requests += 1;
        self.smallest = self.smallest.min(len);
        self.largest = self.largest.max(len);
    }

    /// Counts `len` bytes answered.
    pub(crate) fn answered(&mut self, len: u32) {
        self.answered += u64::from(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u32 = 1024;
    const TIMEOUT: Duration = Duration::from_secs(30);

    fn plan(min_chunk: u32) -> ChunkPlan {
        ChunkPlan { total_len: 64 << 20, chunk_size: 1024 * KIB, min_chunk, window: 4 }
    }

    /// A fetch of `total` bytes over a path of `rate` bytes/s and round trip `rtt` (s) whose
    /// responder sends the answers one after the other; returns (seconds each request waited
    /// for its answer, its size) and the time the fetch took.
    fn simulate(rate: f64, rtt: f64, total: u64) -> (Vec<(f64, u32)>, f64) {
        let t0 = Instant::now();
        let p = plan(64 * KIB);
        let mut pacer = Pacer::new(&p, TIMEOUT, t0);
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut flight: std::collections::VecDeque<(f64, f64, u32)> = Default::default();
        let (mut now, mut free, mut sent_bytes, mut out) = (0.0f64, 0.0f64, 0u64, Vec::new());
        loop {
            while flight.len() < pacer.window(at(now)) && sent_bytes < total {
                let len = u64::from(pacer.next_len(at(now))).min(total - sent_bytes) as u32;
                pacer.sent(len);
                sent_bytes += u64::from(len);
                // The responder starts on it when it arrives and the answers before it left.
                let start = free.max(now + rtt / 2.0);
                free = start + f64::from(len) / rate;
                flight.push_back((now, free + rtt / 2.0, len));
            }
            let Some((sent, answered, len)) = flight.pop_front() else { break };
            now = answered;
            pacer.answered(len);
            out.push((now - sent, len));
        }
        (out, now)
    }

    #[test]
    fn requests_on_a_slow_path_are_answered_within_seconds_and_keep_it_busy() {
        // 128 kbit/s, 256 kbit/s, ADSL (512 kbit/s), 1 Mbit/s; 100 ms round trip; 4 MiB.
        for rate in [16_000.0, 32_000.0, 64_000.0, 125_000.0] {
            let (got, secs) = simulate(rate, 0.1, 4 << 20);
            let worst = got.iter().map(|g| g.0).fold(0.0, f64::max);
            // Well within the 10 s in which a new stream must be confirmed (and the 30 s timeout).
            // Two of the smallest requests, or the pace, and a round trip.
            let limit = (2.0 * 65536.0 / rate).max(PACE.as_secs_f64()) + 0.2;
            assert!(worst < limit.min(9.0), "{rate} B/s: a request waited {worst:.1} s: {got:?}");
            let efficiency = f64::from(4u32 << 20) / rate / secs;
            assert!(efficiency > 0.9, "{rate} B/s: {secs:.1} s for 4 MiB ({efficiency:.2} of the path)");
        }
    }

    #[test]
    fn a_fast_path_gets_the_largest_requests_within_a_few_round_trips() {
        // 50 MiB/s, 100 ms round trip.
        let (got, _) = simulate(50.0 * 1024.0 * 1024.0, 0.1, 64 << 20);
        assert_eq!(got[0].1, 64 * KIB, "the first request is of the smallest size");
        let first_max = got.iter().position(|g| g.1 == 1024 * KIB).expect("1 MiB requests");
        assert!(first_max < 12, "1 MiB requests only after {first_max}: {got:?}");
        assert!(got[first_max..got.len() - 1].iter().all(|g| g.1 == 1024 * KIB), "{got:?}");
    }

    #[test]
    fn a_fixed_plan_is_not_paced_and_sizes_stay_within_bounds() {
        let t0 = Instant::now();
        let fixed = Pacer::new(&plan(1024 * KIB), TIMEOUT, t0);
        assert_eq!((fixed.next_len(t0), fixed.window(t0)), (1024 * KIB, 4));
        // A very slow path: never below the smallest request, two at a time.
        let mut p = Pacer::new(&plan(64 * KIB), TIMEOUT, t0);
        p.answered(1);
        let late = t0 + Duration::from_secs(3600);
        assert_eq!((p.next_len(late), p.window(late)), (64 * KIB, 2));
        // A minimum of zero, or above the largest, is clamped; so is a window of zero.
        assert_eq!(Pacer::new(&plan(0), TIMEOUT, t0).next_len(t0), 1);
        let odd = ChunkPlan { total_len: 10, chunk_size: 8, min_chunk: 100, window: 0 };
        assert_eq!(Pacer::new(&odd, TIMEOUT, t0).next_len(t0), 8);
    }
}
