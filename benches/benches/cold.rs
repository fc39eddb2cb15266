//! Cold storage: `story show` of an archived story with a year of epochs
//! on disk. The indexed lookup (each archive's sidecar of story ids, then
//! one archive loaded) beside loading the archives newest first until one
//! holds the story (what the lookup did before the sidecars), in the same
//! run. 120 archives of 250 stories of about 7 changes each: a team
//! finishing 100 stories a day, cutting every 2,000 changes, for a year.

use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use huskies_engine::StoryId;
use huskies_engine::cold::ColdDoc;

const ARCHIVES: usize = 120;
const STORIES_PER_ARCHIVE: usize = 250;

fn id(n: usize) -> StoryId {
    StoryId::new(format!("s{n:06}")).expect("a valid id")
}

fn year_of_archives(dir: &Path) {
    let archive = dir.join("archive");
    std::fs::create_dir_all(&archive).expect("archive dir");
    for epoch in 0..ARCHIVES {
        let first = epoch * STORIES_PER_ARCHIVE;
        let ids: Vec<StoryId> = (first..first + STORIES_PER_ARCHIVE).map(id).collect();
        let bytes = huskies_engine::testkit::archive_doc(&ids);
        std::fs::write(archive.join(format!("epoch-{epoch}.automerge")), bytes).expect("write archive");
    }
}

/// Newest first, load each archive until one holds the story.
fn scan_every_archive(dir: &Path, wanted: &StoryId) -> Option<String> {
    for (_, path) in huskies_net::storage::Storage::archives(dir).expect("list") {
        let bytes = std::fs::read(&path).expect("read");
        let mut doc = ColdDoc::open(&bytes).expect("loads");
        if let Some(s) = doc.story(wanted) {
            return Some(s.body);
        }
    }
    None
}

fn cold(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    year_of_archives(dir.path());
    let mut g = c.benchmark_group("cold");
    g.sample_size(10);
    // The newest archive's stories, a story from mid-year, the oldest, and
    // an id that was never there.
    let cases = [
        ("newest", id((ARCHIVES - 1) * STORIES_PER_ARCHIVE)),
        ("middle", id(ARCHIVES / 2 * STORIES_PER_ARCHIVE)),
        ("oldest", id(0)),
        ("absent", id(ARCHIVES * STORIES_PER_ARCHIVE)),
    ];
    for (name, wanted) in &cases {
        let found = wanted.as_str() != id(ARCHIVES * STORIES_PER_ARCHIVE).as_str();
        g.bench_function(BenchmarkId::new("indexed", name), |b| {
            b.iter(|| {
                let got = huskies_net::cold::find_story(dir.path(), wanted);
                assert_eq!(got.is_some(), found);
                got
            })
        });
        g.bench_function(BenchmarkId::new("scan", name), |b| {
            b.iter(|| {
                let got = scan_every_archive(dir.path(), wanted);
                assert_eq!(got.is_some(), found);
                got
            })
        });
    }
    g.finish();
}

criterion_group!(benches, cold);
criterion_main!(benches);
