//! VMX capability MSRs (SDM Vol. 3D, Appendix A) advertising exactly what nestbed
//! implements, plus the named control bits the rest of the model uses.
//!
//! A control MSR reports allowed 0-settings in bits 31:0 (a 1 there means the control must
//! be 1) and allowed 1-settings in bits 63:32 (a 0 there means it must be 0) (SDM A.3).

pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
pub const IA32_VMX_BASIC: u32 = 0x480;
pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
pub const IA32_VMX_MISC: u32 = 0x485;
pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
pub const IA32_VMX_VMCS_ENUM: u32 = 0x48a;
pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;
pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48c;
pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48d;
pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48e;
pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48f;
pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
pub const IA32_VMX_VMFUNC: u32 = 0x491;

/// nestbed's VMCS revision identifier: ASCII "NB" (0x4e 0x42). Any value works as long as
/// L1 reads it from IA32_VMX_BASIC; this one is easy to spot in a memory dump.
pub const NESTBED_VMCS_REVISION: u32 = 0x4e42;

/// IA32_FEATURE_CONTROL bits (SDM Vol. 4, Table 2-2).
pub const FEATURE_CONTROL_LOCKED: u64 = 1 << 0;
pub const FEATURE_CONTROL_VMXON_OUTSIDE_SMX: u64 = 1 << 2;

/// Pin-based VM-execution controls (SDM 25.6.1, Table 25-5).
pub mod pin {
    pub const EXT_INTR_EXITING: u32 = 1 << 0;
    pub const NMI_EXITING: u32 = 1 << 3;
    pub const VIRTUAL_NMIS: u32 = 1 << 5;
    pub const ACTIVATE_PREEMPTION_TIMER: u32 = 1 << 6;
    pub const PROCESS_POSTED_INTERRUPTS: u32 = 1 << 7;
    /// Default1 class (SDM A.3.1).
    pub const DEFAULT1: u32 = 0x0000_0016;
}

/// Primary processor-based VM-execution controls (SDM 25.6.2, Table 25-6).
pub mod proc {
    pub const INTR_WINDOW_EXITING: u32 = 1 << 2;
    pub const USE_TSC_OFFSETTING: u32 = 1 << 3;
    pub const HLT_EXITING: u32 = 1 << 7;
    pub const INVLPG_EXITING: u32 = 1 << 9;
    pub const MWAIT_EXITING: u32 = 1 << 10;
    pub const RDPMC_EXITING: u32 = 1 << 11;
    pub const RDTSC_EXITING: u32 = 1 << 12;
    pub const CR3_LOAD_EXITING: u32 = 1 << 15;
    pub const CR3_STORE_EXITING: u32 = 1 << 16;
    pub const ACTIVATE_TERTIARY_CONTROLS: u32 = 1 << 17;
    pub const CR8_LOAD_EXITING: u32 = 1 << 19;
    pub const CR8_STORE_EXITING: u32 = 1 << 20;
    pub const USE_TPR_SHADOW: u32 = 1 << 21;
    pub const NMI_WINDOW_EXITING: u32 = 1 << 22;
    pub const MOV_DR_EXITING: u32 = 1 << 23;
    pub const UNCOND_IO_EXITING: u32 = 1 << 24;
    pub const USE_IO_BITMAPS: u32 = 1 << 25;
    pub const MONITOR_TRAP_FLAG: u32 = 1 << 27;
    pub const USE_MSR_BITMAPS: u32 = 1 << 28;
    pub const MONITOR_EXITING: u32 = 1 << 29;
    pub const PAUSE_EXITING: u32 = 1 << 30;
    pub const ACTIVATE_SECONDARY_CONTROLS: u32 = 1 << 31;
    /// Default1 class (SDM A.3.2): bits 1, 4-6, 8, 13-16, 26.
    pub const DEFAULT1: u32 = 0x0401_e172;
    /// Default1 bits that stay required in the TRUE MSR: all but CR3-load/store exiting.
    pub const TRUE_DEFAULT1: u32 = 0x0400_6172;
}

/// Secondary processor-based VM-execution controls (SDM 25.6.2, Table 25-7).
pub mod proc2 {
    pub const VIRTUALIZE_APIC_ACCESSES: u32 = 1 << 0;
    pub const ENABLE_EPT: u32 = 1 << 1;
    pub const DESCRIPTOR_TABLE_EXITING: u32 = 1 << 2;
    pub const ENABLE_RDTSCP: u32 = 1 << 3;
    pub const VIRTUALIZE_X2APIC_MODE: u32 = 1 << 4;
    pub const ENABLE_VPID: u32 = 1 << 5;
    pub const WBINVD_EXITING: u32 = 1 << 6;
    pub const UNRESTRICTED_GUEST: u32 = 1 << 7;
    pub const APIC_REGISTER_VIRTUALIZATION: u32 = 1 << 8;
    pub const VIRTUAL_INTERRUPT_DELIVERY: u32 = 1 << 9;
    pub const PAUSE_LOOP_EXITING: u32 = 1 << 10;
    pub const RDRAND_EXITING: u32 = 1 << 11;
    pub const ENABLE_INVPCID: u32 = 1 << 12;
    pub const ENABLE_VMFUNC: u32 = 1 << 13;
    pub const VMCS_SHADOWING: u32 = 1 << 14;
    pub const ENCLS_EXITING: u32 = 1 << 15;
    pub const RDSEED_EXITING: u32 = 1 << 16;
    pub const ENABLE_PML: u32 = 1 << 17;
    pub const EPT_VIOLATION_VE: u32 = 1 << 18;
    pub const ENABLE_XSAVES: u32 = 1 << 20;
    pub const PASID_TRANSLATION: u32 = 1 << 21;
    pub const MODE_BASED_EPT_EXEC: u32 = 1 << 22;
    pub const SUB_PAGE_WRITE_PERMISSIONS: u32 = 1 << 23;
    pub const USE_TSC_SCALING: u32 = 1 << 25;
    pub const USER_WAIT_PAUSE: u32 = 1 << 26;
    pub const ENCLV_EXITING: u32 = 1 << 28;
    pub const BUS_LOCK_DETECTION: u32 = 1 << 30;
    pub const INSTRUCTION_TIMEOUT: u32 = 1 << 31;
}

/// Tertiary processor-based VM-execution controls, a 64-bit field (SDM 25.6.2, Table 25-8).
pub mod proc3 {
    pub const LOADIWKEY_EXITING: u64 = 1 << 0;
}

/// VM-exit controls (SDM 25.7.1, Table 25-13).
pub mod exit {
    pub const SAVE_DEBUG_CONTROLS: u32 = 1 << 2;
    pub const HOST_ADDR_SPACE_SIZE: u32 = 1 << 9;
    pub const LOAD_PERF_GLOBAL_CTRL: u32 = 1 << 12;
    pub const ACK_INTR_ON_EXIT: u32 = 1 << 15;
    pub const SAVE_IA32_PAT: u32 = 1 << 18;
    pub const LOAD_IA32_PAT: u32 = 1 << 19;
    pub const SAVE_IA32_EFER: u32 = 1 << 20;
    pub const LOAD_IA32_EFER: u32 = 1 << 21;
    pub const SAVE_PREEMPTION_TIMER: u32 = 1 << 22;
    /// Default1 class (SDM A.4): bits 0-8, 10, 11, 13, 14, 16, 17.
    pub const DEFAULT1: u32 = 0x0003_6dff;
    /// In the TRUE MSR "save debug controls" may be 0 (SDM A.4.1).
    pub const TRUE_DEFAULT1: u32 = 0x0003_6dfb;
}

/// VM-entry controls (SDM 25.8.1, Table 25-15).
pub mod entry {
    pub const LOAD_DEBUG_CONTROLS: u32 = 1 << 2;
    pub const IA32E_MODE_GUEST: u32 = 1 << 9;
    pub const ENTRY_TO_SMM: u32 = 1 << 10;
    pub const DEACTIVATE_DUAL_MONITOR: u32 = 1 << 11;
    pub const LOAD_PERF_GLOBAL_CTRL: u32 = 1 << 13;
    pub const LOAD_IA32_PAT: u32 = 1 << 14;
    pub const LOAD_IA32_EFER: u32 = 1 << 15;
    /// Default1 class (SDM A.5): bits 0-8, 12.
    pub const DEFAULT1: u32 = 0x0000_11ff;
    /// In the TRUE MSR "load debug controls" may be 0 (SDM A.5.1).
    pub const TRUE_DEFAULT1: u32 = 0x0000_11fb;
}

/// IA32_VMX_EPT_VPID_CAP bits (SDM A.10).
pub mod ept_cap {
    pub const EXECUTE_ONLY: u64 = 1 << 0;
    pub const PAGE_WALK_4: u64 = 1 << 6;
    pub const PAGE_WALK_5: u64 = 1 << 7;
    pub const MEMTYPE_UC: u64 = 1 << 8;
    pub const MEMTYPE_WB: u64 = 1 << 14;
    pub const PAGE_2M: u64 = 1 << 16;
    pub const PAGE_1G: u64 = 1 << 17;
    pub const INVEPT: u64 = 1 << 20;
    pub const AD_FLAGS: u64 = 1 << 21;
    pub const INVEPT_SINGLE_CONTEXT: u64 = 1 << 25;
    pub const INVEPT_ALL_CONTEXT: u64 = 1 << 26;
    pub const INVVPID: u64 = 1 << 32;
    pub const INVVPID_INDIVIDUAL_ADDR: u64 = 1 << 40;
    pub const INVVPID_SINGLE_CONTEXT: u64 = 1 << 41;
    pub const INVVPID_ALL_CONTEXT: u64 = 1 << 42;
    pub const INVVPID_SINGLE_CONTEXT_GLOBAL: u64 = 1 << 43;
}

/// IA32_VMX_MISC bits (SDM A.6).
pub mod misc {
    pub const STORE_LMA_ON_EXIT: u64 = 1 << 5;
    /// The HLT activity state is supported (bit 6; shutdown is bit 7, wait-for-SIPI bit 8).
    pub const ACTIVITY_HLT: u64 = 1 << 6;
    pub const VMWRITE_ANY_FIELD: u64 = 1 << 29;
    pub const CR3_TARGET_SHIFT: u32 = 16;
}

/// CR0 / CR4 bits used by fixed-bit and entry checks.
pub mod cr {
    pub const CR0_PE: u64 = 1 << 0;
    pub const CR0_NE: u64 = 1 << 5;
    pub const CR0_NW: u64 = 1 << 29;
    pub const CR0_CD: u64 = 1 << 30;
    pub const CR0_PG: u64 = 1 << 31;
    pub const CR4_PAE: u64 = 1 << 5;
    pub const CR4_VMXE: u64 = 1 << 13;
    pub const CR4_PCIDE: u64 = 1 << 17;
    pub const EFER_SCE: u64 = 1 << 0;
    pub const EFER_LME: u64 = 1 << 8;
    pub const EFER_LMA: u64 = 1 << 10;
    pub const EFER_NXE: u64 = 1 << 11;
}

/// The five VM-execution/exit/entry control words with capability MSRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pin,
    Primary,
    Secondary,
    Exit,
    Entry,
}

/// One control capability MSR: bits 31:0 allowed0, 63:32 allowed1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtlCap {
    pub allowed0: u32,
    pub allowed1: u32,
}

impl CtlCap {
    pub fn msr(self) -> u64 {
        u64::from(self.allowed0) | (u64::from(self.allowed1) << 32)
    }

    /// A control word is valid when it has every allowed0 bit and no bit outside allowed1.
    pub fn permits(self, value: u32) -> bool {
        value & self.allowed0 == self.allowed0 && value & !self.allowed1 == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmxCaps {
    pub feature_control: u64,
    pub basic: u64,
    pub pin: CtlCap,
    pub true_pin: CtlCap,
    pub primary: CtlCap,
    pub true_primary: CtlCap,
    pub secondary: CtlCap,
    pub exit: CtlCap,
    pub true_exit: CtlCap,
    pub entry: CtlCap,
    pub true_entry: CtlCap,
    pub misc: u64,
    pub cr0_fixed0: u64,
    pub cr0_fixed1: u64,
    pub cr4_fixed0: u64,
    /// CR4 bits the guest may set; configurable so the glue can drop what the host
    /// CPU lacks.
    pub cr4_fixed1: u64,
    pub vmcs_enum: u64,
    pub ept_vpid_cap: u64,
    pub vmfunc: u64,
}

/// Default CR4_FIXED1: VME, PVI, TSD, DE, PSE, PAE, MCE, PGE, PCE, OSFXSR, OSXMMEXCPT
/// (bits 0-10), UMIP (11), VMXE (13), FSGSBASE (16), PCIDE (17), OSXSAVE (18), SMEP (20),
/// SMAP (21).
pub const DEFAULT_CR4_FIXED1: u64 = 0x7ff | 1 << 11 | 1 << 13 | 1 << 16 | 1 << 17 | 1 << 18 | 1 << 20 | 1 << 21;

impl VmxCaps {
    /// The exit controls load-time patching makes honest (`--patch-sensitive`): the
    /// instructions they concern reach nestbed only from patched sites.
    pub fn advertise_patched_exits(&mut self) {
        let p = proc::RDTSC_EXITING
            | proc::USE_TSC_OFFSETTING
            | proc::CR3_LOAD_EXITING
            | proc::CR3_STORE_EXITING
            | proc::CR8_LOAD_EXITING
            | proc::CR8_STORE_EXITING
            | proc::INVLPG_EXITING
            | proc::RDPMC_EXITING;
        self.primary.allowed1 |= p;
        self.true_primary.allowed1 |= p;
        self.secondary.allowed1 |= proc2::WBINVD_EXITING;
    }
}

impl Default for VmxCaps {
    fn default() -> Self {
        // SDM A.1: revision 30:0, region size 44:32, memory type 53:50 (6 = WB), bit 55 TRUE
        // control MSRs. Bit 54 (INS/OUTS instruction information) stays clear: L2's string I/O
        // never reaches L1 on our hosts (KVM emulates it in the kernel).
        let basic = u64::from(NESTBED_VMCS_REVISION) | (4096u64 << 32) | (6u64 << 50) | (1u64 << 55);
        // Events (runner/events.rs): external-interrupt and NMI exiting, virtual NMIs, the
        // VMX-preemption timer, the interrupt and NMI windows.
        let pin1 = pin::DEFAULT1
            | pin::EXT_INTR_EXITING
            | pin::NMI_EXITING
            | pin::VIRTUAL_NMIS
            | pin::ACTIVATE_PREEMPTION_TIMER;
        let primary1 = proc::DEFAULT1
            | proc::INTR_WINDOW_EXITING
            | proc::NMI_WINDOW_EXITING
            | proc::HLT_EXITING
            | proc::UNCOND_IO_EXITING
            | proc::USE_IO_BITMAPS
            | proc::MONITOR_TRAP_FLAG
            | proc::USE_MSR_BITMAPS
            | proc::ACTIVATE_SECONDARY_CONTROLS;
        // VMCS shadowing (SDM 25.10): L2's VMREAD/VMWRITE the bitmaps let through are served
        // from the shadow VMCS without a VM exit (`VmxCpu::execute_shadowed`).
        let secondary1 = proc2::ENABLE_EPT
            | proc2::ENABLE_RDTSCP
            | proc2::ENABLE_VPID
            | proc2::ENABLE_INVPCID
            | proc2::VMCS_SHADOWING;
        let exit1 = exit::DEFAULT1
            | exit::HOST_ADDR_SPACE_SIZE
            | exit::ACK_INTR_ON_EXIT
            | exit::SAVE_IA32_PAT
            | exit::LOAD_IA32_PAT
            | exit::SAVE_IA32_EFER
            | exit::LOAD_IA32_EFER
            | exit::SAVE_PREEMPTION_TIMER;
        let entry1 = entry::DEFAULT1 | entry::IA32E_MODE_GUEST | entry::LOAD_IA32_PAT | entry::LOAD_IA32_EFER;
        let cap = |allowed0, allowed1| CtlCap { allowed0, allowed1 };
        VmxCaps {
            feature_control: FEATURE_CONTROL_LOCKED | FEATURE_CONTROL_VMXON_OUTSIDE_SMX,
            basic,
            pin: cap(pin::DEFAULT1, pin1),
            true_pin: cap(pin::DEFAULT1, pin1),
            primary: cap(proc::DEFAULT1, primary1),
            true_primary: cap(proc::TRUE_DEFAULT1, primary1),
            secondary: cap(0, secondary1),
            exit: cap(exit::DEFAULT1, exit1),
            true_exit: cap(exit::TRUE_DEFAULT1, exit1),
            entry: cap(entry::DEFAULT1, entry1),
            true_entry: cap(entry::TRUE_DEFAULT1, entry1),
            // The preemption timer's rate; the HLT activity state besides the active one
            // (bit 6); 4 CR3-target values; 512-entry MSR lists (bits 27:25 = 0); VMWRITE to
            // read-only fields not allowed (bit 29 = 0).
            misc: u64::from(super::events::PREEMPTION_TIMER_RATE)
                | misc::STORE_LMA_ON_EXIT
                | misc::ACTIVITY_HLT
                | (4 << misc::CR3_TARGET_SHIFT),
            cr0_fixed0: cr::CR0_PE | cr::CR0_NE | cr::CR0_PG,
            cr0_fixed1: 0xffff_ffff,
            cr4_fixed0: cr::CR4_VMXE,
            cr4_fixed1: DEFAULT_CR4_FIXED1,
            vmcs_enum: u64::from(super::fields::max_index()) << 1,
            ept_vpid_cap: ept_cap::PAGE_WALK_4
                | ept_cap::MEMTYPE_WB
                | ept_cap::PAGE_2M
                | ept_cap::PAGE_1G
                | ept_cap::INVEPT
                | ept_cap::INVEPT_SINGLE_CONTEXT
                | ept_cap::INVEPT_ALL_CONTEXT
                | ept_cap::INVVPID
                | ept_cap::INVVPID_INDIVIDUAL_ADDR
                | ept_cap::INVVPID_SINGLE_CONTEXT
                | ept_cap::INVVPID_ALL_CONTEXT
                | ept_cap::INVVPID_SINGLE_CONTEXT_GLOBAL,
            vmfunc: 0,
        }
    }
}

impl VmxCaps {
    /// Value of a VMX-related MSR, `None` for MSRs this module does not own.
    pub fn msr(&self, index: u32) -> Option<u64> {
        Some(match index {
            IA32_FEATURE_CONTROL => self.feature_control,
            IA32_VMX_BASIC => self.basic,
            IA32_VMX_PINBASED_CTLS => self.pin.msr(),
            IA32_VMX_PROCBASED_CTLS => self.primary.msr(),
            IA32_VMX_EXIT_CTLS => self.exit.msr(),
            IA32_VMX_ENTRY_CTLS => self.entry.msr(),
            IA32_VMX_MISC => self.misc,
            IA32_VMX_CR0_FIXED0 => self.cr0_fixed0,
            IA32_VMX_CR0_FIXED1 => self.cr0_fixed1,
            IA32_VMX_CR4_FIXED0 => self.cr4_fixed0,
            IA32_VMX_CR4_FIXED1 => self.cr4_fixed1,
            IA32_VMX_VMCS_ENUM => self.vmcs_enum,
            IA32_VMX_PROCBASED_CTLS2 => self.secondary.msr(),
            IA32_VMX_EPT_VPID_CAP => self.ept_vpid_cap,
            IA32_VMX_TRUE_PINBASED_CTLS => self.true_pin.msr(),
            IA32_VMX_TRUE_PROCBASED_CTLS => self.true_primary.msr(),
            IA32_VMX_TRUE_EXIT_CTLS => self.true_exit.msr(),
            IA32_VMX_TRUE_ENTRY_CTLS => self.true_entry.msr(),
            IA32_VMX_VMFUNC => self.vmfunc,
            _ => return None,
        })
    }

    /// Replaces the value of a capability MSR [`VmxCaps::msr`] serves: the model then enforces
    /// the new value (VMXON's CR0/CR4 checks, VM-entry control checks...). `Err` names the
    /// problem for an MSR this module does not own.
    pub fn set_msr(&mut self, index: u32, value: u64) -> Result<(), String> {
        let ctl = CtlCap { allowed0: value as u32, allowed1: (value >> 32) as u32 };
        match index {
            IA32_FEATURE_CONTROL => self.feature_control = value,
            IA32_VMX_BASIC => self.basic = value,
            IA32_VMX_PINBASED_CTLS => self.pin = ctl,
            IA32_VMX_PROCBASED_CTLS => self.primary = ctl,
            IA32_VMX_EXIT_CTLS => self.exit = ctl,
            IA32_VMX_ENTRY_CTLS => self.entry = ctl,
            IA32_VMX_MISC => self.misc = value,
            IA32_VMX_CR0_FIXED0 => self.cr0_fixed0 = value,
            IA32_VMX_CR0_FIXED1 => self.cr0_fixed1 = value,
            IA32_VMX_CR4_FIXED0 => self.cr4_fixed0 = value,
            IA32_VMX_CR4_FIXED1 => self.cr4_fixed1 = value,
            IA32_VMX_VMCS_ENUM => self.vmcs_enum = value,
            IA32_VMX_PROCBASED_CTLS2 => self.secondary = ctl,
            IA32_VMX_EPT_VPID_CAP => self.ept_vpid_cap = value,
            IA32_VMX_TRUE_PINBASED_CTLS => self.true_pin = ctl,
            IA32_VMX_TRUE_PROCBASED_CTLS => self.true_primary = ctl,
            IA32_VMX_TRUE_EXIT_CTLS => self.true_exit = ctl,
            IA32_VMX_TRUE_ENTRY_CTLS => self.true_entry = ctl,
            IA32_VMX_VMFUNC => self.vmfunc = value,
            _ => {
                return Err(format!(
                    "MSR {index:#x} is not a VMX capability MSR (IA32_FEATURE_CONTROL 0x3a or 0x480-0x491)"
                ))
            }
        }
        Ok(())
    }

    pub fn revision(&self) -> u32 {
        (self.basic & 0x7fff_ffff) as u32
    }

    /// IA32_VMX_BASIC bit 55: the TRUE control MSRs exist.
    pub fn has_true_ctls(&self) -> bool {
        self.basic & (1 << 55) != 0
    }

    /// The capability that governs VM entry for a control word: the TRUE MSR when
    /// IA32_VMX_BASIC[55] is set (SDM A.2).
    pub fn cap(&self, ctl: Control) -> CtlCap {
        let t = self.has_true_ctls();
        match ctl {
            Control::Pin if t => self.true_pin,
            Control::Pin => self.pin,
            Control::Primary if t => self.true_primary,
            Control::Primary => self.primary,
            Control::Secondary => self.secondary,
            Control::Exit if t => self.true_exit,
            Control::Exit => self.exit,
            Control::Entry if t => self.true_entry,
            Control::Entry => self.entry,
        }
    }

    /// `(allowed0, allowed1)` for a control word (see [`VmxCaps::cap`]).
    pub fn allowed(&self, ctl: Control) -> (u32, u32) {
        let c = self.cap(ctl);
        (c.allowed0, c.allowed1)
    }

    /// Number of CR3-target values supported (IA32_VMX_MISC bits 24:16).
    pub fn cr3_target_count(&self) -> u32 {
        ((self.misc >> misc::CR3_TARGET_SHIFT) & 0x1ff) as u32
    }

    pub fn vmwrite_any_field(&self) -> bool {
        self.misc & misc::VMWRITE_ANY_FIELD != 0
    }

    pub fn vmcs_shadowing(&self) -> bool {
        self.secondary.allowed1 & proc2::VMCS_SHADOWING != 0
    }
}

/// Parses `INDEX=VALUE` (each hex with `0x` or decimal) naming a capability MSR
/// [`VmxCaps::set_msr`] accepts; `Err` says what is wrong, in one line.
pub fn parse_msr_setting(text: &str) -> Result<(u32, u64), String> {
    fn number(what: &str, s: &str) -> Result<u64, String> {
        let s = s.trim();
        let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        };
        parsed.map_err(|_| format!("{what} `{s}` is not a 64-bit number (hex 0x... or decimal)"))
    }
    let (index, value) = text.split_once('=').ok_or("expected INDEX=VALUE, e.g. 0x486=0x21")?;
    let index = number("INDEX", index)?;
    let index = u32::try_from(index).map_err(|_| format!("INDEX {index:#x} is not a 32-bit MSR index"))?;
    let value = number("VALUE", value)?;
    VmxCaps::default().set_msr(index, value)?;
    Ok((index, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_layout() {
        let c = VmxCaps::default();
        let b = c.msr(IA32_VMX_BASIC).unwrap();
        assert_eq!(b & 0x7fff_ffff, 0x4e42);
        assert_eq!((b >> 32) & 0x1fff, 4096);
        assert_eq!((b >> 50) & 0xf, 6);
        assert_eq!(b & (1 << 54), 0, "no INS/OUTS instruction information");
        assert!(c.has_true_ctls());
        assert_eq!(c.msr(IA32_FEATURE_CONTROL), Some(5));
        assert_eq!(c.msr(0x492), None);
        assert_eq!(c.msr(IA32_VMX_VMFUNC), Some(0));
    }

    #[test]
    fn default1_bits_allowed() {
        let c = VmxCaps::default();
        for (ctl, plain, tru, d1) in [
            (Control::Pin, c.pin, c.true_pin, pin::DEFAULT1),
            (Control::Primary, c.primary, c.true_primary, proc::DEFAULT1),
            (Control::Exit, c.exit, c.true_exit, exit::DEFAULT1),
            (Control::Entry, c.entry, c.true_entry, entry::DEFAULT1),
        ] {
            // Plain MSRs report every default1 bit as allowed0 = 1 (SDM A.2).
            assert_eq!(plain.allowed0, d1, "{ctl:?}");
            assert_eq!(plain.allowed1 & d1, d1, "{ctl:?}");
            // TRUE MSRs: allowed1 identical, allowed0 a subset of the default1 class.
            assert_eq!(tru.allowed1, plain.allowed1, "{ctl:?}");
            assert_eq!(tru.allowed0 & !d1, 0, "{ctl:?}");
            assert_eq!(tru.allowed0 & !plain.allowed0, 0, "{ctl:?}");
            assert!(tru.permits(tru.allowed0));
            assert_eq!(c.allowed(ctl), (tru.allowed0, tru.allowed1));
        }
        assert_eq!(c.true_primary.allowed0, 0x0400_6172);
        assert_eq!(c.secondary.msr(), 0x502a_u64 << 32);
    }

    #[test]
    fn misc_fixed_and_ept() {
        let c = VmxCaps::default();
        assert_eq!(c.cr3_target_count(), 4);
        assert!(!c.vmwrite_any_field());
        assert_eq!(c.misc & (7 << 6), misc::ACTIVITY_HLT, "HLT only of the activity states");
        assert_eq!(c.misc & 0x1f, 5, "the preemption timer's rate");
        assert_eq!(c.cr0_fixed0, 0x8000_0021);
        assert_eq!(c.cr4_fixed1, 0x0037_2fff);
        assert_eq!(c.cr4_fixed0 & c.cr4_fixed1, c.cr4_fixed0);
        assert_eq!(c.ept_vpid_cap, 0x0000_0f01_0613_4040);
        assert_eq!(c.vmcs_enum, u64::from(super::super::fields::max_index()) << 1);
        assert!(c.vmcs_shadowing());
    }

    #[test]
    fn set_msr_round_trips_every_index() {
        let indices = std::iter::once(IA32_FEATURE_CONTROL).chain(IA32_VMX_BASIC..=IA32_VMX_VMFUNC);
        for (n, index) in indices.enumerate() {
            let mut c = VmxCaps::default();
            let value = 0x0123_4567_89ab_cdef_u64.rotate_left(n as u32 * 4) ^ u64::from(index);
            c.set_msr(index, value).unwrap();
            assert_eq!(c.msr(index), Some(value), "{index:#x}");
            // Every other MSR keeps its default.
            let d = VmxCaps::default();
            for other in std::iter::once(IA32_FEATURE_CONTROL).chain(IA32_VMX_BASIC..=IA32_VMX_VMFUNC) {
                if other != index {
                    assert_eq!(c.msr(other), d.msr(other), "{index:#x} changed {other:#x}");
                }
            }
        }
    }

    #[test]
    fn set_msr_fields() {
        let mut c = VmxCaps::default();
        c.set_msr(IA32_VMX_PROCBASED_CTLS2, 0x0000_0082_0000_0002).unwrap();
        assert_eq!(c.secondary, CtlCap { allowed0: 2, allowed1: 0x82 });
        c.set_msr(IA32_VMX_TRUE_ENTRY_CTLS, 0x0000_f3ff_0000_11fb).unwrap();
        assert_eq!(c.true_entry, CtlCap { allowed0: 0x11fb, allowed1: 0xf3ff });
        assert_eq!(c.cap(Control::Entry), c.true_entry);
        c.set_msr(IA32_VMX_CR0_FIXED0, 0x21).unwrap();
        assert_eq!(c.cr0_fixed0, 0x21);
    }

    #[test]
    fn set_msr_rejects_other_msrs() {
        for index in [0, 0x39, 0x3b, 0x47f, 0x492, 0xc000_0080, u32::MAX] {
            let mut c = VmxCaps::default();
            let e = c.set_msr(index, 1).unwrap_err();
            assert!(e.contains(&format!("{index:#x}")), "{e}");
            assert_eq!(c, VmxCaps::default());
        }
    }

    #[test]
    fn msr_settings_parse_hex_and_decimal() {
        assert_eq!(parse_msr_setting("0x486=0x21"), Ok((0x486, 0x21)));
        assert_eq!(parse_msr_setting("1158=33"), Ok((0x486, 33)));
        assert_eq!(parse_msr_setting("0X3A=0xFFFFFFFFFFFFFFFF"), Ok((0x3a, u64::MAX)));
        for (text, want) in [
            ("0x486", "expected INDEX=VALUE"),
            ("0x486=", "VALUE `` is not"),
            ("zz=1", "INDEX `zz` is not"),
            ("0x486=0x1_0000_0000_0000_0000", "VALUE"),
            ("0x486=0x10000000000000000", "VALUE"),
            ("0x100000486=1", "not a 32-bit MSR index"),
            ("0x492=1", "0x492 is not a VMX capability MSR"),
            ("-1=1", "INDEX `-1`"),
        ] {
            let e = parse_msr_setting(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains('\n'), "{text}: {e}");
        }
    }

    #[test]
    fn non_true_fallback() {
        let mut c = VmxCaps::default();
        c.basic &= !(1 << 55);
        assert_eq!(c.allowed(Control::Primary).0, proc::DEFAULT1);
    }
}
