//! Reading `--trace` files back: one JSON object per line, with the timing (`t`) kept apart
//! from the fields that must be identical between two runs of a deterministic guest.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::Error;

/// The serial console's ports (COM1).
const CONSOLE_PORTS: std::ops::RangeInclusive<u64> = 0x3f8..=0x3ff;

/// One exit read back from a trace file.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Line in the file, from 1.
    pub line: usize,
    /// Every field but `t`, in file order.
    pub fields: Map<String, Value>,
    /// Nanoseconds since the start of the run, when the line has it.
    pub t: Option<u64>,
}

impl Event {
    pub fn str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }

    pub fn seq(&self) -> Option<u64> {
        self.fields.get("seq").and_then(Value::as_u64)
    }

    /// An I/O exit to the serial console that nestbed handled itself: the console text
    /// already says everything these exits do.
    pub fn is_console_io(&self) -> bool {
        let Some(Value::Object(d)) = self.fields.get("detail") else { return false };
        self.str("handler") == Some("L0")
            && d.get("kind").and_then(Value::as_str) == Some("io")
            && d.get("port").and_then(Value::as_u64).is_some_and(|p| CONSOLE_PORTS.contains(&p))
    }

    /// The line without its timing.
    pub fn to_line(&self) -> String {
        Value::Object(self.fields.clone()).to_string()
    }

    /// A short human form: `seq 12  L1 IO_INSTRUCTION  L0  rip 0x1000 (line 12)`.
    pub fn summary(&self) -> String {
        let seq = self.seq().map_or_else(|| "?".to_string(), |n| n.to_string());
        let field = |key| self.str(key).unwrap_or("?");
        let mut s = format!("seq {seq:<6} {} {:<16} {:<6}", field("level"), field("reason"), field("handler"));
        if let Some(rip) = self.str("rip") {
            let _ = write!(s, "  rip {rip}");
        }
        let _ = write!(s, "  (line {})", self.line);
        s
    }
}

/// Reads a trace file; a malformed line is an error naming the file and line.
pub fn read(path: &Path) -> Result<Vec<Event>, Error> {
    let text = crate::error::read_text_limited(path, crate::error::limit::TRACE)?;
    parse(&text).map_err(|(line, msg)| Error::Config(format!("{}:{line}: {msg}", path.display())))
}

/// Parses trace text; errors are (line, problem). Blank lines are skipped.
pub fn parse(text: &str) -> Result<Vec<Event>, (usize, String)> {
    let mut events = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(raw).map_err(|e| {
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            (line, format!("malformed JSON at column {}: {msg}", e.column()))
        })?;
        let Value::Object(mut fields) = value else {
            return Err((line, "not a JSON object".into()));
        };
        let t = match fields.shift_remove("t") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or((line, "`t` is not a whole number of nanoseconds".to_string()))?),
        };
        events.push(Event { line, fields, t });
    }
    Ok(events)
}

/// Writes events as JSON lines without their timing.
pub fn write_untimed(path: &Path, events: &[Event]) -> Result<(), Error> {
    let mut text = String::new();
    for e in events {
        text.push_str(&e.to_line());
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|source| Error::File { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"seq":9,"level":"L1","reason":"IO_INSTRUCTION","reason_nr":30,"qualification":"0x3fd0008","rip":"0x102764","detail":{"kind":"io","port":1021,"size":1,"write":false,"data":0},"handler":"L0","t":15968110}"#;

    #[test]
    fn timing_is_split_off_and_order_kept() {
        let ev = parse(LINE).unwrap();
        assert_eq!(ev[0].t, Some(15968110));
        assert_eq!(ev[0].to_line(), LINE.replace(",\"t\":15968110", ""));
        assert!(ev[0].is_console_io());
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let (line, msg) = parse(&format!("{LINE}\n\n{{\"seq\":1,\n")).unwrap_err();
        assert_eq!(line, 3);
        assert!(msg.starts_with("malformed JSON"), "{msg}");
        assert_eq!(parse("[1]").unwrap_err(), (1, "not a JSON object".into()));
    }
}
