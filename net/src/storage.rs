//! The document on disk: a snapshot plus an append-only log of increments.
//!
//! `doc.snapshot` holds a full Automerge save, replaced atomically (temp
//! file, fsync, rename, fsync of the directory). `doc.log` holds records
//! `[u32 len][u64 hash][bytes]` appended and fsynced before the engine's
//! next output goes out, so nothing acknowledged is lost. A torn record at
//! the end (a crash mid-append) fails its hash and is cut off on load.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use huskies_engine::PersistKind;
use huskies_engine::hash::stable_hash;

pub struct Storage {
    dir: PathBuf,
    log: File,
    snapshot_bytes: u64,
    log_bytes: u64,
}

const SNAPSHOT: &str = "doc.snapshot";
const LOG: &str = "doc.log";

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Storage {
    /// Opens (creating) the data dir and returns the stored bytes.
    pub fn open(dir: &Path) -> io::Result<(Storage, Vec<u8>)> {
        fs::create_dir_all(dir)?;
        let mut bytes = match fs::read(dir.join(SNAPSHOT)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let log_path = dir.join(LOG);
        let mut raw = Vec::new();
        if let Ok(mut f) = File::open(&log_path) {
            f.read_to_end(&mut raw)?;
        }
        let mut pos = 0;
        while raw.len() - pos >= 12 {
            let len = u32::from_be_bytes(raw[pos..pos + 4].try_into().expect("4 bytes")) as usize;
            let hash = u64::from_be_bytes(raw[pos + 4..pos + 12].try_into().expect("8 bytes"));
            let Some(body) = raw.get(pos + 12..pos + 12 + len) else { break };
            if stable_hash(&[body]) != hash {
                break;
            }
            bytes.extend_from_slice(body);
            pos += 12 + len;
        }
        let log = OpenOptions::new().create(true).append(true).open(&log_path)?;
        if pos < raw.len() {
            tracing::warn!(path = %log_path.display(), kept = pos, dropped = raw.len() - pos, "cutting a torn record off the log");
            log.set_len(pos as u64)?;
            log.sync_all()?;
        }
        let snapshot_bytes = fs::metadata(dir.join(SNAPSHOT)).map(|m| m.len()).unwrap_or(0);
        Ok((Storage { dir: dir.to_owned(), log, snapshot_bytes, log_bytes: pos as u64 }, bytes))
    }

    /// Makes `bytes` durable before returning.
    pub fn persist(&mut self, kind: PersistKind, bytes: &[u8]) -> io::Result<()> {
        match kind {
            PersistKind::Append => {
                let mut rec = Vec::with_capacity(bytes.len() + 12);
                rec.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                rec.extend_from_slice(&stable_hash(&[bytes]).to_be_bytes());
                rec.extend_from_slice(bytes);
                self.log.write_all(&rec)?;
                self.log.sync_data()?;
                self.log_bytes += rec.len() as u64;
                Ok(())
            }
            PersistKind::Snapshot => {
                let tmp = self.dir.join("doc.snapshot.tmp");
                let mut f = File::create(&tmp)?;
                f.write_all(bytes)?;
                f.sync_all()?;
                fs::rename(&tmp, self.dir.join(SNAPSHOT))?;
                sync_dir(&self.dir)?;
                self.snapshot_bytes = bytes.len() as u64;
                // The snapshot covers everything logged so far.
                self.log.set_len(0)?;
                self.log.sync_all()?;
                self.log_bytes = 0;
                Ok(())
            }
        }
    }

    /// The document's size on disk: snapshot plus log.
    pub fn bytes_on_disk(&self) -> u64 {
        self.snapshot_bytes + self.log_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_log_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, bytes) = Storage::open(dir.path()).unwrap();
        assert!(bytes.is_empty());
        s.persist(PersistKind::Snapshot, b"snap").unwrap();
        s.persist(PersistKind::Append, b"one").unwrap();
        s.persist(PersistKind::Append, b"two").unwrap();
        drop(s);
        // A crash mid-append leaves half a record.
        let mut f = OpenOptions::new().append(true).open(dir.path().join(LOG)).unwrap();
        f.write_all(&[0, 0, 0, 9, 1, 2]).unwrap();
        drop(f);
        let (mut s, bytes) = Storage::open(dir.path()).unwrap();
        assert_eq!(bytes, b"snaponetwo");
        s.persist(PersistKind::Append, b"three").unwrap();
        drop(s);
        let (_, bytes) = Storage::open(dir.path()).unwrap();
        assert_eq!(bytes, b"snaponetwothree", "the torn tail was cut before appending");
        let (mut s, _) = Storage::open(dir.path()).unwrap();
        s.persist(PersistKind::Snapshot, b"all").unwrap();
        drop(s);
        assert_eq!(Storage::open(dir.path()).unwrap().1, b"all");
    }
}
