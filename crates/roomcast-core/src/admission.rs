//! Places for client connections on one node, counted once across every
//! transport: a native WebSocket holds one for its lifetime, an Engine.IO
//! session from its handshake to its close (whatever namespaces it joins).
//! The hub owns one [`Admission`]; shutting down closes it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Why a place was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// Every place is taken.
    #[error("server full: {max} connections")]
    Full {
        /// The limit.
        max: usize,
    },
    /// The node is shutting down.
    #[error("server shutting down")]
    ShuttingDown,
}

/// The count of open client connections and its limit; see the module docs.
#[derive(Debug)]
pub struct Admission {
    max: usize,
    open: AtomicUsize,
    closed: AtomicBool,
}

/// One taken place; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// At most `max` places (0: no limit).
    pub fn new(max: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max,
            open: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        })
    }

    /// Takes a place, unless all are taken or the admission is closed.
    pub fn admit(self: &Arc<Self>) -> Result<Slot, AdmitError> {
        if self.is_closed() {
            return Err(AdmitError::ShuttingDown);
        }
        let max = self.max;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .map_err(|_| AdmitError::Full { max })?;
        Ok(Slot {
            admission: self.clone(),
        })
    }

    /// Refuses every later [`admit`](Admission::admit); places taken stay taken.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Whether [`close`](Admission::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Places taken now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// The limit (0: none).
    pub fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_freed_and_refused_after_close() {
        let a = Admission::new(2);
        let one = a.admit().unwrap();
        let two = a.admit().unwrap();
        assert_eq!(a.admit().unwrap_err(), AdmitError::Full { max: 2 });
        drop(one);
        assert_eq!(a.open(), 1);
        let three = a.admit().unwrap();
        a.close();
        drop(three);
        assert_eq!(a.admit().unwrap_err(), AdmitError::ShuttingDown);
        drop(two);
        assert_eq!(a.open(), 0);
        let unlimited = Admission::new(0);
        let many: Vec<Slot> = (0..1000).map(|_| unlimited.admit().unwrap()).collect();
        assert_eq!(unlimited.open(), many.len());
    }
}
