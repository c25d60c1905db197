//! The deadlines a saga manager waits for: by instance, and queued by due time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use uuid::Uuid;

use super::records::StoredDeadline;

/// The deadlines waiting, by instance, and a queue of them by due time (whose entries are
/// checked against the first on the way out).
#[derive(Default)]
pub(super) struct Deadlines {
    pub(super) live: HashMap<String, Vec<StoredDeadline>>,
    pub(super) queue: BinaryHeap<Reverse<(u64, String, Uuid)>>,
}

impl Deadlines {
    /// The deadlines of `instance` are now `deadlines`; those new to it join the queue (the
    /// others are queued already).
    pub(super) fn set(&mut self, instance: String, deadlines: Vec<StoredDeadline>) {
        let known = self.live.get(&instance);
        let new: Vec<_> = deadlines
            .iter()
            .filter(|d| !known.is_some_and(|list| list.iter().any(|k| k.id == d.id)))
            .map(|d| Reverse((d.due_ms, instance.clone(), d.id)))
            .collect();
        self.queue.extend(new);
        if deadlines.is_empty() {
            self.live.remove(&instance);
        } else {
            self.live.insert(instance, deadlines);
        }
    }

    pub(super) fn pending(&self) -> usize {
        self.live.values().map(Vec::len).sum()
    }

    /// When the next live deadline is due, dropping queue entries no longer live.
    pub(super) fn next_due(&mut self) -> Option<u64> {
        while let Some(Reverse((due, instance, id))) = self.queue.peek() {
            let live = self
                .live
                .get(instance)
                .is_some_and(|list| list.iter().any(|d| d.id == *id));
            if live {
                return Some(*due);
            }
            self.queue.pop();
        }
        None
    }

    /// Takes every live deadline due at `now` off the queue.
    pub(super) fn pop_due(&mut self, now: u64) -> Vec<(String, Uuid)> {
        let mut due = Vec::new();
        while self.next_due().is_some_and(|at| at <= now) {
            if let Some(Reverse((_, instance, id))) = self.queue.pop() {
                due.push((instance, id));
            }
        }
        due
    }

    /// The deadlines of instances after their steps.
    pub(super) fn apply(&mut self, changed: Vec<(String, Vec<StoredDeadline>)>) {
        for (instance, deadlines) in changed {
            self.set(instance, deadlines);
        }
    }
}
