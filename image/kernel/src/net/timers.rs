//! The timer table behind the kernel's embassy-time driver.
//!
//! A fixed table of (deadline, waker) pairs, filled by `schedule_wake` and emptied by
//! [`TimerQueue::wake_expired`] from the board loop. A waker already in the table keeps the
//! earlier deadline (a spurious early wake is harmless: the task re-arms its timer). When the
//! table is full the waker is woken at once, so a timer can fire early but is never lost.

use core::task::Waker;

/// Timers that can be pending at once (tasks, each with at most a couple of timers).
const TIMER_SLOTS: usize = 16;

/// The timer table. See the module doc.
pub struct TimerQueue {
    slots: [Option<(u64, Waker)>; TIMER_SLOTS],
}

impl TimerQueue {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            slots: [const { None }; TIMER_SLOTS],
        }
    }

    /// Arms a wake-up for `waker` at `at` (microseconds).
    pub fn schedule(&mut self, at: u64, waker: &Waker) {
        if let Some((deadline, _)) = self
            .slots
            .iter_mut()
            .flatten()
            .find(|(_, w)| w.will_wake(waker))
        {
            *deadline = (*deadline).min(at);
            return;
        }
        match self.slots.iter_mut().find(|s| s.is_none()) {
            Some(slot) => *slot = Some((at, waker.clone())),
            None => waker.wake_by_ref(),
        }
    }

    /// Wakes and removes every entry due at `now`.
    pub fn wake_expired(&mut self, now: u64) {
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|(at, _)| *at <= now) {
                if let Some((_, waker)) = slot.take() {
                    waker.wake();
                }
            }
        }
    }

    /// Entries armed.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Counter(AtomicUsize);
    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn waker() -> (Arc<Counter>, Waker) {
        let c = Arc::new(Counter(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn wakes_at_the_earliest_deadline_only_when_due() {
        let mut q = TimerQueue::new();
        let (a, wa) = waker();
        let (b, wb) = waker();
        q.schedule(100, &wa);
        q.schedule(50, &wa); // same task, earlier timer: keeps 50
        q.schedule(200, &wb);
        assert_eq!(q.len(), 2);
        q.wake_expired(49);
        assert_eq!(a.0.load(Ordering::Relaxed), 0);
        q.wake_expired(50);
        assert_eq!(a.0.load(Ordering::Relaxed), 1);
        assert_eq!(q.len(), 1);
        q.wake_expired(1000);
        assert_eq!(b.0.load(Ordering::Relaxed), 1);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_full_table_wakes_at_once() {
        let mut q = TimerQueue::new();
        let wakers: std::vec::Vec<_> = (0..TIMER_SLOTS).map(|_| waker()).collect();
        for (_, w) in &wakers {
            q.schedule(10, w);
        }
        let (extra, w) = waker();
        q.schedule(10, &w);
        assert_eq!(extra.0.load(Ordering::Relaxed), 1, "not lost");
        assert_eq!(q.len(), TIMER_SLOTS);
    }
}
