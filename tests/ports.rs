//! Ports for the processes a test starts, shared by the test binaries of
//! both packages.

/// A port nothing listens on at `host`, never one this test process
/// handed out before: the kernel may give a port closed a moment ago to
/// the next `bind(0)`, and two nodes told the same port meant one of them
/// never started (a CI run lost its second agent to that).
pub fn free_port_on(host: &str) -> u16 {
    use std::sync::Mutex;
    static HANDED_OUT: Mutex<std::collections::BTreeSet<u16>> = Mutex::new(std::collections::BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    // Held until a new port turns up, so the kernel cannot offer them again.
    let mut held = Vec::new();
    loop {
        let listener = std::net::TcpListener::bind((host, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        if handed_out.insert(port) {
            return port;
        }
        held.push(listener);
        assert!(held.len() < 1000, "no fresh port on {host}");
    }
}
