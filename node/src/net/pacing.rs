//! Request sizes of a chunked fetch ([`NetHandle::fetch_chunked`](super::NetHandle::fetch_chunked))
//! paced to the path, so that a slow peer's chunks arrive within the request timeout and its
//! other traffic to this node does not wait behind more than about a second of them.
//!
//! The requests of a fetch share one path, and the responder sends their answers in turn: a
//! request sent while `B` bytes of earlier answers wait on the responder's side is answered (and
//! its stream's protocol confirmed) only after they have left, `B / throughput` seconds later.
//! The same wait falls on everything else the responder sends this node over that connection: an
//! anti-entropy or log answer, the confirmation of a new stream, gossip. With fixed 1 MiB chunks,
//! 4 in flight, that was 34 s on a volunteer's 1 Mbit/s uplink and 68 s on ADSL (512 kbit/s):
//! every request outlived the 30 s request timeout. With 3 s of measured throughput in flight an
//! anti-entropy run with a builder serving a NAR over 512 kbit/s took 6.6 s (0.4 s idle); with
//! 1 s of it, a long lossy path (each request about 1 s by itself) never grew its requests
//! (docs/benchmarks.md).
//!
//! So the pacer is delay-based (like TCP Vegas or BBR), per fetch:
//! - **Rate**: the largest delivery rate of the recent answers, each sample being the bytes
//!   answered between a request's sending and its answer (by the answers' own completion times,
//!   not the order they are handed over in) over that time.
//! - **Base delay**: the path's round trip without queueing, the smallest over the answers of
//!   (answer time - bytes / rate), at least 0: an answer's wait minus its own transmission at the
//!   rate.
//! - **Bytes in flight**: rate x (base delay + [`PACE`]). A path whose answers come back near the
//!   base delay has not filled, and its rate samples, so the bytes in flight, grow by a factor of
//!   (base + [`PACE`]) / base per round trip; once it is full, the rate stops growing and the
//!   queue on the responder's side holds about [`PACE`] of answers, whatever the path's length.
//!   When the path slows, the rate samples fall (the largest of the last [`RATE_SAMPLES`] is
//!   used) and so do the bytes in flight.
//!
//! The bytes in flight are split into requests between the plan's smallest and largest, as many
//! as fit (at most `window`, at least 1): the first request is one of the smallest size, alone;
//! on a fast path the requests reach the largest size within a few round trips.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::ChunkPlan;

/// The queueing the bytes in flight of a paced fetch may add on the responder's side at its
/// measured rate, above the path's base delay (at most a quarter of the request timeout).
pub(crate) const PACE: Duration = Duration::from_secs(1);

/// How many of the latest answers' delivery rates the rate estimate is the largest of.
const RATE_SAMPLES: usize = 16;

/// How many answers' (delay, size) the base delay is computed over (with the rate of the
/// moment); later answers only lower a running minimum computed with the rate of their time.
const DELAY_SAMPLES: usize = 256;

/// Sizes the requests of one chunked fetch, and counts them.
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    /// The largest and smallest request, in bytes.
    max: u32,
    min: u32,
    window: usize,
    /// The queueing allowed above the base delay, and the largest base delay believed (s).
    allowance: f64,
    max_base: f64,
    /// The requests not answered yet, in order: when each was sent.
    pending: VecDeque<Instant>,
    /// The latest answers (completion time, bytes), in the order they were handed over.
    recent: VecDeque<(Instant, u32)>,
    /// The latest delivery rate samples (bytes/s).
    rates: VecDeque<f64>,
    /// The first answers' (seconds from sending to answer, bytes).
    delays: Vec<(f64, u32)>,
    /// The smallest base delay of the later answers (s).
    late_base: f64,
    /// Whether a request was sent while another was out (only answers that overlap tell the
    /// path's base delay: a request alone gives rate = size / delay, so a base delay of 0).
    probed: bool,
    /// Startup: more bytes in flight until the path is full (see [`Startup`]).
    startup: Startup,
    /// Answers counted so far.
    answers: u64,
    /// Requests sized so far, and the smallest and largest of them (for the log).
    pub(crate) requests: u64,
    pub(crate) smallest: u32,
    pub(crate) largest: u32,
}

impl Pacer {
    /// A pacer for `plan` under a request timeout of `timeout`.
    pub(crate) fn new(plan: &ChunkPlan, timeout: Duration) -> Pacer {
        let window = plan.window.max(1);
        Pacer {
            max: plan.chunk_size,
            min: plan.min_chunk.clamp(1, plan.chunk_size.max(1)),
            window,
            allowance: PACE.min(timeout / 4).as_secs_f64(),
            max_base: (timeout / 4).as_secs_f64(),
            pending: VecDeque::new(),
            recent: VecDeque::new(),
            rates: VecDeque::new(),
            delays: Vec::new(),
            late_base: f64::INFINITY,
            probed: false,
            startup: Startup::default(),
            answers: 0,
            requests: 0,
            smallest: u32::MAX,
            largest: 0,
        }
    }

    /// The measured rate (bytes/s), if an answer came.
    fn rate(&self) -> Option<f64> {
        self.rates.iter().copied().reduce(f64::max)
    }

    /// The path's base delay at `rate` (s).
    fn base(&self, rate: f64) -> f64 {
        let first = self.delays.iter().map(|&(d, len)| d - f64::from(len) / rate).fold(f64::INFINITY, f64::min);
        first.min(self.late_base).clamp(0.0, self.max_base)
    }

    /// The bytes the requests in flight should add up to (`None`: not paced).
    fn target(&self) -> Option<f64> {
        if self.min >= self.max {
            return None;
        }
        // One request of the smallest size until the first answer tells the rate.
        let Some(rate) = self.rate() else { return Some(f64::from(self.min)) };
        let base = self.base(rate);
        // Doubling only matters where the base delay is long against the allowance: a 20 ms
        // path grows 50-fold per round trip without it (and would queue twice the allowance).
        let gain = if self.startup.done { 1.0 } else { 1.0 + (base / self.allowance).min(1.0) };
        Some(gain * rate * (base + self.allowance))
    }

    /// How many requests may be in flight: as many of the smallest size as the bytes in flight
    /// hold, at most the plan's window, at least 1; but 2 after the first answer until two
    /// answers overlapped (a path of 1 s round trip and one of 16 KiB/s answer a lone 16 KiB
    /// request alike, two at once tell them apart).
    pub(crate) fn window(&self) -> usize {
        let least = if self.rates.is_empty() || self.probed { 1 } else { 2 };
        match self.target() {
            None => self.window,
            Some(t) => ((t / f64::from(self.min)).floor() as usize).clamp(least.min(self.window), self.window),
        }
    }

    /// The size of the next request (before the object's remaining length cuts it).
    pub(crate) fn next_len(&self) -> u32 {
        match self.target() {
            None => self.max,
            Some(t) => (t / self.window() as f64).clamp(f64::from(self.min), f64::from(self.max)) as u32,
        }
    }

    /// Counts a request of `len` bytes sent at `now`.
    pub(crate) fn sent(&mut self, len: u32, now: Instant) {
        self.requests += 1;
        self.smallest = self.smallest.min(len);
        self.largest = self.largest.max(len);
        self.probed |= !self.pending.is_empty();
        self.pending.push_back(now);
    }

    /// Counts the answer to the oldest request not answered yet: `len` bytes, which arrived at
    /// `done` (answers are handed over in the order of their requests, maybe later than they
    /// arrived).
    pub(crate) fn answered(&mut self, len: u32, done: Instant) {
        let Some(sent) = self.pending.pop_front() else { return };
        let secs = done.saturating_duration_since(sent).as_secs_f64().max(1e-6);
        self.recent.push_back((done, len));
        while self.recent.len() > 2 * self.window + 1 {
            self.recent.pop_front();
        }
        // Bytes that arrived while this request was out: its own and the earlier answers that
        // came after it was sent (not those that had arrived and waited to be handed over).
        let delivered: u64 =
            self.recent.iter().filter(|(at, _)| *at > sent && *at <= done).map(|&(_, l)| u64::from(l)).sum();
        self.rates.push_back(delivered as f64 / secs);
        while self.rates.len() > RATE_SAMPLES {
            self.rates.pop_front();
        }
        if self.delays.len() < DELAY_SAMPLES {
            self.delays.push((secs, len));
        } else if let Some(rate) = self.rate() {
            self.late_base = self.late_base.min(secs - f64::from(len) / rate);
        }
        if let Some(rate) = self.rate().filter(|_| self.probed && !self.startup.done) {
            // This answer's queueing: its wait beyond the base delay and its own transmission.
            let queued = secs - f64::from(len) / rate - self.base(rate);
            let round_over = self.answers >= self.startup.round_end;
            self.startup.answered(rate, queued > self.allowance / 2.0, round_over);
            if round_over {
                self.startup.round_end = self.requests;
            }
        }
        self.answers += 1;
    }
}

/// Startup: the bytes in flight are multiplied by up to 2 (1 + base delay / allowance) so that a
/// path of long round trip, not full, grows them at least 4-fold per round trip (like TCP's slow
/// start, BBR's startup). Startup ends for good when 2 answers in a row queued more than half the allowance (the path
/// is full: the doubled bytes in flight wait on the responder's side), or when the rate grew by
/// less than a quarter in 3 round trips in a row (BBR's test: a lost packet delays an answer, not
/// the rate).
#[derive(Debug, Clone, Default)]
struct Startup {
    done: bool,
    /// Answers in a row that queued.
    queued: u32,
    /// The rate at the last round trip that grew it by a quarter, and round trips since.
    rate: f64,
    flat_rounds: u32,
    /// The round trip ends at the answer to this request (counted from 0).
    round_end: u64,
}

impl Startup {
    fn answered(&mut self, rate: f64, queued: bool, round_over: bool) {
        self.queued = if queued { self.queued + 1 } else { 0 };
        if round_over {
            if rate >= 1.25 * self.rate {
                (self.rate, self.flat_rounds) = (rate, 0);
            } else {
                self.flat_rounds += 1;
            }
        }
        self.done = self.queued >= 2 || self.flat_rounds >= 3;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u32 = 1024;
    const TIMEOUT: Duration = Duration::from_secs(30);
    /// The smallest request of a NAR fetch (`mesh::fetch::PACED_MIN_CHUNK`).
    const MIN: u32 = 16 * KIB;

    fn plan(min_chunk: u32) -> ChunkPlan {
        ChunkPlan { total_len: 64 << 20, chunk_size: 1024 * KIB, min_chunk, window: 4 }
    }

    /// What [`simulate`] saw.
    #[derive(Debug)]
    struct Run {
        /// Each request's size and the seconds from its sending to its answer.
        requests: Vec<(u32, f64)>,
        /// The longest a small message the responder got to send this node at a request's
        /// sending waited behind the NAR bytes queued on its side (s).
        worst_queue: f64,
        /// The time the fetch took (s).
        secs: f64,
    }

    /// A fetch of `total` bytes over a path of `rate` bytes/s and round trip `rtt` (s) whose
    /// responder sends the answers one after the other; every `lose`-th answer (0: none) comes a
    /// round trip late (a lost packet resent), and the later ones are handed over after it.
    fn simulate(rate: f64, rtt: f64, total: u64, lose: usize) -> Run {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(&plan(MIN), TIMEOUT);
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut flight: VecDeque<(f64, f64, u32)> = Default::default();
        let (mut now, mut free, mut sent_bytes) = (0.0f64, 0.0f64, 0u64);
        let mut run = Run { requests: Vec::new(), worst_queue: 0.0, secs: 0.0 };
        loop {
            while flight.len() < pacer.window() && sent_bytes < total {
                let len = u64::from(pacer.next_len()).min(total - sent_bytes) as u32;
                pacer.sent(len, at(now));
                sent_bytes += u64::from(len);
                // The responder starts on it when it arrives and the answers before it left.
                let start = free.max(now + rtt / 2.0);
                free = start + f64::from(len) / rate;
                // A message sent right after it reaches the responder in rtt/2 and leaves after
                // the answers queued there (the first 2 requests after the first answer measure
                // the path: see `Pacer::window`).
                if run.requests.len() + flight.len() >= 3 {
                    run.worst_queue = run.worst_queue.max(free - (now + rtt / 2.0));
                }
                let n = run.requests.len() + flight.len() + 1;
                let late = if lose > 0 && n.is_multiple_of(lose) { rtt } else { 0.0 };
                flight.push_back((now, free + rtt / 2.0 + late, len));
            }
            let Some((sent, done, len)) = flight.pop_front() else { break };
            now = now.max(done);
            pacer.answered(len, at(done));
            run.requests.push((len, now - sent));
        }
        run.secs = now;
        run
    }

    #[test]
    fn a_slow_uplink_queues_about_a_second_and_stays_busy() {
        // 64, 128, 256 and 512 kbit/s, 1 Mbit/s; 20 ms round trip; 4 MiB (1 MiB at 64 kbit/s).
        for rate in [8_000.0, 16_000.0, 32_000.0, 64_000.0, 125_000.0] {
            let total = if rate < 10_000.0 { 1u64 << 20 } else { 4 << 20 };
            let run = simulate(rate, 0.02, total, 0);
            // What the responder's other messages to this node wait: the allowance, or one of
            // the smallest requests being sent (2 s at 64 kbit/s), and a little.
            let limit = (f64::from(MIN) / rate).max(1.0) + 0.1;
            assert!(run.worst_queue < limit, "{rate} B/s: {:.2} s queued: {run:?}", run.worst_queue);
            let worst = run.requests.iter().map(|r| r.1).fold(0.0, f64::max);
            assert!(worst < 2.0 * limit, "{rate} B/s: a request waited {worst:.1} s: {run:?}");
            let efficiency = total as f64 / rate / run.secs;
            assert!(efficiency > 0.9, "{rate} B/s: {:.1} s for {total} B ({efficiency:.2} of the path)", run.secs);
        }
    }

    #[test]
    fn a_long_lossy_path_grows_its_requests_quickly() {
        // 2 MiB/s, a 1 s and a 0.3 s round trip, every 20th answer a round trip late; 4 MiB and
        // 32 MiB. With 1 s of the measured rate in flight (and no base delay) the requests stay
        // at 16 KiB, two at a time: 4 MiB would take 128 s. Here the bytes in flight about
        // double per round trip, like TCP's slow start from 10 packets (4 MiB: about 9 round
        // trips): 10.5 s and 3.6 s.
        let rate = 2.0 * 1024.0 * 1024.0;
        for (rtt, limit) in [(1.0, 12.0), (0.3, 4.5)] {
            let run = simulate(rate, rtt, 4 << 20, 20);
            assert!(run.secs < limit, "{rtt} s: 4 MiB in {:.1} s: {run:?}", run.secs);
        }
        // 32 MiB over the 1 s path: 1 MiB requests from the 31st, 25 s (16 s at the rate).
        let run = simulate(rate, 1.0, 32 << 20, 20);
        let first_max = run.requests.iter().position(|r| r.0 == 1024 * KIB).expect("1 MiB requests");
        assert!(first_max < 40, "1 MiB requests only after {first_max}: {run:?}");
        let efficiency = f64::from(32u32 << 20) / rate / run.secs;
        assert!(efficiency > 0.55, "{:.1} s for 32 MiB ({efficiency:.2} of the path): {run:?}", run.secs);
        // The path is full, and the queue stays near the allowance above the round trip.
        assert!(run.worst_queue < 2.5, "{:.2} s queued: {run:?}", run.worst_queue);
    }

    #[test]
    fn a_fast_path_gets_the_largest_requests_within_a_few_round_trips() {
        // 50 MiB/s; a 100 ms and a 1 ms (LAN) round trip.
        for rtt in [0.1, 0.001] {
            let run = simulate(50.0 * 1024.0 * 1024.0, rtt, 64 << 20, 0);
            assert_eq!(run.requests[0].0, MIN, "the first request is of the smallest size");
            let first_max = run.requests.iter().position(|r| r.0 == 1024 * KIB).expect("1 MiB requests");
            assert!(first_max < 12, "{rtt} s: 1 MiB requests only after {first_max}: {run:?}");
            let rest = &run.requests[first_max..run.requests.len() - 1];
            assert!(rest.iter().all(|r| r.0 == 1024 * KIB), "{run:?}");
            // 4 MiB in flight per round trip at most, 1.3 s at 50 MiB/s.
            let limit = (64.0 / 4.0 * rtt).max(64.0 / 50.0) * 1.2 + 4.0 * rtt;
            assert!(run.secs < limit, "{rtt} s: 64 MiB in {:.2} s", run.secs);
        }
    }

    #[test]
    fn a_fixed_plan_is_not_paced_and_sizes_stay_within_bounds() {
        let t0 = Instant::now();
        let fixed = Pacer::new(&plan(1024 * KIB), TIMEOUT);
        assert_eq!((fixed.next_len(), fixed.window()), (1024 * KIB, 4));
        // A very slow path: never below the smallest request; after the first answer two at once
        // (the probe), then one at a time.
        let mut p = Pacer::new(&plan(MIN), TIMEOUT);
        assert_eq!((p.next_len(), p.window()), (MIN, 1));
        p.sent(MIN, t0);
        let hour = t0 + Duration::from_secs(3600);
        p.answered(1, hour);
        assert_eq!((p.next_len(), p.window()), (MIN, 2));
        p.sent(MIN, hour);
        p.sent(MIN, hour);
        p.answered(1, hour + Duration::from_secs(3600));
        p.answered(1, hour + Duration::from_secs(7200));
        assert_eq!((p.next_len(), p.window()), (MIN, 1));
        // An answer handed over for no request, or at its sending, breaks nothing.
        p.answered(MIN, t0);
        p.sent(MIN, t0);
        p.answered(MIN, t0);
        assert!(p.next_len() >= MIN && p.window() >= 1);
        // A minimum of zero, or above the largest, is clamped; so is a window of zero.
        assert_eq!(Pacer::new(&plan(0), TIMEOUT).next_len(), 1);
        let odd = ChunkPlan { total_len: 10, chunk_size: 8, min_chunk: 100, window: 0 };
        assert_eq!(Pacer::new(&odd, TIMEOUT).next_len(), 8);
    }
}
