//! `nestbed trace report`: the statistics table and an SVG picture of a trace file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::{self, Event};
use super::{svg, Stats};
use crate::error::Error;
use crate::exit::{Handler, Level};

/// Statistics of a trace. The time of an exit is the gap to the next exit's `t`: its handling
/// plus the guest's run up to the next exit (the last exit gets none).
pub fn stats(events: &[Event]) -> Result<Stats, (usize, String)> {
    let mut stats = Stats::default();
    stats.basis = super::stats::TimeBasis::Gap;
    for (i, e) in events.iter().enumerate() {
        let bad = |what: &str| (e.line, format!("missing or unknown `{what}`"));
        let level = match e.str("level") {
            Some("L1") => Level::L1,
            Some("L2") => Level::L2,
            _ => return Err(bad("level")),
        };
        let handler = match e.str("handler") {
            Some("L0") => Handler::L0,
            Some("L1") => Handler::L1,
            Some("script") => Handler::Script,
            _ => return Err(bad("handler")),
        };
        let reason = e
            .fields
            .get("reason_nr")
            .and_then(serde_json::Value::as_u64)
            .and_then(|r| u32::try_from(r).ok())
            .ok_or_else(|| bad("reason_nr"))?;
        let took = match (e.t, events.get(i + 1).and_then(|n| n.t)) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        };
        stats.record(level, reason, handler, Duration::from_nanos(took));
    }
    stats.wall = Duration::from_nanos(events.last().and_then(|e| e.t).unwrap_or(0));
    Ok(stats)
}

/// Reads a trace, writes its SVG (default: the trace's path with `.svg`) and returns the table.
pub fn report_file(path: &Path, svg_out: Option<&Path>) -> Result<String, Error> {
    let events = file::read(path)?;
    let stats = stats(&events).map_err(|(line, msg)| Error::Config(format!("{}:{line}: {msg}", path.display())))?;
    let out = svg_out.map_or_else(|| path.with_extension("svg"), PathBuf::from);
    let picture = svg::render(&events, &path.display().to_string());
    std::fs::write(&out, picture).map_err(|source| Error::File { path: out.clone(), source })?;
    Ok(format!("{}SVG written to {}\n", stats.report(), out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_gaps_between_exits() {
        let text = "{\"level\":\"L1\",\"reason_nr\":30,\"handler\":\"L0\",\"t\":1000}\n\
                    {\"level\":\"L2\",\"reason_nr\":12,\"handler\":\"L1\",\"t\":4000}\n";
        let s = stats(&file::parse(text).unwrap()).unwrap();
        assert_eq!(s.total_exits(), 2);
        let rows = s.rows();
        assert_eq!(rows[0].row.total, Duration::from_nanos(3000));
        assert_eq!(s.wall, Duration::from_nanos(4000));
        assert_eq!(stats(&file::parse("{\"level\":\"L3\"}").unwrap()).unwrap_err().0, 1);
    }
}
