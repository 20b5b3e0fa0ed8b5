//! Locks that keep serving after a panic elsewhere: the feeds' and limits'
//! state is never left half-changed under a lock, so a poisoned lock is used
//! as is, the way the stores and the facade's helpers do.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, recovering from poisoning.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
