//! VM-entry checks (SDM 27.2 "Checks on VMX Controls and Host-State Area", 27.3.1 "Checks
//! on the Guest State Area") as named rules, evaluated in SDM order; the first violated
//! rule is reported.
//!
//! One module per SDM section: `controls` (27.2.1), `host` (27.2.2 - 27.2.4) and `guest`
//! (27.3.1.1 - 27.3.1.6).
//!
//! Not checked (nestbed cannot see the needed state or does not advertise the feature):
//! MSR-load/store list contents (27.4) and guest PDPTEs read from memory when EPT is off. The
//! one check that reads memory is the VMCS link pointer's (27.3.1.5): the first word of the
//! region it names.

use std::fmt;

use crate::vmx::caps::{cr, proc, VmxCaps};
use crate::vmx::cpu::GuestMemory;
use crate::vmx::fields::{CPU_BASED_VM_EXEC_CONTROL, SECONDARY_VM_EXEC_CONTROL};
use crate::vmx::vmcs::Vmcs;

/// Returns the violation when `$bad` holds.
macro_rules! rule {
    ($bad:expr, $class:expr, $sdm:literal, $rule:literal) => {
        if $bad {
            return Err(Violation { rule: $rule, sdm: $sdm, class: $class });
        }
    };
}

mod controls;
#[cfg(test)]
mod fuzz;
mod guest;
mod host;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

pub use controls::{check_controls, eptp_valid};
pub use guest::check_guest_state;
pub use host::check_host_state;

/// How a failed check surfaces (SDM 27.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckClass {
    /// VMfailValid(7): VM entry with invalid control field(s).
    Control,
    /// VMfailValid(8): VM entry with invalid host-state field(s).
    HostState,
    /// VM exit with basic reason ENTRY_FAIL_GUEST_STATE (33) | bit 31 and this exit
    /// qualification (SDM 27.8).
    GuestState { qualification: u64 },
}

/// A violated VM-entry rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub rule: &'static str,
    /// SDM section, e.g. "27.2.2".
    pub sdm: &'static str,
    pub class: CheckClass,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SDM {})", self.rule, self.sdm)
    }
}

/// Exit qualifications of ENTRY_FAIL_GUEST_STATE (SDM 27.8).
pub const ENTRY_FAIL_DEFAULT: u64 = 0;
pub const ENTRY_FAIL_PDPTE: u64 = 2;
pub const ENTRY_FAIL_NMI: u64 = 3;
pub const ENTRY_FAIL_VMCS_LINK_PTR: u64 = 4;

const C: CheckClass = CheckClass::Control;
const H: CheckClass = CheckClass::HostState;
const G: CheckClass = CheckClass::GuestState { qualification: ENTRY_FAIL_DEFAULT };

/// IA32_EFER bits defined on Intel 64: SCE, LME, LMA, NXE.
const EFER_VALID: u64 = cr::EFER_SCE | cr::EFER_LME | cr::EFER_LMA | cr::EFER_NXE;

/// All checks of SDM 27.2 and 27.3.1, for a processor in IA-32e mode (L1 is 64-bit); `mem` is
/// L1-physical memory, where the VMCS link pointer points.
pub fn check_vm_entry(vmcs: &Vmcs, caps: &VmxCaps, phys_width: u8, mem: &dyn GuestMemory) -> Result<(), Violation> {
    check_vm_entry_from(vmcs, caps, phys_width, true, mem)
}

/// [`check_vm_entry`] for a processor whose IA32_EFER.LMA is `host_lma` (SDM 27.2.4).
pub fn check_vm_entry_from(
    vmcs: &Vmcs,
    caps: &VmxCaps,
    phys_width: u8,
    host_lma: bool,
    mem: &dyn GuestMemory,
) -> Result<(), Violation> {
    check_controls(vmcs, caps, phys_width)?;
    check_host_state(vmcs, caps, phys_width, host_lma)?;
    check_guest_state(vmcs, caps, phys_width, mem)
}

/// Secondary controls as VM entry sees them: 0 unless activated (SDM 25.6.2).
fn secondary(vmcs: &Vmcs) -> u32 {
    if vmcs.get32(CPU_BASED_VM_EXEC_CONTROL) & proc::ACTIVATE_SECONDARY_CONTROLS != 0 {
        vmcs.get32(SECONDARY_VM_EXEC_CONTROL)
    } else {
        0
    }
}
