//! The document on disk: a snapshot plus an append-only log of increments.
//!
//! `doc.snapshot` holds a full Automerge save, replaced atomically (temp
//! file, fsync, rename, fsync of the directory). `doc.log` holds records
//! `[u32 len][u64 hash][bytes]` appended and fsynced before the engine's
//! next output goes out, so nothing acknowledged is lost. A torn record at
//! the end (a crash mid-append) fails its hash and is cut off on load.
//!
//! When the engine starts a new epoch, the previous epoch's document (the
//! snapshot plus the log, as a load would read them) goes to cold storage,
//! `archive/epoch-<n>.automerge`, before the new epoch's snapshot replaces
//! it. A crash between the two leaves the previous epoch in place (peers
//! bring the new one again); the archive is written whole or not at all.

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
const ARCHIVE: &str = "archive";

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `dir/name` holds `bytes` whole, or is as it was: temp file, fsync,
/// rename, fsync of the directory.
pub(crate) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

impl Storage {
    /// Opens (creating) the data dir and returns the stored bytes.
    pub fn open(dir: &Path) -> io::Result<(Storage, Vec<u8>)> {
        fs::create_dir_all(dir)?;
        let (good_log, bytes) = Storage::read(dir)?;
        let log_path = dir.join(LOG);
        let log = OpenOptions::new().create(true).append(true).open(&log_path)?;
        let log_len = log.metadata()?.len();
        if good_log < log_len {
            tracing::warn!(path = %log_path.display(), kept = good_log, dropped = log_len - good_log, "cutting a torn record off the log");
            log.set_len(good_log)?;
            log.sync_all()?;
        }
        let snapshot_bytes = fs::metadata(dir.join(SNAPSHOT)).map(|m| m.len()).unwrap_or(0);
        Ok((Storage { dir: dir.to_owned(), log, snapshot_bytes, log_bytes: good_log }, bytes))
    }

    /// The stored document (snapshot, then every whole log record), and how
    /// many bytes of the log are whole.
    fn read(dir: &Path) -> io::Result<(u64, Vec<u8>)> {
        let mut bytes = match fs::read(dir.join(SNAPSHOT)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut raw = Vec::new();
        if let Ok(mut f) = File::open(dir.join(LOG)) {
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
        Ok((pos as u64, bytes))
    }

    /// Makes `bytes` durable before returning.
    pub fn persist(&mut self, kind: PersistKind, bytes: &[u8]) -> io::Result<()> {
        self.persist_all([(kind, bytes)])
    }

    /// Makes every write durable, in order, before returning, with one
    /// fsync for a run of appends (group commit): a writer that fell
    /// behind catches up in one flush instead of one per write.
    pub fn persist_all<'a>(&mut self, writes: impl IntoIterator<Item = (PersistKind, &'a [u8])>) -> io::Result<()> {
        let mut unsynced = false;
        for (kind, bytes) in writes {
            if kind == PersistKind::Append {
                self.append(bytes)?;
                unsynced = true;
                continue;
            }
            // A snapshot replaces the log, and an epoch's move archives
            // it: what was appended before must be down first.
            if std::mem::take(&mut unsynced) {
                self.log.sync_data()?;
            }
            self.replace(kind, bytes)?;
        }
        if unsynced {
            self.log.sync_data()?;
        }
        Ok(())
    }

    /// One record at the end of the log, not yet synced.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut rec = Vec::with_capacity(bytes.len() + 12);
        rec.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        rec.extend_from_slice(&stable_hash(&[bytes]).to_be_bytes());
        rec.extend_from_slice(bytes);
        self.log.write_all(&rec)?;
        self.log_bytes += rec.len() as u64;
        Ok(())
    }

    /// A new snapshot, or a move to a new epoch, made durable.
    fn replace(&mut self, kind: PersistKind, bytes: &[u8]) -> io::Result<()> {
        match kind {
            PersistKind::Append => unreachable!("appends go to the log"),
            PersistKind::Epoch { epoch } => {
                let (_, previous) = Storage::read(&self.dir)?;
                let archive = self.dir.join(ARCHIVE);
                fs::create_dir_all(&archive)?;
                let name = format!("epoch-{}.automerge", epoch.saturating_sub(1));
                // An index of the archive written before (a move that a
                // crash cut short is made again) would not list what the
                // archive holds now.
                match fs::remove_file(crate::cold::sidecar_path(&archive.join(&name))) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                write_atomically(&archive, &name, &previous)?;
                self.replace(PersistKind::Snapshot, bytes)
            }
            PersistKind::Snapshot => {
                write_atomically(&self.dir, SNAPSHOT, bytes)?;
                self.snapshot_bytes = bytes.len() as u64;
                // The snapshot covers everything logged so far.
                self.log.set_len(0)?;
                self.log.sync_all()?;
                self.log_bytes = 0;
                Ok(())
            }
        }
    }

    /// Cold storage: the documents of past epochs, newest first.
    pub fn archives(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(dir.join(ARCHIVE)) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry?.path();
            let epoch = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("epoch-")?.strip_suffix(".automerge")?.parse::<u64>().ok());
            if let Some(epoch) = epoch {
                out.push((epoch, path));
            }
        }
        out.sort_by_key(|a| std::cmp::Reverse(a.0));
        Ok(out)
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

    #[test]
    fn a_group_of_writes_lands_in_order_as_single_writes_would() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Storage::open(dir.path()).unwrap();
        let group: [(PersistKind, &[u8]); 5] = [
            (PersistKind::Snapshot, b"s"),
            (PersistKind::Append, b"1"),
            (PersistKind::Append, b"2"),
            (PersistKind::Epoch { epoch: 1 }, b"e"),
            (PersistKind::Append, b"3"),
        ];
        s.persist_all(group).unwrap();
        drop(s);
        assert_eq!(Storage::open(dir.path()).unwrap().1, b"e3");
        let archives = Storage::archives(dir.path()).unwrap();
        assert_eq!(fs::read(&archives[0].1).unwrap(), b"s12", "appends before the move went to the archive");
    }

    #[test]
    fn a_new_epoch_moves_the_old_document_to_cold_storage() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Storage::open(dir.path()).unwrap();
        s.persist(PersistKind::Snapshot, b"e0").unwrap();
        s.persist(PersistKind::Append, b"+a").unwrap();
        s.persist(PersistKind::Epoch { epoch: 1 }, b"e1").unwrap();
        s.persist(PersistKind::Append, b"+b").unwrap();
        s.persist(PersistKind::Epoch { epoch: 2 }, b"e2").unwrap();
        drop(s);
        assert_eq!(Storage::open(dir.path()).unwrap().1, b"e2");
        let archives = Storage::archives(dir.path()).unwrap();
        assert_eq!(archives.iter().map(|(e, _)| *e).collect::<Vec<_>>(), vec![1, 0], "newest first");
        assert_eq!(fs::read(&archives[0].1).unwrap(), b"e1+b");
        assert_eq!(fs::read(&archives[1].1).unwrap(), b"e0+a");

        // Epoch 2's move made again (a crash cut the first short): the
        // index of the archive written the first time goes with it.
        let sidecar = crate::cold::sidecar_path(&archives[0].1);
        fs::write(&sidecar, "huskies-archive-ids 1 4\n").unwrap();
        let (mut s, _) = Storage::open(dir.path()).unwrap();
        s.persist(PersistKind::Epoch { epoch: 2 }, b"e2'").unwrap();
        assert!(!sidecar.exists());
        assert_eq!(Storage::archives(dir.path()).unwrap().len(), 2, "an index is not an archive");
    }
}
