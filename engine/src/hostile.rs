//! Crafted sync messages that crashed or bloated Automerge 0.12 before
//! [`crate::guard`] existed, for tests of the engine and of drivers (the
//! end-to-end hostile-peer test sends them over a real websocket) and as
//! fuzz seeds. Each names the refusal the guard gives it.

use std::io::Write;

/// One crafted message: what it is, its bytes (an Automerge sync message,
/// without our envelope), and a word of the refusal it must get.
pub struct Attack {
    pub name: &'static str,
    pub message: Vec<u8>,
    pub refusal: &'static str,
}

/// Unsigned LEB128, as Automerge writes lengths and counts.
pub fn uleb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            return out.push(byte);
        }
        out.push(byte | 0x80);
    }
}

/// A V1 sync message with no heads or needs and one `have` whose bloom
/// filter is `bloom`.
pub fn with_bloom(bloom: &[u8]) -> Vec<u8> {
    let mut m = vec![0x42, 0, 0, 1, 0];
    uleb(&mut m, bloom.len() as u64);
    m.extend_from_slice(bloom);
    m.push(0);
    m
}

/// A V1 sync message carrying one change entry.
pub fn with_change(chunk: &[u8]) -> Vec<u8> {
    let mut m = vec![0x42, 0, 0, 0, 1];
    uleb(&mut m, chunk.len() as u64);
    m.extend_from_slice(chunk);
    m
}

/// A compressed change chunk that inflates to `bytes` zeros (deflated in
/// 1 MiB steps, never held whole).
pub fn deflate_bomb(bytes: usize) -> Vec<u8> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(zeros.len());
        enc.write_all(&zeros[..n]).expect("writing to a Vec");
        left -= n;
    }
    let deflated = enc.finish().expect("writing to a Vec");
    let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 2];
    uleb(&mut chunk, deflated.len() as u64);
    chunk.extend_from_slice(&deflated);
    chunk
}

/// Every attack; the bomb inflates to `bomb_bytes`, the garbage change is
/// `garbage_bytes` long.
pub fn sync_attacks(bomb_bytes: usize, garbage_bytes: usize) -> Vec<Attack> {
    let mut probes = vec![1, 10];
    uleb(&mut probes, u64::from(u32::MAX));
    probes.extend_from_slice(&[0, 0]);
    let mut heads = vec![0x42];
    uleb(&mut heads, 1 << 40);
    vec![
        Attack {
            name: "bloom filter with entries and zero bits (remainder by zero)",
            message: with_bloom(&[5, 0, 7]),
            refusal: "bits per entry",
        },
        Attack {
            name: "bloom filter with 2^32-1 probes (16 GiB allocation)",
            message: with_bloom(&probes),
            refusal: "probes",
        },
        Attack {
            name: "deflate bomb in a compressed change chunk",
            message: with_change(&deflate_bomb(bomb_bytes)),
            refusal: "inflates past",
        },
        Attack { name: "2^40 heads announced", message: heads, refusal: "heads" },
        Attack {
            name: "change chunk of garbage",
            message: with_change(&vec![0x85; garbage_bytes]),
            refusal: "magic bytes",
        },
    ]
}
