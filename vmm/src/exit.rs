//! One normalized exit, the unit that flows through trace, statistics, scripts and gdb,
//! whatever level it came from (see the README's "path of one exit").

use serde::Serialize;

use crate::vmx::exits::reason_name;

/// Which guest took the exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Level {
    L1,
    L2,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::L1 => "L1",
            Level::L2 => "L2",
        }
    }
}

/// Per-reason details of an exit.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExitDetail {
    None,
    Io {
        port: u16,
        size: u8,
        write: bool,
        /// Data written by `out`, or the value an `in` will receive once decided.
        data: u64,
    },
    Msr {
        index: u32,
        write: bool,
        value: u64,
    },
    /// A VMX instruction, decoded.
    Vmx {
        mnemonic: String,
        operands: String,
    },
    Mmio {
        gpa: u64,
        len: u8,
        write: bool,
        data: u64,
    },
}

/// Who dealt with an exit in the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Handler {
    /// nestbed itself: device model, VMX emulation, or L0 handling of an L2 exit.
    L0,
    /// Reflected to the L1 hypervisor as a VM exit.
    L1,
    /// A script decided the outcome.
    Script,
}

impl Handler {
    pub fn as_str(self) -> &'static str {
        match self {
            Handler::L0 => "L0",
            Handler::L1 => "L1",
            Handler::Script => "script",
        }
    }
}

/// An exit, numbered with the VMX basic exit reasons (SDM Appendix C) at both levels.
#[derive(Debug, Clone, Serialize)]
pub struct Exit {
    pub seq: u64,
    pub level: Level,
    pub reason: u32,
    pub qualification: u64,
    pub rip: u64,
    /// Instruction bytes at RIP when known (VMX instructions, decoded I/O), up to 15.
    pub insn: Vec<u8>,
    pub detail: ExitDetail,
    /// L2 exits: the VMCS L1 entered the exiting guest with. One L1 may run several guests (a
    /// hypervisor L2 on one VMCS and, for it, L3 on another): this tells them apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmcs: Option<u64>,
}

impl Exit {
    pub fn reason_name(&self) -> String {
        reason_name(self.reason)
    }
}

/// What happens to an exit after the hooks saw it. Scripts choose one; `Default` lets nestbed
/// handle the exit as it normally would.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Action {
    #[default]
    Default,
    /// Treat the exit as handled: skip the instruction (advance RIP by its length).
    Skip,
    /// Complete an `in`, RDMSR or MMIO read with this value (and skip).
    Value(u64),
    /// Inject an exception into the guest that exited, instead of handling the exit.
    Inject { vector: u8, error_code: Option<u32> },
    /// L2 exits only: reflect to L1 even if L1 did not ask for it.
    Reflect,
    /// L2 exits only: keep in L0 (nestbed handles it) even if L1 asked for it.
    KeepInL0,
    /// Stop the machine (into gdb when one is attached) with this reason.
    Stop(String),
}
