//! The stand-in agent: what `demo` and the end-to-end tests run instead of
//! a real coding agent. It waits a while, then appends a line to
//! `stories/<id>.md` in its worktree and commits it, or fails on purpose.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use huskies_engine::hash::stable_hash;

#[derive(clap::Args)]
pub struct StandInArgs {
    /// How long the "work" takes.
    #[arg(long, default_value_t = 1_000)]
    duration_ms: u64,
    /// Extra random time, 0..jitter.
    #[arg(long, default_value_t = 500)]
    jitter_ms: u64,
    /// Share of runs that fail (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// From this attempt on, never fail on purpose (0: no such limit). The
    /// demo passes the agents' `max_attempts`, so its injected failures show
    /// retries but never give a story up.
    #[arg(long, default_value_t = 0)]
    succeed_from_attempt: u32,
    /// Append "story stage token node" here when a run starts.
    #[arg(long)]
    journal: Option<std::path::PathBuf>,
    /// Mixed into the choice of runs that fail, so another seed fails
    /// other runs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set: the stand-in runs under a huskies agent"))
}

pub fn run(a: StandInArgs) -> Result<(), String> {
    if !(0.0..=1.0).contains(&a.fail_rate) {
        return Err(format!("--fail-rate {} is not between 0 and 1", a.fail_rate));
    }
    let story = env("HUSKIES_STORY_ID")?;
    let stage = env("HUSKIES_STAGE")?;
    let token = env("HUSKIES_TOKEN")?;
    let node = env("HUSKIES_NODE")?;
    let attempt = std::env::var("HUSKIES_ATTEMPT").unwrap_or_default();
    if let Some(j) = &a.journal {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(j).map_err(|e| e.to_string())?;
        f.write_all(format!("{story} {stage} {token} {node}\n").as_bytes()).map_err(|e| e.to_string())?;
    }
    let h = stable_hash(&[
        story.as_bytes(),
        stage.as_bytes(),
        token.as_bytes(),
        node.as_bytes(),
        attempt.as_bytes(),
        &a.seed.to_be_bytes(),
    ]);
    let jitter = if a.jitter_ms > 0 { h % a.jitter_ms } else { 0 };
    std::thread::sleep(Duration::from_millis(a.duration_ms + jitter));
    let spared = a.succeed_from_attempt > 0 && attempt.parse::<u32>().is_ok_and(|n| n >= a.succeed_from_attempt);
    if !spared && ((h >> 32) as f64 / u32::MAX as f64) < a.fail_rate {
        return Err(format!("stand-in failed {story} ({stage}) on purpose"));
    }
    commit(Path::new("."), &story, &stage, &token, &node).map_err(|e| format!("commit: {}", e.message()))
}

fn commit(dir: &Path, story: &str, stage: &str, token: &str, node: &str) -> Result<(), git2::Error> {
    let repo = git2::Repository::open(dir)?;
    let rel = Path::new("stories").join(format!("{story}.md"));
    let path = dir.join(&rel);
    std::fs::create_dir_all(dir.join("stories")).map_err(|e| git2::Error::from_str(&e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| git2::Error::from_str(&e.to_string()))?;
    writeln!(f, "- {stage}: done by {node} (token {token})").map_err(|e| git2::Error::from_str(&e.to_string()))?;
    let mut index = repo.index()?;
    index.add_path(&rel)?;
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let sig = git2::Signature::now("huskies stand-in", "stand-in@huskies.invalid")?;
    let parent = repo.head()?.peel_to_commit()?;
    repo.commit(Some("HEAD"), &sig, &sig, &format!("{story}: {stage} by {node}"), &tree, &[&parent])?;
    Ok(())
}
