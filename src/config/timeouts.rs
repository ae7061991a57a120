//! Cluster timeouts (O2CB_* variables) and the o2cb sysconfig file.
//!
//! Every node of a cluster must use the same four values: o2net refuses a
//! handshake whose timeouts differ, and the heartbeat threshold decides when
//! a silent node is declared dead.

use super::ConfigError;

/// o2hb write/read period.
pub const HB_PERIOD_MS: u32 = 2000;

/// The four cluster timeouts, as configured in the kernel's configfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Unchanged heartbeat samples before a live node is declared dead.
    pub heartbeat_threshold: u32,
    /// o2net: a link with no traffic for this long is closed.
    pub idle_timeout_ms: u32,
    /// o2net: a keepalive is sent after this much silence.
    pub keepalive_delay_ms: u32,
    /// o2net: delay between connection attempts.
    pub reconnect_delay_ms: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            heartbeat_threshold: DEFAULT_THRESHOLD,
            idle_timeout_ms: DEFAULT_IDLE_MS,
            keepalive_delay_ms: DEFAULT_KEEPALIVE_MS,
            reconnect_delay_ms: DEFAULT_RECONNECT_MS,
        }
    }
}

pub const DEFAULT_THRESHOLD: u32 = 31;
pub const DEFAULT_IDLE_MS: u32 = 30000;
pub const DEFAULT_KEEPALIVE_MS: u32 = 2000;
pub const DEFAULT_RECONNECT_MS: u32 = 2000;
/// Minimums enforced by ocfs2-tools' o2cb init script.
pub const MIN_THRESHOLD: u32 = 7;
pub const MIN_IDLE_MS: u32 = 5000;
pub const MIN_KEEPALIVE_MS: u32 = 1000;
pub const MIN_RECONNECT_MS: u32 = 2000;
/// The kernel counts unchanged samples in a u16, so a larger threshold
/// could never be reached.
pub const MAX_THRESHOLD: u32 = u16::MAX as u32;

impl Timeouts {
    /// `hb_dead_ms` written into our heartbeat block.
    pub fn dead_ms(&self) -> u32 {
        self.heartbeat_threshold.saturating_mul(HB_PERIOD_MS)
    }

    /// If our own heartbeat write has not succeeded for this long we must
    /// consider ourselves fenced; o2net sends it in the handshake.
    pub fn max_write_timeout_ms(&self) -> u32 {
        self.heartbeat_threshold
            .saturating_sub(1)
            .saturating_mul(HB_PERIOD_MS)
    }

    /// o2net's delay before a quorum decision after losing a link.
    pub fn quorum_delay_ms(&self) -> u32 {
        self.heartbeat_threshold
            .saturating_add(2)
            .saturating_mul(HB_PERIOD_MS)
    }

    /// Checks the minimums and the idle > keepalive rule; `origin` says
    /// where a value came from so the error can name it.
    pub fn validate(&self, origin: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let checks: [(&str, u32, u32, u32); 4] = [
            (
                VAR_THRESHOLD,
                self.heartbeat_threshold,
                MIN_THRESHOLD,
                MAX_THRESHOLD,
            ),
            (VAR_IDLE, self.idle_timeout_ms, MIN_IDLE_MS, u32::MAX - 1),
            (
                VAR_KEEPALIVE,
                self.keepalive_delay_ms,
                MIN_KEEPALIVE_MS,
                u32::MAX - 1,
            ),
            (
                VAR_RECONNECT,
                self.reconnect_delay_ms,
                MIN_RECONNECT_MS,
                u32::MAX - 1,
            ),
        ];
        for (var, v, min, max) in checks {
            if v < min {
                return Err(ConfigError::var(
                    &origin(var),
                    format!("{v} is below the minimum {min}"),
                ));
            }
            if v > max {
                return Err(ConfigError::var(
                    &origin(var),
                    format!("{v} is above the maximum {max}"),
                ));
            }
        }
        if self.idle_timeout_ms <= self.keepalive_delay_ms {
            return Err(ConfigError::var(
                &origin(VAR_IDLE),
                format!(
                    "idle timeout {} ms must be greater than the keepalive delay {} ms",
                    self.idle_timeout_ms, self.keepalive_delay_ms
                ),
            ));
        }
        Ok(())
    }
}

pub const VAR_THRESHOLD: &str = "O2CB_HEARTBEAT_THRESHOLD";
pub const VAR_IDLE: &str = "O2CB_IDLE_TIMEOUT_MS";
pub const VAR_KEEPALIVE: &str = "O2CB_KEEPALIVE_DELAY_MS";
pub const VAR_RECONNECT: &str = "O2CB_RECONNECT_DELAY_MS";

/// One `KEY=value` assignment of a sysconfig file with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysconfigEntry {
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// The parsed o2cb sysconfig file (`/etc/default/o2cb` or
/// `/etc/sysconfig/o2cb`): shell variable assignments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sysconfig {
    pub file: String,
    pub entries: Vec<SysconfigEntry>,
}

impl Sysconfig {
    /// The last assignment of `key` wins, as in a shell.
    pub fn get(&self, key: &str) -> Option<&SysconfigEntry> {
        self.entries.iter().rev().find(|e| e.key == key)
    }
}

/// Parses shell `KEY=value` lines: comments, blank lines, an optional
/// `export`, and values in single or double quotes. Anything else (the file
/// is sourced by a shell, but o2cb only ever writes plain assignments) is
/// refused with its line so a typo does not silently drop a timeout.
pub fn parse_sysconfig(file: &str, text: &str) -> Result<Sysconfig, ConfigError> {
    let mut entries = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let l = l.strip_prefix("export ").map(str::trim_start).unwrap_or(l);
        let Some(eq) = l.find('=') else {
            return Err(ConfigError::at_line(
                file,
                line,
                format!("expected KEY=value, found '{l}'"),
            ));
        };
        let key = &l[..eq];
        if key.is_empty()
            || key.as_bytes()[0].is_ascii_digit()
            || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(ConfigError::at_line(
                file,
                line,
                format!("bad variable name '{key}' (no spaces around '=' in a shell assignment)"),
            ));
        }
        let v = &l[eq + 1..];
        let value = unquote(v).ok_or_else(|| {
            ConfigError::at_line(
                file,
                line,
                format!("cannot understand the value {v} of {key}"),
            )
        })?;
        entries.push(SysconfigEntry {
            key: key.to_string(),
            value,
            line,
        });
    }
    Ok(Sysconfig {
        file: file.to_string(),
        entries,
    })
}

/// One shell word: bare, "double" or 'single' quoted; a trailing comment
/// after whitespace is allowed.
fn unquote(v: &str) -> Option<String> {
    let strip_comment = |rest: &str| -> Option<()> {
        let r = rest.trim_start();
        if r.is_empty() || (r.starts_with('#') && rest.len() != r.len()) {
            Some(())
        } else {
            None
        }
    };
    if let Some(inner) = v.strip_prefix('"') {
        let end = inner.find('"')?;
        let body = &inner[..end];
        if body.contains(['$', '`', '\\']) {
            return None;
        }
        strip_comment(&inner[end + 1..])?;
        return Some(body.to_string());
    }
    if let Some(inner) = v.strip_prefix('\'') {
        let end = inner.find('\'')?;
        strip_comment(&inner[end + 1..])?;
        return Some(inner[..end].to_string());
    }
    let word_end = v.find([' ', '\t']).unwrap_or(v.len());
    let word = &v[..word_end];
    if word.contains(['$', '`', '\\', '"', '\'', ';', '(', ')', '|', '&']) {
        return None;
    }
    strip_comment(&v[word_end..])?;
    Some(word.to_string())
}

/// Where one timeout value came from.
pub enum Source<'a> {
    Env,
    File(&'a SysconfigEntry, &'a str),
    Default,
}

/// Resolves the four timeouts: environment first, then the sysconfig file,
/// then the kernel defaults. An empty value (o2cb writes `KEY=` for "use
/// the default") counts as unset.
pub fn resolve(
    get: &dyn Fn(&str) -> Option<String>,
    sys: Option<&Sysconfig>,
) -> Result<Timeouts, ConfigError> {
    let one = |var: &str, default: u32| -> Result<(u32, String), ConfigError> {
        if let Some(v) = get(var).filter(|v| !v.trim().is_empty()) {
            let n = parse_u32(&v)
                .ok_or_else(|| ConfigError::var(var, format!("'{v}' is not a decimal number")))?;
            return Ok((n, var.to_string()));
        }
        if let Some(sys) = sys {
            if let Some(e) = sys.get(var).filter(|e| !e.value.trim().is_empty()) {
                let n = parse_u32(&e.value).ok_or_else(|| {
                    ConfigError::at_line(
                        &sys.file,
                        e.line,
                        format!("{var}: '{}' is not a decimal number", e.value),
                    )
                })?;
                return Ok((n, format!("{}:{}: {var}", sys.file, e.line)));
            }
        }
        Ok((default, format!("{var} (default)")))
    };
    let (t, ot) = one(VAR_THRESHOLD, DEFAULT_THRESHOLD)?;
    let (i, oi) = one(VAR_IDLE, DEFAULT_IDLE_MS)?;
    let (k, ok) = one(VAR_KEEPALIVE, DEFAULT_KEEPALIVE_MS)?;
    let (r, or) = one(VAR_RECONNECT, DEFAULT_RECONNECT_MS)?;
    let timeouts = Timeouts {
        heartbeat_threshold: t,
        idle_timeout_ms: i,
        keepalive_delay_ms: k,
        reconnect_delay_ms: r,
    };
    let origin = |var: &str| -> String {
        match var {
            VAR_THRESHOLD => ot.clone(),
            VAR_IDLE => oi.clone(),
            VAR_KEEPALIVE => ok.clone(),
            _ => or.clone(),
        }
    };
    timeouts.validate(&origin)?;
    Ok(timeouts)
}

/// Decimal digits only, surrounding whitespace tolerated.
pub(crate) fn parse_u32(v: &str) -> Option<u32> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn defaults_and_derived() {
        let t = resolve(&env(&[]), None).unwrap();
        assert_eq!(t, Timeouts::default());
        assert_eq!(t.heartbeat_threshold, 31);
        assert_eq!(t.idle_timeout_ms, 30000);
        assert_eq!(t.keepalive_delay_ms, 2000);
        assert_eq!(t.reconnect_delay_ms, 2000);
        assert_eq!(t.dead_ms(), 62000);
        assert_eq!(t.max_write_timeout_ms(), 60000);
        assert_eq!(t.quorum_delay_ms(), 66000);
        let t7 = Timeouts {
            heartbeat_threshold: 7,
            ..t
        };
        assert_eq!(t7.dead_ms(), 14000);
        assert_eq!(t7.max_write_timeout_ms(), 12000);
        assert_eq!(t7.quorum_delay_ms(), 18000);
    }

    #[test]
    fn env_beats_file_beats_default() {
        let sys = parse_sysconfig(
            "/etc/default/o2cb",
            "# o2cb config\nO2CB_ENABLED=true\nO2CB_BOOTCLUSTER=ocfs2\nO2CB_HEARTBEAT_THRESHOLD=61\nO2CB_IDLE_TIMEOUT_MS=\"40000\"\nexport O2CB_KEEPALIVE_DELAY_MS='3000' # tuned\nO2CB_RECONNECT_DELAY_MS=\n",
        )
        .unwrap();
        let t = resolve(&env(&[("O2CB_HEARTBEAT_THRESHOLD", "9")]), Some(&sys)).unwrap();
        assert_eq!(t.heartbeat_threshold, 9);
        assert_eq!(t.idle_timeout_ms, 40000);
        assert_eq!(t.keepalive_delay_ms, 3000);
        assert_eq!(t.reconnect_delay_ms, 2000, "empty value means default");
        assert_eq!(sys.get("O2CB_BOOTCLUSTER").unwrap().value, "ocfs2");
    }

    #[test]
    fn minimums_and_rules() {
        let cases: &[(&str, &str, &str)] = &[
            ("O2CB_HEARTBEAT_THRESHOLD", "6", "O2CB_HEARTBEAT_THRESHOLD: 6 is below the minimum 7"),
            ("O2CB_HEARTBEAT_THRESHOLD", "65536", "O2CB_HEARTBEAT_THRESHOLD: 65536 is above the maximum 65535"),
            ("O2CB_IDLE_TIMEOUT_MS", "4999", "O2CB_IDLE_TIMEOUT_MS: 4999 is below the minimum 5000"),
            ("O2CB_KEEPALIVE_DELAY_MS", "999", "O2CB_KEEPALIVE_DELAY_MS: 999 is below the minimum 1000"),
            ("O2CB_RECONNECT_DELAY_MS", "1999", "O2CB_RECONNECT_DELAY_MS: 1999 is below the minimum 2000"),
            ("O2CB_KEEPALIVE_DELAY_MS", "30000", "O2CB_IDLE_TIMEOUT_MS (default): idle timeout 30000 ms must be greater than the keepalive delay 30000 ms"),
            ("O2CB_IDLE_TIMEOUT_MS", "abc", "O2CB_IDLE_TIMEOUT_MS: 'abc' is not a decimal number"),
            ("O2CB_IDLE_TIMEOUT_MS", "-5", "O2CB_IDLE_TIMEOUT_MS: '-5' is not a decimal number"),
            ("O2CB_IDLE_TIMEOUT_MS", "99999999999", "O2CB_IDLE_TIMEOUT_MS: '99999999999' is not a decimal number"),
        ];
        for (var, val, msg) in cases {
            let got = resolve(&env(&[(var, val)]), None).unwrap_err().to_string();
            assert_eq!(&got, msg);
        }
        assert!(resolve(&env(&[("O2CB_HEARTBEAT_THRESHOLD", "7")]), None).is_ok());
    }

    #[test]
    fn file_errors_name_file_and_line() {
        let sys = parse_sysconfig("/s/o2cb", "\n\nO2CB_HEARTBEAT_THRESHOLD=3\n").unwrap();
        assert_eq!(
            resolve(&env(&[]), Some(&sys)).unwrap_err().to_string(),
            "/s/o2cb:3: O2CB_HEARTBEAT_THRESHOLD: 3 is below the minimum 7"
        );
        let sys = parse_sysconfig("/s/o2cb", "O2CB_IDLE_TIMEOUT_MS=lots\n").unwrap();
        assert_eq!(
            resolve(&env(&[]), Some(&sys)).unwrap_err().to_string(),
            "/s/o2cb:1: O2CB_IDLE_TIMEOUT_MS: 'lots' is not a decimal number"
        );
        let e = |t: &str| parse_sysconfig("/s/o2cb", t).unwrap_err().to_string();
        assert_eq!(
            e("# c\nO2CB_X\n"),
            "/s/o2cb:2: expected KEY=value, found 'O2CB_X'"
        );
        assert!(e("O2CB_X = 5\n").starts_with("/s/o2cb:1: bad variable name 'O2CB_X '"));
        assert!(e("1X=5\n").starts_with("/s/o2cb:1: bad variable name"));
        assert!(e("X=\"5\n").starts_with("/s/o2cb:1: cannot understand the value"));
        assert!(e("X=$(cat f)\n").starts_with("/s/o2cb:1: cannot understand the value"));
        assert!(e("X=5 6\n").starts_with("/s/o2cb:1: cannot understand the value"));
    }
}
