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
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Image { .. } | Error::Scan { .. } => code::BAD_IMAGE,
            Error::File { .. } | Error::Config(_) => code::CONFIG,
            Error::Host { .. } | Error::HostIo(_) => code::HOST,
            Error::Script(_) => code::SCRIPT_RUNTIME,
            Error::ScriptCompile(_) => code::SCRIPT_COMPILE,
        }
    }
}

/// Wraps a failed KVM call with the name of the call.
pub fn host(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |source| Error::Host { what, source }
}
