//! SDM 27.3.1 "Checks on the Guest State Area", one module per subsection.

use crate::vmx::caps::{cr, entry, proc2, VmxCaps};
use crate::vmx::cpu::GuestMemory;
use crate::vmx::fields::{GUEST_CR0, GUEST_CR4, GUEST_RFLAGS, VM_ENTRY_CONTROLS, VM_ENTRY_INTR_INFO_FIELD};
use crate::vmx::vmcs::Vmcs;

use super::{secondary, Violation};

mod desc_tables;
mod non_register;
mod pdptes;
mod registers;
mod rip_rflags;
mod segments;

/// SDM 27.3.1: guest-state area.
pub fn check_guest_state(vmcs: &Vmcs, caps: &VmxCaps, width: u8, mem: &dyn GuestMemory) -> Result<(), Violation> {
    let g = Guest::read(vmcs);
    registers::check_control_registers_debug_registers_and_msrs(vmcs, caps, width, &g)?;
    segments::check_segment_registers(vmcs, &g)?;
    desc_tables::check_descriptor_table_registers(vmcs)?;
    rip_rflags::check_rip_and_rflags(vmcs, &g)?;
    non_register::check_non_register_state(vmcs, caps, width, mem, &g)?;
    pdptes::check_pdptes(vmcs, width, &g)
}

/// VMCS values that checks of several subsections depend on.
struct Guest {
    entryv: u32,
    sec: u32,
    ia32e: bool,
    unrestricted: bool,
    cr0: u64,
    cr4: u64,
    rflags: u64,
    /// Virtual-8086 mode. RFLAGS.VM in IA-32e mode or with CR0.PE = 0 fails in 27.3.1.4
    /// instead.
    v86: bool,
    /// The VM-entry interruption-information field is valid (SDM 25.8.3).
    injecting: bool,
    /// Interruption type, bits 10:8 of that field.
    inj_type: u32,
}

impl Guest {
    fn read(vmcs: &Vmcs) -> Guest {
        let entryv = vmcs.get32(VM_ENTRY_CONTROLS);
        let sec = secondary(vmcs);
        let ia32e = entryv & entry::IA32E_MODE_GUEST != 0;
        let cr0 = vmcs.get(GUEST_CR0);
        let rflags = vmcs.get(GUEST_RFLAGS);
        let intr_info = vmcs.get32(VM_ENTRY_INTR_INFO_FIELD);
        Guest {
            entryv,
            sec,
            ia32e,
            unrestricted: sec & proc2::UNRESTRICTED_GUEST != 0,
            cr0,
            cr4: vmcs.get(GUEST_CR4),
            rflags,
            v86: rflags & (1 << 17) != 0 && !ia32e && cr0 & cr::CR0_PE != 0,
            injecting: intr_info & (1 << 31) != 0,
            inj_type: (intr_info >> 8) & 7,
        }
    }
}

/// Access-rights bits (SDM 25.4.1, Table 25-2).
mod ar {
    pub const TYPE: u32 = 0xf;
    pub const S: u32 = 1 << 4;
    pub const P: u32 = 1 << 7;
    pub const L: u32 = 1 << 13;
    pub const DB: u32 = 1 << 14;
    pub const G: u32 = 1 << 15;
    pub const UNUSABLE: u32 = 1 << 16;
    pub const RESERVED: u32 = 0xfffe_0f00;

    pub fn dpl(ar: u32) -> u32 {
        (ar >> 5) & 3
    }
}
