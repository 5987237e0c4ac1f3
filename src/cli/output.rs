//! Printing: aligned tables for people, JSON for programs, and notes to stderr. Every line the
//! CLI prints goes through here, so a standard output closed by its reader (`| head`) ends the
//! command quietly ([`CliError::StdoutClosed`]) instead of panicking as `println!` does.

use std::fmt;
use std::io::{ErrorKind, Write};

use serde_json::Value;

use super::CliError;

/// Writes formatted text to standard output. A reader that went away is
/// [`CliError::StdoutClosed`]; any other failure (a full disk) is an error naming the cause.
pub fn write(args: fmt::Arguments<'_>) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            ErrorKind::BrokenPipe => CliError::StdoutClosed,
            _ => CliError::msg(format!("cannot write to standard output: {e}")),
        })
}

/// Writes formatted text to standard error for the person at the terminal. Failures are ignored:
/// there is nowhere left to report them.
pub fn write_err(args: fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// `println!` through [`write`]: evaluates to `Result<(), CliError>`.
macro_rules! outln {
    () => {
        $crate::cli::output::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` through [`write`]: evaluates to `Result<(), CliError>`.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write(format_args!($($arg)*))
    };
}

/// `eprintln!` through [`write_err`]: a note for a person that never fails the command.
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::cli::output::write_err(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {note, out, outln};

/// Prints pretty JSON.
pub fn json(value: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    outln!("{text}")
}

/// Prints an aligned table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> Result<(), CliError> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| match widths.get(i) {
                Some(&w) if i + 1 < cells.len() => format!("{c:<w$}"),
                _ => c.clone(),
            })
            .collect();
        outln!("{}", parts.join("  ").trim_end())
    };
    let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    line(&headers)?;
    for row in rows {
        line(row)?;
    }
    Ok(())
}

/// A JSON field as display text ("-" when absent).
pub fn text(v: &Value, field: &str) -> String {
    match v.get(field) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A millisecond timestamp field as RFC 3339 UTC ("-" when absent).
pub fn time(v: &Value, field: &str) -> String {
    match v.get(field).and_then(Value::as_i64) {
        Some(ms) => {
            let secs = u64::try_from(ms / 1000).unwrap_or(0);
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            )
            .to_string()
        }
        None => "-".into(),
    }
}

/// The time now, in ms since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// An expiry for a person: "in 3 days", "in 5 min", "expired", or "-" when there is none.
pub fn expiry(v: &Value, field: &str, now_ms: i64) -> String {
    match v.get(field).and_then(Value::as_i64) {
        None => "-".into(),
        Some(at) if at <= now_ms => "expired".into(),
        Some(at) => format!("in {}", span(at - now_ms)),
    }
}

/// A past time for a person: "5 min ago", "2 days ago", or `none` when there is none.
pub fn ago(v: &Value, field: &str, now_ms: i64, none: &str) -> String {
    match v.get(field).and_then(Value::as_i64) {
        None => none.into(),
        Some(at) if now_ms - at < 60_000 => "just now".into(),
        Some(at) => format!("{} ago", span(now_ms - at)),
    }
}

/// A duration in the largest unit that fits, rounded to the nearest: "45 s", "5 min",
/// "3 hours", "12 days" (a certificate made for 3 days reads "3 days", not "2 days", a second
/// later).
fn span(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    let round = |unit: i64| (secs + unit / 2) / unit;
    let plural = |n: i64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3_600 => format!("{} min", round(60)),
        s if s < 2 * 86_400 => plural(round(3_600), "hour"),
        _ => plural(round(86_400), "day"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn expiries_and_last_uses_read_as_a_person_says_them() {
        let now = 1_801_396_800_000;
        let day = 86_400_000;
        let v = json!({
            "soon": now + 3 * day + 5_000,
            "minutes": now + 5 * 60_000 + 1,
            "past": now - 1,
            "hour": now - 3_600_000,
            "recent": now - 10_000,
        });
        assert_eq!(expiry(&v, "soon", now), "in 3 days");
        assert_eq!(expiry(&v, "minutes", now), "in 5 min");
        assert_eq!(expiry(&v, "past", now), "expired");
        assert_eq!(expiry(&v, "missing", now), "-");
        assert_eq!(ago(&v, "hour", now, "never"), "1 hour ago");
        assert_eq!(ago(&v, "recent", now, "never"), "just now");
        assert_eq!(ago(&v, "missing", now, "never"), "never");
        assert_eq!(
            ago(&json!({"t": now - 2 * day}), "t", now, "never"),
            "2 days ago"
        );
        assert_eq!(expiry(&json!({"t": now + 30_000}), "t", now), "in 30 s");
        let almost_3_days = now + 3 * day - 60_000;
        assert_eq!(expiry(&json!({"t": almost_3_days}), "t", now), "in 3 days");
    }
}
