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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub script: Vec<String>,
    /// Nanoseconds since the start of the run (timing: ignored by comparisons).
    pub t: u64,
}

/// The trace path that means stdout.
pub const STDOUT: &str = "-";

pub struct TraceWriter {
    out: BufWriter<Box<dyn Write + Send>>,
    path: std::path::PathBuf,
}

impl TraceWriter {
    pub fn create(path: &Path) -> Result<Self, Error> {
        let out: Box<dyn Write + Send> = if path == Path::new(STDOUT) {
            Box::new(std::io::stdout())
        } else {
            Box::new(File::create(path).map_err(|source| Error::File { path: path.to_owned(), source })?)
        };
        Ok(TraceWriter { out: BufWriter::new(out), path: path.to_owned() })
    }

    /// Writes one exit's line; a write error (a full disk) ends the run with it.
    pub fn record(&mut self, exit: &Exit, handler: Handler, script: Vec<String>, t_ns: u64) -> Result<(), Error> {
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
            script,
            t: t_ns,
        };
        let written = serde_json::to_writer(&mut self.out, &ev)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        match written {
            // A reader of `--trace -` that went away ends the run as a closed stdout does.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                crate::stdio::stdout_lost();
                Ok(())
            }
            r => r.map_err(|source| Error::File { path: self.path.clone(), source }),
        }
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
