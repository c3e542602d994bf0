//! What the binary prints, made safe: every log line, error and `check` line has the
//! settings' secrets replaced by `***` and its control characters escaped (a value from a
//! row, such as a route value with a line break, can neither split a log line nor forge one).

use std::io::Write;
use std::sync::RwLock;

use tracing_subscriber::EnvFilter;

use super::LogFormat;

/// The secrets no printed line may contain, from the settings loaded last.
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Adds `secrets` to what printed lines hide (a reload may bring new ones; old ones stay).
pub fn hide(secrets: Vec<String>) {
    if let Ok(mut all) = SECRETS.write() {
        all.extend(secrets.into_iter().filter(|s| !s.is_empty()));
        all.sort();
        all.dedup();
    }
}

/// `line` with the known secrets hidden and control characters escaped (`\n`, `\r`,
/// `\u{1b}` …); a final line break is kept.
pub fn clean(line: &str) -> String {
    let (body, end) = match line.strip_suffix('\n') {
        Some(b) => (b, "\n"),
        None => (line, ""),
    };
    let hidden = match SECRETS.read() {
        Ok(s) if !s.is_empty() => pgoutbox::config::scrub(body, &s),
        _ => body.to_owned(),
    };
    let mut out = String::with_capacity(hidden.len() + end.len());
    for c in hidden.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            // ANSI colours (a terminal's own) are escapes the logger writes itself.
            '\u{1b}' if std::io::IsTerminal::is_terminal(&std::io::stderr()) => out.push(c),
            c if c.is_control() && c != '\t' => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out.push_str(end);
    out
}

/// Standard error, each write (one whole log line) cleaned.
struct CleanStderr;

impl Write for CleanStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = clean(&String::from_utf8_lossy(buf));
        std::io::stderr().write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Logs to stderr, cleaned; `RUST_LOG` overrides the default level.
pub fn init(default: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| CleanStderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_hide_secrets_and_escape_control_characters() {
        hide(vec!["s3cret".into(), "tok".into()]);
        assert_eq!(
            clean("a nats://u:s3cret@h and tok\n"),
            "a nats://u:***@h and ***\n"
        );
        assert_eq!(
            clean("route \"a\r\nFAKE line\"\n"),
            "route \"a\\r\\nFAKE line\"\n"
        );
        assert_eq!(clean("bell\u{7}"), "bell\\u{7}");
    }
}
