//! The o2dlm protocol core (sans-IO): lock resources, mastery, locking,
//! AST/BAST delivery and recovery, one file per protocol phase.

pub mod cache;
pub mod lockres;
pub mod mode;
