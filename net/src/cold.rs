//! Reading archived stories from cold storage (`DATA_DIR/archive`).
//!
//! A story archived at a cut lives on in the past epochs' documents that
//! held it; the newest of them has its final state. Loading every archive
//! to find one story cost a whole document load per epoch (a year of
//! history is a hundred or more), and a story that was never there cost
//! all of them. So each archive gets a sidecar, `epoch-<n>.ids`, listing
//! the stories it holds: a lookup reads the small sidecars and loads only
//! the archive that has the story.
//!
//! A sidecar is a cache, never the truth: it is built from its archive on
//! the first lookup that needs it, names the archive's length so a sidecar
//! of an archive since rewritten is rebuilt, and storage deletes it before
//! it writes the archive again (a node that crashed in the middle of a
//! move archives the same epoch again).

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use huskies_engine::StoryId;
use huskies_engine::cold::ColdDoc;

use crate::status::{StoryDetail, StoryStatus};
use crate::storage::Storage;

const SIDECAR_MAGIC: &str = "huskies-archive-ids 1";

/// The sidecar of the archive at `archive`.
pub fn sidecar_path(archive: &Path) -> PathBuf {
    archive.with_extension("ids")
}

/// A story from cold storage, from the newest archive that holds it.
/// Damaged archives and sidecars are skipped or rebuilt (logged), not
/// fatal: the story may be in another archive.
pub fn find_story(data_dir: &Path, id: &StoryId) -> Option<StoryDetail> {
    let archives = match Storage::archives(data_dir) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(dir = %data_dir.display(), error = %e, "cannot list cold storage");
            return None;
        }
    };
    for (epoch, path) in archives {
        match story_ids(&path) {
            Some(ids) if !ids.contains(id) => continue,
            // Held, or the archive could not be listed: look inside.
            _ => {}
        }
        let Some(mut doc) = open(&path) else { continue };
        if let Some(s) = doc.story(id) {
            tracing::debug!(%id, epoch, "story read from cold storage");
            return Some(StoryDetail { story: StoryStatus::of(id, &s.view), body: s.body, runs: s.runs });
        }
    }
    None
}

fn open(path: &Path) -> Option<ColdDoc> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read an archive");
            return None;
        }
    };
    let doc = ColdDoc::open(&bytes);
    if doc.is_none() {
        tracing::warn!(path = %path.display(), "an archive does not load; skipped");
    }
    doc
}

/// The stories the archive at `path` holds, from its sidecar, or built
/// from the archive (and the sidecar written) when the sidecar is missing
/// or stale. `None` when the archive cannot be read.
fn story_ids(path: &Path) -> Option<BTreeSet<StoryId>> {
    let len = std::fs::metadata(path).ok()?.len();
    let sidecar = sidecar_path(path);
    if let Some(ids) = read_sidecar(&sidecar, len) {
        return Some(ids);
    }
    let ids: BTreeSet<StoryId> = open(path)?.story_ids().into_iter().collect();
    if let Err(e) = write_sidecar(&sidecar, len, &ids) {
        // Only slower next time.
        tracing::warn!(path = %sidecar.display(), error = %e, "cannot write an archive's index");
    }
    Some(ids)
}

fn read_sidecar(sidecar: &Path, archive_len: u64) -> Option<BTreeSet<StoryId>> {
    let text = std::fs::read_to_string(sidecar).ok()?;
    let mut lines = text.lines();
    let header = lines.next()?;
    let len: u64 = header.strip_prefix(SIDECAR_MAGIC)?.trim().parse().ok()?;
    if len != archive_len {
        return None;
    }
    // A line that is not an id means a damaged sidecar: rebuild it.
    lines.map(|l| StoryId::new(l).ok()).collect()
}

fn write_sidecar(sidecar: &Path, archive_len: u64, ids: &BTreeSet<StoryId>) -> io::Result<()> {
    let mut text = format!("{SIDECAR_MAGIC} {archive_len}\n");
    for id in ids {
        text.push_str(id.as_str());
        text.push('\n');
    }
    let dir = sidecar.parent().unwrap_or(Path::new("."));
    let name = sidecar.file_name().and_then(|n| n.to_str()).unwrap_or("epoch.ids");
    crate::storage::write_atomically(dir, name, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(range: std::ops::Range<usize>) -> Vec<StoryId> {
        range.map(|i| StoryId::new(format!("s{i:05}")).unwrap()).collect()
    }

    fn archive(dir: &Path, epoch: u64, stories: &[StoryId]) -> PathBuf {
        let archive = dir.join("archive");
        std::fs::create_dir_all(&archive).unwrap();
        let path = archive.join(format!("epoch-{epoch}.automerge"));
        std::fs::write(&path, huskies_engine::testkit::archive_doc(stories)).unwrap();
        path
    }

    #[test]
    fn finds_a_story_in_the_archive_that_holds_it_and_indexes_each_archive_once() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> =
            (0..4u64).map(|e| archive(dir.path(), e, &ids(e as usize * 10..e as usize * 10 + 10))).collect();
        let wanted = StoryId::new("s00003").unwrap();
        let found = find_story(dir.path(), &wanted).expect("in epoch 0's archive");
        assert_eq!(found.body, "what was asked, and what was done");
        assert!(paths.iter().all(|p| sidecar_path(p).exists()), "every archive newer than the hit was indexed");
        assert!(find_story(dir.path(), &StoryId::new("s99999").unwrap()).is_none());

        // A lookup now loads only the archive that holds the story: the
        // others could be unreadable and it would not notice.
        for p in &paths[1..] {
            let len = std::fs::metadata(p).unwrap().len() as usize;
            std::fs::write(p, vec![0u8; len]).unwrap();
        }
        assert!(find_story(dir.path(), &wanted).is_some());
    }

    #[test]
    fn a_stale_or_damaged_sidecar_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = archive(dir.path(), 0, &ids(0..5));
        let wanted = StoryId::new("s00002").unwrap();
        assert!(find_story(dir.path(), &wanted).is_some());
        // The archive is written again with more stories (a node that
        // crashed in the middle of a move archives the epoch again).
        archive(dir.path(), 0, &ids(0..8));
        assert!(find_story(dir.path(), &StoryId::new("s00007").unwrap()).is_some(), "stale sidecar rebuilt");
        std::fs::write(sidecar_path(&path), "huskies-archive-ids 1 x\nnot an id!\n").unwrap();
        assert!(find_story(dir.path(), &wanted).is_some(), "damaged sidecar rebuilt");
        let text = std::fs::read_to_string(sidecar_path(&path)).unwrap();
        assert_eq!(text.lines().count(), 9, "header and 8 ids: {text}");
    }
}
