//! `--trace FILE`: one JSON object per exit. Timing lives under its own key (`t`) so two runs
//! of a deterministic guest compare equal once it is dropped.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::Serialize;

use crate::error::Error;
use crate::exit::{Exit, ExitDetail, Handler};

/// One trace line.
#[derive(Debug, Serialize)]
pub struct Event<'a> {
    pub seq: u64,
    pub level: &'a str,
    pub reason: String,
    pub reason_nr: u32,
    pub qualification: String,
    pub rip: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub insn: String,
    pub detail: &'a ExitDetail,
    pub handler: &'a str,
    /// L2 exits: the VMCS L1 entered the exiting guest with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmcs: Option<String>,
    /// L2 exits of a guest deeper than L2 as L1 sees it: "L3" for a guest of a hypervisor L2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_level: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub script: Vec<String>,
    /// Nanoseconds since the start of the run (timing: ignored by comparisons).
    pub t: u64,
}

/// The trace path that means stdout.
pub const STDOUT: &str = "-";

/// `--trace-limit` unless given.
pub const DEFAULT_LIMIT: u64 = 1 << 30;

/// Where a trace stopped at `--trace-limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated {
    /// Lines written (whole lines only).
    pub lines: u64,
    pub bytes: u64,
    pub limit: u64,
}

pub struct TraceWriter {
    out: BufWriter<Box<dyn Write + Send>>,
    path: std::path::PathBuf,
    limit: u64,
    bytes: u64,
    lines: u64,
    /// Set once the next line would have gone past the limit: nothing more is written.
    pub truncated: Option<Truncated>,
    line: Vec<u8>,
}

impl TraceWriter {
    /// A trace of at most `limit` bytes, in whole lines; `-` is stdout.
    pub fn create(path: &Path, limit: u64) -> Result<Self, Error> {
        let out: Box<dyn Write + Send> = if path == Path::new(STDOUT) {
            Box::new(std::io::stdout())
        } else {
            Box::new(File::create(path).map_err(|source| Error::File { path: path.to_owned(), source })?)
        };
        Ok(TraceWriter {
            out: BufWriter::new(out),
            path: path.to_owned(),
            limit,
            bytes: 0,
            lines: 0,
            truncated: None,
            line: Vec::new(),
        })
    }

    /// Writes one exit's line; a write error (a full disk) ends the run with it. At the limit
    /// the trace stops, with one warning, and the run goes on.
    pub fn record(&mut self, exit: &Exit, handler: Handler, script: Vec<String>, t_ns: u64) -> Result<(), Error> {
        if self.truncated.is_some() {
            return Ok(());
        }
        let ev = Event {
            seq: exit.seq,
            level: exit.level.as_str(),
            reason: exit.reason_name(),
            reason_nr: exit.reason,
            qualification: format!("{:#x}", exit.qualification),
            rip: format!("{:#x}", exit.rip),
            insn: exit.insn.iter().map(|b| format!("{b:02x}")).collect(),
            detail: &exit.detail,
            handler: handler.as_str(),
            vmcs: exit.vmcs.map(|v| format!("{v:#x}")),
            guest_level: exit.guest_level.map(|g| format!("L{g}")),
            script,
            t: t_ns,
        };
        let file = |source| Error::File { path: self.path.clone(), source };
        self.line.clear();
        serde_json::to_writer(&mut self.line, &ev).map_err(std::io::Error::from).map_err(file)?;
        self.line.push(b'\n');
        if self.bytes + self.line.len() as u64 > self.limit {
            let t = Truncated { lines: self.lines, bytes: self.bytes, limit: self.limit };
            self.truncated = Some(t);
            crate::error::to_stderr(&format!(
                "nestbed: warning: {}: the trace reached --trace-limit ({} bytes) after {} exits; it stops here, the \
                 run goes on\n",
                self.path.display(),
                t.limit,
                t.lines
            ));
            return Ok(());
        }
        match self.out.write_all(&self.line) {
            // A reader of `--trace -` that went away ends the run as a closed stdout does.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                crate::stdio::stdout_lost();
                return Ok(());
            }
            r => r.map_err(file)?,
        }
        self.bytes += self.line.len() as u64;
        self.lines += 1;
        Ok(())
    }

    pub fn flush(&mut self) {
        let _ = self.out.flush();
    }
}

impl Drop for TraceWriter {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Reads a size: bytes, or with a suffix K, M, G (KiB, MiB, GiB).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("`{text}` is not a size (bytes, or with K, M or G)"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("1T").is_err() && parse_size("").is_err() && parse_size("99999999999G").is_err());
    }
}
