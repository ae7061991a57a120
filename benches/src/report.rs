//! The result table: one row per figure, with the baseline measured in the
//! same run, the ratio, the target and whether it is met.

use std::fmt::Write as _;

/// What a measurement produced. Only `Value` is a number; every other case
/// carries the reason, which is printed instead of a number.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Value(f64),
    /// The o2dlm code path ran and the engine refused (its DLM is not
    /// built): a short reason for the table and the error it got.
    Pending {
        reason: String,
        detail: String,
    },
    /// A baseline could not be run here (package missing, one CPU, ...).
    Unavailable(String),
    /// The measurement ran and broke.
    Failed(String),
}

impl Outcome {
    pub fn value(&self) -> Option<f64> {
        match self {
            Outcome::Value(v) => Some(*v),
            _ => None,
        }
    }

    pub fn text(&self) -> String {
        match self {
            Outcome::Value(v) => fmt_num(*v),
            Outcome::Pending { reason, .. } => format!("pending: {reason}"),
            Outcome::Unavailable(r) => format!("unavailable: {r}"),
            Outcome::Failed(r) => format!("failed: {r}"),
        }
    }

    /// Applies `f` to a value, keeping the reason otherwise.
    pub fn map(&self, f: impl FnOnce(f64) -> f64) -> Outcome {
        match self {
            Outcome::Value(v) => Outcome::Value(f(*v)),
            other => other.clone(),
        }
    }
}

/// Goals from issue 7. They are printed as met / not met, never asserted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// value / baseline must be at most this.
    RatioAtMost(f64),
    /// value / baseline must be at least this.
    RatioAtLeast(f64),
    /// the value itself must be at most this (in the row's unit).
    AtMost(f64),
}

impl Target {
    fn text(self) -> String {
        match self {
            Target::RatioAtMost(r) => format!("ratio <= {}", fmt_short(r)),
            Target::RatioAtLeast(r) => format!("ratio >= {}", fmt_short(r)),
            Target::AtMost(v) => format!("<= {}", fmt_short(v)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub figure: String,
    pub value: Outcome,
    pub unit: &'static str,
    /// The baseline's name and its value, in the same unit as `value`.
    pub baseline: Option<(String, Outcome)>,
    pub target: Option<Target>,
}

impl Row {
    pub fn new(figure: impl Into<String>, value: Outcome, unit: &'static str) -> Row {
        Row {
            figure: figure.into(),
            value,
            unit,
            baseline: None,
            target: None,
        }
    }

    pub fn baseline(mut self, name: impl Into<String>, value: Outcome) -> Row {
        self.baseline = Some((name.into(), value));
        self
    }

    pub fn target(mut self, t: Target) -> Row {
        self.target = Some(t);
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        let v = self.value.value()?;
        let b = self.baseline.as_ref()?.1.value()?;
        (b > 0.0).then(|| v / b)
    }

    /// Some(true/false) when it can be decided, None when a number is missing.
    pub fn met(&self) -> Option<bool> {
        match self.target? {
            Target::RatioAtMost(r) => self.ratio().map(|x| x <= r),
            Target::RatioAtLeast(r) => self.ratio().map(|x| x >= r),
            Target::AtMost(limit) => self.value.value().map(|v| v <= limit),
        }
    }

    fn cells(&self) -> [String; 7] {
        let baseline = match &self.baseline {
            None => "-".to_string(),
            Some((name, Outcome::Value(v))) => format!("{name}: {}", fmt_short(*v)),
            Some((name, v)) => format!("{name}: {}", v.text()),
        };
        let ratio = self
            .ratio()
            .map(|r| format!("{r:.2}x"))
            .unwrap_or("-".into());
        let target = self.target.map(Target::text).unwrap_or("-".into());
        let met = match (self.target, self.met()) {
            (None, _) => "-",
            (Some(_), None) => "n/a",
            (Some(_), Some(true)) => "yes",
            (Some(_), Some(false)) => "NO",
        };
        [
            self.figure.clone(),
            self.value.text(),
            self.unit.to_string(),
            baseline,
            ratio,
            target,
            met.to_string(),
        ]
    }
}

const HEADERS: [&str; 7] = [
    "figure", "value", "unit", "baseline", "ratio", "target", "met?",
];

/// The table as aligned plain text, for the terminal.
pub fn text_table(rows: &[Row]) -> String {
    let cells: Vec<[String; 7]> = rows.iter().map(Row::cells).collect();
    let mut width = HEADERS.map(|h| h.chars().count());
    for r in &cells {
        for (w, c) in width.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, r: &[String]| {
        for (i, (c, w)) in r.iter().zip(width.iter()).enumerate() {
            let sep = if i + 1 == r.len() { "\n" } else { " | " };
            let pad = w.saturating_sub(c.chars().count());
            let _ = write!(
                out,
                "{c}{}{sep}",
                " ".repeat(if sep == "\n" { 0 } else { pad })
            );
        }
    };
    line(&mut out, &HEADERS.map(String::from));
    let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut out, &rule);
    for r in &cells {
        line(&mut out, r);
    }
    out
}

/// The table as GitHub markdown, for the README.
pub fn markdown_table(rows: &[Row]) -> String {
    let mut out = format!("| {} |\n|{}\n", HEADERS.join(" | "), "---|".repeat(7));
    for r in rows {
        let cells = r.cells().map(|c| c.replace('|', "\\|"));
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

/// Numbers with about four significant digits, no exponent for the usual
/// ranges, thousands left unseparated so the value can be pasted anywhere.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a >= 1000.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Whole numbers without decimals (targets, kernel counts).
fn fmt_short(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        fmt_num(v)
    }
}

/// "YYYY-MM-DD HH:MM UTC" for a Unix time, without a date library
/// (days-to-civil conversion over the proleptic Gregorian calendar).
pub fn utc_stamp(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3600,
        (secs % 3600) / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_and_met() {
        let r = Row::new("x", Outcome::Value(30.0), "ns")
            .baseline("mutex", Outcome::Value(20.0))
            .target(Target::RatioAtMost(2.0));
        assert_eq!(r.ratio(), Some(1.5));
        assert_eq!(r.met(), Some(true));
        let r = r.target(Target::RatioAtLeast(3.0));
        assert_eq!(r.met(), Some(false));
        let pending = Outcome::Pending {
            reason: "no engine".into(),
            detail: "ENOENGINE".into(),
        };
        let p = Row::new("y", pending, "ns")
            .baseline("mutex", Outcome::Value(20.0))
            .target(Target::RatioAtMost(2.0));
        assert_eq!(p.ratio(), None);
        assert_eq!(p.met(), None);
        assert!(text_table(&[p]).contains("pending: no engine"));
    }

    #[test]
    fn dates() {
        assert_eq!(utc_stamp(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_stamp(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_stamp(1_709_251_199), "2024-02-29 23:59 UTC");
    }
}
