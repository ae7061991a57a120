//! The C edge: every `extern "C"` symbol of the library, and nothing else.
//!
//! Each function checks every pointer and argument before use, runs inside
//! `ffi_boundary!` so no panic crosses into C, and returns an `o2dl` com_err
//! code. Names and signatures are those of ocfs2-tools' `<o2dlm/o2dlm.h>`.

#![allow(non_camel_case_types)]

pub(crate) mod boundary;
pub mod error_table;

use crate::api::{BastCallback, Context, MAX_FULL_DOMAIN_PATH};
use crate::error::{Error, Result};
use boundary::ffi_boundary;
use std::ffi::{c_void, OsStr};
use std::os::raw::{c_char, c_int, c_long, c_uint};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use error_table::et_list;

/// com_err's `errcode_t` (declared by `<et/com_err.h>`, not by us).
pub type errcode_t = c_long;

// The values are spelled out (not taken from `api`) so cbindgen can print
// them; the test below keeps them equal to the ones the library uses.
/// Lock ids are shorter than this (31 characters at most).
pub const O2DLM_LOCK_ID_MAX_LEN: usize = 32;
/// Domain names are shorter than this.
pub const O2DLM_DOMAIN_MAX_LEN: usize = 255;
/// Lock flag: fail with O2DLM_ET_TRYLOCK_FAILED instead of waiting.
pub const O2DLM_TRYLOCK: c_int = 0x01;
/// Every lock flag the API defines.
pub const O2DLM_VALID_FLAGS: c_int = O2DLM_TRYLOCK;

/// `enum o2dlm_lock_level`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub enum o2dlm_lock_level {
    O2DLM_LEVEL_PRMODE = 0,
    O2DLM_LEVEL_EXMODE = 1,
}

/// The level argument as it really arrives: any int a C caller passes.
/// (The header shows `enum o2dlm_lock_level`; a Rust enum would make
/// out-of-range values undefined behaviour.)
pub type o2dlm_lock_level_arg = c_int;

/// The opaque `struct o2dlm_ctxt`.
pub struct o2dlm_ctxt {
    inner: Context,
}

fn code(result: Result<()>) -> errcode_t {
    match result {
        Ok(()) => 0,
        Err(e) => e.code() as errcode_t,
    }
}

/// Reads a C string of fewer than `max` bytes without touching memory past
/// `max` bytes; `None` when no NUL is found in that range.
///
/// # Safety
/// `ptr` must be non-NULL and readable up to its NUL or `max` bytes.
unsafe fn bounded_cstr<'a>(ptr: *const c_char, max: usize) -> Option<&'a [u8]> {
    // SAFETY: strnlen reads at most `max` bytes, which the caller allows.
    let len = unsafe { libc::strnlen(ptr, max) };
    if len >= max {
        return None;
    }
    // SAFETY: `len` bytes before the NUL were just shown to be readable.
    Some(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}

/// A lock id argument: NULL → INVALID_ARGS, no NUL in 32 bytes → too long.
///
/// # Safety
/// `ptr` is NULL or a readable C string (read at most 32 bytes).
unsafe fn lock_id_arg<'a>(ptr: *const c_char) -> Result<&'a [u8]> {
    if ptr.is_null() {
        return Err(Error::InvalidArgs);
    }
    // SAFETY: non-NULL and readable per the caller.
    unsafe { bounded_cstr(ptr, O2DLM_LOCK_ID_MAX_LEN) }.ok_or(Error::InvalidLockName)
}

/// # Safety
/// `ctxt` is NULL or a pointer returned by o2dlm_initialize, not destroyed.
unsafe fn context<'a>(ctxt: *mut o2dlm_ctxt) -> Result<&'a Context> {
    if ctxt.is_null() {
        return Err(Error::InvalidArgs);
    }
    // SAFETY: per the caller, a live context; only shared access is made.
    Ok(unsafe { &(*ctxt).inner })
}

/// Joins `domain_name` and returns a new context in `*ctxt`.
///
/// # Safety
/// Pointers are NULL or valid C strings / a writable `*mut o2dlm_ctxt` slot.
#[no_mangle]
pub unsafe extern "C" fn o2dlm_initialize(
    dlmfs_path: *const c_char,
    domain_name: *const c_char,
    ctxt: *mut *mut o2dlm_ctxt,
) -> errcode_t {
    ffi_boundary!("o2dlm_initialize", {
        code((|| {
            if domain_name.is_null() || ctxt.is_null() {
                return Err(Error::InvalidArgs);
            }
            // SAFETY: non-NULL C string per the contract.
            let domain = unsafe { bounded_cstr(domain_name, O2DLM_DOMAIN_MAX_LEN) }
                .ok_or(Error::NameTooLong)?;
            let path = if dlmfs_path.is_null() {
                None
            } else {
                // SAFETY: non-NULL C string per the contract.
                let bytes = unsafe { bounded_cstr(dlmfs_path, MAX_FULL_DOMAIN_PATH) }
                    .ok_or(Error::NameTooLong)?;
                Some(Path::new(OsStr::from_bytes(bytes)))
            };
            let context = Context::initialize(path, domain)?;
            let boxed = Box::into_raw(Box::new(o2dlm_ctxt { inner: context }));
            // SAFETY: ctxt is non-NULL and writable per the contract.
            unsafe { ctxt.write(boxed) };
            Ok(())
        })())
    })
}

/// Takes `lockid` at `level`; blocks unless `lockflags` has O2DLM_TRYLOCK.
///
/// # Safety
/// `ctxt` is NULL or live; `lockid` is NULL or a readable C string.
#[no_mangle]
pub unsafe extern "C" fn o2dlm_lock(
    ctxt: *mut o2dlm_ctxt,
    lockid: *const c_char,
    lockflags: c_int,
    level: o2dlm_lock_level_arg,
) -> errcode_t {
    ffi_boundary!("o2dlm_lock", {
        code((|| {
            // SAFETY: argument contracts as documented above.
            let ctx = unsafe { context(ctxt) }?;
            let id = unsafe { lock_id_arg(lockid) }?;
            ctx.lock(id, lockflags, level)
        })())
    })
}

/// Like `o2dlm_lock`, and returns in `*poll_fd` a descriptor that polls
/// readable when another node wants the lock; `o2dlm_process_bast` then runs
/// `bast_func(bast_arg)`.
///
/// # Safety
/// As `o2dlm_lock`; `poll_fd` NULL or writable; `bast_func` NULL or callable
/// with `bast_arg` whenever the caller runs `o2dlm_process_bast`.
#[no_mangle]
pub unsafe extern "C" fn o2dlm_lock_with_bast(
    ctxt: *mut o2dlm_ctxt,
    lockid: *const c_char,
    lockflags: c_int,
    level: o2dlm_lock_level_arg,
    bast_func: Option<unsafe extern "C" fn(bast_arg: *mut c_void)>,
    bast_arg: *mut c_void,
    poll_fd: *mut c_int,
) -> errcode_t {
    ffi_boundary!("o2dlm_lock_with_bast", {
        code((|| {
            // SAFETY: argument contracts as documented above.
            let ctx = unsafe { context(ctxt) }?;
            let (Some(func), false) = (bast_func, poll_fd.is_null()) else {
                return Err(Error::InvalidArgs);
            };
            // SAFETY: as above.
            let id = unsafe { lock_id_arg(lockid) }?;
            // The pointer travels as an integer so the closure is Send; it is
            // only ever handed back to the caller's own callback.
            let arg = bast_arg as usize;
            let callback: BastCallback = Arc::new(move || {
                // SAFETY: the caller registered func/arg as a valid pair and
                // asked us to run it from o2dlm_process_bast.
                unsafe { func(arg as *mut c_void) }
            });
            let fd = ctx.lock_with_bast(id, lockflags, level, callback)?;
            // SAFETY: poll_fd is non-NULL and writable per the contract.
            unsafe { poll_fd.write(fd) };
            Ok(())
        })())
    })
}

/// Runs the BAST callback registered for `poll_fd`; unknown fds are ignored.
///
/// # Safety
/// `ctxt` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn o2dlm_process_bast(ctxt: *mut o2dlm_ctxt, poll_fd: c_int) {
    ffi_boundary!("o2dlm_process_bast", {
        // SAFETY: argument contract as documented above.
        if let Ok(ctx) = unsafe { context(ctxt) } {
            ctx.process_bast(poll_fd);
        }
    })
}

/// Releases `lockid` (the cluster lock may stay cached on this node).
///
/// # Safety
/// `ctxt` is NULL or live; `lockid` is NULL or a readable C string.
#[no_mangle]
pub unsafe extern "C" fn o2dlm_unlock(ctxt: *mut o2dlm_ctxt, lockid: *const c_char) -> errcode_t {
    ffi_boundary!("o2dlm_unlock", {
        code((|| {
            // SAFETY: argument contracts as documented above.
            let ctx = unsafe { context(ctxt) }?;
            let id = unsafe { lock_id_arg(lockid) }?;
            ctx.unlock(id)
        })())
    })
}

/// Removes an unlocked lock resource from the domain.
///
/// # Safety
/// `ctxt` is NULL or live; `lockid` is NULL or a readable C string.
#[no_mangle]
pub unsafe extern "C" fn o2dlm_drop_lock(
    ctxt: *mut o2dlm_ctxt,
    lockid: *const c_char,
) -> errcode_t {
    ffi_boundary!("o2dlm_drop_lock", {
        code((|| {
            // SAFETY: argument contracts as documented above.
            let ctx = unsafe { context(ctxt) }?;
            let id = unsafe { lock_id_arg(lockid) }?;
            ctx.drop_lock(id)
        })())
    })
}

/// Reads up to `len` bytes (at most 64) of the lock value block.
///
/// # Safety
/// `ctxt` NULL or live; `lockid` NULL or a C string; `lvb` NULL or writable
/// for `len` bytes; `bytes_read` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn o2dlm_read_lvb(
    ctxt: *mut o2dlm_ctxt,
    lockid: *mut c_char,
    lvb: *mut c_char,
    len: c_uint,
    bytes_read: *mut c_uint,
) -> errcode_t {
    ffi_boundary!("o2dlm_read_lvb", {
        code((|| {
            // SAFETY: argument contracts as documented above.
            let ctx = unsafe { context(ctxt) }?;
            let id = unsafe { lock_id_arg(lockid) }?;
            if lvb.is_null() {
                return Err(Error::InvalidArgs);
            }
            let len = (len as usize).min(crate::api::LVB_LEN);
            // SAFETY: lvb is writable for at least `len` bytes per the contract.
            let buf = unsafe { std::slice::from_raw_parts_mut(lvb.cast::<u8>(), len) };
            let n = ctx.read_lvb(id, buf)?;
            if !bytes_read.is_null() {
                // SAFETY: non-NULL and writable per the contract.
                unsafe { bytes_read.write(n as c_uint) };
            }
            Ok(())
        })())
    })
}

/// Writes `len` bytes (at most 64) of the lock value block; needs EX.
///
/// # Safety
/// `ctxt` NULL or live; `lockid` NULL or a C string; `lvb` NULL or readable
/// for `len` bytes; `bytes_written` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn o2dlm_write_lvb(
    ctxt: *mut o2dlm_ctxt,
    lockid: *mut c_char,
    lvb: *const c_char,
    len: c_uint,
    bytes_written: *mut c_uint,
) -> errcode_t {
    ffi_boundary!("o2dlm_write_lvb", {
        code((|| {
            // SAFETY: argument contracts as documented above.
            let ctx = unsafe { context(ctxt) }?;
            let id = unsafe { lock_id_arg(lockid) }?;
            if lvb.is_null() || len as usize > crate::api::LVB_LEN {
                return Err(Error::InvalidArgs);
            }
            // SAFETY: lvb is readable for `len` (≤ 64) bytes per the contract.
            let data = unsafe { std::slice::from_raw_parts(lvb.cast::<u8>(), len as usize) };
            let n = ctx.write_lvb(id, data)?;
            if !bytes_written.is_null() {
                // SAFETY: non-NULL and writable per the contract.
                unsafe { bytes_written.write(n as c_uint) };
            }
            Ok(())
        })())
    })
}

/// Unlocks everything, leaves the domain and frees the context (in every
/// case but a NULL context).
///
/// # Safety
/// `ctxt` is NULL or live; it must not be used again afterwards.
#[no_mangle]
pub unsafe extern "C" fn o2dlm_destroy(ctxt: *mut o2dlm_ctxt) -> errcode_t {
    ffi_boundary!("o2dlm_destroy", {
        if ctxt.is_null() {
            return Error::InvalidArgs.code() as errcode_t;
        }
        // SAFETY: a live context from o2dlm_initialize; ownership returns here.
        let owned = unsafe { Box::from_raw(ctxt) };
        code(owned.inner.destroy())
    })
}

fn supports(name: &str, out: *mut c_int) -> errcode_t {
    code((|| {
        if out.is_null() {
            return Err(Error::InvalidArgs);
        }
        let yes = crate::api::supports(name)?;
        // SAFETY: non-NULL and writable per the callers' contract.
        unsafe { out.write(yes as c_int) };
        Ok(())
    })())
}

/// Sets `*supports` to 1 when BASTs can be delivered, else 0.
///
/// # Safety
/// `supports` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn o2dlm_supports_bast(supports: *mut c_int) -> errcode_t {
    ffi_boundary!("o2dlm_supports_bast", { self::supports("bast", supports) })
}

/// Sets `*supports` to 1 when dlmfs goes through the OCFS2 stack glue.
///
/// # Safety
/// `supports` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn o2dlm_supports_stackglue(supports: *mut c_int) -> errcode_t {
    ffi_boundary!("o2dlm_supports_stackglue", {
        self::supports("stackglue", supports)
    })
}

/// Runs at process exit (registered once the engine starts): the node
/// leaves its heartbeat region cleanly, so peers see it go at once instead
/// of after the dead threshold.
extern "C" fn engine_exit_hook() {
    let _ = std::panic::catch_unwind(crate::engine::shutdown);
}

/// Registers `engine_exit_hook` with atexit(3), once per process.
pub(crate) fn register_exit_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a plain function with no captured state.
        unsafe { libc::atexit(engine_exit_hook) };
    });
}

/// Registers the `o2dl` table with libcom_err (no-op when already there).
#[no_mangle]
pub extern "C" fn initialize_o2dl_error_table() {
    ffi_boundary!("initialize_o2dl_error_table", {
        error_table::register_global()
    })
}

/// Appends the `o2dl` table to `list` unless it is already on it.
///
/// # Safety
/// `list` is NULL or points to a valid NULL-terminated `et_list` chain.
#[no_mangle]
pub unsafe extern "C" fn initialize_o2dl_error_table_r(list: *mut *mut et_list) {
    // SAFETY: forwarded contract.
    ffi_boundary!("initialize_o2dl_error_table_r", {
        unsafe { error_table::register(list) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_constants_match_the_library() {
        assert_eq!(O2DLM_LOCK_ID_MAX_LEN, crate::api::LOCK_ID_MAX_LEN);
        assert_eq!(O2DLM_DOMAIN_MAX_LEN, crate::api::DOMAIN_MAX_LEN);
        assert_eq!(O2DLM_TRYLOCK, crate::api::TRYLOCK);
        assert_eq!(O2DLM_VALID_FLAGS, crate::api::VALID_FLAGS);
        assert_eq!(o2dlm_lock_level::O2DLM_LEVEL_PRMODE as i32, 0);
        assert_eq!(o2dlm_lock_level::O2DLM_LEVEL_EXMODE as i32, 1);
    }
}
