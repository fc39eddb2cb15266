//! The outbox: the one way outputs leave the engine.
//!
//! Every output the engine makes while handling an input is staged here
//! ([`Outbox::push`]) and released when the input ends ([`Outbox::end_input`]),
//! behind the `Persist` that input made. A `Persist` itself goes out at once
//! ([`Outbox::persist`]): it must reach the driver before what it covers.
//!
//! The rule it keeps: nothing that may reveal state (a message, a reply, a
//! run started, an event) is handed over while a `Persist` issued before it
//! is unconfirmed. A driver may write off its event loop and keep feeding
//! inputs; their outputs queue behind the write, in order, and the outbox
//! lets them go as [`Outbox::handle_persisted`] confirms each write.

use std::collections::VecDeque;

use crate::{Output, PersistKind, PersistSeq};

#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// Made while handling the current input.
    staged: Vec<Output>,
    /// Handed over by `poll`, in order.
    ready: VecDeque<Output>,
    /// Waiting for the persist of the given seq to be confirmed, in order.
    held: VecDeque<(PersistSeq, Output)>,
    /// The last persist issued, and the last the driver confirmed.
    issued: PersistSeq,
    durable: PersistSeq,
}

/// More outputs queued than any honest run makes: a driver that stopped
/// draining, or a persist never confirmed.
const MAX_QUEUED_OUTPUTS: usize = 1 << 20;

impl Outbox {
    /// Stages an output of the current input. A `Persist` never comes here.
    pub(crate) fn push(&mut self, out: Output) {
        assert!(!matches!(out, Output::Persist { .. }), "persists go out through Outbox::persist");
        self.staged.push(out);
    }

    /// Issues a `Persist`: handed over at once, ahead of everything staged
    /// or held, since those wait for it.
    pub(crate) fn persist(&mut self, kind: PersistKind, bytes: Vec<u8>) -> PersistSeq {
        self.issued = PersistSeq(self.issued.0 + 1);
        self.ready.push_back(Output::Persist { seq: self.issued, kind, bytes });
        self.issued
    }

    /// The input is over: what it staged follows the last persist issued.
    pub(crate) fn end_input(&mut self) {
        for out in std::mem::take(&mut self.staged) {
            if self.durable < self.issued {
                self.held.push_back((self.issued, out));
            } else {
                assert!(self.held.is_empty(), "held outputs with every persist durable");
                self.ready.push_back(out);
            }
        }
    }

    /// The driver made every persist up to `seq` durable.
    ///
    /// # Panics
    /// If `seq` was never issued: the driver broke the contract.
    pub(crate) fn handle_persisted(&mut self, seq: PersistSeq) {
        assert!(seq <= self.issued, "persist {} confirmed, only {} issued", seq.0, self.issued.0);
        self.durable = self.durable.max(seq);
        while let Some((needs, _)) = self.held.front()
            && *needs <= self.durable
        {
            let (_, out) = self.held.pop_front().expect("front checked");
            self.ready.push_back(out);
        }
    }

    pub(crate) fn poll(&mut self) -> Option<Output> {
        self.ready.pop_front()
    }

    /// Outputs wait for a persist the driver has not confirmed.
    pub(crate) fn awaiting_persist(&self) -> bool {
        self.durable < self.issued
    }

    /// Checked between inputs (debug builds).
    pub(crate) fn check_invariants(&self) {
        assert!(self.staged.is_empty(), "outputs staged past the end of an input");
        assert!(self.durable <= self.issued, "more persists confirmed than issued");
        assert!(self.held.is_empty() || self.awaiting_persist(), "outputs held with every persist durable");
        assert!(self.ready.len() < MAX_QUEUED_OUTPUTS, "{} outputs queued", self.ready.len());
        assert!(self.held.len() < MAX_QUEUED_OUTPUTS, "{} outputs wait for a persist", self.held.len());
        // Held outputs wait for an unconfirmed persist, in the order the
        // persists were issued.
        let mut last = self.durable;
        for (needs, out) in &self.held {
            assert!(
                *needs > self.durable && *needs <= self.issued,
                "held behind persist {} of {}",
                needs.0,
                self.issued.0
            );
            assert!(*needs >= last, "held outputs out of persist order");
            assert!(!matches!(out, Output::Persist { .. }), "a persist held back");
            last = *needs;
        }
        let mut seq = PersistSeq(0);
        for out in &self.ready {
            if let Output::Persist { seq: s, .. } = out {
                assert!(*s > seq, "persists out of order");
                seq = *s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConnId, Output};

    fn send(n: u8) -> Output {
        Output::Send { conn: ConnId(u64::from(n)), bytes: vec![n] }
    }

    fn drain(o: &mut Outbox) -> Vec<Output> {
        std::iter::from_fn(|| o.poll()).collect()
    }

    fn sends(outs: &[Output]) -> Vec<u8> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Send { bytes, .. } => Some(bytes[0]),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn without_a_persist_outputs_leave_at_the_end_of_the_input_in_order() {
        let mut o = Outbox::default();
        o.push(send(1));
        o.push(send(2));
        assert!(o.poll().is_none(), "nothing leaves mid-input");
        o.end_input();
        assert_eq!(sends(&drain(&mut o)), vec![1, 2]);
        o.check_invariants();
    }

    #[test]
    fn what_an_input_made_waits_for_its_persist_and_the_persist_goes_first() {
        let mut o = Outbox::default();
        o.push(send(1));
        let seq = o.persist(PersistKind::Append, vec![9]);
        o.push(send(2));
        o.end_input();
        let first = drain(&mut o);
        assert!(matches!(first.as_slice(), [Output::Persist { seq: PersistSeq(1), .. }]), "{first:?}");
        assert!(o.awaiting_persist());
        o.check_invariants();
        o.handle_persisted(seq);
        assert_eq!(sends(&drain(&mut o)), vec![1, 2]);
        assert!(!o.awaiting_persist());
        o.check_invariants();
    }

    #[test]
    fn later_inputs_queue_behind_an_unconfirmed_write_and_leave_as_each_is_confirmed() {
        let mut o = Outbox::default();
        let a = o.persist(PersistKind::Append, vec![]);
        o.push(send(1));
        o.end_input();
        // An input that persists nothing still waits: its outputs may
        // reveal what the first input wrote.
        o.push(send(2));
        o.end_input();
        let b = o.persist(PersistKind::Append, vec![]);
        o.push(send(3));
        o.end_input();
        let persists = drain(&mut o);
        assert_eq!(persists.len(), 2);
        o.check_invariants();
        o.handle_persisted(a);
        assert_eq!(sends(&drain(&mut o)), vec![1, 2], "the first write covers inputs one and two");
        o.check_invariants();
        o.handle_persisted(b);
        assert_eq!(sends(&drain(&mut o)), vec![3]);
        o.check_invariants();
    }

    #[test]
    fn a_confirmation_covers_every_earlier_write() {
        let mut o = Outbox::default();
        o.persist(PersistKind::Append, vec![]);
        o.push(send(1));
        o.end_input();
        let b = o.persist(PersistKind::Snapshot, vec![]);
        o.push(send(2));
        o.end_input();
        drain(&mut o);
        o.handle_persisted(b);
        assert_eq!(sends(&drain(&mut o)), vec![1, 2]);
        // A stale confirmation changes nothing.
        o.handle_persisted(PersistSeq(1));
        assert!(!o.awaiting_persist());
        o.check_invariants();
    }

    #[test]
    #[should_panic(expected = "only 0 issued")]
    fn confirming_a_write_never_issued_is_a_driver_bug() {
        Outbox::default().handle_persisted(PersistSeq(1));
    }

    #[test]
    #[should_panic(expected = "persists go out through")]
    fn a_persist_cannot_be_staged() {
        Outbox::default().push(Output::Persist { seq: PersistSeq(1), kind: PersistKind::Append, bytes: vec![] });
    }
}
