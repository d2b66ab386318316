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
//! The ledger is durable: each upload is also a `submitter_uploads` row of the store
//! ([`crate::store::UploadRow`]), written in the transaction that queues its builds; the ledger
//! is [restored](SubmitterLedger::restore) from those rows at start, and the scheduler removes
//! the rows of the uploads [`SubmitterLedger::retain_pending`] finds finished. So after a
//! restart (`kill -9` included) the queue left over still counts under its submitters, and the
//! per-submitter limits still count what they had outstanding. Only uploads under way (their
//! reservations) and the fair share's turn order (`served`) are not kept: an interrupted upload
//! queued nothing, and the turn order starts again from "nobody served yet".

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
    /// Its unfinished uploads.
    pub uploads: usize,
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
    /// One more than the largest upload id recorded (the [`SubmitterLedger::mark`]).
    next: u64,
    /// Unfinished uploads by id (their durable ids, which grow with every upload).
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
        let mut uploads = 0;
        for u in self.uploads.values().filter(|u| &u.submitter == who) {
            bytes = bytes.saturating_add(u.bytes);
            drvs.extend(&u.drvs);
            uploads += 1;
        }
        Usage { jobs: drvs.len(), bytes, uploads }
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

    /// The ledger of the unfinished uploads stored in `submitter_uploads` (at start).
    pub fn restore(rows: Vec<(u64, crate::store::UploadRow)>) -> SubmitterLedger {
        let ledger = SubmitterLedger::default();
        for (id, row) in rows {
            let who = Submitter(Arc::from(row.submitter.as_str()));
            ledger.record(id, &who, row.bytes, row.drv_paths().into_iter().collect(), None);
        }
        ledger
    }

    /// Record the accepted upload `id` (its `submitter_uploads` id, committed before this call)
    /// of `who` of `bytes` that queued `drvs` (nothing when it queued nothing: it is finished
    /// already). Releases `reservation`.
    pub fn record(
        &self,
        id: u64,
        who: &Submitter,
        bytes: u64,
        drvs: BTreeSet<StorePath>,
        reservation: Option<Reservation>,
    ) {
        drop(reservation);
        if drvs.is_empty() {
            return;
        }
        let mut l = self.lock();
        l.next = l.next.max(id.saturating_add(1));
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

    /// A mark to take before reading the queue for [`retain_pending`](Self::retain_pending): one
    /// more than the largest id recorded. Ids are given in commit order, so every upload with a
    /// smaller id (recorded here or not yet) was committed before a read that follows.
    pub fn mark(&self) -> u64 {
        self.lock().next
    }

    /// Keep only the queued or running derivations (`pending`, read after `mark` was taken) in
    /// the uploads with ids below `mark`, and drop the uploads left with none: they are
    /// finished; their ids are returned (for the store to forget them). Uploads from `mark` on
    /// may have queued builds the read did not see: untouched.
    pub fn retain_pending(&self, mark: u64, pending: &HashSet<&StorePath>) -> Vec<u64> {
        let mut finished = Vec::new();
        self.lock().uploads.retain(|id, u| {
            if *id >= mark {
                return true;
            }
            u.drvs.retain(|d| pending.contains(d));
            if u.drvs.is_empty() {
                finished.push(*id);
            }
            !u.drvs.is_empty()
        });
        finished
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
        l.record(0, &a, 100, BTreeSet::from([drv(1), drv(2)]), None);
        l.record(1, &b, 30, BTreeSet::from([drv(2), drv(3)]), None);
        l.record(2, &a, 50, BTreeSet::from([drv(2), drv(4)]), None);
        l.record(3, &b, 999, BTreeSet::new(), None); // nothing queued: finished already
        assert_eq!(l.usage(&a), Usage { jobs: 3, bytes: 150, uploads: 2 });
        assert_eq!(l.usage(&b), Usage { jobs: 2, bytes: 30, uploads: 1 });
        // A shared derivation counts under the oldest upload; an unknown one is the operator's.
        let by = l.attribute([&drv(2), &drv(3), &drv(9)]);
        assert_eq!((&by[&drv(2)], &by[&drv(3)], &by[&drv(9)]), (&a, &b, &Submitter::operator()));
        // d1 and d2 are done: alice's first upload is finished, her second still has d4.
        let (d3, d4) = (drv(3), drv(4));
        let mark = l.mark();
        l.record(4, &b, 7, BTreeSet::from([drv(8)]), None); // after the mark: not seen by that read
        assert_eq!(l.retain_pending(mark, &HashSet::from([&d3, &d4])), vec![0], "finished: forget its row");
        assert_eq!(l.usage(&a), Usage { jobs: 1, bytes: 50, uploads: 1 });
        assert_eq!(l.usage(&b), Usage { jobs: 2, bytes: 37, uploads: 2 });
        assert_eq!(l.retain_pending(l.mark(), &HashSet::new()), vec![1, 2, 4]);
        assert_eq!(l.usage(&a), Usage::default());
    }

    #[test]
    fn reservations_count_until_recorded_or_dropped() {
        let l = SubmitterLedger::default();
        let a = who("alice");
        l.record(0, &a, 60, BTreeSet::from([drv(1)]), None);
        assert_eq!(l.reserve(&a, 41, 100).unwrap_err(), Usage { jobs: 1, bytes: 60, uploads: 1 });
        let mut r = l.reserve(&a, 30, 100).unwrap();
        assert_eq!(l.usage(&a).bytes, 90);
        assert!(r.grow(11, 100).is_err(), "a chunked upload is stopped as it passes the quota");
        r.grow(10, 100).unwrap();
        assert_eq!((r.bytes(), l.usage(&a).bytes), (40, 100));
        assert!(l.reserve(&who("bob"), 100, 100).is_ok(), "per submitter");
        drop(r);
        assert_eq!(l.usage(&a).bytes, 60, "a refused or failed upload gives its bytes back");
        let r = l.reserve(&a, 40, 100).unwrap();
        l.record(1, &a, 40, BTreeSet::from([drv(2)]), Some(r));
        assert_eq!(l.usage(&a), Usage { jobs: 2, bytes: 100, uploads: 2 }, "recorded, not counted twice");
    }

    #[test]
    fn a_ledger_restored_from_its_rows_attributes_and_counts_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let (a, b) = (who("alice"), who("bob"));
        let up = |who: &Submitter, bytes, drvs: &[StorePath]| {
            store.write(|w| w.put_upload(&crate::store::UploadRow::new(&who.0, bytes, drvs))).unwrap()
        };
        let ids = [up(&a, 100, &[drv(1), drv(2)]), up(&b, 30, &[drv(2), drv(3)])];
        let l = SubmitterLedger::restore(store.list_uploads().unwrap());
        assert_eq!(l.usage(&a), Usage { jobs: 2, bytes: 100, uploads: 1 });
        let by = l.attribute([&drv(2), &drv(3)]);
        assert_eq!((&by[&drv(2)], &by[&drv(3)]), (&a, &b), "the oldest upload still owns a shared drv");
        assert!(l.mark() > ids[1], "a new upload's id is above every restored one");
        let d3 = drv(3);
        let finished = l.retain_pending(l.mark(), &HashSet::from([&d3]));
        assert_eq!(finished, vec![ids[0]]);
        store.remove_uploads(&finished).unwrap();
        let l = SubmitterLedger::restore(store.list_uploads().unwrap());
        assert_eq!((l.usage(&a), l.usage(&b).uploads), (Usage::default(), 1));
    }
}
