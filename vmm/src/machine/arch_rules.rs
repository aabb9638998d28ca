//! What software may put in the control registers, EFER, RFLAGS and RIP: the checks a value
//! from a debugger or a script passes before it reaches KVM, which would refuse an
//! inconsistent state at the next KVM_RUN and end the run. Each refusal names the rule.

const CR0_PE: u64 = 1 << 0;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_PCIDE: u64 = 1 << 17;
/// CR4 bits the SDM defines (Vol. 3A 2.5): VME through UINTR, bit 15 reserved; LASS, LAM_SUP.
const CR4_DEFINED: u64 = 0x1bff_7fff;
const EFER_SCE: u64 = 1 << 0;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;
const RFLAGS_FIXED1: u64 = 1 << 1;
/// RFLAGS bits 3, 5, 15 and 63:22 are reserved, must be 0 (SDM Vol. 1 3.4.3).
const RFLAGS_RESERVED: u64 = !0x3f_ffff | 1 << 3 | 1 << 5 | 1 << 15;
const RFLAGS_VM: u64 = 1 << 17;

/// The system registers that must agree with each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SystemRegs {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    /// CS.L: a 64-bit code segment.
    pub cs_l: bool,
}

/// Refuses `new` unless a processor could hold it. Bits outside the SDM's definitions are
/// refused only where `new` sets them and `old` did not (the host may show bits of its own).
pub fn check_system(old: &SystemRegs, new: &SystemRegs) -> Result<(), String> {
    let set = |old: u64, new: u64, mask: u64| new & !old & mask;
    if set(old.cr0, new.cr0, !0xffff_ffff) != 0 {
        return Err(format!("CR0 {:#x}: bits 63:32 are reserved (SDM Vol. 3A 2.5)", new.cr0));
    }
    if new.cr0 & CR0_PG != 0 && new.cr0 & CR0_PE == 0 {
        return Err(format!("CR0 {:#x}: paging (PG=1) needs protected mode (PE=1) (SDM Vol. 3A 2.5)", new.cr0));
    }
    if new.cr0 & CR0_NW != 0 && new.cr0 & CR0_CD == 0 {
        return Err(format!("CR0 {:#x}: NW=1 needs CD=1 (SDM Vol. 3A 2.5)", new.cr0));
    }
    if set(old.cr4, new.cr4, !CR4_DEFINED) != 0 {
        return Err(format!("CR4 {:#x}: sets reserved bits {:#x} (SDM Vol. 3A 2.5)", new.cr4, new.cr4 & !CR4_DEFINED));
    }
    if set(old.cr8, new.cr8, !0xf) != 0 {
        return Err(format!("CR8 {:#x}: bits 63:4 are reserved (SDM Vol. 3A 2.5)", new.cr8));
    }
    let efer_defined = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE;
    if set(old.efer, new.efer, !efer_defined) != 0 {
        return Err(format!(
            "EFER {:#x}: sets reserved bits (only SCE, LME, LMA and NXE exist, SDM Vol. 3A 2.2.1)",
            new.efer
        ));
    }
    let ia32e = new.efer & EFER_LME != 0 && new.cr0 & CR0_PG != 0;
    if (new.efer & EFER_LMA != 0) != ia32e {
        return Err(if new.efer & EFER_LMA != 0 {
            format!(
                "CR0 {:#x} with EFER {:#x}: IA-32e mode (EFER.LMA=1) needs EFER.LME=1 and CR0.PG=1; software leaves it \
                 by clearing CR0.PG from compatibility mode, and the processor clears LMA (SDM Vol. 3A 10.8.5.4)",
                new.cr0, new.efer
            )
        } else {
            format!(
                "CR0 {:#x} with EFER {:#x}: EFER.LME=1 and CR0.PG=1 activate IA-32e mode, so EFER.LMA must be 1 (SDM Vol. 3A \
                 10.8.5)",
                new.cr0, new.efer
            )
        });
    }
    if ia32e && new.cr4 & CR4_PAE == 0 {
        return Err(format!("CR4 {:#x}: IA-32e mode needs CR4.PAE=1 (SDM Vol. 3A 10.8.5)", new.cr4));
    }
    if !ia32e && new.cs_l {
        return Err("CS.L=1 (64-bit code) outside IA-32e mode (SDM Vol. 3A 3.4.5)".into());
    }
    if !ia32e && new.cr4 & CR4_PCIDE != 0 {
        return Err(format!("CR4 {:#x}: PCIDE=1 needs IA-32e mode (SDM Vol. 3A 4.10.1)", new.cr4));
    }
    if ia32e && set(old.cr3, new.cr3, !((1 << 52) - 1)) != 0 {
        return Err(format!("CR3 {:#x}: bits 63:52 are beyond any physical address (SDM Vol. 3A 4.5)", new.cr3));
    }
    Ok(())
}

/// Refuses an RFLAGS value with a reserved bit wrong, or VM=1 in IA-32e mode (SDM Vol. 1
/// 3.4.3; Vol. 3C 27.3.1.4 checks the same on VM entry).
pub fn check_rflags(rflags: u64, ia32e: bool) -> Result<(), String> {
    if rflags & RFLAGS_FIXED1 == 0 {
        return Err(format!("RFLAGS {rflags:#x}: bit 1 is reserved and always 1 (SDM Vol. 1 3.4.3)"));
    }
    if rflags & RFLAGS_RESERVED != 0 {
        return Err(format!(
            "RFLAGS {rflags:#x}: reserved bits {:#x} must be 0 (SDM Vol. 1 3.4.3)",
            rflags & RFLAGS_RESERVED
        ));
    }
    if ia32e && rflags & RFLAGS_VM != 0 {
        return Err(format!(
            "RFLAGS {rflags:#x}: virtual-8086 mode (VM=1) does not exist in IA-32e mode (SDM Vol. 3A 2.3)"
        ));
    }
    Ok(())
}

/// Refuses a RIP no instruction fetch could use: non-canonical (with 4-level paging), or above
/// 4 GiB outside 64-bit code (SDM Vol. 1 3.3.7.1; Vol. 3C 27.3.1.4).
pub fn check_rip(rip: u64, code64: Option<bool>) -> Result<(), String> {
    let canonical = ((rip as i64) << 16 >> 16) as u64 == rip;
    if !canonical {
        return Err(format!("RIP {rip:#x} is not canonical (bits 63:47 must be equal, SDM Vol. 1 3.3.7.1)"));
    }
    if code64 == Some(false) && rip >> 32 != 0 {
        return Err(format!("RIP {rip:#x}: outside 64-bit code, bits 63:32 must be 0"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long_mode() -> SystemRegs {
        SystemRegs { cr0: 0x8000_0011, cr3: 0x1000, cr4: CR4_PAE, cr8: 0, efer: EFER_LME | EFER_LMA, cs_l: true }
    }

    #[test]
    fn long_mode_as_booted_passes_and_each_broken_rule_is_named() {
        let ok = long_mode();
        assert_eq!(check_system(&ok, &ok), Ok(()));
        let cases = [
            (SystemRegs { cr0: 0, ..ok }, "IA-32e mode (EFER.LMA=1) needs"),
            (SystemRegs { cr0: 0x8000_0010, ..ok }, "paging (PG=1) needs protected mode"),
            (SystemRegs { cr0: ok.cr0 | CR0_NW, ..ok }, "NW=1 needs CD=1"),
            (SystemRegs { cr0: ok.cr0 | 1 << 40, ..ok }, "bits 63:32 are reserved"),
            (SystemRegs { cr4: 0, ..ok }, "needs CR4.PAE=1"),
            (SystemRegs { cr4: ok.cr4 | 1 << 15, ..ok }, "reserved bits 0x8000"),
            (SystemRegs { efer: EFER_LME, ..ok }, "so EFER.LMA must be 1"),
            (SystemRegs { efer: ok.efer | 1 << 20, ..ok }, "only SCE, LME, LMA and NXE"),
            (SystemRegs { cr8: 16, ..ok }, "bits 63:4"),
            (SystemRegs { cr3: 1 << 60, ..ok }, "bits 63:52"),
        ];
        for (bad, want) in cases {
            let e = check_system(&ok, &bad).unwrap_err();
            assert!(e.contains(want), "{bad:x?}: {e}");
        }
        // Leaving IA-32e mode the architected way, and protected mode without paging.
        let left = SystemRegs { cr0: 0x11, efer: EFER_LME, cs_l: false, ..ok };
        assert_eq!(check_system(&ok, &left), Ok(()));
        let real = SystemRegs { cr0: 0x10, cr4: 0, efer: 0, cs_l: false, ..ok };
        assert_eq!(check_system(&ok, &real), Ok(()));
        // A reserved bit already there is the host's business.
        let host = SystemRegs { efer: ok.efer | 1 << 12, ..ok };
        assert_eq!(check_system(&host, &host), Ok(()));
    }

    #[test]
    fn rflags_and_rip() {
        assert_eq!(check_rflags(0x202, true), Ok(()));
        assert!(check_rflags(0x200, true).unwrap_err().contains("bit 1"));
        assert!(check_rflags(0x20a, true).unwrap_err().contains("reserved bits 0x8"));
        assert!(check_rflags(0x2 | 1 << 40, false).is_err());
        assert!(check_rflags(0x2 | RFLAGS_VM, true).unwrap_err().contains("virtual-8086"));
        assert_eq!(check_rflags(0x2 | RFLAGS_VM, false), Ok(()));
        assert_eq!(check_rip(0xffff_ffff_8000_0000, Some(true)), Ok(()));
        assert!(check_rip(0x8000_0000_0000, None).unwrap_err().contains("not canonical"));
        assert!(check_rip(0x1_0000_0000, Some(false)).unwrap_err().contains("bits 63:32"));
    }
}
