//! What binding a change to its author costs (engine/src/signing.rs), per
//! change, beside what raw Automerge spends applying that change: the
//! author signs the change's hash once; every receiver parses the change
//! once more than Automerge does (to learn its hash and actor) and checks
//! one signature, and judges the change at the door (decodes its ops and
//! checks that it writes only where its author may, schema.rs).
//! `cargo bench -p huskies-benches --bench signing`.

use automerge::{AutoCommit, Change};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use huskies_benches::*;
use huskies_engine::Credentials;
use huskies_engine::identity::{sign_change, verify_change};

fn signing(c: &mut Criterion) {
    let base = doc_with_stories(1_000);
    // One claim, written exactly as the engine writes it.
    let mut writer = raw_from(&base, "claimer");
    let heads = writer.get_heads();
    write_claims(&mut writer, "claimer", 0, 1);
    let change: Change = writer.get_changes(&heads).into_iter().next().expect("one claim");
    let (bytes, hash) = (change.raw_bytes().to_vec(), change.hash());
    let creds = Credentials::dev(&node("claimer"));
    let sig = sign_change(&creds.secret, &hash.0);

    let mut g = c.benchmark_group("signing");
    g.sample_size(20);
    g.bench_function("author/sign", |b| b.iter(|| sign_change(&creds.secret, &hash.0)));
    g.bench_function("receiver/parse", |b| b.iter(|| Change::from_bytes(bytes.clone()).expect("parses").hash()));
    g.bench_function("receiver/verify", |b| b.iter(|| verify_change(&creds.cert.key, &hash.0, &sig)));
    // The door: the receiver's document layout, the claim's author.
    let receiver = raw_from(&base, "receiver");
    let stories = match automerge::ReadDoc::get(&receiver, automerge::ROOT, "stories") {
        Ok(Some((_, obj))) => obj,
        _ => panic!("a stories map"),
    };
    let nodes = match automerge::ReadDoc::get(&receiver, automerge::ROOT, "nodes") {
        Ok(Some((_, obj))) => obj,
        _ => panic!("a nodes map"),
    };
    let is_admin = |_: &automerge::ActorId| true;
    let layout = huskies_engine::schema::Layout { stories: &stories, nodes: &nodes, is_admin: &is_admin };
    let claimer = node("claimer");
    g.bench_function("receiver/door", |b| {
        b.iter(|| {
            let expanded = change.decode();
            assert!(huskies_engine::schema::change_not_authorized(&expanded, &claimer, &layout).is_none());
        })
    });
    g.bench_function("raw/apply", |b| {
        b.iter_batched(
            || raw_from(&base, "receiver"),
            |mut r: AutoCommit| r.load_incremental(&bytes).expect("applies"),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, signing);
criterion_main!(benches);
