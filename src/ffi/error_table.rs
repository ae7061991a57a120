//! The com_err table `o2dl` as compile_et would generate it: the
//! `et_o2dl_error_table` data symbol and the two registration functions that
//! put it on libcom_err's `_et_list`, so `error_message()` and `com_err()`
//! print our texts.

use crate::error::{ALL_ERRORS, ERROR_TABLE_BASE_O2DL};
use std::os::raw::{c_char, c_int, c_long};
use std::sync::Mutex;

/// libcom_err's `struct error_table`.
#[repr(C)]
pub struct error_table {
    pub msgs: *const *const c_char,
    pub base: c_long,
    pub n_msgs: c_int,
}

/// libcom_err's `struct et_list` node.
#[repr(C)]
pub struct et_list {
    pub next: *mut et_list,
    pub table: *const error_table,
}

// SAFETY: both only ever point at immutable 'static data (or, for list
// nodes, are only touched under REGISTRATION).
unsafe impl Sync for error_table {}
struct MessageArray([*const c_char; ALL_ERRORS.len() + 1]);
// SAFETY: the array holds pointers to 'static string literals, never written.
unsafe impl Sync for MessageArray {}
struct StaticNode(std::cell::UnsafeCell<et_list>);
// SAFETY: the node is only read or written while REGISTRATION is held.
unsafe impl Sync for StaticNode {}

/// The messages, NULL-terminated like compile_et's array.
static MESSAGES: MessageArray = MessageArray({
    let mut msgs = [std::ptr::null::<c_char>(); ALL_ERRORS.len() + 1];
    let mut i = 0;
    while i < ALL_ERRORS.len() {
        msgs[i] = ALL_ERRORS[i].message_with_nul().as_ptr().cast();
        i += 1;
    }
    msgs
});

#[allow(non_upper_case_globals)]
#[no_mangle]
pub static et_o2dl_error_table: error_table = error_table {
    msgs: &MESSAGES.0 as *const [*const c_char; ALL_ERRORS.len() + 1] as *const *const c_char,
    base: ERROR_TABLE_BASE_O2DL as c_long,
    n_msgs: ALL_ERRORS.len() as c_int,
};

/// Used when malloc fails, as the generated code does.
static FALLBACK_NODE: StaticNode = StaticNode(std::cell::UnsafeCell::new(et_list {
    next: std::ptr::null_mut(),
    table: std::ptr::null(),
}));
static REGISTRATION: Mutex<()> = Mutex::new(());

extern "C" {
    /// libcom_err's global list of registered tables.
    static mut _et_list: *mut et_list;
    /// libcom_err's own lock over `_et_list` (e2fsprogs >= 1.41).
    fn et_list_lock() -> i32;
    fn et_list_unlock() -> i32;
}

/// Appends our table to `*list` unless a node for it is already there.
///
/// # Safety
/// `list` must be NULL or point to a valid, NULL-terminated et_list chain.
pub(crate) unsafe fn register(list: *mut *mut et_list) {
    if list.is_null() {
        return;
    }
    let _guard = REGISTRATION.lock().unwrap_or_else(|p| p.into_inner());
    let mut end = list;
    // SAFETY: the caller guarantees a valid chain; we only follow `next`.
    unsafe {
        while !(*end).is_null() {
            let node = *end;
            if !(*node).table.is_null() && (*(*node).table).msgs == et_o2dl_error_table.msgs {
                return;
            }
            end = &mut (*node).next;
        }
    }
    // SAFETY: malloc of a plain struct; checked for NULL before use.
    let mut node = unsafe { libc::malloc(std::mem::size_of::<et_list>()) } as *mut et_list;
    if node.is_null() {
        let fallback = FALLBACK_NODE.0.get();
        // SAFETY: guarded by REGISTRATION; the node is 'static.
        if unsafe { !(*fallback).table.is_null() } {
            return;
        }
        node = fallback;
    }
    // SAFETY: node points to writable memory for one et_list; `end` is the
    // chain's terminating NULL slot found above.
    unsafe {
        node.write(et_list {
            next: std::ptr::null_mut(),
            table: &et_o2dl_error_table,
        });
        *end = node;
    }
}

/// Registers on libcom_err's global list.
pub(crate) fn register_global() {
    // SAFETY: `_et_list` is libcom_err's list head; taking its address does
    // not read it, and register() walks it under libcom_err's own lock so a
    // concurrent add_error_table() cannot interleave.
    unsafe {
        et_list_lock();
        register(std::ptr::addr_of_mut!(_et_list));
        et_list_unlock();
    }
}
