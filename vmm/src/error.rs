//! nestbed's errors and the exit codes they map to (documented in the README).

use std::path::PathBuf;

/// Exit codes of nestbed's own outcomes; a guest's debug-exit code passes through unchanged.
pub mod code {
    pub const BAD_IMAGE: i32 = 201;
    pub const CONFIG: i32 = 202;
    pub const TRIPLE_FAULT: i32 = 203;
    pub const TIMEOUT: i32 = 204;
    pub const SCRIPT_COMPILE: i32 = 205;
    pub const SCRIPT_RUNTIME: i32 = 206;
    pub const SCRIPT_STOP: i32 = 207;
    pub const HOST: i32 = 208;
    pub const GUEST_UNSUPPORTED: i32 = 209;
    pub const SCENARIO_FAILED: i32 = 210;
    pub const INTERRUPTED: i32 = 130;

    /// A one-word name of nestbed's own status `code` (for `--exit-code-file`).
    pub fn name(code: i32) -> &'static str {
        match code {
            BAD_IMAGE => "bad-image",
            CONFIG => "config",
            TRIPLE_FAULT => "triple-fault",
            TIMEOUT => "timeout",
            SCRIPT_COMPILE => "script-compile",
            SCRIPT_RUNTIME => "script-runtime",
            SCRIPT_STOP => "script-stop",
            HOST => "host",
            GUEST_UNSUPPORTED => "unsupported",
            SCENARIO_FAILED => "scenario-failed",
            INTERRUPTED => "interrupted",
            _ => "error",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Image { path: PathBuf, source: crate::machine::loader::LoadError },
    #[error("{path}: {source}")]
    Scan { path: PathBuf, source: crate::patch::ScanError },
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Config(String),
    #[error("{what}: {source}")]
    Host { what: &'static str, source: kvm_ioctls::Error },
    #[error("{0}")]
    HostIo(String),
    #[error("{0}")]
    Script(String),
    #[error("{0}")]
    ScriptCompile(String),
    /// SIGINT, SIGTERM or SIGHUP stopped nestbed outside the run loop (loading, a script hook).
    #[error("{0}")]
    Interrupted(String),
    /// `--timeout` expired outside the run loop.
    #[error("{0}")]
    TimedOut(String),
}

impl Error {
    /// The exit status's one-word name.
    pub fn kind(&self) -> &'static str {
        code::name(self.exit_code())
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Image { .. } | Error::Scan { .. } => code::BAD_IMAGE,
            Error::File { .. } | Error::Config(_) => code::CONFIG,
            Error::Host { .. } | Error::HostIo(_) => code::HOST,
            Error::Script(_) => code::SCRIPT_RUNTIME,
            Error::ScriptCompile(_) => code::SCRIPT_COMPILE,
            Error::Interrupted(_) => code::INTERRUPTED,
            Error::TimedOut(_) => code::TIMEOUT,
        }
    }
}

/// Wraps a failed KVM call with the name of the call.
pub fn host(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |source| Error::Host { what, source }
}

/// Size limits of the files nestbed reads whole: larger input (or an endless one such as
/// /dev/zero) is refused with a clear error instead of filling memory.
pub mod limit {
    /// Guest images and modules.
    pub const IMAGE: u64 = 1 << 30;
    /// Scripts and scenario files.
    pub const TEXT: u64 = 16 << 20;
    /// Traces read back (`trace report`, `trace diff`, golden traces).
    pub const TRACE: u64 = 1 << 30;
}

/// Reads the whole file at `path`, at most `limit` bytes: a longer file is an error that says
/// so.
pub fn read_limited(path: &std::path::Path, limit: u64) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let file = |source| Error::File { path: path.to_owned(), source };
    let mut data = Vec::new();
    std::fs::File::open(path).and_then(|f| f.take(limit + 1).read_to_end(&mut data)).map_err(file)?;
    if data.len() as u64 > limit {
        return Err(Error::Config(format!(
            "{}: larger than {} MiB, the most nestbed reads from such a file",
            path.display(),
            limit >> 20
        )));
    }
    Ok(data)
}

/// The same for a text file (UTF-8).
pub fn read_text_limited(path: &std::path::Path, limit: u64) -> Result<String, Error> {
    String::from_utf8(read_limited(path, limit)?).map_err(|_| Error::File {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "stream did not contain valid UTF-8"),
    })
}

pub use crate::stdio::to_stderr;
