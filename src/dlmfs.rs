//! The dlmfs backend.
