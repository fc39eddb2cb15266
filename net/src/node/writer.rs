//! The storage writer: a thread of its own that makes the engine's
//! persists durable, in order, in groups, and confirms them.

use std::sync::Arc;

use huskies_engine::{PersistKind, PersistSeq};
use tokio::sync::mpsc;

use crate::storage::Storage;

/// Persists queued for the writer before the engine thread waits.
pub(super) const WRITE_QUEUE: usize = 64;

pub(super) type WriteJob = (PersistSeq, PersistKind, Vec<u8>);

/// The storage writer: a thread that applies persists in order, fsyncs,
/// and confirms each (or reports the first failure and stops).
pub(super) fn start_writer(
    mut storage: Storage,
    disk_bytes: Arc<std::sync::atomic::AtomicU64>,
) -> std::io::Result<(std::sync::mpsc::SyncSender<WriteJob>, mpsc::UnboundedReceiver<std::io::Result<PersistSeq>>)> {
    let (jobs_tx, jobs) = std::sync::mpsc::sync_channel::<WriteJob>(WRITE_QUEUE);
    // The writer never waits to report: if it could, a node thread blocked
    // on a full job queue and a writer blocked on a full result queue
    // would wait for each other. Results cannot pile up past what the
    // bounded job queue lets through while the node is not reading.
    let (done_tx, done) = mpsc::unbounded_channel();
    std::thread::Builder::new().name("huskies-storage".into()).spawn(move || {
        let mut last = PersistSeq(0);
        while let Ok(first) = jobs.recv() {
            // Group commit: everything queued behind the first write goes
            // down with it, one fsync for the lot, one confirmation (of
            // the last, which covers all before it).
            let group: Vec<WriteJob> = std::iter::once(first).chain(jobs.try_iter().take(WRITE_QUEUE)).collect();
            for (seq, _, _) in &group {
                assert!(*seq > last, "persists arrive in order: {} after {}", seq.0, last.0);
                last = *seq;
            }
            let result =
                storage.persist_all(group.iter().map(|(_, kind, bytes)| (*kind, bytes.as_slice()))).map(|()| last);
            disk_bytes.store(storage.bytes_on_disk(), std::sync::atomic::Ordering::Relaxed);
            let failed = result.is_err();
            if done_tx.send(result).is_err() || failed {
                // The node is gone, or storage failed: nothing after this
                // write may be applied over it.
                break;
            }
        }
    })?;
    Ok((jobs_tx, done))
}
