//! The one way into the library from C: every exported function body runs
//! inside `ffi_boundary!`, which turns a Rust panic into the function's
//! "something went wrong" value instead of unwinding into C (undefined
//! behaviour). What that value is depends on the return type (`OnPanic`).

use std::os::raw::c_long;

/// What an exported function returns when its body panicked.
pub(crate) trait OnPanic {
    fn on_panic() -> Self;
}

impl OnPanic for c_long {
    fn on_panic() -> Self {
        crate::error::Error::InternalFailure.code() as c_long
    }
}

impl OnPanic for () {
    fn on_panic() -> Self {}
}

/// Runs the body with panics caught. The body is a block evaluating to the
/// function's return type; `?`-style early returns use `return`.
macro_rules! ffi_boundary {
    ($name:literal, $body:block) => {{
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| $body)) {
            Ok(value) => value,
            Err(payload) => {
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                log::error!("{}: internal panic: {}", $name, what);
                $crate::ffi::boundary::OnPanic::on_panic()
            }
        }
    }};
}

pub(crate) use ffi_boundary;
