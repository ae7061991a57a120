//! Why a decoder refused its input.

use std::fmt;

/// A decoding failure. Carries enough to write a useful log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the format needs.
    Short {
        what: &'static str,
        need: usize,
        have: usize,
    },
    /// A magic number outside the accepted set.
    BadMagic { what: &'static str, magic: u32 },
    /// A length field above what the format allows.
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// A field whose value the format does not allow.
    BadField {
        what: &'static str,
        field: &'static str,
        value: u64,
    },
    /// A checksum that does not match the contents.
    BadChecksum {
        what: &'static str,
        stored: u32,
        computed: u32,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Short { what, need, have } => {
                write!(f, "{what}: need {need} bytes, have {have}")
            }
            WireError::BadMagic { what, magic } => write!(f, "{what}: bad magic {magic:#x}"),
            WireError::TooLong { what, len, max } => {
                write!(f, "{what}: length {len} exceeds {max}")
            }
            WireError::BadField { what, field, value } => {
                write!(f, "{what}: bad {field} {value:#x}")
            }
            WireError::BadChecksum {
                what,
                stored,
                computed,
            } => {
                write!(
                    f,
                    "{what}: checksum {stored:#010x} != computed {computed:#010x}"
                )
            }
        }
    }
}

impl std::error::Error for WireError {}
