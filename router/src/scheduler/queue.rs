//! The bounded waiting queue in front of the batch.
//!
//! Submissions happen on the HTTP tasks while the queue itself lives in the scheduler task,
//! so the bound is an atomic counter (`WaitingGate`) shared by both: `submit` reserves a slot
//! at once (or answers QueueFull), the scheduler gives the slot back when it admits or drops
//! the request. Preempted requests re-enter at the front without asking the gate: they were
//! already accepted and must never be refused.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::interface::AdmissionError;

/// Counts requests accepted but not yet running (in flight to the scheduler or queued).
#[derive(Debug)]
pub struct WaitingGate {
    num_waiting: AtomicUsize,
    max_waiting_requests: usize,
}

impl WaitingGate {
    pub fn new(max_waiting_requests: usize) -> Self {
        Self {
            num_waiting: AtomicUsize::new(0),
            max_waiting_requests,
        }
    }

    pub fn num_waiting(&self) -> usize {
        self.num_waiting.load(Ordering::Relaxed)
    }

    /// Reserves a waiting slot for a new request, or refuses when the queue is full.
    pub fn try_reserve(&self) -> Result<(), AdmissionError> {
        self.num_waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |num_waiting| {
                (num_waiting < self.max_waiting_requests).then_some(num_waiting + 1)
            })
            .map(|_| ())
            .map_err(|_| AdmissionError::QueueFull {
                max_waiting: self.max_waiting_requests,
            })
    }

    /// Gives a slot back (the request started running, was cancelled or never arrived).
    pub fn release(&self) {
        self.num_waiting.fetch_sub(1, Ordering::AcqRel);
    }

    /// Counts a re-queued (preempted) request, beyond the bound if need be.
    fn force_reserve(&self) {
        self.num_waiting.fetch_add(1, Ordering::AcqRel);
    }
}

/// FIFO of requests waiting for admission; owned by the scheduler task.
#[derive(Debug)]
pub struct WaitingQueue<T> {
    items: VecDeque<T>,
    gate: Arc<WaitingGate>,
}

impl<T> WaitingQueue<T> {
    pub fn new(gate: Arc<WaitingGate>) -> Self {
        Self {
            items: VecDeque::new(),
            gate,
        }
    }

    /// Queues a request whose slot `submit` already reserved.
    pub fn push_reserved(&mut self, item: T) {
        self.items.push_back(item);
    }

    /// Puts a preempted request back at the front, ahead of new arrivals.
    pub fn push_front_preempted(&mut self, item: T) {
        self.gate.force_reserve();
        self.items.push_front(item);
    }

    /// Takes the front request to run it.
    pub fn pop_front(&mut self) -> Option<T> {
        let item = self.items.pop_front()?;
        self.gate.release();
        Some(item)
    }

    /// Drops the requests for which `is_gone` holds (e.g. cancelled ones); returns how many.
    pub fn remove_where(&mut self, mut is_gone: impl FnMut(&T) -> bool) -> usize {
        let num_before = self.items.len();
        self.items.retain(|item| !is_gone(item));
        let num_removed = num_before - self.items.len();
        for _ in 0..num_removed {
            self.gate.release();
        }
        num_removed
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_refuses_beyond_the_bound_and_reopens() {
        let gate = WaitingGate::new(2);
        assert!(gate.try_reserve().is_ok());
        assert!(gate.try_reserve().is_ok());
        match gate.try_reserve() {
            Err(AdmissionError::QueueFull { max_waiting }) => assert_eq!(max_waiting, 2),
            other => panic!("expected QueueFull, got {other:?}"),
        }
        assert_eq!(gate.num_waiting(), 2);
        gate.release();
        assert!(gate.try_reserve().is_ok());
        assert!(gate.try_reserve().is_err());
    }

    #[test]
    fn queue_is_fifo_and_preempted_go_first() {
        let gate = Arc::new(WaitingGate::new(3));
        let mut queue = WaitingQueue::new(gate.clone());
        for item in [1, 2, 3] {
            gate.try_reserve().expect("room");
            queue.push_reserved(item);
        }
        assert!(gate.try_reserve().is_err());
        // Preempted requests are never refused, even beyond the bound.
        queue.push_front_preempted(0);
        assert_eq!(gate.num_waiting(), 4);
        let order: Vec<i32> = std::iter::from_fn(|| queue.pop_front()).collect();
        assert_eq!(order, vec![0, 1, 2, 3]);
        assert_eq!(gate.num_waiting(), 0);
        assert!(queue.is_empty());
    }

    #[test]
    fn removal_gives_slots_back() {
        let gate = Arc::new(WaitingGate::new(4));
        let mut queue = WaitingQueue::new(gate.clone());
        for item in 0..4 {
            gate.try_reserve().expect("room");
            queue.push_reserved(item);
        }
        assert_eq!(queue.remove_where(|item| item % 2 == 1), 2);
        assert_eq!(queue.iter().copied().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(gate.num_waiting(), 2);
        assert_eq!(queue.len(), 2);
    }
}
