//! The `o2dl` com_err table: every error the library can return.
//!
//! Numbers and texts are those of ocfs2-tools' `o2dlm_err.et` as compiled by
//! e2fsprogs' compile_et, so programs that compare codes or print them with
//! `error_message()` cannot tell us from the original.

use std::fmt;

/// com_err base of table "o2dl": the table name packed 6 bits per character,
/// shifted left by 8, and wrapped to a signed 32-bit value.
pub const ERROR_TABLE_BASE_O2DL: i64 = table_base(b"o2dl");

/// Computes a com_err table base the way compile_et does.
const fn table_base(name: &[u8]) -> i64 {
    let mut n: i64 = 0;
    let mut i = 0;
    while i < name.len() {
        let c = name[i];
        let idx = match c {
            b'A'..=b'Z' => c - b'A' + 1,
            b'a'..=b'z' => c - b'a' + 27,
            b'0'..=b'9' => c - b'0' + 53,
            _ => 63,
        } as i64;
        n = n * 64 + idx;
        i += 1;
    }
    let base = n << 8;
    if n > 128 * 256 * 256 {
        base - (1i64 << 32)
    } else {
        base
    }
}

macro_rules! o2dl_errors {
    ($( $idx:literal $variant:ident $sym:ident $msg:literal ),* $(,)?) => {
        /// One entry of the `o2dl` table. The discriminant is the index.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Error {
            $( $variant = $idx, )*
        }

        /// Every entry in table order.
        pub const ALL_ERRORS: &[Error] = &[ $( Error::$variant, )* ];

        impl Error {
            /// The exact message of the original table.
            pub const fn message(self) -> &'static str {
                match self { $( Error::$variant => $msg, )* }
            }
            /// The message with a trailing NUL, for the C error table.
            pub const fn message_with_nul(self) -> &'static str {
                match self { $( Error::$variant => concat!($msg, "\0"), )* }
            }
            /// The C macro name (`O2DLM_ET_...`).
            pub const fn symbol(self) -> &'static str {
                match self { $( Error::$variant => stringify!($sym), )* }
            }
        }
    };
}

o2dl_errors! {
    0 NoMemory O2DLM_ET_NO_MEMORY "Memory allocation failed",
    1 ServiceUnavailable O2DLM_ET_SERVICE_UNAVAILABLE "Unable to access cluster service",
    2 InvalidLockName O2DLM_ET_INVALID_LOCK_NAME "Invalid name for a lock",
    3 InvalidLockLevel O2DLM_ET_INVALID_LOCK_LEVEL "Invalid locking level",
    4 InternalFailure O2DLM_ET_INTERNAL_FAILURE "Internal logic failure",
    5 NameTooLong O2DLM_ET_NAME_TOO_LONG "Name too long",
    6 Statfs O2DLM_ET_STATFS "Could not stat user_dlmfs mountpoint",
    7 NoFsDir O2DLM_ET_NO_FS_DIR "Dlmfs path specified is not a directory.",
    8 NoFs O2DLM_ET_NO_FS "ocfs2_dlmfs file system was not found",
    9 OpenDlmDir O2DLM_ET_OPEN_DLM_DIR "Could not open dlm directory",
    10 NoDomainDir O2DLM_ET_NO_DOMAIN_DIR "No directory for domain was found",
    11 BadDomainDir O2DLM_ET_BAD_DOMAIN_DIR "Could not stat domain directory",
    12 BusyDomainDir O2DLM_ET_BUSY_DOMAIN_DIR "Domain directory has active locks",
    13 DomainDir O2DLM_ET_DOMAIN_DIR "Could not read domain dir",
    14 DomainDestroy O2DLM_ET_DOMAIN_DESTROY "Could not destroy domain",
    15 DomainCreate O2DLM_ET_DOMAIN_CREATE "Could not create domain",
    16 Random O2DLM_ET_RANDOM "Could not generate random value",
    17 BusyLock O2DLM_ET_BUSY_LOCK "Lock resource is in use by another process",
    18 OutputError O2DLM_ET_OUTPUT_ERROR "Output Error",
    19 Unlink O2DLM_ET_UNLINK "Error unlinking lock resource",
    20 UnknownLock O2DLM_ET_UNKNOWN_LOCK "Could not find lock resource",
    21 RecursiveLock O2DLM_ET_RECURSIVE_LOCK "Already have a lock on this resource",
    22 Locking O2DLM_ET_LOCKING "Could not take lock",
    23 FailedUnlocks O2DLM_ET_FAILED_UNLOCKS "Could not drop all locks",
    24 InvalidArgs O2DLM_ET_INVALID_ARGS "Invalid arguments passed to function",
    25 TrylockFailed O2DLM_ET_TRYLOCK_FAILED "Trylock failed",
    26 LvbRead O2DLM_ET_LVB_READ "Error reading LVB",
    27 LvbWrite O2DLM_ET_LVB_WRITE "Error writing LVB",
    28 Seek O2DLM_ET_SEEK "Could not seek within file descriptor",
    29 DomainBusy O2DLM_ET_DOMAIN_BUSY "The domain is busy and cannot be accessed",
    30 BastUnsupported O2DLM_ET_BAST_UNSUPPORTED "This environment does not support BASTs",
    31 LvbInvalid O2DLM_ET_LVB_INVALID "The LVB is not valid",
}

impl Error {
    /// The numeric com_err code (what C callers see as `errcode_t`).
    pub const fn code(self) -> i64 {
        ERROR_TABLE_BASE_O2DL + self as i64
    }

    /// Maps a com_err code back to an entry of this table.
    pub fn from_code(code: i64) -> Option<Error> {
        let idx = code.checked_sub(ERROR_TABLE_BASE_O2DL)?;
        usize::try_from(idx)
            .ok()
            .and_then(|i| ALL_ERRORS.get(i).copied())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

/// Result of every library operation.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_matches_compile_et() {
        assert_eq!(ERROR_TABLE_BASE_O2DL, -1485330944);
        assert_eq!(ERROR_TABLE_BASE_O2DL as u32, 0xA777_A600);
    }

    #[test]
    fn table_has_32_entries_in_order() {
        assert_eq!(ALL_ERRORS.len(), 32);
        for (i, e) in ALL_ERRORS.iter().enumerate() {
            assert_eq!(*e as usize, i);
            assert_eq!(Error::from_code(e.code()), Some(*e));
        }
        assert_eq!(Error::LvbInvalid.code(), -1485330913);
        assert_eq!(Error::InvalidArgs.code(), -1485330920);
        assert_eq!(Error::from_code(ERROR_TABLE_BASE_O2DL + 32), None);
        assert_eq!(Error::from_code(0), None);
    }
}
