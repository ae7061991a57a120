//! o2dlm message codecs (types 500..522).
