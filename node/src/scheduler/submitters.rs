//! Who submitted what on a standalone node: the ledger behind the local fair share and the
//! per-submitter limits of `POST /api/v1/submit`.
//!
//! A **submitter** is the holder of the API token an upload came with: the node's own
//! `DATA/api.token` is [`Submitter::operator`], each `DATA/submitters/NAME.token` is submitter
//! `NAME` ([`crate::http::auth`]). Every accepted upload that queued builds is recorded with its
//! submitter, its bytes and the derivations it queued; it stays **unfinished** while one of them
//! is queued or running. The scheduler ranks a queued build under the submitter of the oldest
//! unfinished upload that queued it (a build nobody uploaded here, e.g. one queued before a
//! restart, counts as the operator's), and drops finished uploads after each pass
//! ([`SubmitterLedger::retain_pending`]).
//!
//! The ledger is in memory: after a restart the queue left over counts as the operator's, and
//! the per-submitter limits count only what was uploaded since.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use buildmesh_protocol::store_path::StorePath;

/// The name of the submitter of an upload (see the module docs). Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Submitter(pub Arc<str>);

impl Submitter {
    /// The holder of the node's own `DATA/api.token`.
    pub fn operator() -> Submitter {
        Submitter(Arc::from(OPERATOR))
    }
}

impl std::fmt::Display for Submitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of the operator's submitter (the node's own token).
pub const OPERATOR: &str = "operator";

/// What one submitter has in unfinished uploads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Distinct derivations queued or running for its unfinished uploads.
    pub jobs: usize,
    /// Bytes of its unfinished uploads, plus what uploads under way reserved.
    pub bytes: u64,
}

/// One unfinished upload.
#[derive(Debug)]
struct Upload {
    submitter: Submitter,
    bytes: u64,
    drvs: BTreeSet<StorePath>,
}

#[derive(Debug, Default)]
struct Ledger {
    next: u64,
    /// Unfinished uploads by arrival order.
    uploads: BTreeMap<u64, Upload>,
    /// Bytes reserved by uploads being received, per submitter.
    reserved: HashMap<Submitter, u64>,
    /// When each submitter's last build started (the fair share's turn order, [`super::plan`]).
    served: BTreeMap<Submitter, u64>,
}

/// The ledger (see the module docs), shared by the submit endpoint and the scheduler. Cheap to
/// clone.
#[derive(Debug, Clone, Default)]
pub struct SubmitterLedger {
    inner: Arc<Mutex<Ledger>>,
}

/// Bytes an upload under way holds against its submitter's quota; given back on drop unless the
/// upload is [recorded](SubmitterLedger::record).
#[derive(Debug)]
pub struct Reservation {
    ledger: SubmitterLedger,
    submitter: Submitter,
    bytes: u64,
}

impl Reservation {
    /// The bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Hold `more` bytes too, unless that takes the submitter past `max`; then `Err(usage)`, its
    /// usage without `more`.
    pub fn grow(&mut self, more: u64, max: u64) -> Result<(), Usage> {
        let mut l = self.ledger.lock();
        let usage = l.usage(&self.submitter);
        if usage.bytes.saturating_add(more) > max {
            return Err(usage);
        }
        *l.reserved.entry(self.submitter.clone()).or_insert(0) += more;
        self.bytes += more;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut l = self.ledger.lock();
        if let Some(r) = l.reserved.get_mut(&self.submitter) {
            *r = r.saturating_sub(self.bytes);
            if *r == 0 {
                l.reserved.remove(&self.submitter);
            }
        }
    }
}

impl Ledger {
    fn usage(&self, who: &Submitter) -> Usage {
        let mut drvs: HashSet<&StorePath> = HashSet::new();
        let mut bytes = self.reserved.get(who).copied().unwrap_or(0);
        for u in self.uploads.values().filter(|u| &u.submitter == who) {
            bytes = bytes.saturating_add(u.bytes);
            drvs.extend(&u.drvs);
        }
        Usage { jobs: drvs.len(), bytes }
    }
}

impl SubmitterLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What `who` has in unfinished uploads (and reservations).
    pub fn usage(&self, who: &Submitter) -> Usage {
        self.lock().usage(who)
    }

    /// Hold `bytes` of `who`'s quota of `max` for an upload under way; `Err(usage)` (its usage
    /// without this upload) when that would take it past `max`.
    pub fn reserve(&self, who: &Submitter, bytes: u64, max: u64) -> Result<Reservation, Usage> {
        let mut r = Reservation { ledger: self.clone(), submitter: who.clone(), bytes: 0 };
        r.grow(bytes, max)?;
        Ok(r)
    }

    /// Record an accepted upload of `who` of `bytes` that queued `drvs` (nothing when it queued
    /// nothing: it is finished already). Releases `reservation`.
    pub fn record(&self, who: &Submitter, bytes: u64, drvs: BTreeSet<StorePath>, reservation: Option<Reservation>) {
        drop(reservation);
        if drvs.is_empty() {
            return;
        }
        let mut l = self.lock();
        let id = l.next;
        l.next += 1;
        l.uploads.insert(id, Upload { submitter: who.clone(), bytes, drvs });
    }

    /// When each submitter's last build started (larger is more recent).
    pub fn served(&self) -> BTreeMap<Submitter, u64> {
        self.lock().served.clone()
    }

    /// Remember the plan's `served` marks after starting its builds.
    pub fn set_served(&self, served: BTreeMap<Submitter, u64>) {
        self.lock().served = served;
    }

    /// A mark to take before reading the queue for [`retain_pending`](Self::retain_pending).
    pub fn mark(&self) -> u64 {
        self.lock().next
    }

    /// Keep only the queued or running derivations (`pending`, read after `mark` was taken) in
    /// the uploads recorded before `mark`, and drop the uploads left with none: they are
    /// finished. Uploads recorded since may have queued builds the read did not see: untouched.
    pub fn retain_pending(&self, mark: u64, pending: &HashSet<&StorePath>) {
        self.lock().uploads.retain(|id, u| {
            if *id >= mark {
                return true;
            }
            u.drvs.retain(|d| pending.contains(d));
            !u.drvs.is_empty()
        });
    }

    /// The submitter each of `drvs` counts under: that of the oldest unfinished upload that
    /// queued it, else the operator.
    pub fn attribute<'a>(&self, drvs: impl IntoIterator<Item = &'a StorePath>) -> HashMap<StorePath, Submitter> {
        let l = self.lock();
        let mut first: HashMap<&StorePath, &Submitter> = HashMap::new();
        for u in l.uploads.values() {
            for d in &u.drvs {
                first.entry(d).or_insert(&u.submitter);
            }
        }
        drvs.into_iter().map(|d| (d.clone(), first.get(d).map_or_else(Submitter::operator, |s| (*s).clone()))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drv(n: u8) -> StorePath {
        StorePath::new([n; 20], &format!("d{n}.drv")).unwrap()
    }

    fn who(name: &str) -> Submitter {
        Submitter(Arc::from(name))
    }

    #[test]
    fn uploads_count_until_their_builds_end() {
        let l = SubmitterLedger::default();
        let (a, b) = (who("alice"), who("bob"));
        l.record(&a, 100, BTreeSet::from([drv(1), drv(2)]), None);
        l.record(&b, 30, BTreeSet::from([drv(2), drv(3)]), None);
        l.record(&a, 50, BTreeSet::from([drv(2), drv(4)]), None);
        l.record(&b, 999, BTreeSet::new(), None); // nothing queued: finished already
        assert_eq!(l.usage(&a), Usage { jobs: 3, bytes: 150 });
        assert_eq!(l.usage(&b), Usage { jobs: 2, bytes: 30 });
        // A shared derivation counts under the oldest upload; an unknown one is the operator's.
        let by = l.attribute([&drv(2), &drv(3), &drv(9)]);
        assert_eq!((&by[&drv(2)], &by[&drv(3)], &by[&drv(9)]), (&a, &b, &Submitter::operator()));
        // d1 and d2 are done: alice's first upload is finished, her second still has d4.
        let (d3, d4) = (drv(3), drv(4));
        let mark = l.mark();
        l.record(&b, 7, BTreeSet::from([drv(8)]), None); // after the mark: not seen by that read
        l.retain_pending(mark, &HashSet::from([&d3, &d4]));
        assert_eq!(l.usage(&a), Usage { jobs: 1, bytes: 50 });
        assert_eq!(l.usage(&b), Usage { jobs: 2, bytes: 37 });
        l.retain_pending(l.mark(), &HashSet::new());
        assert_eq!(l.usage(&a), Usage::default());
    }

    #[test]
    fn reservations_count_until_recorded_or_dropped() {
        let l = SubmitterLedger::default();
        let a = who("alice");
        l.record(&a, 60, BTreeSet::from([drv(1)]), None);
        assert_eq!(l.reserve(&a, 41, 100).unwrap_err(), Usage { jobs: 1, bytes: 60 });
        let mut r = l.reserve(&a, 30, 100).unwrap();
        assert_eq!(l.usage(&a).bytes, 90);
        assert!(r.grow(11, 100).is_err(), "a chunked upload is stopped as it passes the quota");
        r.grow(10, 100).unwrap();
        assert_eq!((r.bytes(), l.usage(&a).bytes), (40, 100));
        assert!(l.reserve(&who("bob"), 100, 100).is_ok(), "per submitter");
        drop(r);
        assert_eq!(l.usage(&a).bytes, 60, "a refused or failed upload gives its bytes back");
        let r = l.reserve(&a, 40, 100).unwrap();
        l.record(&a, 40, BTreeSet::from([drv(2)]), Some(r));
        assert_eq!(l.usage(&a), Usage { jobs: 2, bytes: 100 }, "recorded, not counted twice");
    }
}
