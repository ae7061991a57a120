//! Cluster configuration: cluster.conf, O2CB_* timeouts, heartbeat geometry.
