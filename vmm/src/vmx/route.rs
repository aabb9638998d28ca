//! Whether L1 asked for an L2 event as a VM exit: [`l1_wants_exit`] applies the rules of
//! SDM 26.1 ("Instructions That Cause VM Exits": 26.1.2 unconditionally, 26.1.3
//! conditionally) and 26.2 ("Other Causes of VM Exits") to L1's VMCS and the exit
//! information of SDM 28.2, for every basic exit reason of SDM Appendix C.
//!
//! The secondary and tertiary controls count as 0 unless "activate secondary controls" /
//! "activate tertiary controls" is 1 (SDM 25.6.2).
//!
//! - Always: VM-entry failures (bit 31, reasons 33, 34, 41), triple fault, INIT, SIPI, task
//!   switch, CPUID, GETSEC, INVD, XSETBV, VMCALL, VMCLEAR, VMLAUNCH, VMPTRLD, VMPTRST,
//!   VMRESUME, VMXOFF, VMXON, INVEPT, INVVPID, SEAMCALL, TDCALL, and basic reasons that
//!   Appendix C does not define.
//! - Never: I/O SMI and other SMI. They are SMM VM exits of the dual-monitor treatment
//!   (SDM 26.2), which go to the SMM-transfer monitor, never to L1.
//! - RSM exits only in SMM (SDM 26.1.3), that is when L1 entered L2 with "entry to SMM".
//! - RDTSCP, INVPCID, UMWAIT and TPAUSE need their "enable" control as well as the exiting
//!   control; without it the instruction raises #UD, which the exception bitmap governs.
//! - Every other reason exits as its VM-execution controls, bitmaps or masks say
//!   (SDM 26.1.3, 26.2).
//!
//! Not modelled, for lack of facts:
//! - PAUSE-loop exiting (the PLE_GAP/PLE_WINDOW timing at CPL 0): only "PAUSE exiting".
//! - Which APIC-access-page accesses "use TPR shadow" and APIC-register virtualization
//!   virtualize instead of exiting (SDM 30.4.2, 30.4.3): "virtualize APIC accesses" decides.
//! - EPT violations that "EPT-violation #VE" converts into #VE (SDM 26.5, "Virtualization
//!   Exceptions"): an EPT violation or misconfiguration exits whenever "enable EPT" is 1.
//! - The leaf in EAX for ENCLS and ENCLV, and EDX:EAX and IA32_XSS for XSAVES and XRSTORS:
//!   these exit when their control is 1 and their exiting bitmap (ENCLS-exiting,
//!   ENCLV-exiting, XSS-exiting) has any bit set.
//! - The VM function in EAX for VMFUNC: a VMFUNC exit means the function was not enabled
//!   or failed, which exits whenever "enable VM functions" is 1.

use super::caps::{entry, pin, proc, proc2, proc3};
use super::cpu::GuestMemory;
use super::exits::{io_qualification, ExitReason, VM_ENTRY_FAILURE};
use super::fields::*;
use super::vmcs::Vmcs;

/// VM-entry interruption information of a pending MTF VM exit: valid, type 7, vector 0.
const PENDING_MTF_INJECTION: u32 = 0x8000_0700;

/// What the reflect decision needs to know about one L2 exit (SDM 28.2 exit information).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitFacts {
    /// Basic exit reason (bits 15:0); bit 31 (VM-entry failure) may be set.
    pub reason: u32,
    /// Exit qualification as SDM 28.2.1 defines it for the reason (I/O: port/size; CR access:
    /// CR number, access type, register, LMSW source; …).
    pub qualification: u64,
    /// VM-exit interruption information (exceptions, NMIs, external interrupts; SDM 25.9.2).
    pub intr_info: u32,
    /// VM-exit interruption error code (for #PF the page-fault error code).
    pub error_code: u32,
    /// RDMSR/WRMSR: the MSR index (ECX).
    pub msr: u32,
    /// MOV to CR0/CR3/CR4/CR8: the value written (from the source register).
    pub cr_value: u64,
    /// VMREAD/VMWRITE: the field encoding (register operand), for the VMCS-shadowing bitmaps.
    pub field: u64,
}

/// Facts of an IN or OUT (not string, DX form) of `size` bytes at `port`.
pub fn io_facts(port: u16, size: u8, input: bool) -> ExitFacts {
    ExitFacts {
        reason: ExitReason::IO_INSTRUCTION as u32,
        qualification: io_qualification(port, size, input, false, false, false),
        ..ExitFacts::default()
    }
}

// Interruption-information field: type in bits 10:8, valid in bit 31 (SDM 25.9.2).
const INTR_TYPE_NMI: u32 = 2;
const INTR_TYPE_HARD_EXCEPTION: u32 = 3;
const INTR_TYPE_PRIV_SOFT_EXCEPTION: u32 = 5;
const INTR_TYPE_SOFT_EXCEPTION: u32 = 6;
const INTR_INFO_VALID: u32 = 1 << 31;

const PF_VECTOR: u32 = 14;
const CR0_TS: u64 = 1 << 3;

/// The VM-execution controls in force; secondary and tertiary ones read as 0 unless
/// activated (SDM 25.6.2).
struct Controls {
    pin: u32,
    primary: u32,
    secondary: u32,
    tertiary: u64,
}

impl Controls {
    fn of(vmcs: &Vmcs) -> Self {
        let primary = vmcs.get32(CPU_BASED_VM_EXEC_CONTROL);
        let secondary =
            if primary & proc::ACTIVATE_SECONDARY_CONTROLS != 0 { vmcs.get32(SECONDARY_VM_EXEC_CONTROL) } else { 0 };
        let tertiary =
            if primary & proc::ACTIVATE_TERTIARY_CONTROLS != 0 { vmcs.get(TERTIARY_VM_EXEC_CONTROL) } else { 0 };
        Controls { pin: vmcs.get32(PIN_BASED_VM_EXEC_CONTROL), primary, secondary, tertiary }
    }

    fn pin(&self, bit: u32) -> bool {
        self.pin & bit != 0
    }

    fn primary(&self, bit: u32) -> bool {
        self.primary & bit != 0
    }

    fn secondary(&self, bit: u32) -> bool {
        self.secondary & bit != 0
    }
}

/// Whether L1 asked for this L2 event as a VM exit.
pub fn l1_wants_exit(vmcs: &Vmcs, mem: &dyn GuestMemory, f: &ExitFacts) -> bool {
    if f.reason & VM_ENTRY_FAILURE != 0 {
        return true;
    }
    let Some(reason) = ExitReason::from_u32(f.reason & 0xffff) else {
        return true;
    };
    let c = Controls::of(vmcs);
    use ExitReason::*;
    match reason {
        TRIPLE_FAULT
        | INIT_SIGNAL
        | SIPI
        | TASK_SWITCH
        | CPUID
        | GETSEC
        | INVD
        | XSETBV
        | VMCALL
        | VMCLEAR
        | VMLAUNCH
        | VMPTRLD
        | VMPTRST
        | VMRESUME
        | VMXOFF
        | VMXON
        | INVEPT
        | INVVPID
        | SEAMCALL
        | TDCALL
        | ENTRY_FAIL_GUEST_STATE
        | ENTRY_FAIL_MSR_LOADING
        | ENTRY_FAIL_MACHINE_CHECK => true,
        IO_SMI | OTHER_SMI => false,
        RSM => vmcs.get32(VM_ENTRY_CONTROLS) & entry::ENTRY_TO_SMM != 0,

        EXCEPTION_NMI => exception_or_nmi(vmcs, &c, f),
        EXTERNAL_INTERRUPT => external_interrupt(vmcs, &c, f),
        PREEMPTION_TIMER => c.pin(pin::ACTIVATE_PREEMPTION_TIMER),

        INTERRUPT_WINDOW => c.primary(proc::INTR_WINDOW_EXITING),
        NMI_WINDOW => c.primary(proc::NMI_WINDOW_EXITING),
        // A pending MTF VM exit injected at entry exits even with the control clear (SDM 27.6.2).
        MONITOR_TRAP_FLAG => {
            c.primary(proc::MONITOR_TRAP_FLAG) || vmcs.get32(VM_ENTRY_INTR_INFO_FIELD) == PENDING_MTF_INJECTION
        }
        HLT => c.primary(proc::HLT_EXITING),
        INVLPG => c.primary(proc::INVLPG_EXITING),
        RDPMC => c.primary(proc::RDPMC_EXITING),
        RDTSC => c.primary(proc::RDTSC_EXITING),
        MWAIT => c.primary(proc::MWAIT_EXITING),
        MONITOR => c.primary(proc::MONITOR_EXITING),
        PAUSE => c.primary(proc::PAUSE_EXITING),
        DR_ACCESS => c.primary(proc::MOV_DR_EXITING),
        CR_ACCESS => cr_access(vmcs, &c, f),
        IO_INSTRUCTION => io(vmcs, mem, &c, (f.qualification >> 16) as u16, (f.qualification & 7) as u8 + 1),
        RDMSR => msr(vmcs, mem, &c, f.msr, false),
        WRMSR => msr(vmcs, mem, &c, f.msr, true),
        TPR_BELOW_THRESHOLD => c.primary(proc::USE_TPR_SHADOW) && !c.secondary(proc2::VIRTUAL_INTERRUPT_DELIVERY),

        VMREAD => vmcs_access(vmcs, mem, &c, VMREAD_BITMAP, f.field),
        VMWRITE => vmcs_access(vmcs, mem, &c, VMWRITE_BITMAP, f.field),
        RDTSCP => c.primary(proc::RDTSC_EXITING) && c.secondary(proc2::ENABLE_RDTSCP),
        INVPCID => c.primary(proc::INVLPG_EXITING) && c.secondary(proc2::ENABLE_INVPCID),
        UMWAIT | TPAUSE => c.primary(proc::RDTSC_EXITING) && c.secondary(proc2::USER_WAIT_PAUSE),
        APIC_ACCESS => c.secondary(proc2::VIRTUALIZE_APIC_ACCESSES),
        APIC_WRITE => c.secondary(proc2::APIC_REGISTER_VIRTUALIZATION | proc2::VIRTUAL_INTERRUPT_DELIVERY),
        VIRTUALIZED_EOI => {
            c.secondary(proc2::VIRTUAL_INTERRUPT_DELIVERY) && eoi_exit_bitmap_bit(vmcs, f.qualification as u8)
        }
        GDTR_IDTR_ACCESS | LDTR_TR_ACCESS => c.secondary(proc2::DESCRIPTOR_TABLE_EXITING),
        EPT_VIOLATION | EPT_MISCONFIG => c.secondary(proc2::ENABLE_EPT),
        WBINVD => c.secondary(proc2::WBINVD_EXITING),
        RDRAND => c.secondary(proc2::RDRAND_EXITING),
        RDSEED => c.secondary(proc2::RDSEED_EXITING),
        VMFUNC => c.secondary(proc2::ENABLE_VMFUNC),
        PML_FULL => c.secondary(proc2::ENABLE_PML),
        SPP_EVENT => c.secondary(proc2::SUB_PAGE_WRITE_PERMISSIONS),
        ENQCMD_PASID | ENQCMDS_PASID => c.secondary(proc2::PASID_TRANSLATION),
        BUS_LOCK => c.secondary(proc2::BUS_LOCK_DETECTION),
        INSTRUCTION_TIMEOUT => c.secondary(proc2::INSTRUCTION_TIMEOUT),
        ENCLS => c.secondary(proc2::ENCLS_EXITING) && vmcs.get(ENCLS_EXITING_BITMAP) != 0,
        ENCLV => c.secondary(proc2::ENCLV_EXITING) && vmcs.get(ENCLV_EXITING_BITMAP) != 0,
        XSAVES | XRSTORS => c.secondary(proc2::ENABLE_XSAVES) && vmcs.get(XSS_EXIT_BITMAP) != 0,
        LOADIWKEY => c.tertiary & proc3::LOADIWKEY_EXITING != 0,
    }
}

fn bitmap_bit(mem: &dyn GuestMemory, addr: u64, bit: u64) -> Option<bool> {
    let mut b = [0u8; 1];
    mem.read_phys(addr.wrapping_add(bit / 8), &mut b).ok()?;
    Some(b[0] & (1 << (bit % 8)) != 0)
}

/// NMIs follow "NMI exiting"; exceptions, including those of INT1, INT3 and INTO, the
/// exception bitmap, whose bit 14 counts inverted for a page fault whose error code does
/// not match (PFEC & PFEC_MASK != PFEC_MATCH) (SDM 26.2). Other interruption types never
/// report this reason.
fn exception_or_nmi(vmcs: &Vmcs, c: &Controls, f: &ExitFacts) -> bool {
    let vector = f.intr_info & 0xff;
    match (f.intr_info >> 8) & 7 {
        INTR_TYPE_NMI => c.pin(pin::NMI_EXITING),
        INTR_TYPE_HARD_EXCEPTION | INTR_TYPE_PRIV_SOFT_EXCEPTION | INTR_TYPE_SOFT_EXCEPTION if vector < 32 => {
            let bit = vmcs.get32(EXCEPTION_BITMAP) & (1 << vector) != 0;
            if vector == PF_VECTOR {
                let matches =
                    f.error_code & vmcs.get32(PAGE_FAULT_ERROR_CODE_MASK) == vmcs.get32(PAGE_FAULT_ERROR_CODE_MATCH);
                bit == matches
            } else {
                bit
            }
        }
        _ => false,
    }
}

/// "External-interrupt exiting", except that with "process posted interrupts" the
/// posted-interrupt notification vector is processed instead of exiting (SDM 30.6).
fn external_interrupt(vmcs: &Vmcs, c: &Controls, f: &ExitFacts) -> bool {
    let notification = c.pin(pin::PROCESS_POSTED_INTERRUPTS)
        && f.intr_info & INTR_INFO_VALID != 0
        && u64::from(f.intr_info & 0xff) == vmcs.get(POSTED_INTR_NV);
    c.pin(pin::EXT_INTR_EXITING) && !notification
}

/// CLTS, LMSW and MOV to/from CR0, CR3, CR4, CR8 (SDM 26.1.3), by the access type and CR
/// number of the exit qualification (SDM 28.2.1, Table 28-3).
fn cr_access(vmcs: &Vmcs, c: &Controls, f: &ExitFacts) -> bool {
    let q = f.qualification;
    let cr0_mask = vmcs.get(CR0_GUEST_HOST_MASK);
    let cr0_shadow = vmcs.get(CR0_READ_SHADOW);
    match ((q >> 4) & 3, q & 0xf) {
        (0, 0) => (f.cr_value ^ cr0_shadow) & cr0_mask != 0,
        (0, 3) => c.primary(proc::CR3_LOAD_EXITING) && !cr3_target(vmcs, f.cr_value),
        (0, 4) => (f.cr_value ^ vmcs.get(CR4_READ_SHADOW)) & vmcs.get(CR4_GUEST_HOST_MASK) != 0,
        (0, 8) => c.primary(proc::CR8_LOAD_EXITING),
        (1, 3) => c.primary(proc::CR3_STORE_EXITING),
        (1, 8) => c.primary(proc::CR8_STORE_EXITING),
        (2, _) => cr0_mask & cr0_shadow & CR0_TS != 0,
        (3, _) => {
            // LMSW writes CR0 bits 3:0 but never clears PE.
            let source = (q >> 16) & 0xf;
            let sets_pe = cr0_mask & source & !cr0_shadow & 1 != 0;
            sets_pe || (source ^ cr0_shadow) & cr0_mask & 0xe != 0
        }
        _ => false,
    }
}

/// Whether `value` is among the first CR3-target-count CR3-target values (at most 4).
fn cr3_target(vmcs: &Vmcs, value: u64) -> bool {
    let count = vmcs.get32(CR3_TARGET_COUNT) as usize;
    [CR3_TARGET_VALUE0, CR3_TARGET_VALUE1, CR3_TARGET_VALUE2, CR3_TARGET_VALUE3]
        .iter()
        .take(count)
        .any(|&field| vmcs.get(field) == value)
}

/// IN/OUT/INS/OUTS of `size` bytes at `port` (SDM 26.1.3, 25.6.4). With "use I/O bitmaps",
/// bitmap A covers ports 0000-7FFF and B 8000-FFFF; the access exits if any byte's bit is
/// set, if it wraps past FFFF, or if the bitmap cannot be read. Otherwise "unconditional I/O
/// exiting" decides.
fn io(vmcs: &Vmcs, mem: &dyn GuestMemory, c: &Controls, port: u16, size: u8) -> bool {
    if !c.primary(proc::USE_IO_BITMAPS) {
        return c.primary(proc::UNCOND_IO_EXITING);
    }
    (0..u32::from(size.max(1))).any(|i| {
        let p = u32::from(port) + i;
        if p > 0xffff {
            return true;
        }
        let bitmap = if p < 0x8000 { vmcs.get(IO_BITMAP_A) } else { vmcs.get(IO_BITMAP_B) };
        bitmap_bit(mem, bitmap, u64::from(p & 0x7fff)).unwrap_or(true)
    })
}

/// RDMSR (`write` false) / WRMSR (SDM 26.1.3, 25.6.9). Without "use MSR bitmaps" every
/// access exits; so do MSRs outside 0-1FFF and C0000000-C0001FFF and unreadable bitmaps.
/// Bitmap layout: read-low at 0x000, read-high 0x400, write-low 0x800, write-high 0xc00.
fn msr(vmcs: &Vmcs, mem: &dyn GuestMemory, c: &Controls, msr: u32, write: bool) -> bool {
    if !c.primary(proc::USE_MSR_BITMAPS) {
        return true;
    }
    let (offset, bit) = match msr {
        0..=0x1fff => (0, msr),
        0xc000_0000..=0xc000_1fff => (0x400, msr - 0xc000_0000),
        _ => return true,
    };
    let offset = offset + if write { 0x800 } else { 0 };
    bitmap_bit(mem, vmcs.get(MSR_BITMAP).wrapping_add(offset), u64::from(bit)).unwrap_or(true)
}

/// VMREAD/VMWRITE: always without "VMCS shadowing"; with it, when the field encoding has a
/// bit set above bit 14 or its bit in the VMREAD/VMWRITE bitmap is set (SDM 26.1.3, 25.6.15).
/// An unreadable bitmap exits.
fn vmcs_access(vmcs: &Vmcs, mem: &dyn GuestMemory, c: &Controls, bitmap: u32, field: u64) -> bool {
    if !c.secondary(proc2::VMCS_SHADOWING) || field > 0x7fff {
        return true;
    }
    bitmap_bit(mem, vmcs.get(bitmap), field).unwrap_or(true)
}

/// The EOI-exit bitmap bit for `vector` (SDM 25.6.8, 30.1.4).
fn eoi_exit_bitmap_bit(vmcs: &Vmcs, vector: u8) -> bool {
    let word = [EOI_EXIT_BITMAP0, EOI_EXIT_BITMAP1, EOI_EXIT_BITMAP2, EOI_EXIT_BITMAP3][usize::from(vector / 64)];
    vmcs.get(word) >> (vector % 64) & 1 != 0
}

#[cfg(test)]
mod tests {
    use super::super::cpu::testing::Ram;
    use super::super::fields::FIELDS;
    use super::*;

    const HW_EXCEPTION: u32 = INTR_INFO_VALID | INTR_TYPE_HARD_EXCEPTION << 8;

    fn setup(primary: u32) -> (Vmcs, Ram) {
        let mut v = Vmcs::new(1);
        v.set(CPU_BASED_VM_EXEC_CONTROL, u64::from(primary));
        v.set(IO_BITMAP_A, 0x1000);
        v.set(IO_BITMAP_B, 0x2000);
        v.set(MSR_BITMAP, 0x3000);
        (v, Ram(vec![0; 0x4000]))
    }

    fn set_pin(v: &mut Vmcs, bits: u32) {
        v.set(PIN_BASED_VM_EXEC_CONTROL, u64::from(v.get32(PIN_BASED_VM_EXEC_CONTROL) | bits));
    }

    fn set_primary(v: &mut Vmcs, bits: u32) {
        v.set(CPU_BASED_VM_EXEC_CONTROL, u64::from(v.get32(CPU_BASED_VM_EXEC_CONTROL) | bits));
    }

    fn set_secondary(v: &mut Vmcs, bits: u32) {
        set_primary(v, proc::ACTIVATE_SECONDARY_CONTROLS);
        v.set(SECONDARY_VM_EXEC_CONTROL, u64::from(v.get32(SECONDARY_VM_EXEC_CONTROL) | bits));
    }

    fn facts(reason: ExitReason) -> ExitFacts {
        ExitFacts { reason: reason as u32, ..ExitFacts::default() }
    }

    fn wants_io(v: &Vmcs, ram: &Ram, port: u16, size: u8) -> bool {
        l1_wants_exit(v, ram, &io_facts(port, size, false))
    }

    fn wants_msr(v: &Vmcs, ram: &Ram, msr: u32, write: bool) -> bool {
        let reason = if write { ExitReason::WRMSR } else { ExitReason::RDMSR };
        l1_wants_exit(v, ram, &ExitFacts { msr, ..facts(reason) })
    }

    enum Rule {
        Always,
        Never,
        /// The answer is `base` with every control clear and flips once `set` has run.
        Flip {
            base: bool,
            set: fn(&mut Vmcs),
        },
    }

    /// Every reason's rule, with facts that make its control matter.
    fn case(r: ExitReason) -> (ExitFacts, Rule) {
        use ExitReason::*;
        use Rule::*;
        let f = facts(r);
        let flip = |set: fn(&mut Vmcs)| (f, Flip { base: false, set });
        match r {
            TRIPLE_FAULT
            | INIT_SIGNAL
            | SIPI
            | TASK_SWITCH
            | CPUID
            | GETSEC
            | INVD
            | XSETBV
            | VMCALL
            | VMCLEAR
            | VMLAUNCH
            | VMPTRLD
            | VMPTRST
            | VMRESUME
            | VMXOFF
            | VMXON
            | INVEPT
            | INVVPID
            | SEAMCALL
            | TDCALL
            | ENTRY_FAIL_GUEST_STATE
            | ENTRY_FAIL_MSR_LOADING
            | ENTRY_FAIL_MACHINE_CHECK => (f, Always),
            IO_SMI | OTHER_SMI => (f, Never),
            RSM => flip(|v| v.set(VM_ENTRY_CONTROLS, u64::from(entry::ENTRY_TO_SMM))),
            EXCEPTION_NMI => (
                ExitFacts { intr_info: HW_EXCEPTION | 6, ..f },
                Flip { base: false, set: |v| v.set(EXCEPTION_BITMAP, 1 << 6) },
            ),
            EXTERNAL_INTERRUPT => flip(|v| set_pin(v, pin::EXT_INTR_EXITING)),
            PREEMPTION_TIMER => flip(|v| set_pin(v, pin::ACTIVATE_PREEMPTION_TIMER)),
            INTERRUPT_WINDOW => flip(|v| set_primary(v, proc::INTR_WINDOW_EXITING)),
            NMI_WINDOW => flip(|v| set_primary(v, proc::NMI_WINDOW_EXITING)),
            MONITOR_TRAP_FLAG => flip(|v| set_primary(v, proc::MONITOR_TRAP_FLAG)),
            HLT => flip(|v| set_primary(v, proc::HLT_EXITING)),
            INVLPG => flip(|v| set_primary(v, proc::INVLPG_EXITING)),
            RDPMC => flip(|v| set_primary(v, proc::RDPMC_EXITING)),
            RDTSC => flip(|v| set_primary(v, proc::RDTSC_EXITING)),
            MWAIT => flip(|v| set_primary(v, proc::MWAIT_EXITING)),
            MONITOR => flip(|v| set_primary(v, proc::MONITOR_EXITING)),
            PAUSE => flip(|v| set_primary(v, proc::PAUSE_EXITING)),
            DR_ACCESS => flip(|v| set_primary(v, proc::MOV_DR_EXITING)),
            TPR_BELOW_THRESHOLD => flip(|v| set_primary(v, proc::USE_TPR_SHADOW)),
            CR_ACCESS => (
                ExitFacts { qualification: 3, cr_value: 0x5000, ..f },
                Flip { base: false, set: |v| set_primary(v, proc::CR3_LOAD_EXITING) },
            ),
            IO_INSTRUCTION => {
                (io_facts(0x3f8, 1, false), Flip { base: false, set: |v| set_primary(v, proc::UNCOND_IO_EXITING) })
            }
            RDMSR | WRMSR => {
                (ExitFacts { msr: 0x10, ..f }, Flip { base: true, set: |v| set_primary(v, proc::USE_MSR_BITMAPS) })
            }
            VMREAD | VMWRITE => (
                ExitFacts { field: u64::from(GUEST_RIP), ..f },
                Flip { base: true, set: |v| set_secondary(v, proc2::VMCS_SHADOWING) },
            ),
            RDTSCP => flip(|v| {
                set_primary(v, proc::RDTSC_EXITING);
                set_secondary(v, proc2::ENABLE_RDTSCP)
            }),
            INVPCID => flip(|v| {
                set_primary(v, proc::INVLPG_EXITING);
                set_secondary(v, proc2::ENABLE_INVPCID)
            }),
            UMWAIT | TPAUSE => flip(|v| {
                set_primary(v, proc::RDTSC_EXITING);
                set_secondary(v, proc2::USER_WAIT_PAUSE)
            }),
            APIC_ACCESS => flip(|v| set_secondary(v, proc2::VIRTUALIZE_APIC_ACCESSES)),
            APIC_WRITE => flip(|v| set_secondary(v, proc2::APIC_REGISTER_VIRTUALIZATION)),
            VIRTUALIZED_EOI => (
                ExitFacts { qualification: 0x31, ..f },
                Flip {
                    base: false,
                    set: |v| {
                        set_secondary(v, proc2::VIRTUAL_INTERRUPT_DELIVERY);
                        v.set(EOI_EXIT_BITMAP0, 1 << 0x31)
                    },
                },
            ),
            GDTR_IDTR_ACCESS | LDTR_TR_ACCESS => flip(|v| set_secondary(v, proc2::DESCRIPTOR_TABLE_EXITING)),
            EPT_VIOLATION | EPT_MISCONFIG => flip(|v| set_secondary(v, proc2::ENABLE_EPT)),
            WBINVD => flip(|v| set_secondary(v, proc2::WBINVD_EXITING)),
            RDRAND => flip(|v| set_secondary(v, proc2::RDRAND_EXITING)),
            RDSEED => flip(|v| set_secondary(v, proc2::RDSEED_EXITING)),
            VMFUNC => flip(|v| set_secondary(v, proc2::ENABLE_VMFUNC)),
            PML_FULL => flip(|v| set_secondary(v, proc2::ENABLE_PML)),
            SPP_EVENT => flip(|v| set_secondary(v, proc2::SUB_PAGE_WRITE_PERMISSIONS)),
            ENQCMD_PASID | ENQCMDS_PASID => flip(|v| set_secondary(v, proc2::PASID_TRANSLATION)),
            BUS_LOCK => flip(|v| set_secondary(v, proc2::BUS_LOCK_DETECTION)),
            INSTRUCTION_TIMEOUT => flip(|v| set_secondary(v, proc2::INSTRUCTION_TIMEOUT)),
            ENCLS => flip(|v| {
                set_secondary(v, proc2::ENCLS_EXITING);
                v.set(ENCLS_EXITING_BITMAP, 1 << 63)
            }),
            ENCLV => flip(|v| {
                set_secondary(v, proc2::ENCLV_EXITING);
                v.set(ENCLV_EXITING_BITMAP, 1)
            }),
            XSAVES | XRSTORS => flip(|v| {
                set_secondary(v, proc2::ENABLE_XSAVES);
                v.set(XSS_EXIT_BITMAP, 1 << 8)
            }),
            LOADIWKEY => flip(|v| {
                set_primary(v, proc::ACTIVATE_TERTIARY_CONTROLS);
                v.set(TERTIARY_VM_EXEC_CONTROL, proc3::LOADIWKEY_EXITING)
            }),
        }
    }

    /// A VMCS with every field all ones, and memory of all ones.
    fn everything_set() -> (Vmcs, Ram) {
        let mut v = Vmcs::new(1);
        for field in FIELDS {
            v.set(field.encoding, u64::MAX);
        }
        (v, Ram(vec![0xff; 0x1000]))
    }

    #[test]
    fn every_reason_has_its_rule() {
        let ram = Ram(vec![0; 0x1000]);
        let (all, all_ram) = everything_set();
        for &r in ExitReason::ALL {
            let (f, rule) = case(r);
            let clear = Vmcs::new(1);
            match rule {
                Rule::Always | Rule::Never => {
                    let want = matches!(rule, Rule::Always);
                    assert_eq!(l1_wants_exit(&clear, &ram, &f), want, "{} with controls clear", r.name());
                    assert_eq!(l1_wants_exit(&all, &all_ram, &f), want, "{} with controls set", r.name());
                }
                Rule::Flip { base, set } => {
                    assert_eq!(l1_wants_exit(&clear, &ram, &f), base, "{} with controls clear", r.name());
                    let mut v = clear;
                    set(&mut v);
                    assert_eq!(l1_wants_exit(&v, &ram, &f), !base, "{} with its control set", r.name());
                }
            }
        }
    }

    #[test]
    fn entry_failures_and_undefined_reasons() {
        let (v, ram) = setup(0);
        let hlt = ExitReason::HLT as u32;
        assert!(!l1_wants_exit(&v, &ram, &ExitFacts { reason: hlt, ..ExitFacts::default() }));
        assert!(l1_wants_exit(&v, &ram, &ExitFacts { reason: hlt | VM_ENTRY_FAILURE, ..ExitFacts::default() }));
        for reason in [35, 38, 42, 65, 71, 78, 0xffff] {
            assert!(ExitReason::from_u32(reason).is_none());
            assert!(l1_wants_exit(&v, &ram, &ExitFacts { reason, ..ExitFacts::default() }), "{reason}");
        }
        // Bits 30:16 (e.g. bit 26, "pending bus lock") do not change the basic reason.
        assert!(!l1_wants_exit(&v, &ram, &ExitFacts { reason: hlt | 1 << 26, ..ExitFacts::default() }));
    }

    #[test]
    fn secondary_and_tertiary_controls_need_activation() {
        let (mut v, ram) = setup(proc::RDTSC_EXITING | proc::INVLPG_EXITING);
        v.set(SECONDARY_VM_EXEC_CONTROL, u64::MAX);
        v.set(TERTIARY_VM_EXEC_CONTROL, u64::MAX);
        v.set(XSS_EXIT_BITMAP, u64::MAX);
        for r in [ExitReason::WBINVD, ExitReason::EPT_VIOLATION, ExitReason::LOADIWKEY, ExitReason::XSAVES] {
            assert!(!l1_wants_exit(&v, &ram, &facts(r)), "{}", r.name());
        }
        // Without "enable RDTSCP" / "enable INVPCID" these raise #UD instead of exiting.
        assert!(!l1_wants_exit(&v, &ram, &facts(ExitReason::RDTSCP)));
        assert!(!l1_wants_exit(&v, &ram, &facts(ExitReason::INVPCID)));
        assert!(!l1_wants_exit(&v, &ram, &facts(ExitReason::UMWAIT)));
        assert!(l1_wants_exit(&v, &ram, &facts(ExitReason::RDTSC)));
        set_primary(&mut v, proc::ACTIVATE_SECONDARY_CONTROLS | proc::ACTIVATE_TERTIARY_CONTROLS);
        for r in [ExitReason::WBINVD, ExitReason::RDTSCP, ExitReason::INVPCID, ExitReason::LOADIWKEY] {
            assert!(l1_wants_exit(&v, &ram, &facts(r)), "{}", r.name());
        }
        // The exiting control alone is not enough either.
        let (mut v, ram) = setup(0);
        set_secondary(&mut v, proc2::ENABLE_RDTSCP | proc2::ENABLE_INVPCID | proc2::USER_WAIT_PAUSE);
        for r in [ExitReason::RDTSCP, ExitReason::INVPCID, ExitReason::TPAUSE] {
            assert!(!l1_wants_exit(&v, &ram, &facts(r)), "{}", r.name());
        }
    }

    #[test]
    fn io() {
        let (v, ram) = setup(0);
        assert!(!wants_io(&v, &ram, 0x3f8, 1));
        let (v, ram) = setup(proc::UNCOND_IO_EXITING);
        assert!(wants_io(&v, &ram, 0x3f8, 1));
        let (v, mut ram) = setup(proc::USE_IO_BITMAPS | proc::UNCOND_IO_EXITING);
        assert!(!wants_io(&v, &ram, 0x3f8, 1));
        ram.0[0x1000 + 0x3f9 / 8] |= 1 << (0x3f9 % 8);
        assert!(!wants_io(&v, &ram, 0x3f8, 1));
        assert!(wants_io(&v, &ram, 0x3f8, 2));
        ram.0[0x2000] |= 1;
        assert!(wants_io(&v, &ram, 0x8000, 1));
        assert!(wants_io(&v, &ram, 0x7fff, 2));
        assert!(!wants_io(&v, &ram, 0xfff0, 4));
        assert!(wants_io(&v, &ram, 0xffff, 2));
        let mut v = v;
        v.set(IO_BITMAP_B, 0x10_0000);
        assert!(wants_io(&v, &ram, 0x9000, 1));
        // String, REP and immediate forms decide alike; only port and size count.
        let q = io_qualification(0x3f9, 1, true, true, true, false);
        assert!(l1_wants_exit(&v, &ram, &ExitFacts { qualification: q, ..facts(ExitReason::IO_INSTRUCTION) }));
        assert_eq!(io_facts(0x3f8, 4, true).qualification, 0x03f8_000b);
    }

    #[test]
    fn msr() {
        let (v, ram) = setup(0);
        assert!(wants_msr(&v, &ram, 0x10, false));
        let (v, mut ram) = setup(proc::USE_MSR_BITMAPS);
        assert!(!wants_msr(&v, &ram, 0x10, false));
        assert!(wants_msr(&v, &ram, 0x4000_0000, false));
        ram.0[0x3000 + 0x10 / 8] |= 1 << (0x10 % 8);
        assert!(wants_msr(&v, &ram, 0x10, false));
        assert!(!wants_msr(&v, &ram, 0x10, true));
        ram.0[0x3c00 + 0x80 / 8] |= 1 << (0x80 % 8);
        assert!(wants_msr(&v, &ram, 0xc000_0080, true));
        assert!(!wants_msr(&v, &ram, 0xc000_0080, false));
        ram.0[0x3400] |= 1;
        assert!(wants_msr(&v, &ram, 0xc000_0000, false));
        ram.0[0x3800 + 0x1fff / 8] |= 0x80;
        assert!(wants_msr(&v, &ram, 0x1fff, true));
        let mut v = v;
        v.set(MSR_BITMAP, 0x10_0000);
        assert!(wants_msr(&v, &ram, 0x11, false));
    }

    #[test]
    fn exceptions_and_nmis() {
        let (mut v, ram) = setup(0);
        let ex = |v: &Vmcs, intr_info: u32, error_code: u32| {
            l1_wants_exit(v, &ram, &ExitFacts { intr_info, error_code, ..facts(ExitReason::EXCEPTION_NMI) })
        };
        v.set(EXCEPTION_BITMAP, 1 << 14 | 1 << 6 | 1 << 3 | 1 << 1 | 1 << 2);
        assert!(ex(&v, HW_EXCEPTION | 6, 0));
        assert!(!ex(&v, HW_EXCEPTION | 13, 0));
        assert!(ex(&v, HW_EXCEPTION | 14, 2));
        v.set(PAGE_FAULT_ERROR_CODE_MASK, 2);
        v.set(PAGE_FAULT_ERROR_CODE_MATCH, 2);
        assert!(ex(&v, HW_EXCEPTION | 14, 2));
        assert!(!ex(&v, HW_EXCEPTION | 14, 0));
        let bitmap = v.get(EXCEPTION_BITMAP);
        v.set(EXCEPTION_BITMAP, bitmap & !(1 << 14));
        assert!(ex(&v, HW_EXCEPTION | 14, 0));
        assert!(!ex(&v, HW_EXCEPTION | 14, 2));
        // INT3 (software exception) and INT1 (privileged software exception) use the bitmap.
        assert!(ex(&v, INTR_INFO_VALID | INTR_TYPE_SOFT_EXCEPTION << 8 | 3, 0));
        assert!(ex(&v, INTR_INFO_VALID | INTR_TYPE_PRIV_SOFT_EXCEPTION << 8 | 1, 0));
        // INT n (type 4) and external interrupts never report this reason.
        assert!(!ex(&v, INTR_INFO_VALID | 4 << 8 | 3, 0));
        assert!(!ex(&v, INTR_INFO_VALID | 6, 0));
        // NMIs follow "NMI exiting", not bitmap bit 2.
        let nmi = INTR_INFO_VALID | INTR_TYPE_NMI << 8 | 2;
        assert!(!ex(&v, nmi, 0));
        set_pin(&mut v, pin::NMI_EXITING);
        v.set(EXCEPTION_BITMAP, 0);
        assert!(ex(&v, nmi, 0));
    }

    #[test]
    fn external_interrupts_and_posted_interrupts() {
        let (mut v, ram) = setup(0);
        let ext = |v: &Vmcs, vector: u32| {
            let intr_info = INTR_INFO_VALID | vector;
            l1_wants_exit(v, &ram, &ExitFacts { intr_info, ..facts(ExitReason::EXTERNAL_INTERRUPT) })
        };
        assert!(!ext(&v, 0x20));
        set_pin(&mut v, pin::EXT_INTR_EXITING);
        assert!(ext(&v, 0x20));
        set_pin(&mut v, pin::PROCESS_POSTED_INTERRUPTS);
        v.set(POSTED_INTR_NV, 0xf2);
        assert!(ext(&v, 0x20));
        assert!(!ext(&v, 0xf2));
    }

    fn cr(v: &Vmcs, qualification: u64, cr_value: u64) -> bool {
        let ram = Ram(vec![0; 0x100]);
        l1_wants_exit(v, &ram, &ExitFacts { qualification, cr_value, ..facts(ExitReason::CR_ACCESS) })
    }

    /// Exit qualification for a control-register access (SDM 28.2.1, Table 28-3).
    fn cr_qual(cr: u64, access: u64, lmsw_source: u64) -> u64 {
        cr | access << 4 | lmsw_source << 16
    }

    #[test]
    fn mov_to_cr0_and_cr4() {
        let (mut v, _) = setup(0);
        assert!(!cr(&v, cr_qual(0, 0, 0), 0xffff_ffff));
        v.set(CR0_GUEST_HOST_MASK, 1 << 31 | 1);
        v.set(CR0_READ_SHADOW, 1 << 31 | 1);
        assert!(!cr(&v, cr_qual(0, 0, 0), 1 << 31 | 1 | 1 << 5));
        assert!(cr(&v, cr_qual(0, 0, 0), 1));
        v.set(CR4_GUEST_HOST_MASK, 1 << 13);
        assert!(!cr(&v, cr_qual(4, 0, 0), 1 << 5));
        assert!(cr(&v, cr_qual(4, 0, 0), 1 << 13));
        v.set(CR4_READ_SHADOW, 1 << 13);
        assert!(!cr(&v, cr_qual(4, 0, 0), 1 << 13 | 1 << 7));
        // Reads of CR0 and CR4 never exit (they return the read shadow); CR2 is not intercepted.
        assert!(!cr(&v, cr_qual(0, 1, 0), 0));
        assert!(!cr(&v, cr_qual(4, 1, 0), 0));
        assert!(!cr(&v, cr_qual(2, 0, 0), 0));
    }

    #[test]
    fn mov_cr3_and_cr8() {
        let (mut v, _) = setup(0);
        for q in [cr_qual(3, 0, 0), cr_qual(3, 1, 0), cr_qual(8, 0, 0), cr_qual(8, 1, 0)] {
            assert!(!cr(&v, q, 0x1000));
        }
        set_primary(&mut v, proc::CR3_LOAD_EXITING);
        assert!(cr(&v, cr_qual(3, 0, 0), 0x1000));
        assert!(!cr(&v, cr_qual(3, 1, 0), 0x1000));
        v.set(CR3_TARGET_VALUE0, 0x1000);
        v.set(CR3_TARGET_VALUE3, 0x4000);
        // Only the first CR3-target-count values count.
        assert!(cr(&v, cr_qual(3, 0, 0), 0x1000));
        v.set(CR3_TARGET_COUNT, 1);
        assert!(!cr(&v, cr_qual(3, 0, 0), 0x1000));
        assert!(cr(&v, cr_qual(3, 0, 0), 0x4000));
        v.set(CR3_TARGET_COUNT, 4);
        assert!(!cr(&v, cr_qual(3, 0, 0), 0x4000));
        assert!(cr(&v, cr_qual(3, 0, 0), 0x2000));
        set_primary(&mut v, proc::CR3_STORE_EXITING);
        assert!(cr(&v, cr_qual(3, 1, 0), 0));
        set_primary(&mut v, proc::CR8_LOAD_EXITING);
        assert!(cr(&v, cr_qual(8, 0, 0), 0));
        assert!(!cr(&v, cr_qual(8, 1, 0), 0));
        set_primary(&mut v, proc::CR8_STORE_EXITING);
        assert!(cr(&v, cr_qual(8, 1, 0), 0));
    }

    #[test]
    fn clts_and_lmsw() {
        let (mut v, _) = setup(0);
        let clts = cr_qual(0, 2, 0);
        let lmsw = |source| cr_qual(0, 3, source);
        v.set(CR0_GUEST_HOST_MASK, CR0_TS);
        assert!(!cr(&v, clts, 0));
        v.set(CR0_READ_SHADOW, CR0_TS);
        assert!(cr(&v, clts, 0));
        v.set(CR0_GUEST_HOST_MASK, 0);
        assert!(!cr(&v, clts, 0));

        // Bits 3:1 exit when a masked bit differs from the shadow.
        v.set(CR0_GUEST_HOST_MASK, 0b0100);
        v.set(CR0_READ_SHADOW, 0);
        assert!(!cr(&v, lmsw(0b1011), 0));
        assert!(cr(&v, lmsw(0b0100), 0));
        v.set(CR0_READ_SHADOW, 0b0100);
        assert!(cr(&v, lmsw(0), 0));
        // Bits above 3 are not written by LMSW.
        v.set(CR0_GUEST_HOST_MASK, 0xfff0);
        assert!(!cr(&v, lmsw(0xfff0), 0));
        // PE: only setting it while the shadow has it clear exits, since LMSW cannot clear it.
        v.set(CR0_GUEST_HOST_MASK, 1);
        v.set(CR0_READ_SHADOW, 0);
        assert!(cr(&v, lmsw(1), 0));
        assert!(!cr(&v, lmsw(0), 0));
        v.set(CR0_READ_SHADOW, 1);
        assert!(!cr(&v, lmsw(0), 0));
        assert!(!cr(&v, lmsw(1), 0));
    }

    #[test]
    fn vmread_vmwrite_shadowing() {
        let (mut v, mut ram) = setup(0);
        let access =
            |v: &Vmcs, ram: &Ram, r: ExitReason, field: u64| l1_wants_exit(v, ram, &ExitFacts { field, ..facts(r) });
        assert!(access(&v, &ram, ExitReason::VMREAD, 0));
        set_secondary(&mut v, proc2::VMCS_SHADOWING);
        v.set(VMREAD_BITMAP, 0x1000);
        v.set(VMWRITE_BITMAP, 0x2000);
        let rip = u64::from(GUEST_RIP);
        assert!(!access(&v, &ram, ExitReason::VMREAD, rip));
        assert!(!access(&v, &ram, ExitReason::VMWRITE, rip));
        ram.0[0x2000 + (GUEST_RIP / 8) as usize] |= 1 << (GUEST_RIP % 8);
        assert!(!access(&v, &ram, ExitReason::VMREAD, rip));
        assert!(access(&v, &ram, ExitReason::VMWRITE, rip));
        assert!(access(&v, &ram, ExitReason::VMREAD, 0x8000 | rip));
        assert!(access(&v, &ram, ExitReason::VMREAD, 1 << 32));
        v.set(VMREAD_BITMAP, 0x10_0000);
        assert!(access(&v, &ram, ExitReason::VMREAD, rip));
    }

    #[test]
    fn apic_virtualization() {
        let (mut v, ram) = setup(0);
        let eoi = |v: &Vmcs, vector: u64| {
            l1_wants_exit(v, &ram, &ExitFacts { qualification: vector, ..facts(ExitReason::VIRTUALIZED_EOI) })
        };
        v.set(EOI_EXIT_BITMAP3, 1 << 63);
        assert!(!eoi(&v, 0xff));
        set_secondary(&mut v, proc2::VIRTUAL_INTERRUPT_DELIVERY);
        assert!(eoi(&v, 0xff));
        assert!(!eoi(&v, 0xfe));
        assert!(!eoi(&v, 0x3f));
        // The TPR threshold is not used with virtual-interrupt delivery; APIC writes are.
        set_primary(&mut v, proc::USE_TPR_SHADOW);
        assert!(!l1_wants_exit(&v, &ram, &facts(ExitReason::TPR_BELOW_THRESHOLD)));
        assert!(l1_wants_exit(&v, &ram, &facts(ExitReason::APIC_WRITE)));
    }

    #[test]
    fn leaf_dependent_instructions_need_a_bitmap_bit() {
        let (mut v, ram) = setup(0);
        set_secondary(&mut v, proc2::ENCLS_EXITING | proc2::ENCLV_EXITING | proc2::ENABLE_XSAVES);
        for r in [ExitReason::ENCLS, ExitReason::ENCLV, ExitReason::XSAVES, ExitReason::XRSTORS] {
            assert!(!l1_wants_exit(&v, &ram, &facts(r)), "{}", r.name());
        }
    }
}
