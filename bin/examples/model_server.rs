//! The scripted model server of the tests (`tests/model_server.rs`), on
//! its own: `cargo run --example model_server -- 127.0.0.1:8400`, then
//! `ANTHROPIC_BASE_URL=http://127.0.0.1:8400 ANTHROPIC_API_KEY=x huskies
//! demo --agent claude` (or `OPENAI_BASE_URL=http://127.0.0.1:8400/v1
//! OPENAI_API_KEY=x ... --agent codex`) runs the demo's real CLIs against
//! it, for free. Every story is scripted to write a file and commit.

#[path = "../../tests/model_server.rs"]
mod model_server;

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8400".into());
    let server = model_server::ModelServer::start(&addr);
    println!("scripted model server on {}", server.url());
    loop {
        std::thread::park();
    }
}
