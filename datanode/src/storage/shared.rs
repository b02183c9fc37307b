//! Locks on what the data path and the read thread share (the message
//! index, the ids retention removed): either side holds one for in-memory
//! work only, never across file I/O.

use std::sync::{PoisonError, RwLock};

/// The index and the removed ids hold no invariant a panicking holder
/// could break halfway through a read; a poisoned lock is still usable.
pub(crate) fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// See [`read_lock`].
pub(crate) fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}
