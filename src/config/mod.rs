//! Cluster configuration: cluster.conf, O2CB_* timeouts, heartbeat geometry.
//!
//! Everything the embedded engine needs comes from the same places an o2cb
//! user already maintains (`/etc/ocfs2/cluster.conf`, the o2cb sysconfig
//! file) plus a few `O2DLM_*` variables for what the kernel would otherwise
//! get from mount.ocfs2 (the heartbeat region). Environment variables:
//!
//! | Variable | Default | Meaning |
//! |---|---|---|
//! | O2DLM_CLUSTER_CONF | /etc/ocfs2/cluster.conf | cluster.conf to read |
//! | O2CB_BOOTCLUSTER | from the sysconfig file, else the only cluster | cluster to join |
//! | O2DLM_NODE | the host name | local node name |
//! | O2CB_HEARTBEAT_THRESHOLD etc. | sysconfig file, else kernel defaults | timeouts |
//! | O2DLM_O2CB_SYSCONFIG | /etc/default/o2cb, then /etc/sysconfig/o2cb | sysconfig file; empty = none |
//! | O2DLM_HEARTBEAT_DEVICE | (required) | heartbeat block device or file |
//! | O2DLM_HEARTBEAT_BLOCK_BYTES / _START_BLOCK / _BLOCKS | 512 / 1 / 255 | region geometry |

pub mod cluster_conf;
pub mod geometry;
pub mod timeouts;

pub use cluster_conf::{ClusterConf, HeartbeatMode};
pub use geometry::HeartbeatGeometry;
pub use timeouts::Timeouts;

use std::fmt;
use std::net::Ipv4Addr;

pub const VAR_CLUSTER_CONF: &str = "O2DLM_CLUSTER_CONF";
pub const VAR_BOOTCLUSTER: &str = "O2CB_BOOTCLUSTER";
pub const VAR_NODE: &str = "O2DLM_NODE";
pub const VAR_SYSCONFIG: &str = "O2DLM_O2CB_SYSCONFIG";
pub const VAR_ADVERTISED_CONF: &str = "O2DLM_ADVERTISED_CONF";
pub const DEFAULT_CLUSTER_CONF: &str = "/etc/ocfs2/cluster.conf";
/// Debian-style first, then Red Hat-style, as o2cb's init script looks.
pub const DEFAULT_SYSCONFIGS: [&str; 2] = ["/etc/default/o2cb", "/etc/sysconfig/o2cb"];

/// A configuration problem, located in a file line or an environment
/// variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// A file path or a variable name.
    pub origin: String,
    /// Line within `origin` when it is a file.
    pub line: Option<usize>,
    pub problem: String,
}

impl ConfigError {
    pub fn at_line(file: &str, line: usize, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: file.to_string(),
            line: Some(line),
            problem: problem.into(),
        }
    }

    /// An error about a variable or a whole file.
    pub fn var(origin: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: origin.to_string(),
            line: None,
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.origin, l, self.problem),
            None => write!(f, "{}: {}", self.origin, self.problem),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A `node:` stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConf {
    pub name: String,
    pub number: u8,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub cluster: String,
}

/// Everything the embedded engine needs to run this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    pub cluster_name: String,
    pub local: NodeConf,
    /// All nodes of the cluster, the local one included, sorted by number,
    /// with the addresses this node uses to reach them.
    pub nodes: Vec<NodeConf>,
    /// The same nodes with the addresses the cluster itself knows them by
    /// (what QUERY_NODEINFO compares between nodes). Equal to `nodes`
    /// unless O2DLM_ADVERTISED_CONF names another cluster.conf — needed
    /// when this node reaches peers through forwarded ports (e.g. a kernel
    /// in qemu), where its own view of the addresses differs.
    pub advertised: Vec<NodeConf>,
    pub timeouts: Timeouts,
    pub heartbeat: HeartbeatGeometry,
}

/// True when the process is set up for the embedded engine. Cheap: only
/// looks at two variables.
pub fn engine_configured() -> bool {
    std::env::var_os(geometry::VAR_DEVICE).is_some() || std::env::var_os(VAR_CLUSTER_CONF).is_some()
}

impl EngineConfig {
    /// Reads the configuration from the process environment and files.
    pub fn from_env() -> Result<EngineConfig, ConfigError> {
        EngineConfig::from_lookup(&|k| std::env::var(k).ok())
    }

    /// As `from_env`, with variables from `get` (files are still read from
    /// disk; the host name is the real one).
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<EngineConfig, ConfigError> {
        EngineConfig::build(get, &host_name)
    }

    /// The node with this number, if configured.
    pub fn node(&self, number: u8) -> Option<&NodeConf> {
        self.nodes.iter().find(|n| n.number == number)
    }

    /// Every configured node but the local one.
    pub fn peers(&self) -> impl Iterator<Item = &NodeConf> {
        let me = self.local.number;
        self.nodes.iter().filter(move |n| n.number != me)
    }

    fn build(
        get: &dyn Fn(&str) -> Option<String>,
        hostname: &dyn Fn() -> Option<String>,
    ) -> Result<EngineConfig, ConfigError> {
        let conf_path =
            nonempty(get(VAR_CLUSTER_CONF)).unwrap_or_else(|| DEFAULT_CLUSTER_CONF.to_string());
        let text = std::fs::read_to_string(&conf_path)
            .map_err(|e| ConfigError::var(&conf_path, format!("cannot read: {e}")))?;
        let conf = cluster_conf::parse(&conf_path, &text)?;

        let sys = load_sysconfig(get)?;

        let cluster_name = match nonempty(get(VAR_BOOTCLUSTER)) {
            Some(c) => {
                if conf.cluster(&c).is_none() {
                    return Err(ConfigError::var(
                        VAR_BOOTCLUSTER,
                        format!("cluster '{c}' is not defined in {conf_path}"),
                    ));
                }
                c
            }
            None => match sys.as_ref().and_then(|s| {
                s.get(VAR_BOOTCLUSTER)
                    .filter(|e| !e.value.is_empty())
                    .map(|e| (s, e))
            }) {
                Some((s, e)) => {
                    if conf.cluster(&e.value).is_none() {
                        return Err(ConfigError::at_line(
                            &s.file,
                            e.line,
                            format!(
                                "{VAR_BOOTCLUSTER}: cluster '{}' is not defined in {conf_path}",
                                e.value
                            ),
                        ));
                    }
                    e.value.clone()
                }
                None => match conf.clusters.as_slice() {
                    [only] => only.name.clone(),
                    [] => return Err(ConfigError::var(&conf_path, "defines no 'cluster:' stanza")),
                    many => {
                        let names: Vec<&str> = many.iter().map(|c| c.name.as_str()).collect();
                        return Err(ConfigError::var(
                            &conf_path,
                            format!(
                                "defines several clusters ({}); set {VAR_BOOTCLUSTER} to choose one",
                                names.join(", ")
                            ),
                        ));
                    }
                },
            },
        };
        let nodes = conf.nodes_of(&cluster_name);

        let (wanted, origin) = match nonempty(get(VAR_NODE)) {
            Some(n) => (n, VAR_NODE.to_string()),
            None => match hostname() {
                Some(h) => (h, "host name".to_string()),
                None => {
                    return Err(ConfigError::var(
                        VAR_NODE,
                        "not set and the host name cannot be read",
                    ))
                }
            },
        };
        let matching: Vec<&NodeConf> = nodes
            .iter()
            .filter(|n| is_local_name(&n.name, &wanted))
            .collect();
        let local = match matching.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(ConfigError::var(
                    &origin,
                    format!("no node named '{wanted}' in cluster '{cluster_name}' of {conf_path}"),
                ))
            }
            _ => {
                return Err(ConfigError::var(
                    &origin,
                    format!(
                    "'{wanted}' matches several nodes of cluster '{cluster_name}' in {conf_path}"
                ),
                ))
            }
        };

        let timeouts = timeouts::resolve(get, sys.as_ref())?;
        let heartbeat = HeartbeatGeometry::from_lookup(get, None)?;
        if let Some(n) = nodes.iter().find(|n| n.number as u32 >= heartbeat.blocks) {
            return Err(ConfigError::var(
                geometry::VAR_BLOCKS,
                format!(
                    "a region of {} slots has no slot for node '{}' number {}",
                    heartbeat.blocks, n.name, n.number
                ),
            ));
        }
        let advertised = match nonempty(get(VAR_ADVERTISED_CONF)) {
            None => nodes.clone(),
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| ConfigError::var(&path, format!("cannot read: {e}")))?;
                let adv = cluster_conf::parse(&path, &text)?.nodes_of(&cluster_name);
                let numbers = |v: &[NodeConf]| v.iter().map(|n| n.number).collect::<Vec<_>>();
                if numbers(&adv) != numbers(&nodes) {
                    return Err(ConfigError::var(
                        VAR_ADVERTISED_CONF,
                        format!(
                            "{path} must list the same node numbers for cluster '{cluster_name}' as {conf_path}"
                        ),
                    ));
                }
                adv
            }
        };
        Ok(EngineConfig {
            cluster_name,
            local,
            nodes,
            advertised,
            timeouts,
            heartbeat,
        })
    }
}

fn nonempty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

/// o2cb's rule: a node is local if its name equals the host name up to the
/// host name's first '.', ignoring case.
fn is_local_name(node: &str, host: &str) -> bool {
    let short = host.split('.').next().unwrap_or(host);
    node.eq_ignore_ascii_case(short) || node.eq_ignore_ascii_case(host)
}

fn load_sysconfig(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<timeouts::Sysconfig>, ConfigError> {
    match get(VAR_SYSCONFIG) {
        // Explicitly empty: read no file (tests, or hosts without o2cb).
        Some(p) if p.is_empty() => Ok(None),
        Some(p) => {
            let text = std::fs::read_to_string(&p)
                .map_err(|e| ConfigError::var(&p, format!("cannot read ({VAR_SYSCONFIG}): {e}")))?;
            timeouts::parse_sysconfig(&p, &text).map(Some)
        }
        None => {
            for p in DEFAULT_SYSCONFIGS {
                match std::fs::read_to_string(p) {
                    Ok(text) => return timeouts::parse_sysconfig(p, &text).map(Some),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(ConfigError::var(p, format!("cannot read: {e}"))),
                }
            }
            Ok(None)
        }
    }
}

/// The kernel's host name (uname nodename).
fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for writes of its full length, and we pass
    // that length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let s = std::str::from_utf8(&buf[..end]).ok()?;
    nonempty(Some(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;

    const CONF: &str = "cluster:\n\tnode_count = 3\n\tname = labclu\n\nnode:\n\tip_port = 7777\n\tip_address = 10.1.0.11\n\tnumber = 7\n\tname = kernelbox\n\tcluster = labclu\n\nnode:\n\tip_port = 7777\n\tip_address = 10.1.0.12\n\tnumber = 2\n\tname = RustNode\n\tcluster = labclu\n\nnode:\n\tip_port = 7778\n\tip_address = 10.1.0.13\n\tnumber = 4\n\tname = third\n\tcluster = labclu\n";
    const TWO: &str = "cluster:\n\tnode_count = 1\n\tname = one\n\ncluster:\n\tnode_count = 1\n\tname = two\n\nnode:\n\tip_port = 7777\n\tip_address = 10.1.0.11\n\tnumber = 1\n\tname = a\n\tcluster = one\n\nnode:\n\tip_port = 7777\n\tip_address = 10.1.0.12\n\tnumber = 1\n\tname = a\n\tcluster = two\n";

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn tmpdir(tag: &str) -> Tmp {
        let d = std::env::temp_dir().join(format!("o2dlm-cfg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Tmp(d)
    }

    fn build(pairs: &[(&str, String)], host: Option<&str>) -> Result<EngineConfig, ConfigError> {
        let mut m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        m.entry(VAR_SYSCONFIG.into()).or_default();
        m.entry("O2DLM_HEARTBEAT_DEVICE".into())
            .or_insert_with(|| "/tmp/hb".into());
        let host = host.map(str::to_string);
        EngineConfig::build(&move |k| m.get(k).cloned(), &move || host.clone())
    }

    #[test]
    fn full_config_from_files() {
        let d = tmpdir("full");
        let conf = d.0.join("cluster.conf");
        std::fs::write(&conf, CONF).unwrap();
        let c = build(
            &[(VAR_CLUSTER_CONF, conf.display().to_string())],
            Some("rustnode.example.com"),
        )
        .unwrap();
        assert_eq!(c.cluster_name, "labclu");
        assert_eq!(c.local.name, "RustNode");
        assert_eq!(c.local.number, 2);
        let nums: Vec<u8> = c.nodes.iter().map(|n| n.number).collect();
        assert_eq!(nums, vec![2, 4, 7]);
        assert_eq!(c.peers().count(), 2);
        assert_eq!(c.node(7).unwrap().name, "kernelbox");
        assert_eq!(c.timeouts, Timeouts::default());
        assert_eq!(c.heartbeat.device, PathBuf::from("/tmp/hb"));

        // O2DLM_NODE wins over the host name; sysconfig timeouts are used.
        let sys = d.0.join("o2cb");
        std::fs::write(
            &sys,
            "O2CB_BOOTCLUSTER=labclu\nO2CB_HEARTBEAT_THRESHOLD=7\n",
        )
        .unwrap();
        let c = build(
            &[
                (VAR_CLUSTER_CONF, conf.display().to_string()),
                (VAR_NODE, "third".into()),
                (VAR_SYSCONFIG, sys.display().to_string()),
                ("O2CB_IDLE_TIMEOUT_MS", "10000".into()),
            ],
            Some("rustnode"),
        )
        .unwrap();
        assert_eq!(c.local.number, 4);
        assert_eq!(c.timeouts.heartbeat_threshold, 7);
        assert_eq!(c.timeouts.idle_timeout_ms, 10000);
    }

    #[test]
    fn errors() {
        let d = tmpdir("err");
        let conf = d.0.join("cluster.conf");
        std::fs::write(&conf, CONF).unwrap();
        let cp = conf.display().to_string();
        fn c(k: &'static str, v: &str) -> (&'static str, String) {
            (k, v.to_string())
        }
        let cf = (VAR_CLUSTER_CONF, cp.clone());

        let missing = d.0.join("nope").display().to_string();
        let e = build(&[(VAR_CLUSTER_CONF, missing.clone())], Some("x")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{missing}: cannot read:")),
            "{e}"
        );

        let e = build(std::slice::from_ref(&cf), Some("nobody")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("host name: no node named 'nobody' in cluster 'labclu' of {cp}")
        );
        let e = build(&[cf.clone(), c(VAR_NODE, "ghost")], Some("third")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("O2DLM_NODE: no node named 'ghost' in cluster 'labclu' of {cp}")
        );
        let e = build(std::slice::from_ref(&cf), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "O2DLM_NODE: not set and the host name cannot be read"
        );

        let e = build(&[cf.clone(), c(VAR_BOOTCLUSTER, "other")], Some("third")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("O2CB_BOOTCLUSTER: cluster 'other' is not defined in {cp}")
        );

        let sys = d.0.join("o2cb");
        std::fs::write(&sys, "# x\nO2CB_BOOTCLUSTER=zzz\n").unwrap();
        let sp = sys.display().to_string();
        let e = build(&[cf.clone(), (VAR_SYSCONFIG, sp.clone())], Some("third")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{sp}:2: O2CB_BOOTCLUSTER: cluster 'zzz' is not defined in {cp}")
        );
        let e = build(
            &[cf.clone(), (VAR_SYSCONFIG, missing.clone())],
            Some("third"),
        )
        .unwrap_err();
        assert!(e
            .to_string()
            .starts_with(&format!("{missing}: cannot read (O2DLM_O2CB_SYSCONFIG)")));

        // Node 7 does not fit a 7-slot region.
        let e = build(
            &[cf.clone(), c("O2DLM_HEARTBEAT_BLOCKS", "7")],
            Some("third"),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "O2DLM_HEARTBEAT_BLOCKS: a region of 7 slots has no slot for node 'kernelbox' number 7"
        );
        assert!(build(
            &[cf.clone(), c("O2DLM_HEARTBEAT_BLOCKS", "8")],
            Some("third")
        )
        .is_ok());

        let e = build(
            &[cf.clone(), c("O2CB_HEARTBEAT_THRESHOLD", "3")],
            Some("third"),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "O2CB_HEARTBEAT_THRESHOLD: 3 is below the minimum 7"
        );

        let mut no_dev: Vec<(&str, String)> = vec![cf.clone()];
        no_dev.push(("O2DLM_HEARTBEAT_DEVICE", String::new()));
        assert_eq!(
            build(&no_dev, Some("third")).unwrap_err().to_string(),
            "O2DLM_HEARTBEAT_DEVICE: is empty"
        );

        let bad = d.0.join("bad.conf");
        std::fs::write(
            &bad,
            "cluster:\n\tname = x\n\tnode_count = 1\n\n\tbroken = 1\n",
        )
        .unwrap();
        let bp = bad.display().to_string();
        let e = build(&[(VAR_CLUSTER_CONF, bp.clone())], Some("x")).unwrap_err();
        assert!(e
            .to_string()
            .starts_with(&format!("{bp}:5: attribute line outside a stanza")));

        let empty = d.0.join("empty.conf");
        std::fs::write(&empty, "# nothing\n").unwrap();
        let ep = empty.display().to_string();
        let e = build(&[(VAR_CLUSTER_CONF, ep.clone())], Some("x")).unwrap_err();
        assert_eq!(e.to_string(), format!("{ep}: defines no 'cluster:' stanza"));
    }

    #[test]
    fn several_clusters_need_bootcluster() {
        let d = tmpdir("two");
        let conf = d.0.join("cluster.conf");
        std::fs::write(&conf, TWO).unwrap();
        let cp = conf.display().to_string();
        let e = build(&[(VAR_CLUSTER_CONF, cp.clone())], Some("a")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{cp}: defines several clusters (one, two); set O2CB_BOOTCLUSTER to choose one"
            )
        );
        let c = build(
            &[
                (VAR_CLUSTER_CONF, cp.clone()),
                (VAR_BOOTCLUSTER, "two".into()),
            ],
            Some("A"),
        )
        .unwrap();
        assert_eq!(c.cluster_name, "two");
        assert_eq!(c.local.ip, Ipv4Addr::new(10, 1, 0, 12));
        assert_eq!(c.nodes.len(), 1);
    }

    #[test]
    fn ambiguous_local_name() {
        let d = tmpdir("amb");
        let conf = d.0.join("cluster.conf");
        let text = CONF.replace("name = third", "name = rustnode");
        std::fs::write(&conf, text).unwrap();
        let cp = conf.display().to_string();
        let e = build(&[(VAR_CLUSTER_CONF, cp.clone())], Some("RUSTNODE.lan")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("host name: 'RUSTNODE.lan' matches several nodes of cluster 'labclu' in {cp}")
        );
    }

    #[test]
    fn local_name_rule() {
        assert!(is_local_name("node7", "node7.example.com"));
        assert!(is_local_name("NODE7", "node7"));
        assert!(!is_local_name("node7", "node70"));
        assert!(!is_local_name("node", "node7.example.com"));
        assert!(!is_local_name("example", "node7.example.com"));
    }

    #[test]
    fn display_forms() {
        assert_eq!(
            ConfigError::at_line("/f", 3, "bad").to_string(),
            "/f:3: bad"
        );
        assert_eq!(ConfigError::var("VAR", "bad").to_string(), "VAR: bad");
    }
}
