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
