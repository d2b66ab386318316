//! Crash consistency of the store: a redb backend that freezes durability at sync N, and a
//! workload that must keep every write acknowledged before the crash.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::test_support::*;
use super::*;

/// A redb backend that simulates a crash: after `freeze_after` syncs, syncs fail (the process
/// "dies" there), and [`CrashBackend::durable_image`] is the disk as of the last successful sync.
#[derive(Debug, Clone)]
struct CrashBackend(Arc<std::sync::Mutex<CrashState>>);

#[derive(Debug)]
struct CrashState {
    current: Vec<u8>,
    durable: Vec<u8>,
    syncs: u64,
    freeze_after: u64,
}

impl CrashBackend {
    fn new(image: Vec<u8>, freeze_after: u64) -> CrashBackend {
        CrashBackend(Arc::new(std::sync::Mutex::new(CrashState {
            current: image.clone(),
            durable: image,
            syncs: 0,
            freeze_after,
        })))
    }

    fn durable_image(&self) -> Vec<u8> {
        self.0.lock().expect("lock").durable.clone()
    }
}

impl redb::StorageBackend for CrashBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.0.lock().expect("lock").current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let s = self.0.lock().expect("lock");
        let src = s
            .current
            .get(offset as usize..offset as usize + out.len())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "read out of range"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.lock().expect("lock").current.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut s = self.0.lock().expect("lock");
        if s.syncs >= s.freeze_after {
            return Err(std::io::Error::other("simulated crash"));
        }
        s.syncs += 1;
        s.durable = s.current.clone();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut s = self.0.lock().expect("lock");
        let dst = s
            .current
            .get_mut(offset as usize..offset as usize + data.len())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "write out of range"))?;
        dst.copy_from_slice(data);
        Ok(())
    }
}

/// One step of the crash-consistency workload: a closure transaction, then a state change.
fn crash_step(store: &Store, i: u8) -> Result<(), StoreError> {
    store.write(|w| {
        w.put_drv(&drv(i), &[i; 10])?;
        w.enqueue(
            &EnqueueRequest { drv: drv(i), priority: i32::from(i % 3), wanted_outputs: BTreeSet::new(), replicas: 1 },
            1,
        )?;
        w.insert_attestation(&attestation(i, i, 1, &[i % 5]))?;
        Ok(())
    })?;
    store.mark_running(&drv(i), 2)?;
    Ok(())
}

#[test]
fn crash_at_every_sync_keeps_every_acknowledged_write() {
    let blobs = tempfile::tempdir().expect("tempdir");
    let mut interrupted_runs = 0;
    for freeze_after in 0..40 {
        let backend = CrashBackend::new(Vec::new(), freeze_after);
        let mut acked: Vec<(u8, bool)> = Vec::new(); // (step, running acknowledged)
        let opened = Store::open_with_backend(backend.clone(), blobs.path(), StoreOptions::default());
        // A crash while redb initialises a new file leaves no valid database; `Store::open` makes
        // file creation atomic (create aside, then link into place), so only opened stores count.
        let Ok(store) = opened else { continue };
        {
            for i in 0..20u8 {
                match crash_step(&store, i) {
                    Ok(()) => acked.push((i, true)),
                    Err(_) => {
                        // The closure may have committed before mark_running failed.
                        if store.has_drv(&drv(i)).unwrap_or(false) {
                            acked.push((i, false));
                        }
                        break;
                    }
                }
            }
        }
        drop(store);
        if !acked.is_empty() && acked.len() < 20 {
            interrupted_runs += 1;
        }
        let image = backend.durable_image();
        let reopened =
            Store::open_with_backend(CrashBackend::new(image, u64::MAX), blobs.path(), StoreOptions::default())
                .unwrap_or_else(|e| panic!("freeze {freeze_after}: reopen failed: {e}"));
        for &(i, running) in &acked {
            let b = reopened
                .get_build(&drv(i))
                .expect("get")
                .unwrap_or_else(|| panic!("freeze {freeze_after}: build {i} lost"));
            if running {
                assert_eq!(b.state, BuildState::Running, "freeze {freeze_after}: step {i}");
            }
            assert!(reopened.has_drv(&drv(i)).expect("has"), "freeze {freeze_after}: drv {i} lost");
            assert_eq!(reopened.attestations_for_drv(&drv(i)).expect("atts").len(), 1);
        }
        // All-or-nothing: every visible build has its drv and attestation, and nothing beyond the
        // last acknowledged step is visible except possibly the one in flight.
        let builds = reopened.list_builds(&BuildFilter::default()).expect("list");
        for b in &builds {
            assert!(reopened.has_drv(&b.drv).expect("has"));
        }
        assert!(
            builds.len() <= acked.len() + 1,
            "freeze {freeze_after}: {} builds, {} acked",
            builds.len(),
            acked.len()
        );
        assert_eq!(reopened.attestation_summary().expect("summary").count, builds.len() as u64);
    }
    assert!(interrupted_runs >= 10, "only {interrupted_runs} runs crashed mid-workload");
}

/// Revision headers and manifests under the same crash at every sync: every acknowledged header
/// and manifest is there after the crash, the visible header of the name is the latest
/// acknowledged one (or the one in flight), and the fingerprint counts exactly what is stored.
#[test]
fn crash_at_every_sync_keeps_every_acknowledged_revision_and_manifest() {
    use super::revisions_tests::revision;
    let blobs = tempfile::tempdir().expect("tempdir");
    let manifest = |i: u8| bytes(u64::from(i), 3000);
    let mut interrupted_runs = 0;
    for freeze_after in 0..30 {
        let backend = CrashBackend::new(Vec::new(), freeze_after);
        let Ok(store) = Store::open_with_backend(backend.clone(), blobs.path(), StoreOptions::default()) else {
            continue;
        };
        let mut acked = 0u8;
        for i in 0..12u8 {
            let m = manifest(i);
            let r = revision("guix", "master", "c", 1, u64::from(i), &m);
            let checked = CheckedManifest::new(r.manifest_hash, &m, 3).expect("checked");
            let step = store.write(|w| {
                w.put_manifest(&checked, [format!("{i}-x.drv")])?;
                w.insert_revision(&r)?;
                Ok(())
            });
            if step.is_err() {
                break;
            }
            acked = i + 1;
        }
        drop(store);
        if acked > 0 && acked < 12 {
            interrupted_runs += 1;
        }
        let reopened = Store::open_with_backend(
            CrashBackend::new(backend.durable_image(), u64::MAX),
            blobs.path(),
            StoreOptions::default(),
        )
        .unwrap_or_else(|e| panic!("freeze {freeze_after}: reopen failed: {e}"));
        let stored = reopened.revisions_since(0, 0).expect("since");
        assert!(stored.len() >= usize::from(acked) && stored.len() <= usize::from(acked) + 1, "freeze {freeze_after}");
        for r in &stored {
            let m = reopened.get_manifest(&r.entry.manifest_hash).expect("manifest");
            assert!(m.is_some(), "freeze {freeze_after}: a header without the manifest written with it");
        }
        let summary = reopened.revision_summary().expect("summary");
        assert_eq!(summary.count, stored.len() as u64);
        if let Some(last) = stored.last() {
            let visible = reopened.revision_by_name("guix", "c").expect("by name");
            assert_eq!(visible.len(), 1);
            assert_eq!(visible[0].entry.id, last.entry.id, "freeze {freeze_after}: the latest is visible");
        }
    }
    assert!(interrupted_runs >= 5, "only {interrupted_runs} runs crashed mid-workload");
}
