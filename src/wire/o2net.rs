//! o2net handshake and message header.
