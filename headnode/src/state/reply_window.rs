//! A client's answers, written back in the order its messages came,
//! however the data nodes' acknowledgements interleave.
//!
//! Every message read from a client opens the next slot; its answer fills
//! that slot whenever it arrives; answers leave from the front only, so a
//! late answer holds back the ones behind it. Each slot also keeps what its
//! message costs while it is unanswered, so the client session can bound
//! both the messages (`len`) and the bytes (`in_flight_bytes`) one client
//! holds.

use std::collections::VecDeque;

use crate::state::forward::Completion;

/// Answers not yet written, by slot: the message at `first_slot` is at the
/// front.
#[derive(Debug, Default)]
pub(crate) struct ReplyWindow {
    first_slot: u64,
    /// Per slot: the bytes charged for its message, and its answer once
    /// it came.
    slots: VecDeque<(u32, Option<Completion>)>,
    /// Bytes of the messages still waiting for their answer.
    in_flight_bytes: usize,
}

impl ReplyWindow {
    fn next_slot(&self) -> u64 {
        self.first_slot + self.slots.len() as u64
    }

    /// Opens the slot of the next message read; its number.
    pub(crate) fn open_slot(&mut self) -> u64 {
        self.slots.push_back((0, None));
        self.next_slot() - 1
    }

    /// Counts `cost` bytes in flight for the message in `slot`, unless it
    /// is already answered.
    pub(crate) fn charge(&mut self, slot: u64, cost: u32) {
        let index = slot.wrapping_sub(self.first_slot) as usize;
        if let Some((charged, None)) = self.slots.get_mut(index) {
            *charged = cost;
            self.in_flight_bytes += cost as usize;
        }
    }

    /// The answer for `done.slot`: kept until every answer before it has
    /// left. An answer for a slot already answered, or not open, is
    /// ignored.
    pub(crate) fn fill(&mut self, done: Completion) {
        let index = done.slot.wrapping_sub(self.first_slot) as usize;
        if let Some((charged, slot @ None)) = self.slots.get_mut(index) {
            self.in_flight_bytes -= *charged as usize;
            *slot = Some(done);
        }
    }

    /// Takes the answer at the front, if it has come.
    pub(crate) fn pop_ready(&mut self) -> Option<Completion> {
        if matches!(self.slots.front(), Some((_, Some(_)))) {
            self.first_slot += 1;
            self.slots.pop_front().and_then(|(_, done)| done)
        } else {
            None
        }
    }

    /// Slots open: messages unanswered, and answers not yet taken.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Bytes charged for the messages still waiting for their answer.
    pub(crate) fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::forward::Outcome;

    fn answer(slot: u64, text: &str) -> Completion {
        Completion {
            slot,
            outcome: Outcome::NotStored(text.into()),
        }
    }

    fn text(done: Completion) -> String {
        match done.outcome {
            Outcome::NotStored(text) => text.to_string(),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Every answer ready now, in the order they leave.
    fn ready(window: &mut ReplyWindow) -> Vec<String> {
        std::iter::from_fn(|| window.pop_ready())
            .map(text)
            .collect()
    }

    #[test]
    fn slots_are_numbered_in_the_order_messages_are_read() {
        let mut window = ReplyWindow::default();
        assert_eq!(
            (window.open_slot(), window.open_slot(), window.open_slot()),
            (0, 1, 2)
        );
        window.fill(answer(0, "a"));
        assert_eq!(ready(&mut window), ["a"]);
        assert_eq!(window.open_slot(), 3, "numbers go on after answers left");
    }

    #[test]
    fn answers_leave_in_the_order_their_messages_came() {
        let mut window = ReplyWindow::default();
        for _ in 0..3 {
            window.open_slot();
        }
        window.fill(answer(2, "third"));
        window.fill(answer(0, "first"));
        window.fill(answer(1, "second"));
        assert_eq!(ready(&mut window), ["first", "second", "third"]);
        assert_eq!(window.len(), 0);
    }

    #[test]
    fn a_late_answer_holds_back_the_answers_behind_it() {
        let mut window = ReplyWindow::default();
        for _ in 0..3 {
            window.open_slot();
        }
        window.fill(answer(1, "second"));
        window.fill(answer(2, "third"));
        assert!(window.pop_ready().is_none(), "the first is not answered");
        assert_eq!(window.len(), 3, "answers waiting still hold their slots");
        window.fill(answer(0, "first"));
        assert_eq!(ready(&mut window), ["first", "second", "third"]);
    }

    #[test]
    fn only_unanswered_messages_count_as_bytes_in_flight() {
        let mut window = ReplyWindow::default();
        let (a, b) = (window.open_slot(), window.open_slot());
        window.charge(a, 100);
        window.charge(b, 30);
        assert_eq!(window.in_flight_bytes(), 130);
        window.fill(answer(b, "b"));
        assert_eq!(
            window.in_flight_bytes(),
            100,
            "answered, though not yet written"
        );
        window.fill(answer(a, "a"));
        assert_eq!(window.in_flight_bytes(), 0);
        assert_eq!(ready(&mut window), ["a", "b"]);
    }

    #[test]
    fn a_message_refused_before_it_was_charged_is_never_charged() {
        let mut window = ReplyWindow::default();
        let slot = window.open_slot();
        window.fill(answer(slot, "refused"));
        window.charge(slot, 100);
        assert_eq!(window.in_flight_bytes(), 0);
    }

    #[test]
    fn a_second_answer_for_one_slot_is_ignored() {
        let mut window = ReplyWindow::default();
        let slot = window.open_slot();
        window.charge(slot, 10);
        window.fill(answer(slot, "first"));
        window.fill(answer(slot, "again"));
        assert_eq!(window.in_flight_bytes(), 0, "its bytes are returned once");
        assert_eq!(ready(&mut window), ["first"]);
    }

    #[test]
    fn an_answer_for_a_slot_not_open_is_ignored() {
        let mut window = ReplyWindow::default();
        let slot = window.open_slot();
        window.fill(answer(slot, "first"));
        assert_eq!(ready(&mut window), ["first"]);
        window.fill(answer(slot, "after it left"));
        window.fill(answer(7, "never opened"));
        window.charge(7, 10);
        assert_eq!(window.len(), 0);
        assert_eq!(window.in_flight_bytes(), 0);
        assert!(window.pop_ready().is_none());
    }

    #[test]
    fn the_window_holds_as_many_slots_as_were_opened_and_not_taken() {
        let mut window = ReplyWindow::default();
        for _ in 0..100 {
            window.open_slot();
        }
        assert_eq!(window.len(), 100);
        for slot in (0..100).rev() {
            window.fill(answer(slot, "x"));
        }
        assert_eq!(window.len(), 100, "answered but not yet taken");
        assert_eq!(ready(&mut window).len(), 100);
        assert_eq!(window.len(), 0);
    }
}
