//! Validation of Automerge bytes from outside before Automerge sees them.
//!
//! Automerge 0.12 trusts the fields of a sync message: a `have` bloom
//! filter with zero bits panics (remainder by zero) inside
//! `generate_sync_message`, one with a huge probe count makes it allocate
//! gigabytes, and compressed chunks inflate about a thousandfold. This module
//! parses a sync message the way Automerge does and holds every field to
//! what an honest Automerge peer sends:
//!
//! - at most [`MAX_HEADS`] heads, [`MAX_NEED`] needs, [`MAX_HAVES`] haves;
//! - bloom filters with 1..=[`MAX_BITS_PER_ENTRY`] bits per entry,
//!   1..=[`MAX_PROBES`] probes (Automerge itself uses 10 and 7) and a bit
//!   array exactly as long as the entry count implies;
//! - change chunks with Automerge's magic bytes and a known type; every
//!   deflated part (compressed change chunks, deflated document columns) is
//!   inflated here through a limited reader, and the raw plus inflated size
//!   of the whole message must fit one budget;
//! - no trailing bytes anywhere.
//!
//! Stored bytes go through the same chunk checks ([`valid_chunks`]).

use std::io::Read;

use thiserror::Error;

/// Most heads a peer may announce (one per concurrent writer).
pub const MAX_HEADS: usize = 1_024;
/// Most change hashes a peer may explicitly request in one message.
pub const MAX_NEED: usize = 65_536;
/// Automerge sends one `have`; a few more are tolerated.
pub const MAX_HAVES: usize = 8;
/// Automerge uses 10 bits per entry.
pub const MAX_BITS_PER_ENTRY: u32 = 32;
/// Automerge uses 7 probes.
pub const MAX_PROBES: u32 = 7;
/// Most entries a `have` bloom filter may summarise.
pub const MAX_BLOOM_ENTRIES: u32 = 1 << 22;
/// Most change chunks in one message.
pub const MAX_CHANGES: usize = 100_000;
/// Most actors a document chunk may list.
pub const MAX_ACTORS: usize = 65_536;
/// Longest actor id (ours are a node id, a zero byte and 8 bytes).
pub const MAX_ACTOR_LEN: usize = 128;
/// Most columns in one column group (Automerge writes about a dozen).
pub const MAX_COLUMNS: usize = 64;
/// Longest flags section (Automerge writes 2 bytes).
pub const MAX_FLAGS: usize = 16;

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const CHUNK_DOCUMENT: u8 = 0;
const CHUNK_CHANGE: u8 = 1;
const CHUNK_COMPRESSED: u8 = 2;
const COLUMN_DEFLATE_BIT: u64 = 0b1000;

/// Why bytes were refused. The text goes into `PeerRejected` reasons.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum GuardError {
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("malformed LEB128 number at byte {0}")]
    BadNumber(usize),
    #[error("unknown sync message type {0:#04x}")]
    MessageType(u8),
    #[error("{what}: {count} entries exceed the cap of {max}")]
    TooMany { what: &'static str, count: u64, max: usize },
    #[error("bloom filter with {0} bits per entry (allowed 1 to {MAX_BITS_PER_ENTRY})")]
    BloomBits(u32),
    #[error("bloom filter with {0} probes (allowed 1 to {MAX_PROBES})")]
    BloomProbes(u32),
    #[error("bloom filter of {entries} entries needs {expected} bytes of bits, has {actual}")]
    BloomLength { entries: u32, expected: usize, actual: usize },
    #[error("chunk without Automerge's magic bytes")]
    Magic,
    #[error("chunk type {0} is not sent by honest peers")]
    ChunkType(u8),
    #[error("inflates past the budget of {0} bytes")]
    Inflation(usize),
    #[error("deflated data is corrupt")]
    Deflate,
    #[error("actor id of {0} bytes (max {MAX_ACTOR_LEN})")]
    ActorLen(u64),
    #[error("columns declare {declared} bytes, {available} remain")]
    ColumnLength { declared: u64, available: usize },
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// What may be spent on one message: its raw chunk bytes plus everything
/// deflated inside them.
struct Budget {
    left: usize,
    cap: usize,
}

impl Budget {
    fn spend(&mut self, n: usize) -> Result<(), GuardError> {
        self.left = self.left.checked_sub(n).ok_or(GuardError::Inflation(self.cap))?;
        Ok(())
    }

    /// Inflates `deflated` without keeping it, failing as soon as the
    /// output would pass the budget.
    fn inflate(&mut self, deflated: &[u8]) -> Result<(), GuardError> {
        let limit = self.left as u64 + 1;
        let mut reader = flate2::read::DeflateDecoder::new(deflated).take(limit);
        let n = std::io::copy(&mut reader, &mut std::io::sink()).map_err(|_| GuardError::Deflate)?;
        self.spend(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    fn rest(&self) -> &'a [u8] {
        &self.bytes[self.pos..]
    }

    fn is_empty(&self) -> bool {
        self.pos == self.bytes.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], GuardError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.bytes.len()).ok_or(GuardError::Truncated(self.pos))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, GuardError> {
        Ok(self.take(1)?[0])
    }

    /// Unsigned LEB128 as Automerge writes it: at most 10 bytes, no bits
    /// past the 64th.
    fn uleb(&mut self) -> Result<u64, GuardError> {
        let start = self.pos;
        let mut value: u64 = 0;
        for i in 0..10 {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && bits > 1 {
                return Err(GuardError::BadNumber(start));
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(GuardError::BadNumber(start))
    }

    fn uleb_u32(&mut self) -> Result<u32, GuardError> {
        let at = self.pos;
        u32::try_from(self.uleb()?).map_err(|_| GuardError::BadNumber(at))
    }

    /// A count of entries, checked against `max` before anything is read.
    fn count(&mut self, what: &'static str, max: usize) -> Result<usize, GuardError> {
        let count = self.uleb()?;
        match usize::try_from(count) {
            Ok(n) if n <= max => Ok(n),
            _ => Err(GuardError::TooMany { what, count, max }),
        }
    }

    fn hashes(&mut self, what: &'static str, max: usize) -> Result<(), GuardError> {
        let n = self.count(what, max)?;
        self.take(n * 32).map(|_| ())
    }

    fn length_prefixed(&mut self) -> Result<&'a [u8], GuardError> {
        let at = self.pos;
        let len = usize::try_from(self.uleb()?).map_err(|_| GuardError::Truncated(at))?;
        self.take(len)
    }
}

/// Checks one encoded `automerge::sync::Message` (the bytes after our
/// envelope). `max_inflated` bounds its chunk bytes plus all they inflate to.
pub fn check_sync_message(bytes: &[u8], max_inflated: usize) -> Result<(), GuardError> {
    let mut r = Reader::new(bytes);
    match r.u8()? {
        0x42 | 0x43 => {}
        other => return Err(GuardError::MessageType(other)),
    }
    r.hashes("heads", MAX_HEADS)?;
    r.hashes("need", MAX_NEED)?;
    let haves = r.count("haves", MAX_HAVES)?;
    for _ in 0..haves {
        r.hashes("have heads", MAX_HEADS)?;
        check_bloom(r.length_prefixed()?)?;
    }
    let mut budget = Budget { left: max_inflated, cap: max_inflated };
    let changes = r.count("changes", MAX_CHANGES)?;
    for _ in 0..changes {
        check_chunks(r.length_prefixed()?, &mut budget)?;
    }
    if !r.is_empty() {
        let flags = r.length_prefixed()?;
        if flags.len() > MAX_FLAGS {
            return Err(GuardError::TooMany { what: "flag bytes", count: flags.len() as u64, max: MAX_FLAGS });
        }
    }
    match r.rest().len() {
        0 => Ok(()),
        n => Err(GuardError::Trailing(n)),
    }
}

fn check_bloom(bytes: &[u8]) -> Result<(), GuardError> {
    // An empty filter is Automerge's "no entries".
    if bytes.is_empty() {
        return Ok(());
    }
    let mut r = Reader::new(bytes);
    let entries = r.uleb_u32()?;
    let bits = r.uleb_u32()?;
    let probes = r.uleb_u32()?;
    if entries > MAX_BLOOM_ENTRIES {
        let max = MAX_BLOOM_ENTRIES as usize;
        return Err(GuardError::TooMany { what: "bloom entries", count: u64::from(entries), max });
    }
    if !(1..=MAX_BITS_PER_ENTRY).contains(&bits) {
        return Err(GuardError::BloomBits(bits));
    }
    if !(1..=MAX_PROBES).contains(&probes) {
        return Err(GuardError::BloomProbes(probes));
    }
    // Automerge's own sizing: ceil(entries * bits / 8). A filter with
    // entries but no bits would make every probe a division by zero.
    let expected = (u64::from(entries) * u64::from(bits)).div_ceil(8) as usize;
    let actual = r.rest().len();
    if expected == 0 || actual != expected {
        return Err(GuardError::BloomLength { entries, expected, actual });
    }
    Ok(())
}

/// Checks a sequence of storage chunks (what `load_incremental` accepts).
fn check_chunks(bytes: &[u8], budget: &mut Budget) -> Result<(), GuardError> {
    let mut r = Reader::new(bytes);
    while !r.is_empty() {
        let start = r.pos;
        check_chunk(&mut r, budget)?;
        budget.spend(r.pos - start)?;
    }
    Ok(())
}

fn check_chunk(r: &mut Reader<'_>, budget: &mut Budget) -> Result<(), GuardError> {
    if r.take(4)? != MAGIC {
        return Err(GuardError::Magic);
    }
    r.take(4)?; // checksum: Automerge verifies it
    let kind = r.u8()?;
    let body = r.length_prefixed()?;
    match kind {
        CHUNK_CHANGE => Ok(()),
        CHUNK_COMPRESSED => budget.inflate(body),
        CHUNK_DOCUMENT => check_document(body, budget),
        other => Err(GuardError::ChunkType(other)),
    }
}

/// A document chunk: actors, heads, change and op column metadata, then the
/// column data, some of it deflated, then head indices.
fn check_document(body: &[u8], budget: &mut Budget) -> Result<(), GuardError> {
    let mut r = Reader::new(body);
    let actors = r.count("actors", MAX_ACTORS)?;
    for _ in 0..actors {
        let at = r.pos;
        let len = r.uleb()?;
        if len > MAX_ACTOR_LEN as u64 {
            return Err(GuardError::ActorLen(len));
        }
        r.take(len as usize).map_err(|_| GuardError::Truncated(at))?;
    }
    r.hashes("document heads", MAX_HEADS)?;
    let mut columns = Vec::new();
    for _ in 0..2 {
        let n = r.count("columns", MAX_COLUMNS)?;
        for _ in 0..n {
            let spec = r.uleb()?;
            let len = r.uleb()?;
            columns.push((spec, len));
        }
    }
    let declared = columns.iter().fold(0u64, |acc, (_, len)| acc.saturating_add(*len));
    let available = r.rest().len();
    if declared > available as u64 {
        return Err(GuardError::ColumnLength { declared, available });
    }
    for (spec, len) in columns {
        let data = r.take(len as usize)?;
        if spec & COLUMN_DEFLATE_BIT != 0 {
            budget.inflate(data)?;
        }
    }
    Ok(())
}

/// Marks a block of change signatures in stored bytes (`signing.rs`):
/// storage holds Automerge chunks and these blocks interleaved, so one
/// append writes a change and its signature together.
pub const SIG_BLOCK_MAGIC: [u8; 4] = *b"HSIG";

/// What stored bytes hold: Automerge chunks, signature blocks, and the
/// first damage found.
#[derive(Debug, Default)]
pub struct Stored {
    /// The Automerge chunks that pass the checks, concatenated.
    pub chunks: Vec<u8>,
    /// The bodies of the signature blocks, in order.
    pub sig_blocks: Vec<Vec<u8>>,
    /// Why the scan stopped early. A bad chunk ends it: what follows
    /// cannot be framed reliably.
    pub refused: Option<GuardError>,
}

/// Splits stored bytes into the Automerge chunks that pass the checks and
/// the signature blocks between them.
pub fn split_stored(bytes: &[u8], max_inflated: usize) -> Stored {
    let mut r = Reader::new(bytes);
    let mut budget = Budget { left: max_inflated, cap: max_inflated };
    let mut out = Stored::default();
    while !r.is_empty() {
        let start = r.pos;
        if r.rest().starts_with(&SIG_BLOCK_MAGIC) {
            let block = r.take(4).and_then(|_| r.take(4)).and_then(|len| {
                let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                r.take(len)
            });
            match block {
                Ok(body) => {
                    out.sig_blocks.push(body.to_vec());
                    continue;
                }
                Err(e) => {
                    out.refused = Some(e);
                    break;
                }
            }
        }
        if let Err(e) = check_chunk(&mut r, &mut budget).and_then(|()| budget.spend(r.pos - start)) {
            out.refused = Some(e);
            break;
        }
        out.chunks.extend_from_slice(&bytes[start..r.pos]);
    }
    out
}

/// Frames a signature block for storage.
pub fn sig_block(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("a signature block under 4 GiB");
    [SIG_BLOCK_MAGIC.as_slice(), &len.to_be_bytes(), body].concat()
}

/// The stored Automerge chunks that pass the checks (see [`split_stored`]),
/// and a description of the first refused one.
pub fn valid_chunks(bytes: &[u8], max_inflated: usize) -> (Vec<u8>, Option<GuardError>) {
    let stored = split_stored(bytes, max_inflated);
    (stored.chunks, stored.refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::sync::SyncDoc;
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, sync};

    use crate::hostile::{deflate_bomb, uleb, with_bloom, with_change};

    fn doc(actor: &[u8]) -> AutoCommit {
        #[allow(clippy::disallowed_methods)] // a fixed actor is set right away
        AutoCommit::new().with_actor(automerge::ActorId::from(actor))
    }

    fn real_messages() -> Vec<Vec<u8>> {
        let mut a = doc(b"a");
        for i in 0..300 {
            a.put(automerge::ROOT, format!("k{i}"), "x".repeat(i % 40)).unwrap();
            a.commit();
        }
        let mut b = doc(b"b");
        let (mut sa, mut sb) = (sync::State::new(), sync::State::new());
        let mut out = Vec::new();
        for _ in 0..10 {
            if let Some(m) = a.sync().generate_sync_message(&mut sa) {
                let bytes = m.encode();
                out.push(bytes.clone());
                b.sync().receive_sync_message(&mut sb, sync::Message::decode(&bytes).unwrap()).unwrap();
            }
            if let Some(m) = b.sync().generate_sync_message(&mut sb) {
                let bytes = m.encode();
                out.push(bytes.clone());
                a.sync().receive_sync_message(&mut sa, sync::Message::decode(&bytes).unwrap()).unwrap();
            }
        }
        assert_eq!(a.get_heads(), b.get_heads());
        out
    }

    #[test]
    fn honest_messages_pass() {
        let msgs = real_messages();
        assert!(msgs.len() >= 3);
        for m in msgs {
            check_sync_message(&m, 1 << 20).unwrap();
        }
    }

    #[test]
    fn degenerate_blooms_are_refused() {
        // Entries but zero bits per entry: Automerge divides by zero.
        assert_eq!(check_sync_message(&with_bloom(&[5, 0, 7]), 1 << 20), Err(GuardError::BloomBits(0)));
        // A huge probe count: Automerge allocates four bytes per probe.
        let mut b = vec![1, 10];
        uleb(&mut b, u64::from(u32::MAX));
        b.extend_from_slice(&[0, 0]);
        assert_eq!(check_sync_message(&with_bloom(&b), 1 << 20), Err(GuardError::BloomProbes(u32::MAX)));
        // Bits that do not match the entry count.
        assert!(matches!(
            check_sync_message(&with_bloom(&[100, 10, 7, 1, 2]), 1 << 20),
            Err(GuardError::BloomLength { .. })
        ));
        // The honest shape passes.
        check_sync_message(&with_bloom(&[1, 10, 7, 0, 0]), 1 << 20).unwrap();
    }

    #[test]
    fn counts_are_capped_before_reading() {
        let mut m = vec![0x42];
        uleb(&mut m, u64::MAX >> 1);
        assert!(matches!(check_sync_message(&m, 1 << 20), Err(GuardError::TooMany { what: "heads", .. })));
        assert!(matches!(check_sync_message(&[0x42, 0, 0, 200, 1], 1 << 20), Err(GuardError::TooMany { .. })));
        assert_eq!(check_sync_message(&[0x42, 0, 0, 0, 0, 1, 0, 9], 1 << 20), Err(GuardError::Trailing(1)));
        assert_eq!(check_sync_message(&[0x44], 1 << 20), Err(GuardError::MessageType(0x44)));
        assert_eq!(check_sync_message(&[0x42, 0xff, 0xff], 1 << 20), Err(GuardError::Truncated(3)));
    }

    #[test]
    fn inflation_is_bounded() {
        let chunk = deflate_bomb(8 << 20);
        assert!(chunk.len() < 16 << 10, "8 MiB of zeros deflate to {} bytes", chunk.len());
        assert_eq!((&chunk[..4], chunk[8]), (&MAGIC[..], CHUNK_COMPRESSED));
        let m = with_change(&chunk);
        assert_eq!(check_sync_message(&m, 1 << 20), Err(GuardError::Inflation(1 << 20)));
        check_sync_message(&m, 16 << 20).unwrap();
        let (kept, err) = valid_chunks(&chunk, 1 << 20);
        assert!(kept.is_empty() && err == Some(GuardError::Inflation(1 << 20)));
    }

    #[test]
    fn saved_documents_pass_as_storage() {
        let mut a = doc(b"a");
        for i in 0..500 {
            a.put(automerge::ROOT, format!("key{i}"), i as u64).unwrap();
        }
        a.commit();
        let mut bytes = a.save();
        a.put(automerge::ROOT, "late", "v").unwrap();
        bytes.extend(a.save_incremental());
        let (kept, err) = valid_chunks(&bytes, 64 << 20);
        assert_eq!((kept.len(), err), (bytes.len(), None));
        let mut torn = bytes.clone();
        torn.extend_from_slice(&[0x85, 0x6f]);
        let (kept, err) = valid_chunks(&torn, 64 << 20);
        assert_eq!(kept, bytes);
        assert!(matches!(err, Some(GuardError::Truncated(_))));
        // Signature blocks between chunks are split off; a torn one ends
        // the scan like a torn chunk.
        let mixed = [sig_block(b"one").as_slice(), &bytes, &sig_block(b""), &sig_block(b"three")[..9]].concat();
        let stored = split_stored(&mixed, 64 << 20);
        assert_eq!(stored.chunks, bytes);
        assert_eq!(stored.sig_blocks, vec![b"one".to_vec(), Vec::new()]);
        assert!(matches!(stored.refused, Some(GuardError::Truncated(_))));
    }
}
