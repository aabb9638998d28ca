//! Shared code of nestbed's L1 hypervisor test guests: VMCS field encodings (SDM Vol. 3D,
//! Appendix B), exit reasons (Appendix C), control bits (3C 25.6-25.8), capability MSRs
//! (Appendix A), page-aligned regions and bitmaps, and a VMCS setup for an L2 that runs in
//! 64-bit mode on L1's own page tables, segments and descriptor tables (no EPT). For the event
//! guests: the interruption-information format and interruptibility state ([`intr`]) and an
//! IDT for L2 whose handlers report to L1 how they were entered ([`l2idt`]).

#![no_std]

use core::cell::UnsafeCell;

use rt::io;
use rt::vmx::{vmread, vmwrite, GuestRegs, VmFail, CR4_VMXE};

pub use rt::vmx;

pub mod intr;
pub mod l2idt;

/// VMCS field encodings (SDM Appendix B).
pub mod field {
    pub use rt::vmx::field::*;
    pub const VIRTUAL_PROCESSOR_ID: u64 = 0x0000;
    pub const GUEST_ES_SELECTOR: u64 = 0x0800;
    pub const GUEST_CS_SELECTOR: u64 = 0x0802;
    pub const GUEST_SS_SELECTOR: u64 = 0x0804;
    pub const GUEST_DS_SELECTOR: u64 = 0x0806;
    pub const GUEST_FS_SELECTOR: u64 = 0x0808;
    pub const GUEST_GS_SELECTOR: u64 = 0x080a;
    pub const GUEST_LDTR_SELECTOR: u64 = 0x080c;
    pub const GUEST_TR_SELECTOR: u64 = 0x080e;
    pub const HOST_ES_SELECTOR: u64 = 0x0c00;
    pub const HOST_CS_SELECTOR: u64 = 0x0c02;
    pub const HOST_SS_SELECTOR: u64 = 0x0c04;
    pub const HOST_DS_SELECTOR: u64 = 0x0c06;
    pub const HOST_FS_SELECTOR: u64 = 0x0c08;
    pub const HOST_GS_SELECTOR: u64 = 0x0c0a;
    pub const HOST_TR_SELECTOR: u64 = 0x0c0c;
    pub const IO_BITMAP_A: u64 = 0x2000;
    pub const IO_BITMAP_B: u64 = 0x2002;
    pub const MSR_BITMAP: u64 = 0x2004;
    pub const VM_EXIT_MSR_STORE_ADDR: u64 = 0x2006;
    pub const VM_EXIT_MSR_LOAD_ADDR: u64 = 0x2008;
    pub const VM_ENTRY_MSR_LOAD_ADDR: u64 = 0x200a;
    pub const TSC_OFFSET: u64 = 0x2010;
    pub const EPT_POINTER: u64 = 0x201a;
    pub const GUEST_PHYSICAL_ADDRESS: u64 = 0x2400;
    pub const VMCS_LINK_POINTER: u64 = 0x2800;
    pub const GUEST_IA32_DEBUGCTL: u64 = 0x2802;
    pub const GUEST_IA32_PAT: u64 = 0x2804;
    pub const GUEST_IA32_EFER: u64 = 0x2806;
    pub const HOST_IA32_PAT: u64 = 0x2c00;
    pub const HOST_IA32_EFER: u64 = 0x2c02;
    pub const PIN_BASED_VM_EXEC_CONTROL: u64 = 0x4000;
    pub const CPU_BASED_VM_EXEC_CONTROL: u64 = 0x4002;
    pub const EXCEPTION_BITMAP: u64 = 0x4004;
    pub const PAGE_FAULT_ERROR_CODE_MASK: u64 = 0x4006;
    pub const PAGE_FAULT_ERROR_CODE_MATCH: u64 = 0x4008;
    pub const CR3_TARGET_COUNT: u64 = 0x400a;
    pub const VM_EXIT_CONTROLS: u64 = 0x400c;
    pub const VM_EXIT_MSR_STORE_COUNT: u64 = 0x400e;
    pub const VM_EXIT_MSR_LOAD_COUNT: u64 = 0x4010;
    pub const VM_ENTRY_CONTROLS: u64 = 0x4012;
    pub const VM_ENTRY_MSR_LOAD_COUNT: u64 = 0x4014;
    pub const VM_ENTRY_INTR_INFO_FIELD: u64 = 0x4016;
    pub const VM_ENTRY_EXCEPTION_ERROR_CODE: u64 = 0x4018;
    pub const VM_ENTRY_INSTRUCTION_LEN: u64 = 0x401a;
    pub const SECONDARY_VM_EXEC_CONTROL: u64 = 0x401e;
    pub const VM_EXIT_INTR_INFO: u64 = 0x4404;
    pub const VM_EXIT_INTR_ERROR_CODE: u64 = 0x4406;
    pub const IDT_VECTORING_INFO_FIELD: u64 = 0x4408;
    pub const IDT_VECTORING_ERROR_CODE: u64 = 0x440a;
    pub const GUEST_ES_LIMIT: u64 = 0x4800;
    pub const GUEST_CS_LIMIT: u64 = 0x4802;
    pub const GUEST_LDTR_LIMIT: u64 = 0x480c;
    pub const GUEST_TR_LIMIT: u64 = 0x480e;
    pub const GUEST_GDTR_LIMIT: u64 = 0x4810;
    pub const GUEST_IDTR_LIMIT: u64 = 0x4812;
    pub const GUEST_ES_AR_BYTES: u64 = 0x4814;
    pub const GUEST_CS_AR_BYTES: u64 = 0x4816;
    pub const GUEST_LDTR_AR_BYTES: u64 = 0x4820;
    pub const GUEST_TR_AR_BYTES: u64 = 0x4822;
    pub const GUEST_INTERRUPTIBILITY_INFO: u64 = 0x4824;
    pub const GUEST_ACTIVITY_STATE: u64 = 0x4826;
    pub const GUEST_SYSENTER_CS: u64 = 0x482a;
    pub const VMX_PREEMPTION_TIMER_VALUE: u64 = 0x482e;
    pub const HOST_IA32_SYSENTER_CS: u64 = 0x4c00;
    pub const CR0_GUEST_HOST_MASK: u64 = 0x6000;
    pub const CR4_GUEST_HOST_MASK: u64 = 0x6002;
    pub const CR0_READ_SHADOW: u64 = 0x6004;
    pub const CR4_READ_SHADOW: u64 = 0x6006;
    pub const CR3_TARGET_VALUE0: u64 = 0x6008;
    pub const GUEST_LINEAR_ADDRESS: u64 = 0x640a;
    pub const GUEST_CR0: u64 = 0x6800;
    pub const GUEST_CR3: u64 = 0x6802;
    pub const GUEST_CR4: u64 = 0x6804;
    pub const GUEST_ES_BASE: u64 = 0x6806;
    pub const GUEST_CS_BASE: u64 = 0x6808;
    pub const GUEST_LDTR_BASE: u64 = 0x6812;
    pub const GUEST_TR_BASE: u64 = 0x6814;
    pub const GUEST_GDTR_BASE: u64 = 0x6816;
    pub const GUEST_IDTR_BASE: u64 = 0x6818;
    pub const GUEST_DR7: u64 = 0x681a;
    pub const GUEST_RFLAGS: u64 = 0x6820;
    pub const GUEST_PENDING_DBG_EXCEPTIONS: u64 = 0x6822;
    pub const GUEST_SYSENTER_ESP: u64 = 0x6824;
    pub const GUEST_SYSENTER_EIP: u64 = 0x6826;
    pub const HOST_CR0: u64 = 0x6c00;
    pub const HOST_CR3: u64 = 0x6c02;
    pub const HOST_CR4: u64 = 0x6c04;
    pub const HOST_FS_BASE: u64 = 0x6c06;
    pub const HOST_GS_BASE: u64 = 0x6c08;
    pub const HOST_TR_BASE: u64 = 0x6c0a;
    pub const HOST_GDTR_BASE: u64 = 0x6c0c;
    pub const HOST_IDTR_BASE: u64 = 0x6c0e;
    pub const HOST_IA32_SYSENTER_ESP: u64 = 0x6c10;
    pub const HOST_IA32_SYSENTER_EIP: u64 = 0x6c12;
}

/// Basic exit reasons (SDM Appendix C).
pub mod reason {
    pub const EXCEPTION_OR_NMI: u32 = 0;
    pub const EXTERNAL_INTERRUPT: u32 = 1;
    pub const TRIPLE_FAULT: u32 = 2;
    pub const INTERRUPT_WINDOW: u32 = 7;
    pub const NMI_WINDOW: u32 = 8;
    pub const CPUID: u32 = 10;
    pub const HLT: u32 = 12;
    pub const INVD: u32 = 13;
    pub const INVLPG: u32 = 14;
    pub const RDPMC: u32 = 15;
    pub const RDTSC: u32 = 16;
    pub const VMCALL: u32 = 18;
    pub const VMCLEAR: u32 = 19;
    pub const VMLAUNCH: u32 = 20;
    pub const VMPTRLD: u32 = 21;
    pub const VMPTRST: u32 = 22;
    pub const VMREAD: u32 = 23;
    pub const VMRESUME: u32 = 24;
    pub const VMWRITE: u32 = 25;
    pub const VMXOFF: u32 = 26;
    pub const VMXON: u32 = 27;
    pub const CR_ACCESS: u32 = 28;
    pub const IO_INSTRUCTION: u32 = 30;
    pub const RDMSR: u32 = 31;
    pub const WRMSR: u32 = 32;
    pub const ENTRY_FAIL_GUEST_STATE: u32 = 33;
    pub const ENTRY_FAIL_MSR_LOADING: u32 = 34;
    pub const MONITOR_TRAP_FLAG: u32 = 37;
    pub const EPT_VIOLATION: u32 = 48;
    pub const EPT_MISCONFIG: u32 = 49;
    pub const WBINVD: u32 = 54;
    pub const INVEPT: u32 = 50;
    pub const PREEMPTION_TIMER: u32 = 52;
    pub const INVVPID: u32 = 53;
    /// Bit 31 of VM_EXIT_REASON: VM-entry failure (SDM 25.9.1).
    pub const ENTRY_FAILURE: u32 = 1 << 31;
}

/// VM-instruction error numbers (SDM 31.4).
pub mod error {
    pub const VMCLEAR_INVALID_ADDRESS: u32 = 2;
    pub const VMCLEAR_VMXON_POINTER: u32 = 3;
    pub const VMLAUNCH_NONCLEAR_VMCS: u32 = 4;
    pub const VMRESUME_NONLAUNCHED_VMCS: u32 = 5;
    pub const ENTRY_INVALID_CONTROL_FIELD: u32 = 7;
    pub const ENTRY_INVALID_HOST_STATE: u32 = 8;
    pub const VMPTRLD_INVALID_ADDRESS: u32 = 9;
    pub const VMPTRLD_VMXON_POINTER: u32 = 10;
    pub const VMPTRLD_WRONG_REVISION: u32 = 11;
    pub const UNSUPPORTED_VMCS_COMPONENT: u32 = 12;
    pub const VMWRITE_READ_ONLY: u32 = 13;
    pub const VMXON_IN_ROOT: u32 = 15;
    pub const ENTRY_EVENTS_BLOCKED_BY_MOV_SS: u32 = 26;
    pub const INVALID_INVEPT_INVVPID_OPERAND: u32 = 28;
}

/// VM-execution, exit and entry control bits (SDM 25.6-25.8).
pub mod ctl {
    pub const PIN_EXT_INTR_EXITING: u32 = 1 << 0;
    pub const PIN_NMI_EXITING: u32 = 1 << 3;
    pub const PIN_VIRTUAL_NMIS: u32 = 1 << 5;
    pub const PIN_ACTIVATE_PREEMPTION_TIMER: u32 = 1 << 6;
    pub const PROC_INTR_WINDOW_EXITING: u32 = 1 << 2;
    pub const PROC_USE_TSC_OFFSETTING: u32 = 1 << 3;
    pub const PROC_HLT_EXITING: u32 = 1 << 7;
    pub const PROC_INVLPG_EXITING: u32 = 1 << 9;
    pub const PROC_RDPMC_EXITING: u32 = 1 << 11;
    pub const PROC_RDTSC_EXITING: u32 = 1 << 12;
    pub const PROC_CR3_LOAD_EXITING: u32 = 1 << 15;
    pub const PROC_CR3_STORE_EXITING: u32 = 1 << 16;
    pub const PROC_CR8_LOAD_EXITING: u32 = 1 << 19;
    pub const PROC_CR8_STORE_EXITING: u32 = 1 << 20;
    pub const PROC_NMI_WINDOW_EXITING: u32 = 1 << 22;
    pub const PROC_UNCOND_IO_EXITING: u32 = 1 << 24;
    pub const PROC_USE_IO_BITMAPS: u32 = 1 << 25;
    pub const PROC_MONITOR_TRAP_FLAG: u32 = 1 << 27;
    pub const PROC_USE_MSR_BITMAPS: u32 = 1 << 28;
    pub const PROC_ACTIVATE_SECONDARY: u32 = 1 << 31;
    pub const PROC2_ENABLE_EPT: u32 = 1 << 1;
    pub const PROC2_ENABLE_VPID: u32 = 1 << 5;
    pub const PROC2_WBINVD_EXITING: u32 = 1 << 6;
    pub const EXIT_SAVE_DEBUG_CONTROLS: u32 = 1 << 2;
    pub const EXIT_HOST_ADDR_SPACE_SIZE: u32 = 1 << 9;
    pub const EXIT_ACK_INTR_ON_EXIT: u32 = 1 << 15;
    pub const EXIT_SAVE_IA32_EFER: u32 = 1 << 20;
    pub const EXIT_LOAD_IA32_EFER: u32 = 1 << 21;
    pub const EXIT_SAVE_PREEMPTION_TIMER: u32 = 1 << 22;
    pub const ENTRY_LOAD_DEBUG_CONTROLS: u32 = 1 << 2;
    pub const ENTRY_IA32E_MODE_GUEST: u32 = 1 << 9;
    pub const ENTRY_LOAD_IA32_EFER: u32 = 1 << 15;
}

/// Capability and architectural MSRs (SDM Appendix A, Vol. 4).
pub mod msr {
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
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
    pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;
    pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48c;
    pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48d;
    pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48e;
    pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48f;
    pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
    pub const IA32_DEBUGCTL: u32 = 0x1d9;
    pub const IA32_EFER: u32 = 0xc000_0080;
    pub const IA32_STAR: u32 = 0xc000_0081;
    pub const IA32_FS_BASE: u32 = 0xc000_0100;
    pub const IA32_GS_BASE: u32 = 0xc000_0101;
    pub const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// A 4 KiB-aligned page for a VMXON region, a VMCS or a bitmap, usable as a plain `static`
/// (its address is its physical address: the runtime identity-maps memory).
#[repr(C, align(4096))]
pub struct Page(UnsafeCell<[u8; 4096]>);

// SAFETY: the guests run on one CPU; pages are shared with L2 and the VMM, never with threads.
unsafe impl Sync for Page {}

impl Page {
    pub const fn new() -> Self {
        Page(UnsafeCell::new([0; 4096]))
    }

    pub fn addr(&self) -> u64 {
        self.0.get() as u64
    }

    pub fn write_u32(&self, offset: usize, v: u32) {
        assert!(offset + 4 <= 4096);
        // SAFETY: in bounds of this page.
        unsafe { core::ptr::write_volatile(self.0.get().cast::<u8>().add(offset).cast::<u32>(), v) }
    }

    pub fn read_u32(&self, offset: usize) -> u32 {
        assert!(offset + 4 <= 4096);
        // SAFETY: in bounds of this page.
        unsafe { core::ptr::read_volatile(self.0.get().cast::<u8>().add(offset).cast::<u32>()) }
    }

    pub fn write_u64(&self, offset: usize, v: u64) {
        assert!(offset + 8 <= 4096);
        // SAFETY: in bounds of this page.
        unsafe { core::ptr::write_volatile(self.0.get().cast::<u8>().add(offset).cast::<u64>(), v) }
    }

    pub fn read_u64(&self, offset: usize) -> u64 {
        assert!(offset + 8 <= 4096);
        // SAFETY: in bounds of this page.
        unsafe { core::ptr::read_volatile(self.0.get().cast::<u8>().add(offset).cast::<u64>()) }
    }

    pub fn clear(&self) {
        for i in 0..1024 {
            self.write_u32(i * 4, 0);
        }
    }

    /// Sets bit `bit` (0..32768) of the page, as the I/O and MSR bitmaps number them.
    pub fn set_bit(&self, bit: usize) {
        let (offset, b) = ((bit / 32) * 4, bit % 32);
        self.write_u32(offset, self.read_u32(offset) | (1 << b));
    }

    /// A region for VMXON or VMPTRLD: cleared, with the revision identifier in bits 30:0 of
    /// its first word (SDM 25.2, 25.11.5).
    pub fn init_region(&self, revision: u32) {
        self.clear();
        self.write_u32(0, revision & 0x7fff_ffff);
    }
}

impl Default for Page {
    fn default() -> Self {
        Self::new()
    }
}

/// An MSR area of `N` 16-byte entries (SDM 25.7.2): MSR index in bits 31:0, reserved bits
/// 63:32, data in bits 127:64. Its address is its physical address, as for [`Page`].
#[repr(C, align(16))]
pub struct MsrArea<const N: usize>(UnsafeCell<[[u64; 2]; N]>);

// SAFETY: as for Page.
unsafe impl<const N: usize> Sync for MsrArea<N> {}

impl<const N: usize> MsrArea<N> {
    pub const fn new() -> Self {
        MsrArea(UnsafeCell::new([[0; 2]; N]))
    }

    pub fn addr(&self) -> u64 {
        self.0.get() as u64
    }

    pub fn set(&self, i: usize, index: u32, reserved: u32, data: u64) {
        assert!(i < N);
        // SAFETY: in bounds of the area.
        unsafe {
            let e = self.0.get().cast::<[u64; 2]>().add(i);
            core::ptr::write_volatile(e, [u64::from(index) | u64::from(reserved) << 32, data]);
        }
    }

    /// The data of entry `i` (what a VM-exit MSR store wrote there).
    pub fn data(&self, i: usize) -> u64 {
        assert!(i < N);
        // SAFETY: in bounds of the area.
        unsafe { core::ptr::read_volatile(self.0.get().cast::<[u64; 2]>().add(i))[1] }
    }
}

impl<const N: usize> Default for MsrArea<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// A 16 KiB stack for L2.
#[repr(C, align(4096))]
pub struct Stack(UnsafeCell<[u8; 16384]>);

// SAFETY: as for Page.
unsafe impl Sync for Stack {}

impl Stack {
    pub const fn new() -> Self {
        Stack(UnsafeCell::new([0; 16384]))
    }

    /// The initial RSP for an `extern "C" fn` entered by VM entry (not by a call): 8 below a
    /// 16-byte boundary, as the ABI expects just after a call.
    pub fn top(&self) -> u64 {
        self.0.get() as u64 + 16384 - 8
    }
}

impl Default for Stack {
    fn default() -> Self {
        Self::new()
    }
}

/// I/O bitmap A covers ports 0-0x7fff, B 0x8000-0xffff (SDM 25.6.4).
pub fn intercept_port(a: &Page, b: &Page, port: u16) {
    if port < 0x8000 {
        a.set_bit(usize::from(port));
    } else {
        b.set_bit(usize::from(port - 0x8000));
    }
}

/// MSR bitmap (SDM 25.6.9): read bitmap for low MSRs at 0, for high MSRs (0xc0000000-) at
/// 1024, write bitmaps at 2048 and 3072. MSRs outside both ranges always exit.
pub fn intercept_msr(bitmap: &Page, msr: u32, read: bool, write: bool) {
    let (base, index) = if msr < 0x2000 {
        (0, msr)
    } else if (0xc000_0000..0xc000_2000).contains(&msr) {
        (1024 * 8, msr - 0xc000_0000)
    } else {
        return;
    };
    if read {
        bitmap.set_bit(base + index as usize);
    }
    if write {
        bitmap.set_bit(2048 * 8 + base + index as usize);
    }
}

/// One control's capability MSR: allowed 0-settings in bits 31:0 (1 = must be 1), allowed
/// 1-settings in bits 63:32 (0 = must be 0) (SDM A.3).
#[derive(Clone, Copy)]
pub struct Allowed {
    pub allowed0: u32,
    pub allowed1: u32,
}

impl Allowed {
    pub fn from_msr(v: u64) -> Self {
        Allowed { allowed0: v as u32, allowed1: (v >> 32) as u32 }
    }

    /// The desired bits that are allowed, plus the ones that must be set (SDM A.3, 31.5.1).
    pub fn adjust(self, desired: u32) -> u32 {
        (desired | self.allowed0) & self.allowed1
    }

    pub fn permits(self, value: u32) -> bool {
        value & self.allowed0 == self.allowed0 && value & !self.allowed1 == 0
    }
}

/// The VMX capabilities L1 reads before using VMX.
#[derive(Clone, Copy)]
pub struct Caps {
    pub basic: u64,
    pub misc: u64,
    pub pin: Allowed,
    pub proc: Allowed,
    /// All zero when the primary controls cannot activate the secondary ones.
    pub proc2: Allowed,
    pub exit: Allowed,
    pub entry: Allowed,
    pub ept_vpid: u64,
}

impl Caps {
    /// Reads IA32_VMX_BASIC and, when its bit 55 says they exist, the TRUE control MSRs
    /// (SDM A.1, A.3).
    pub fn read() -> Self {
        let basic = io::rdmsr(msr::IA32_VMX_BASIC);
        let t = basic & (1 << 55) != 0;
        let ctl = |true_msr: u32, msr: u32| Allowed::from_msr(io::rdmsr(if t { true_msr } else { msr }));
        let proc = ctl(msr::IA32_VMX_TRUE_PROCBASED_CTLS, msr::IA32_VMX_PROCBASED_CTLS);
        let has2 = proc.allowed1 & ctl::PROC_ACTIVATE_SECONDARY != 0;
        Caps {
            basic,
            misc: io::rdmsr(msr::IA32_VMX_MISC),
            pin: ctl(msr::IA32_VMX_TRUE_PINBASED_CTLS, msr::IA32_VMX_PINBASED_CTLS),
            proc,
            proc2: if has2 {
                Allowed::from_msr(io::rdmsr(msr::IA32_VMX_PROCBASED_CTLS2))
            } else {
                Allowed::from_msr(0)
            },
            exit: ctl(msr::IA32_VMX_TRUE_EXIT_CTLS, msr::IA32_VMX_EXIT_CTLS),
            entry: ctl(msr::IA32_VMX_TRUE_ENTRY_CTLS, msr::IA32_VMX_ENTRY_CTLS),
            ept_vpid: if has2 { io::rdmsr(msr::IA32_VMX_EPT_VPID_CAP) } else { 0 },
        }
    }

    /// VMCS revision identifier, bits 30:0 of IA32_VMX_BASIC.
    pub fn revision(&self) -> u32 {
        self.basic as u32 & 0x7fff_ffff
    }
}

/// What the L2 of [`setup_vmcs`] runs and which exits L1 asks for. The pin, exit and entry
/// controls are fixed by the setup; `proc` and `proc2` are desired bits, adjusted to the
/// capabilities (setting `proc2` activates the secondary controls).
pub struct Config {
    pub entry: extern "C" fn() -> !,
    pub stack_top: u64,
    pub proc: u32,
    pub proc2: u32,
    pub io_bitmaps: Option<(&'static Page, &'static Page)>,
    pub msr_bitmap: Option<&'static Page>,
}

/// VMWRITE that says which field failed; a store into the page of an enlightened VMCS.
pub fn write(field: u64, value: u64) -> Result<(), VmFail> {
    if rt::vmx::evmcs::current() != 0 {
        rt::vmx::evmcs::write(field, value);
        return Ok(());
    }
    vmwrite(field, value)
        .inspect_err(|e| rt::println!("hv: VMWRITE ", rt::Hex(field), " = ", rt::Hex(value), " failed: ", *e))
}

/// VMREAD that says which field failed; a load from the page of an enlightened VMCS.
pub fn read(field: u64) -> Result<u64, VmFail> {
    if rt::vmx::evmcs::current() != 0 {
        return Ok(rt::vmx::evmcs::read(field));
    }
    vmread(field).inspect_err(|e| rt::println!("hv: VMREAD ", rt::Hex(field), " failed: ", *e))
}

/// Base address of the TSS descriptor at `selector` in the GDT at `gdt_base` (a 16-byte
/// system descriptor in long mode, SDM 8.2.3).
pub fn tss_base(gdt_base: u64, selector: u16) -> u64 {
    let p = (gdt_base + u64::from(selector & !7)) as *const u64;
    // SAFETY: the GDT is identity-mapped and holds the 16-byte TSS descriptor.
    let (lo, hi) = unsafe { (core::ptr::read_volatile(p), core::ptr::read_volatile(p.add(1))) };
    ((lo >> 16) & 0xff_ffff) | (((lo >> 56) & 0xff) << 24) | (hi << 32)
}

pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;
const EFER_LME_LMA: u64 = 0x500;

/// Makes `vmcs` current (after initializing it with the revision and VMCLEAR, SDM 25.11.3):
/// as an enlightened VMCS where nestbed offers one (EVMCS.md), with VMPTRLD otherwise.
pub fn load_vmcs(caps: &Caps, vmcs: &Page) -> Result<(), VmFail> {
    vmcs.init_region(caps.revision());
    rt::vmx::vmclear(vmcs.addr())?;
    if rt::vmx::evmcs::allowed() && rt::vmx::evmcs::offered() {
        rt::vmx::evmcs::register(vmcs.addr());
        return Ok(());
    }
    rt::vmx::vmptrld(vmcs.addr())
}

/// Fills the current VMCS: controls from `cfg` and the capabilities, host state = L1 now,
/// guest state = a 64-bit L2 on L1's CR3, GDT, IDT and TSS entering `cfg.entry` with
/// interrupts off (SDM 26.2-26.3 checks, 31.5 recommendations).
pub fn setup_vmcs(caps: &Caps, cfg: &Config) -> Result<(), VmFail> {
    use field::*;
    let mut proc = cfg.proc;
    if cfg.proc2 != 0 {
        proc |= ctl::PROC_ACTIVATE_SECONDARY;
    }
    if cfg.io_bitmaps.is_some() {
        proc |= ctl::PROC_USE_IO_BITMAPS;
    }
    if cfg.msr_bitmap.is_some() {
        proc |= ctl::PROC_USE_MSR_BITMAPS;
    }
    write(PIN_BASED_VM_EXEC_CONTROL, u64::from(caps.pin.adjust(0)))?;
    let proc = caps.proc.adjust(proc);
    write(CPU_BASED_VM_EXEC_CONTROL, u64::from(proc))?;
    if proc & ctl::PROC_ACTIVATE_SECONDARY != 0 {
        write(SECONDARY_VM_EXEC_CONTROL, u64::from(caps.proc2.adjust(cfg.proc2)))?;
    }
    let exit = ctl::EXIT_HOST_ADDR_SPACE_SIZE | ctl::EXIT_SAVE_IA32_EFER | ctl::EXIT_LOAD_IA32_EFER;
    write(VM_EXIT_CONTROLS, u64::from(caps.exit.adjust(exit)))?;
    let entry = ctl::ENTRY_IA32E_MODE_GUEST | ctl::ENTRY_LOAD_IA32_EFER;
    write(VM_ENTRY_CONTROLS, u64::from(caps.entry.adjust(entry)))?;
    if let Some((a, b)) = cfg.io_bitmaps {
        write(IO_BITMAP_A, a.addr())?;
        write(IO_BITMAP_B, b.addr())?;
    }
    if let Some(m) = cfg.msr_bitmap {
        write(MSR_BITMAP, m.addr())?;
    }
    for f in [EXCEPTION_BITMAP, PAGE_FAULT_ERROR_CODE_MASK, PAGE_FAULT_ERROR_CODE_MATCH, CR3_TARGET_COUNT] {
        write(f, 0)?;
    }
    for f in [VM_EXIT_MSR_STORE_COUNT, VM_EXIT_MSR_LOAD_COUNT, VM_ENTRY_MSR_LOAD_COUNT, VM_ENTRY_INTR_INFO_FIELD] {
        write(f, 0)?;
    }
    for f in [CR0_GUEST_HOST_MASK, CR4_GUEST_HOST_MASK, CR0_READ_SHADOW, CR4_READ_SHADOW] {
        write(f, 0)?;
    }

    let gdt = io::sgdt();
    let idt = io::sidt();
    let tr = rt::idt::TSS_SELECTOR;
    let tr_base = tss_base(gdt.base, tr);
    let (cr0, cr3, cr4) = (io::cr0(), io::cr3(), io::cr4() | CR4_VMXE);

    // Host state (SDM 25.5, 26.2.3); HOST_RSP and HOST_RIP are written by vm_run.
    write(HOST_CR0, cr0)?;
    write(HOST_CR3, cr3)?;
    write(HOST_CR4, cr4)?;
    write(HOST_CS_SELECTOR, u64::from(CODE_SELECTOR))?;
    for f in [HOST_SS_SELECTOR, HOST_DS_SELECTOR, HOST_ES_SELECTOR, HOST_FS_SELECTOR, HOST_GS_SELECTOR] {
        write(f, u64::from(DATA_SELECTOR))?;
    }
    write(HOST_TR_SELECTOR, u64::from(tr))?;
    write(HOST_TR_BASE, tr_base)?;
    write(HOST_GDTR_BASE, gdt.base)?;
    write(HOST_IDTR_BASE, idt.base)?;
    for f in [HOST_FS_BASE, HOST_GS_BASE, HOST_IA32_SYSENTER_CS, HOST_IA32_SYSENTER_ESP, HOST_IA32_SYSENTER_EIP] {
        write(f, 0)?;
    }
    write(HOST_IA32_EFER, EFER_LME_LMA)?;

    // Guest state (SDM 25.4, 26.3.1): ES, CS, SS, DS, FS, GS are consecutive encodings.
    for i in 0..6u64 {
        let (sel, ar) = if i == 1 { (CODE_SELECTOR, 0xa09b) } else { (DATA_SELECTOR, 0xc093) };
        write(GUEST_ES_SELECTOR + 2 * i, u64::from(sel))?;
        write(GUEST_ES_LIMIT + 2 * i, 0xffff_ffff)?;
        write(GUEST_ES_AR_BYTES + 2 * i, ar)?;
        write(GUEST_ES_BASE + 2 * i, 0)?;
    }
    write(GUEST_LDTR_SELECTOR, 0)?;
    write(GUEST_LDTR_AR_BYTES, 1 << 16)?;
    write(GUEST_LDTR_LIMIT, 0)?;
    write(GUEST_LDTR_BASE, 0)?;
    write(GUEST_TR_SELECTOR, u64::from(tr))?;
    write(GUEST_TR_AR_BYTES, 0x8b)?;
    write(GUEST_TR_LIMIT, 0x67)?;
    write(GUEST_TR_BASE, tr_base)?;
    write(GUEST_GDTR_BASE, gdt.base)?;
    write(GUEST_GDTR_LIMIT, u64::from(gdt.limit))?;
    write(GUEST_IDTR_BASE, idt.base)?;
    write(GUEST_IDTR_LIMIT, u64::from(idt.limit))?;
    write(GUEST_CR0, cr0)?;
    write(GUEST_CR3, cr3)?;
    write(GUEST_CR4, cr4)?;
    write(GUEST_DR7, 0x400)?;
    write(GUEST_IA32_DEBUGCTL, 0)?;
    write(GUEST_IA32_EFER, EFER_LME_LMA)?;
    write(GUEST_RSP, cfg.stack_top)?;
    write(GUEST_RIP, cfg.entry as usize as u64)?;
    write(GUEST_RFLAGS, 0x2)?;
    for f in [GUEST_SYSENTER_CS, GUEST_SYSENTER_ESP, GUEST_SYSENTER_EIP, GUEST_PENDING_DBG_EXCEPTIONS] {
        write(f, 0)?;
    }
    write(GUEST_INTERRUPTIBILITY_INFO, 0)?;
    write(GUEST_ACTIVITY_STATE, 0)?;
    write(VMCS_LINK_POINTER, u64::MAX)
}

/// The exit information L1 looks at (SDM 25.9).
#[derive(Clone, Copy)]
pub struct Exit {
    /// Full VM_EXIT_REASON: basic reason in bits 15:0, bit 31 for a VM-entry failure.
    pub reason: u32,
    pub qualification: u64,
    pub instruction_len: u64,
    pub rip: u64,
}

impl Exit {
    pub fn read() -> Result<Self, VmFail> {
        Ok(Exit {
            reason: read(field::VM_EXIT_REASON)? as u32,
            qualification: read(field::EXIT_QUALIFICATION)?,
            instruction_len: read(field::VM_EXIT_INSTRUCTION_LEN)?,
            rip: read(field::GUEST_RIP)?,
        })
    }

    pub fn basic(&self) -> u32 {
        self.reason & 0xffff
    }

    /// The port of an I/O-instruction exit.
    pub fn port(&self) -> Option<u16> {
        (self.reason == reason::IO_INSTRUCTION).then(|| Io::decode(self.qualification).port)
    }

    /// Advances GUEST_RIP past the exiting instruction.
    pub fn skip(&self) -> Result<(), VmFail> {
        write(field::GUEST_RIP, self.rip + self.instruction_len)
    }
}

/// Shows an exit as "reason N at GUEST_RIP 0x…", with the port of an I/O exit.
pub struct Seen<'a>(pub &'a Exit);

impl rt::serial::Show for Seen<'_> {
    fn show(&self) {
        let e = self.0;
        rt::print!("exit reason ", e.basic());
        if e.basic() == reason::IO_INSTRUCTION {
            rt::print!(" (I/O, port ", rt::Hex(Io::decode(e.qualification).port.into()), ")");
        }
        if e.reason & reason::ENTRY_FAILURE != 0 {
            rt::print!(" (VM-entry failure)");
        }
        rt::print!(" at GUEST_RIP ", rt::Hex(e.rip));
    }
}

/// Exit qualification of an I/O instruction (SDM 28.2.1, Table 28-5).
#[derive(Clone, Copy)]
pub struct Io {
    pub port: u16,
    /// Access size in bytes: 1, 2 or 4.
    pub size: u8,
    pub is_in: bool,
    pub string: bool,
    pub rep: bool,
    /// Immediate operand (`out imm8, al`) rather than DX.
    pub immediate: bool,
}

impl Io {
    pub fn decode(q: u64) -> Self {
        Io {
            port: (q >> 16) as u16,
            size: (q & 7) as u8 + 1,
            is_in: q & (1 << 3) != 0,
            string: q & (1 << 4) != 0,
            rep: q & (1 << 5) != 0,
            immediate: q & (1 << 6) != 0,
        }
    }
}

/// L2's general registers and whether its VMCS was launched: `run` does VMLAUNCH the first
/// time and VMRESUME after.
#[derive(Default)]
pub struct Vcpu {
    pub regs: GuestRegs,
    pub launched: bool,
}

impl Vcpu {
    /// Enters L2 and returns at its next VM exit (or a VM-entry failure, reason bit 31).
    pub fn run(&mut self) -> Result<Exit, VmFail> {
        rt::vmx::vm_run(&mut self.regs, self.launched)?;
        let exit = Exit::read()?;
        // A VM entry that fails after its checks of the VMCS leaves the launch state clear.
        self.launched |= exit.reason & reason::ENTRY_FAILURE == 0;
        Ok(exit)
    }

    /// [`run`](Self::run) for a guest's checks: a VMfail or a VM-entry failure is a failed
    /// check (a `FAIL` line, counted in `failures`) and gives `None`.
    pub fn enter(&mut self, failures: &mut u32) -> Option<Exit> {
        let how = if self.launched { "VMRESUME" } else { "VMLAUNCH" };
        match self.run() {
            Ok(e) if e.reason & reason::ENTRY_FAILURE == 0 => Some(e),
            Ok(e) => {
                rt::println!("FAIL ", how, ": VM-entry failure, ", Seen(&e));
                *failures += 1;
                None
            }
            Err(err) => {
                rt::println!("FAIL ", how, ": ", err);
                *failures += 1;
                None
            }
        }
    }
}

/// Shows a VMX instruction's outcome: "VMsucceed" or its failure.
pub struct Outcome<T>(pub Result<T, VmFail>);

impl<T> rt::serial::Show for Outcome<T> {
    fn show(&self) {
        match &self.0 {
            Ok(_) => rt::print!("VMsucceed"),
            Err(e) => rt::print!(*e),
        }
    }
}
