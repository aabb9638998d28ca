//! Which level each guest L1 runs is at, as L1 sees it. nestbed runs every guest of L1 as its
//! own "L2"; when L1 emulates VMX for one of them (a hypervisor L2, itself running L3, the
//! turtles arrangement), the guests of that hypervisor are L3 to L1. They are told apart by
//! VMCS: the VMCS L1 enters next after it was handed a guest's VMLAUNCH or VMRESUME (a VMCS
//! other than that guest's own) runs the guest's guest, one level deeper. This is how L1s
//! that emulate VMX work (KVM's nested VMX among them); an L1 that enters other VMCSs in
//! between can make it name a level wrongly, never crash.

use std::collections::HashMap;

use crate::vmx::exits::ExitReason;

/// Deepest level named; a deeper guest is named this.
const DEEPEST: u8 = 9;

#[derive(Debug, Default, Clone)]
pub struct GuestLevels {
    /// Level of the guest each VMCS runs, when not 2.
    level: HashMap<u64, u8>,
    /// The hypervisor's VMCS whose VMLAUNCH or VMRESUME L1 was handed last, until L1's next
    /// VM entry.
    entering_for: Option<u64>,
}

fn is_vmx_instruction(reason: u32) -> bool {
    [
        ExitReason::VMCLEAR,
        ExitReason::VMLAUNCH,
        ExitReason::VMPTRLD,
        ExitReason::VMPTRST,
        ExitReason::VMREAD,
        ExitReason::VMRESUME,
        ExitReason::VMWRITE,
        ExitReason::VMXOFF,
        ExitReason::VMXON,
        ExitReason::INVEPT,
        ExitReason::INVVPID,
    ]
    .iter()
    .any(|&r| r as u32 == reason)
}

impl GuestLevels {
    /// The level, as L1 sees it, of the guest that runs on `vmcs` (2 unless known deeper).
    pub fn level_of(&self, vmcs: u64) -> u8 {
        self.level.get(&vmcs).copied().unwrap_or(2)
    }

    /// An exit of the guest on `vmcs` that L1 is given (reflected), with its basic reason.
    pub fn reflected(&mut self, vmcs: u64, reason: u32) {
        if !is_vmx_instruction(reason) {
            return;
        }
        let entry = reason == ExitReason::VMLAUNCH as u32 || reason == ExitReason::VMRESUME as u32;
        self.entering_for = entry.then_some(vmcs);
    }

    /// L1 entered a guest on `vmcs` (VMLAUNCH or VMRESUME that succeeded).
    pub fn entered(&mut self, vmcs: u64) {
        if let Some(hv) = self.entering_for.take() {
            if hv != vmcs {
                let deeper = (self.level_of(hv) + 1).min(DEEPEST);
                self.level.insert(vmcs, deeper);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HV: u64 = 0x10_000;
    const L3: u64 = 0x20_000;
    const OTHER: u64 = 0x30_000;

    #[test]
    fn the_vmcs_entered_after_a_hypervisors_vmlaunch_runs_its_guest() {
        let mut g = GuestLevels::default();
        g.entered(HV);
        g.reflected(HV, ExitReason::VMWRITE as u32);
        g.entered(HV);
        g.reflected(HV, ExitReason::VMLAUNCH as u32);
        g.entered(L3);
        assert_eq!((g.level_of(HV), g.level_of(L3)), (2, 3));
        // L3's exit reflected to the hypervisor: L1 enters the hypervisor again, still L2.
        g.reflected(L3, ExitReason::IO_INSTRUCTION as u32);
        g.entered(HV);
        assert_eq!((g.level_of(HV), g.level_of(L3)), (2, 3));
    }

    #[test]
    fn a_plain_second_guest_stays_l2() {
        let mut g = GuestLevels::default();
        g.entered(HV);
        g.reflected(HV, ExitReason::IO_INSTRUCTION as u32);
        g.entered(OTHER);
        assert_eq!(g.level_of(OTHER), 2);
        // A VMREAD exit is no VM entry request: the next VMCS entered is not the guest's.
        g.reflected(HV, ExitReason::VMREAD as u32);
        g.entered(OTHER);
        assert_eq!(g.level_of(OTHER), 2);
    }

    #[test]
    fn the_hypervisors_own_vmresume_refused_back_to_it_names_nothing() {
        let mut g = GuestLevels::default();
        g.reflected(HV, ExitReason::VMRESUME as u32);
        g.entered(HV);
        assert_eq!(g.level_of(HV), 2);
    }

    #[test]
    fn a_guest_of_a_level_3_hypervisor_is_level_4() {
        let mut g = GuestLevels::default();
        g.reflected(HV, ExitReason::VMLAUNCH as u32);
        g.entered(L3);
        g.reflected(L3, ExitReason::VMLAUNCH as u32);
        g.entered(OTHER);
        assert_eq!(g.level_of(OTHER), 4);
    }
}
