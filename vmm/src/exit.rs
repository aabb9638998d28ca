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
        /// The MSR's architectural name, when nestbed knows it (`crate::msr`).
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<&'static str>,
        write: bool,
        value: u64,
    },
    /// A VMX instruction, decoded.
    Vmx {
        mnemonic: String,
        operands: String,
        /// VMREAD and VMWRITE: the VMCS field their register operand names.
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        vmcs: Option<VmcsAccess>,
    },
    Mmio {
        gpa: u64,
        len: u8,
        write: bool,
        data: u64,
    },
}

/// The VMCS field of a VMREAD or VMWRITE (SDM Appendix B encodings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VmcsAccess {
    /// The field's SDM name; None for an encoding the VMCS does not have (the instruction
    /// fails with VMfailValid(12)).
    pub field: Option<&'static str>,
    #[serde(serialize_with = "hex32")]
    pub encoding: u32,
    /// L1's VMREAD: the field's value before the instruction; VMWRITE: the value written. None
    /// for L2's instructions (they exit to L1, whose VMCS they do not reach) and where the
    /// operand could not be read.
    pub value: Option<u64>,
}

fn hex32<S: serde::Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}

impl VmcsAccess {
    /// `GUEST_RIP (0x681e) = 0x10233f`, as gdb's `exits` lists it.
    pub fn describe(&self) -> String {
        let mut s = format!("{} ({:#x})", self.field.unwrap_or("unknown field"), self.encoding);
        if let Some(v) = self.value {
            s.push_str(&format!(" = {v:#x}"));
        }
        s
    }
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
    /// L2 exits of a guest deeper than L2 as L1 sees it (3: a guest of a hypervisor L2),
    /// `vmx::guest_levels`' judgement; None for L1 and L2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_level: Option<u8>,
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
