//! The o2cb `cluster.conf` stanza file (ocfs2.cluster.conf(5)).
//!
//! Two passes: `lex` turns lines into stanzas of raw `name = value`
//! attributes following o2cb_ctl's lexical rules, then `parse` checks every
//! stanza and builds typed clusters, nodes and heartbeat regions. Every
//! error names the file and line it is about.

use super::{ConfigError, NodeConf};
use std::net::Ipv4Addr;

/// Longest cluster name o2cb accepts.
const MAX_CLUSTER_NAME: usize = 16;
/// Longest node name the kernel's node manager accepts (O2NM_MAX_NAME_LEN).
const MAX_NODE_NAME: usize = 64;
/// Node numbers are 0..=254; 255 means "no node" in the kernel.
const MAX_NODE_NUMBER: u32 = 254;

/// One raw stanza: its header word, the line of the header, and its
/// attributes with the line each started on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stanza {
    pub kind: String,
    pub line: usize,
    pub attrs: Vec<(String, String, usize)>,
}

/// Heartbeat mode of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatMode {
    Local,
    Global,
}

/// A `cluster:` stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStanza {
    pub name: String,
    pub node_count: u32,
    pub heartbeat_mode: HeartbeatMode,
    pub line: usize,
}

/// A `heartbeat:` stanza (global heartbeat region).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatStanza {
    pub region: String,
    pub cluster: String,
    pub line: usize,
}

/// The whole file, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConf {
    pub clusters: Vec<ClusterStanza>,
    /// Every node of every cluster, in file order.
    pub nodes: Vec<NodeConf>,
    pub heartbeats: Vec<HeartbeatStanza>,
}

impl ClusterConf {
    /// The nodes of one cluster, sorted by number.
    pub fn nodes_of(&self, cluster: &str) -> Vec<NodeConf> {
        let mut v: Vec<NodeConf> = self
            .nodes
            .iter()
            .filter(|n| n.cluster == cluster)
            .cloned()
            .collect();
        v.sort_by_key(|n| n.number);
        v
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterStanza> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

fn err(file: &str, line: usize, problem: impl Into<String>) -> ConfigError {
    ConfigError::at_line(file, line, problem)
}

fn is_ident(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Splits the text into stanzas following o2cb_ctl's lexical rules.
pub fn lex(file: &str, text: &str) -> Result<Vec<Stanza>, ConfigError> {
    let mut stanzas: Vec<Stanza> = Vec::new();
    // True while attribute lines may follow (after a header, before a blank).
    let mut open = false;
    // Set when the previous attribute line ended in a backslash: the value
    // continues on the next line.
    let mut continuing = false;
    for (idx, raw) in text.split('\n').enumerate() {
        let lineno = idx + 1;
        // A file with CRLF endings is common when edited elsewhere; the
        // carriage return is not part of any value.
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if continuing {
            let Some(stanza) = stanzas.last_mut() else {
                return Err(err(file, lineno, "continuation line outside a stanza"));
            };
            let Some(attr) = stanza.attrs.last_mut() else {
                return Err(err(file, lineno, "continuation line outside an attribute"));
            };
            continuing = line.ends_with('\\');
            let piece = line.strip_suffix('\\').unwrap_or(line);
            attr.1.push('\n');
            attr.1.push_str(piece);
            continue;
        }
        if line.trim().is_empty() {
            // A blank (or whitespace-only) line ends the stanza.
            open = false;
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let first = line.as_bytes()[0];
        if first == b' ' || first == b'\t' {
            if !open {
                return Err(err(
                    file,
                    lineno,
                    "attribute line outside a stanza (a blank line ends a stanza; start a new one with a header such as 'node:')",
                ));
            }
            let body = line.trim_start_matches([' ', '\t']);
            let Some(eq) = body.find('=') else {
                return Err(err(
                    file,
                    lineno,
                    format!("expected 'name = value', found '{}'", body.trim_end()),
                ));
            };
            let name = body[..eq].trim_end_matches([' ', '\t']);
            if !is_ident(name) {
                return Err(err(
                    file,
                    lineno,
                    format!("bad attribute name '{name}' (letters, digits and '_' only)"),
                ));
            }
            let mut value = body[eq + 1..].trim_start_matches([' ', '\t']);
            if let Some(v) = value.strip_suffix('\\') {
                continuing = true;
                value = v;
            }
            let Some(stanza) = stanzas.last_mut() else {
                return Err(err(file, lineno, "attribute line outside a stanza"));
            };
            if stanza.attrs.iter().any(|(n, _, _)| n == name) {
                return Err(err(
                    file,
                    lineno,
                    format!(
                        "attribute '{name}' given twice in the same '{}:' stanza",
                        stanza.kind
                    ),
                ));
            }
            stanza
                .attrs
                .push((name.to_string(), value.to_string(), lineno));
            continue;
        }
        // Column 0: must be a stanza header "word:" with only whitespace after.
        let Some(colon) = line.find(':') else {
            return Err(err(
                file,
                lineno,
                format!(
                    "expected a stanza header like 'node:' or an indented attribute, found '{}'",
                    line.trim_end()
                ),
            ));
        };
        let kind = &line[..colon];
        if !is_ident(kind) {
            return Err(err(file, lineno, format!("bad stanza name '{kind}'")));
        }
        let rest = &line[colon + 1..];
        if !rest.trim().is_empty() {
            return Err(err(
                file,
                lineno,
                format!("unexpected text '{}' after '{kind}:'", rest.trim()),
            ));
        }
        stanzas.push(Stanza {
            kind: kind.to_string(),
            line: lineno,
            attrs: Vec::new(),
        });
        open = true;
    }
    if continuing {
        let last = text.split('\n').count();
        return Err(err(file, last, "file ends inside a '\\' continuation"));
    }
    Ok(stanzas)
}

/// Attribute access for one stanza, with errors naming file and line.
struct Attrs<'a> {
    file: &'a str,
    stanza: &'a Stanza,
}

impl<'a> Attrs<'a> {
    fn get(&self, key: &str) -> Option<(&'a str, usize)> {
        self.stanza
            .attrs
            .iter()
            .find(|(n, _, _)| n == key)
            .map(|(_, v, l)| (v.as_str(), *l))
    }

    /// A required value, refused when empty or with stray whitespace (o2cb
    /// keeps trailing whitespace in values, which would silently make a
    /// name or number not match).
    fn required(&self, key: &str) -> Result<(&'a str, usize), ConfigError> {
        match self.get(key) {
            Some((v, l)) => {
                check_clean(self.file, l, key, v)?;
                Ok((v, l))
            }
            None => Err(err(
                self.file,
                self.stanza.line,
                format!("'{}:' stanza has no '{key}'", self.stanza.kind),
            )),
        }
    }

    fn optional(&self, key: &str) -> Result<Option<(&'a str, usize)>, ConfigError> {
        match self.get(key) {
            Some((v, l)) => {
                check_clean(self.file, l, key, v)?;
                Ok(Some((v, l)))
            }
            None => Ok(None),
        }
    }

    fn warn_unknown(&self, known: &[&str]) {
        for (n, _, l) in &self.stanza.attrs {
            if !known.contains(&n.as_str()) {
                log::warn!(
                    "{}:{}: unknown attribute '{n}' in '{}:' stanza ignored",
                    self.file,
                    l,
                    self.stanza.kind
                );
            }
        }
    }
}

fn check_clean(file: &str, line: usize, key: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() {
        return Err(err(file, line, format!("'{key}' has an empty value")));
    }
    if v.contains('\n') {
        return Err(err(
            file,
            line,
            format!("'{key}' value spans several lines"),
        ));
    }
    if v.ends_with([' ', '\t']) {
        return Err(err(
            file,
            line,
            format!("'{key}' value '{v}' has trailing whitespace"),
        ));
    }
    Ok(())
}

/// Strict decimal: digits only (no sign, no spaces, no 0x).
fn decimal(file: &str, line: usize, key: &str, v: &str, max: u32) -> Result<u32, ConfigError> {
    let bad = || {
        err(
            file,
            line,
            format!("'{key}' must be a decimal number 0..{max}, found '{v}'"),
        )
    };
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = v.parse().map_err(|_| bad())?;
    if n > max as u64 {
        return Err(bad());
    }
    Ok(n as u32)
}

fn parse_cluster(file: &str, s: &Stanza) -> Result<ClusterStanza, ConfigError> {
    let a = Attrs { file, stanza: s };
    a.warn_unknown(&["name", "node_count", "heartbeat_mode"]);
    let (name, nl) = a.required("name")?;
    if name.len() > MAX_CLUSTER_NAME || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(err(
            file,
            nl,
            format!("cluster name '{name}' must be 1..{MAX_CLUSTER_NAME} letters or digits"),
        ));
    }
    let (count, cl) = a.required("node_count")?;
    let node_count = decimal(file, cl, "node_count", count, 255)?;
    let heartbeat_mode = match a.optional("heartbeat_mode")? {
        None => HeartbeatMode::Local,
        Some((m, ml)) => match m {
            "local" => HeartbeatMode::Local,
            "global" => HeartbeatMode::Global,
            _ => {
                return Err(err(
                    file,
                    ml,
                    format!("heartbeat_mode must be 'local' or 'global', found '{m}'"),
                ))
            }
        },
    };
    Ok(ClusterStanza {
        name: name.to_string(),
        node_count,
        heartbeat_mode,
        line: s.line,
    })
}

fn parse_node(file: &str, s: &Stanza) -> Result<(NodeConf, usize), ConfigError> {
    let a = Attrs { file, stanza: s };
    a.warn_unknown(&["name", "number", "ip_address", "ip_port", "cluster"]);
    let (name, nl) = a.required("name")?;
    if name.len() > MAX_NODE_NAME
        || name
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b == b'/' || b.is_ascii_control())
    {
        return Err(err(
            file,
            nl,
            format!(
                "bad node name '{name}' (at most {MAX_NODE_NAME} characters, no spaces or '/')"
            ),
        ));
    }
    let (num, numl) = a.required("number")?;
    let number = decimal(file, numl, "number", num, MAX_NODE_NUMBER)? as u8;
    let (ip, ipl) = a.required("ip_address")?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| {
        err(
            file,
            ipl,
            format!("ip_address must be a dotted-quad IPv4 address, found '{ip}'"),
        )
    })?;
    let (port, pl) = a.required("ip_port")?;
    let port = decimal(file, pl, "ip_port", port, 65534)?;
    if port == 0 {
        return Err(err(file, pl, "ip_port must be 1..65534, found '0'"));
    }
    let (cluster, _) = a.required("cluster")?;
    Ok((
        NodeConf {
            name: name.to_string(),
            number,
            ip,
            port: port as u16,
            cluster: cluster.to_string(),
        },
        s.line,
    ))
}

fn parse_heartbeat(file: &str, s: &Stanza) -> Result<HeartbeatStanza, ConfigError> {
    let a = Attrs { file, stanza: s };
    a.warn_unknown(&["region", "cluster"]);
    let (region, rl) = a.required("region")?;
    if region.len() != 32
        || !region
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        return Err(err(
            file,
            rl,
            format!("region must be 32 upper-case hex digits, found '{region}'"),
        ));
    }
    let (cluster, _) = a.required("cluster")?;
    Ok(HeartbeatStanza {
        region: region.to_string(),
        cluster: cluster.to_string(),
        line: s.line,
    })
}

/// Parses and checks a whole cluster.conf text.
pub fn parse(file: &str, text: &str) -> Result<ClusterConf, ConfigError> {
    let stanzas = lex(file, text)?;
    let mut clusters: Vec<ClusterStanza> = Vec::new();
    let mut nodes: Vec<(NodeConf, usize)> = Vec::new();
    let mut heartbeats: Vec<HeartbeatStanza> = Vec::new();
    for s in &stanzas {
        match s.kind.as_str() {
            "cluster" => {
                let c = parse_cluster(file, s)?;
                if clusters.iter().any(|o| o.name == c.name) {
                    return Err(err(
                        file,
                        s.line,
                        format!("cluster '{}' defined twice", c.name),
                    ));
                }
                clusters.push(c);
            }
            "node" => nodes.push(parse_node(file, s)?),
            "heartbeat" => heartbeats.push(parse_heartbeat(file, s)?),
            other => log::warn!("{file}:{}: unknown stanza '{other}:' ignored", s.line),
        }
    }
    // Cross-stanza checks: every reference resolves and identities are unique
    // within a cluster, as the kernel's node manager requires.
    for (i, (n, line)) in nodes.iter().enumerate() {
        if !clusters.iter().any(|c| c.name == n.cluster) {
            return Err(err(
                file,
                *line,
                format!(
                    "node '{}' names cluster '{}', which has no 'cluster:' stanza",
                    n.name, n.cluster
                ),
            ));
        }
        for (o, _) in &nodes[..i] {
            if o.cluster != n.cluster {
                continue;
            }
            if o.name == n.name {
                return Err(err(
                    file,
                    *line,
                    format!(
                        "node name '{}' used twice in cluster '{}'",
                        n.name, n.cluster
                    ),
                ));
            }
            if o.number == n.number {
                return Err(err(
                    file,
                    *line,
                    format!(
                        "node number {} of '{}' already used by '{}' in cluster '{}'",
                        n.number, n.name, o.name, n.cluster
                    ),
                ));
            }
            if o.ip == n.ip && o.port == n.port {
                return Err(err(
                    file,
                    *line,
                    format!(
                        "address {}:{} of '{}' already used by '{}'",
                        n.ip, n.port, n.name, o.name
                    ),
                ));
            }
            if o.ip == n.ip {
                // The kernel maps incoming links by source address only, so
                // this cannot work for kernel nodes; a node reached through a
                // forwarded port on loopback may still need it here.
                log::warn!(
                    "{file}:{line}: nodes '{}' and '{}' share address {}",
                    o.name,
                    n.name,
                    n.ip
                );
            }
        }
    }
    for h in &heartbeats {
        if !clusters.iter().any(|c| c.name == h.cluster) {
            return Err(err(
                file,
                h.line,
                format!(
                    "heartbeat region names cluster '{}', which has no 'cluster:' stanza",
                    h.cluster
                ),
            ));
        }
    }
    for c in &clusters {
        let count = nodes.iter().filter(|(n, _)| n.cluster == c.name).count();
        if count as u32 != c.node_count {
            // o2cb_ctl does not rely on node_count either; only tell.
            log::warn!(
                "{file}:{}: cluster '{}' says node_count = {} but has {count} node stanzas",
                c.line,
                c.name,
                c.node_count
            );
        }
    }
    Ok(ClusterConf {
        clusters,
        nodes: nodes.into_iter().map(|(n, _)| n).collect(),
        heartbeats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: &str = "/x/cluster.conf";

    const SAMPLE: &str = "cluster:\n\tnode_count = 2\n\theartbeat_mode = local\n\tname = labclu\n\nnode:\n\tip_port = 7777\n\tip_address = 10.1.0.11\n\tnumber = 1\n\tname = kernelbox\n\tcluster = labclu\n\nnode:\n\tip_port = 7777\n\tip_address = 10.1.0.12\n\tnumber = 2\n\tname = rustnode\n\tcluster = labclu\n";

    fn e(text: &str) -> String {
        parse(F, text).unwrap_err().to_string()
    }

    #[test]
    fn parses_reference_example() {
        let c = parse(F, SAMPLE).unwrap();
        assert_eq!(c.clusters.len(), 1);
        assert_eq!(c.clusters[0].name, "labclu");
        assert_eq!(c.clusters[0].node_count, 2);
        assert_eq!(c.clusters[0].heartbeat_mode, HeartbeatMode::Local);
        let n = c.nodes_of("labclu");
        assert_eq!(n.len(), 2);
        assert_eq!(n[0].name, "kernelbox");
        assert_eq!(n[0].number, 1);
        assert_eq!(n[0].ip, Ipv4Addr::new(10, 1, 0, 11));
        assert_eq!(n[0].port, 7777);
        assert_eq!(n[1].name, "rustnode");
    }

    #[test]
    fn lexical_details() {
        // Comments, several blank lines, spaces instead of tabs, no spaces
        // around '=', CRLF endings, global heartbeat stanza.
        let text = "# comment\ncluster:\n  name=c1\n        node_count =1\n\theartbeat_mode = global\n\n\n# another\r\nnode:\r\n\tname = a.b\r\n\tnumber = 254\r\n\tip_address = 127.0.0.1\r\n\tip_port = 65534\r\n\tcluster = c1\r\n  \t \nheartbeat:\n\tregion = 77D95EF51C0149D2823674FCC162CF8B\n\tcluster = c1\n";
        let c = parse(F, text).unwrap();
        assert_eq!(c.clusters[0].heartbeat_mode, HeartbeatMode::Global);
        assert_eq!(c.nodes[0].number, 254);
        assert_eq!(c.nodes[0].port, 65534);
        assert_eq!(c.heartbeats[0].region, "77D95EF51C0149D2823674FCC162CF8B");
    }

    #[test]
    fn continuation_keeps_newline() {
        let s = lex(F, "x:\n\ta = one \\\ntwo\n\tb = 3\n").unwrap();
        assert_eq!(s[0].attrs[0].1, "one \ntwo");
        assert_eq!(s[0].attrs[1], ("b".to_string(), "3".to_string(), 4));
        // In a typed field a multi-line value is an error.
        assert!(e("cluster:\n\tname = a\\\nb\n\tnode_count = 0\n").contains("several lines"));
        assert_eq!(
            lex(F, "x:\n\ta = 1\\").unwrap_err().to_string(),
            "/x/cluster.conf:2: file ends inside a '\\' continuation"
        );
    }

    #[test]
    fn lexical_errors_name_file_and_line() {
        assert_eq!(
            e("cluster:\n\tname = c\n\n\tnode_count = 1\n"),
            "/x/cluster.conf:4: attribute line outside a stanza (a blank line ends a stanza; start a new one with a header such as 'node:')"
        );
        assert_eq!(
            e("\tname = c\n"),
            "/x/cluster.conf:1: attribute line outside a stanza (a blank line ends a stanza; start a new one with a header such as 'node:')"
        );
        assert!(e("cluster:\n\tname c\n").starts_with("/x/cluster.conf:2: expected 'name = value'"));
        assert!(e("cluster:\n\tna-me = c\n")
            .starts_with("/x/cluster.conf:2: bad attribute name 'na-me'"));
        assert!(e("cluster:\n\t = c\n").starts_with("/x/cluster.conf:2: bad attribute name ''"));
        assert!(e("cluster\n").starts_with("/x/cluster.conf:1: expected a stanza header"));
        assert!(e("clu ster:\n").starts_with("/x/cluster.conf:1: bad stanza name 'clu ster'"));
        assert!(e("cluster: x\n").starts_with("/x/cluster.conf:1: unexpected text 'x'"));
        assert!(e("cluster:\n\tname = a\n\tname = b\n")
            .starts_with("/x/cluster.conf:3: attribute 'name' given twice"));
    }

    #[test]
    fn cluster_errors() {
        assert_eq!(
            e("cluster:\n\tnode_count = 1\n"),
            "/x/cluster.conf:1: 'cluster:' stanza has no 'name'"
        );
        assert!(e("cluster:\n\tname = c\n").contains(":1: 'cluster:' stanza has no 'node_count'"));
        assert!(
            e("cluster:\n\tname = abcdefghijklmnopq\n\tnode_count = 1\n")
                .contains(":2: cluster name")
        );
        assert!(e("cluster:\n\tname = a_b\n\tnode_count = 1\n").contains(":2: cluster name 'a_b'"));
        assert!(e("cluster:\n\tname = c\n\tnode_count = x\n")
            .contains(":3: 'node_count' must be a decimal"));
        assert!(
            e("cluster:\n\tname = c\n\tnode_count = 1\n\theartbeat_mode = both\n")
                .contains(":4: heartbeat_mode must be")
        );
        assert!(e("cluster:\n\tname = c \n\tnode_count = 1\n")
            .contains(":2: 'name' value 'c ' has trailing whitespace"));
        assert!(
            e("cluster:\n\tname =\n\tnode_count = 1\n").contains(":2: 'name' has an empty value")
        );
        assert!(e(
            "cluster:\n\tname = c\n\tnode_count = 0\n\ncluster:\n\tname = c\n\tnode_count = 0\n"
        )
        .contains(":5: cluster 'c' defined twice"));
    }

    fn node(extra: &str) -> String {
        format!("cluster:\n\tname = c\n\tnode_count = 1\n\nnode:\n{extra}")
    }

    #[test]
    fn node_errors() {
        let full =
            "\tname = n\n\tnumber = 3\n\tip_address = 127.0.0.1\n\tip_port = 7777\n\tcluster = c\n";
        assert!(parse(F, &node(full)).is_ok());
        for (key, line_of_header_error) in [
            ("name", 5),
            ("number", 5),
            ("ip_address", 5),
            ("ip_port", 5),
            ("cluster", 5),
        ] {
            let text: String = full
                .lines()
                .filter(|l| !l.contains(&format!("\t{key} =")))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_eq!(
                e(&node(&text)),
                format!("/x/cluster.conf:{line_of_header_error}: 'node:' stanza has no '{key}'")
            );
        }
        let bad = |from: &str, to: &str| e(&node(&full.replace(from, to)));
        assert!(bad("number = 3", "number = 255")
            .contains(":7: 'number' must be a decimal number 0..254"));
        assert!(bad("number = 3", "number = -1").contains(":7: 'number'"));
        assert!(bad("number = 3", "number = 0x3").contains(":7: 'number'"));
        assert!(bad("127.0.0.1", "127.0.0").contains(":8: ip_address must be a dotted-quad"));
        assert!(bad("127.0.0.1", "localhost").contains(":8: ip_address"));
        assert!(bad("7777", "0").contains(":9: ip_port must be 1..65534"));
        assert!(bad("7777", "65535").contains(":9: 'ip_port' must be a decimal number 0..65534"));
        assert!(bad("cluster = c", "cluster = d")
            .contains(":5: node 'n' names cluster 'd', which has no 'cluster:' stanza"));
        assert!(bad("name = n", "name = a b").contains(":6: bad node name"));
    }

    #[test]
    fn duplicate_nodes() {
        let n = |name: &str, num: u8, ip: &str, port: u16| {
            format!("\nnode:\n\tname = {name}\n\tnumber = {num}\n\tip_address = {ip}\n\tip_port = {port}\n\tcluster = c\n")
        };
        let base = "cluster:\n\tname = c\n\tnode_count = 2\n";
        let ok = format!(
            "{base}{}{}",
            n("a", 1, "127.0.0.1", 20001),
            n("b", 2, "127.0.0.1", 20002)
        );
        assert!(
            parse(F, &ok).is_ok(),
            "same address, different ports is allowed"
        );
        let t = format!(
            "{base}{}{}",
            n("a", 1, "127.0.0.1", 20001),
            n("a", 2, "127.0.0.2", 20001)
        );
        assert!(e(&t).contains(":12: node name 'a' used twice"));
        let t = format!(
            "{base}{}{}",
            n("a", 1, "127.0.0.1", 20001),
            n("b", 1, "127.0.0.2", 20001)
        );
        assert!(e(&t).contains(":12: node number 1 of 'b' already used by 'a'"));
        let t = format!(
            "{base}{}{}",
            n("a", 1, "127.0.0.1", 20001),
            n("b", 2, "127.0.0.1", 20001)
        );
        assert!(e(&t).contains(":12: address 127.0.0.1:20001 of 'b' already used by 'a'"));
    }

    #[test]
    fn heartbeat_errors() {
        let base = "cluster:\n\tname = c\n\tnode_count = 0\n\nheartbeat:\n";
        assert!(e(&format!(
            "{base}\tregion = 77d95ef51c0149d2823674fcc162cf8b\n\tcluster = c\n"
        ))
        .contains(":6: region must be 32 upper-case hex digits"));
        assert!(e(&format!("{base}\tregion = ABC\n\tcluster = c\n")).contains(":6: region must be"));
        assert!(e(&format!(
            "{base}\tregion = 77D95EF51C0149D2823674FCC162CF8B\n\tcluster = x\n"
        ))
        .contains(":5: heartbeat region names cluster 'x'"));
        assert!(e(&format!("{base}\tcluster = c\n"))
            .contains(":5: 'heartbeat:' stanza has no 'region'"));
    }

    #[test]
    fn unknown_stanzas_and_keys_are_ignored() {
        let t = format!("{SAMPLE}\nfuture:\n\tx = 1\n");
        assert!(parse(F, &t).is_ok());
        let t = SAMPLE.replace("\tname = labclu\n", "\tname = labclu\n\tcolor = blue\n");
        assert!(parse(F, &t).is_ok());
    }
}
