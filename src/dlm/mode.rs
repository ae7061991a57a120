//! Lock modes as o2dlm uses them (only NL, PR and EX).

/// A lock mode; the discriminant is the kernel's `LKM_*MODE` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(i8)]
pub enum Mode {
    Nl = 0,
    Pr = 3,
    Ex = 5,
}

impl Mode {
    /// Decodes a wire mode; CR/CW/PW and IV are not modes o2dlm grants.
    pub fn from_wire(v: i8) -> Option<Mode> {
        match v {
            0 => Some(Mode::Nl),
            3 => Some(Mode::Pr),
            5 => Some(Mode::Ex),
            _ => None,
        }
    }

    pub fn to_wire(self) -> i8 {
        self as i8
    }

    /// Can a lock held in `self` coexist with one held in `other`?
    pub fn compatible(self, other: Mode) -> bool {
        matches!(
            (self, other),
            (Mode::Nl, _) | (_, Mode::Nl) | (Mode::Pr, Mode::Pr)
        )
    }
}

/// The wire value for "no mode" (LKM_IVMODE).
pub const IV_MODE: i8 = -1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compatibility_matrix() {
        use Mode::*;
        let table = [
            (Nl, Nl, true),
            (Nl, Pr, true),
            (Nl, Ex, true),
            (Pr, Pr, true),
            (Pr, Ex, false),
            (Ex, Ex, false),
        ];
        for (a, b, ok) in table {
            assert_eq!(a.compatible(b), ok, "{a:?}/{b:?}");
            assert_eq!(b.compatible(a), ok, "{b:?}/{a:?}");
        }
        assert_eq!(Mode::from_wire(4), None);
        assert_eq!(Mode::from_wire(-1), None);
        assert!(Mode::Ex > Mode::Pr && Mode::Pr > Mode::Nl);
    }
}
