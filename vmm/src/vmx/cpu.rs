//! Semantics of the VMX instructions executed in VMX root operation (SDM ch. 31, "VMX
//! Instruction Reference", and 31.2 "Conventions" for VMsucceed / VMfail).
//!
//! `VmxCpu` is one logical processor's VMX state. It models L1 (VMX root operation) and, of
//! VMX non-root operation, the VMREAD and VMWRITE that VMCS shadowing serves from the shadow
//! VMCS without a VM exit ([`VmxCpu::execute_shadowed`], SDM 25.10); every other VMX
//! instruction of L2 is a VM exit to L1, which the glue does without the model.
//!
//! Deviations from hardware, all documented at the use site:
//! - CR4.VMXE is virtual ([`VmxCpu::vmxe`]) because our hosts cannot set the real bit; the
//!   VMXON CR4 fixed-bit check skips VMXE for the same reason.
//! - Segment limit checks on memory operands outside 64-bit mode are not performed (the
//!   environment does not expose limits); linear addresses are truncated to 32 bits there.
//! - VM-instruction error 6 (VMRESUME after VMXOFF) is never produced; VMXOFF writes the
//!   current VMCS back to memory.

use super::bits::{bad_page_addr, is_canonical};
use super::caps::{cr, ept_cap, VmxCaps};
use super::checks::{eptp_valid, CheckClass, Violation};
use super::decode::{effective_address, Gpr, Operand, Seg, VmxInsn, VmxOp};
use super::fields::{self, VM_INSTRUCTION_ERROR};
use super::vmcs::{Vmcs, OFFSET_CHANGED, OFFSET_LAUNCH_STATE, VMCS_SIZE};

/// A guest-physical access outside RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemFault {
    pub gpa: u64,
}

/// An exception the instruction raises; the glue injects it into L1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// #UD
    InvalidOpcode,
    /// #GP(error code)
    GeneralProtection(u32),
    /// #SS(error code)
    StackFault(u32),
    /// #PF with the faulting linear address (CR2) and error code.
    PageFault { address: u64, error_code: u32 },
}

impl Fault {
    pub fn vector(&self) -> u8 {
        match self {
            Fault::InvalidOpcode => 6,
            Fault::StackFault(_) => 12,
            Fault::GeneralProtection(_) => 13,
            Fault::PageFault { .. } => 14,
        }
    }

    pub fn error_code(&self) -> Option<u32> {
        match *self {
            Fault::InvalidOpcode => None,
            Fault::GeneralProtection(e) | Fault::StackFault(e) => Some(e),
            Fault::PageFault { error_code, .. } => Some(error_code),
        }
    }
}

/// Guest-physical memory of L1.
pub trait GuestMemory {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemFault>;
    fn write_phys(&mut self, gpa: u64, buf: &[u8]) -> Result<(), MemFault>;
}

/// The executing processor's context, supplied by the glue.
pub trait VmxEnv: GuestMemory {
    fn gpr(&self, r: Gpr) -> u64;
    fn set_gpr(&mut self, r: Gpr, v: u64);
    fn segment_base(&self, s: Seg) -> u64;
    /// Reads linear memory through the guest's paging; `Err` is the exception to inject.
    fn read_virt(&mut self, gva: u64, buf: &mut [u8]) -> Result<(), Fault>;
    fn write_virt(&mut self, gva: u64, buf: &[u8]) -> Result<(), Fault>;
    fn cpl(&self) -> u8;
    fn cr0(&self) -> u64;
    fn cr4(&self) -> u64;
    fn efer(&self) -> u64;
    fn rflags(&self) -> u64;
    /// IA32_EFER.LMA && CS.L.
    fn long_mode_64(&self) -> bool;
    fn physical_address_width(&self) -> u8;
    /// Events are blocked by MOV SS: the instruction follows a MOV to SS or a POP SS (SDM
    /// 25.4.2, interruptibility state bit 1).
    fn blocked_by_mov_ss(&self) -> bool;
}

/// VM-instruction error numbers (SDM 31.4, Table 31-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum VmInstructionError {
    VmcallInRoot = 1,
    VmclearInvalidAddress = 2,
    VmclearVmxonPointer = 3,
    VmlaunchNonClearVmcs = 4,
    VmresumeNonLaunchedVmcs = 5,
    VmresumeAfterVmxoff = 6,
    EntryInvalidControlFields = 7,
    EntryInvalidHostStateFields = 8,
    VmptrldInvalidAddress = 9,
    VmptrldVmxonPointer = 10,
    VmptrldIncorrectRevision = 11,
    UnsupportedVmcsComponent = 12,
    VmwriteReadOnlyComponent = 13,
    VmxonInRoot = 15,
    EntryInvalidExecutiveVmcsPointer = 16,
    EntryNonLaunchedExecutiveVmcs = 17,
    EntryExecutiveVmcsNotVmxonPointer = 18,
    VmcallNonClearVmcs = 19,
    VmcallInvalidExitControls = 20,
    VmcallIncorrectMsegRevision = 22,
    VmxoffUnderDualMonitor = 23,
    VmcallInvalidSmmMonitorFeatures = 24,
    EntryInvalidExecControlsInExecutiveVmcs = 25,
    EntryEventsBlockedByMovSs = 26,
    InvalidInveptInvvpidOperand = 28,
}

impl VmInstructionError {
    pub fn number(self) -> u32 {
        self as u32
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// VMsucceed.
    Succeed,
    /// VMfailInvalid (no current VMCS).
    FailInvalid,
    /// VMfailValid(n); VM_INSTRUCTION_ERROR of the current VMCS is already written.
    FailValid(VmInstructionError),
    /// The instruction raised an exception; RIP is not advanced.
    Fault(Fault),
    /// VMLAUNCH/VMRESUME passed the instruction checks (SDM 31, VMLAUNCH/VMRESUME
    /// pseudocode): the glue now runs the VM-entry checks (`checks`) and enters.
    Entry { launch: bool },
}

impl Outcome {
    /// Whether the glue advances RIP past the instruction (VMsucceed / VMfail).
    pub fn advances_rip(&self) -> bool {
        matches!(self, Outcome::Succeed | Outcome::FailInvalid | Outcome::FailValid(_))
    }
}

const RFLAGS_CF: u64 = 1 << 0;
const RFLAGS_PF: u64 = 1 << 2;
const RFLAGS_AF: u64 = 1 << 4;
const RFLAGS_ZF: u64 = 1 << 6;
const RFLAGS_SF: u64 = 1 << 7;
const RFLAGS_OF: u64 = 1 << 11;
const RFLAGS_VM: u64 = 1 << 17;
const ARITH_FLAGS: u64 = RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_OF;

/// RFLAGS after the instruction (SDM 31.2): VMsucceed clears CF, PF, AF, ZF, SF, OF;
/// VMfailInvalid additionally sets CF; VMfailValid sets ZF. Unchanged otherwise.
pub fn apply_rflags(rflags: u64, outcome: &Outcome) -> u64 {
    match outcome {
        Outcome::Succeed => rflags & !ARITH_FLAGS,
        Outcome::FailInvalid => (rflags & !ARITH_FLAGS) | RFLAGS_CF,
        Outcome::FailValid(_) => (rflags & !ARITH_FLAGS) | RFLAGS_ZF,
        Outcome::Fault(_) | Outcome::Entry { .. } => rflags,
    }
}

/// INVVPID types (SDM 31, INVVPID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvvpidType {
    IndividualAddress = 0,
    SingleContext = 1,
    AllContext = 2,
    SingleContextRetainingGlobals = 3,
}

/// A TLB/paging-structure invalidation requested by INVEPT/INVVPID, for the glue to act on
/// (e.g. rebuild L2 memslots from L1's EPT tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// Single-context INVEPT (`Some(eptp)`) or all-context (`None`).
    Ept {
        eptp: Option<u64>,
    },
    Vpid {
        kind: InvvpidType,
        vpid: u16,
        address: u64,
    },
}

#[derive(Debug, Clone)]
pub struct VmxCpu {
    pub caps: VmxCaps,
    /// Virtual CR4.VMXE: VMXON raises #UD when false. Our hosts cannot set the real CR4.VMXE,
    /// so the glue keeps this flag (default true) instead.
    pub vmxe: bool,
    /// In VMX operation.
    pub vmxon: bool,
    pub vmxon_ptr: u64,
    /// Current-VMCS pointer; `None` is the SDM's FFFFFFFF_FFFFFFFFH.
    pub current: Option<u64>,
    /// Cache of the current VMCS.
    pub vmcs: Option<Vmcs>,
    /// The current VMCS is an enlightened VMCS (EVMCS.md): its region in memory is what L1
    /// reads and writes, and the cache follows it ([`super::evmcs`]).
    pub enlightened: bool,
    invalidations: Vec<Invalidation>,
}

/// Why L1's WRMSR registering an enlightened VMCS is refused (#GP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvmcsRefused {
    /// Outside VMX operation.
    NotInVmxOperation,
    /// Reserved bits 11:1 set, or an address not 4-KByte aligned or beyond the
    /// physical-address width, or the VMXON region.
    BadAddress,
    /// The region's first word is not the revision identifier (with the shadow-VMCS
    /// indicator 0).
    BadRevision,
}

impl Default for VmxCpu {
    fn default() -> Self {
        Self::new(VmxCaps::default())
    }
}

type Step = Result<Outcome, Fault>;

impl VmxCpu {
    pub fn new(caps: VmxCaps) -> Self {
        VmxCpu {
            caps,
            vmxe: true,
            vmxon: false,
            vmxon_ptr: 0,
            current: None,
            vmcs: None,
            enlightened: false,
            invalidations: Vec::new(),
        }
    }

    /// The processor's power-on state (it lost its state in S3): outside VMX operation, no
    /// current VMCS.
    pub fn power_on(&mut self) {
        self.vmxon = false;
        self.current = None;
        self.vmcs = None;
        self.enlightened = false;
        self.invalidations.clear();
    }

    /// Executes `insn` in VMX root operation (or outside VMX operation). With an enlightened
    /// current VMCS, the groups L1 marked changed are taken from its page first and the page
    /// is written back after; enlightened use ends when the VMCS stops being current.
    pub fn execute(&mut self, insn: &VmxInsn, env: &mut dyn VmxEnv) -> Outcome {
        let enlightened = self.current.filter(|_| self.enlightened);
        if enlightened.is_some() {
            self.absorb_enlightened(env);
        }
        let o = match self.step(insn, env) {
            Ok(o) => o,
            Err(f) => Outcome::Fault(f),
        };
        if enlightened.is_some() {
            if self.current != enlightened {
                self.enlightened = false;
            } else if !matches!(o, Outcome::Entry { .. }) {
                // After a VM entry the glue writes the page back (`sync_enlightened`).
                self.flush_current(env);
            }
        }
        o
    }

    /// L1's WRMSR of [`super::evmcs::MSR_EVMCS`]: with bit 0 set, the page at bits 63:12 becomes
    /// the current VMCS as VMPTRLD would make it (the same checks, refused with #GP instead of
    /// VMfail), enlightened; 0 ends enlightened use, the VMCS stays current.
    pub fn write_evmcs_msr(&mut self, value: u64, mem: &mut dyn GuestMemory, width: u8) -> Result<(), EvmcsRefused> {
        if !self.vmxon {
            return Err(EvmcsRefused::NotInVmxOperation);
        }
        if value & super::evmcs::MSR_ENABLE == 0 {
            if value != 0 {
                return Err(EvmcsRefused::BadAddress);
            }
            self.sync_enlightened(mem);
            self.enlightened = false;
            return Ok(());
        }
        let page = value & !super::evmcs::MSR_ENABLE;
        if bad_page_addr(page, width) || page == self.vmxon_ptr {
            return Err(EvmcsRefused::BadAddress);
        }
        let mut region = vec![0u8; VMCS_SIZE];
        if mem.read_phys(page, &mut region).is_err() {
            return Err(EvmcsRefused::BadAddress);
        }
        let head = u32::from_le_bytes([region[0], region[1], region[2], region[3]]);
        if head != self.caps.revision() {
            return Err(EvmcsRefused::BadRevision);
        }
        if self.current == Some(page) {
            // The cache is the VMCS; the page becomes it.
            self.flush_current(mem);
        } else {
            self.flush_current(mem);
            self.current = Some(page);
            self.vmcs = Some(Vmcs::from_bytes(&region));
            // The page was read whole: nothing is left to take from the mask.
            let _ = mem.write_phys(page + OFFSET_CHANGED as u64, &0u64.to_le_bytes());
        }
        self.enlightened = true;
        Ok(())
    }

    /// L1's RDMSR of [`super::evmcs::MSR_EVMCS`].
    pub fn read_evmcs_msr(&self) -> u64 {
        match self.current {
            Some(p) if self.enlightened => p | super::evmcs::MSR_ENABLE,
            _ => 0,
        }
    }

    /// Writes an enlightened current VMCS back to its page (after a VM exit or entry).
    pub fn sync_enlightened(&mut self, mem: &mut dyn GuestMemory) {
        if self.enlightened {
            self.flush_current(mem);
        }
    }

    /// Takes the groups L1 marked changed from the enlightened page and clears the mask.
    pub fn absorb_enlightened(&mut self, mem: &mut dyn GuestMemory) {
        if !self.enlightened {
            return;
        }
        let (Some(page), Some(cache)) = (self.current, self.vmcs.as_mut()) else { return };
        let mut b = [0u8; 8];
        if mem.read_phys(page + OFFSET_CHANGED as u64, &mut b).is_err() {
            return;
        }
        let mask = u64::from_le_bytes(b);
        if mask == 0 {
            return;
        }
        super::evmcs::absorb_from(cache, mem, page, mask);
        let _ = mem.write_phys(page + OFFSET_CHANGED as u64, &0u64.to_le_bytes());
    }

    /// The oldest pending invalidation from INVEPT/INVVPID.
    pub fn take_invalidation(&mut self) -> Option<Invalidation> {
        if self.invalidations.is_empty() {
            None
        } else {
            Some(self.invalidations.remove(0))
        }
    }

    /// Writes the cached current VMCS back to its region.
    pub fn flush_current(&mut self, mem: &mut dyn GuestMemory) {
        if let (Some(ptr), Some(v)) = (self.current, &self.vmcs) {
            let _ = mem.write_phys(ptr, &v.to_bytes());
        }
    }

    pub fn current_vmcs(&self) -> Option<&Vmcs> {
        self.current.and(self.vmcs.as_ref())
    }

    pub fn current_vmcs_mut(&mut self) -> Option<&mut Vmcs> {
        self.current.and(self.vmcs.as_mut())
    }

    /// After a VM entry that passed all checks: launch state := launched (SDM 27.1).
    pub fn mark_launched(&mut self) {
        if let Some(v) = self.current_vmcs_mut() {
            v.launched = true;
        }
    }

    /// Turns a failed VM-entry check into the VMLAUNCH/VMRESUME outcome: VMfailValid(7)
    /// for control fields, VMfailValid(8) for host-state fields (SDM 27.2). `None` for
    /// guest-state failures, which are VM exits (SDM 27.8) the glue records instead.
    pub fn entry_check_failed(&mut self, v: &Violation) -> Option<Outcome> {
        match v.class {
            CheckClass::Control => Some(self.vmfail(VmInstructionError::EntryInvalidControlFields)),
            CheckClass::HostState => Some(self.vmfail(VmInstructionError::EntryInvalidHostStateFields)),
            CheckClass::GuestState { .. } => None,
        }
    }

    /// VMfail(n) (SDM 31.2): VMfailValid with the error stored when there is a current
    /// VMCS, else VMfailInvalid.
    fn vmfail(&mut self, e: VmInstructionError) -> Outcome {
        match self.current_vmcs_mut() {
            Some(v) => {
                v.set(VM_INSTRUCTION_ERROR, u64::from(e.number()));
                Outcome::FailValid(e)
            }
            None => Outcome::FailInvalid,
        }
    }

    /// #UD conditions shared by the instructions: CR0.PE = 0, RFLAGS.VM = 1, or
    /// compatibility mode (IA32_EFER.LMA = 1 and CS.L = 0).
    fn mode_ud(env: &dyn VmxEnv) -> bool {
        env.cr0() & cr::CR0_PE == 0
            || env.rflags() & RFLAGS_VM != 0
            || (env.efer() & cr::EFER_LMA != 0 && !env.long_mode_64())
    }

    /// The checks that open most instruction pseudocodes: #UD outside VMX operation or in
    /// a bad mode, #GP(0) at CPL > 0.
    fn root_checks(&self, env: &dyn VmxEnv) -> Result<(), Fault> {
        if !self.vmxon || Self::mode_ud(env) {
            return Err(Fault::InvalidOpcode);
        }
        if env.cpl() > 0 {
            return Err(Fault::GeneralProtection(0));
        }
        Ok(())
    }

    fn bad_vmcs_address(addr: u64, env: &dyn VmxEnv) -> bool {
        bad_page_addr(addr, env.physical_address_width())
    }

    fn operand_mask(insn: &VmxInsn) -> u64 {
        if insn.operand_size == 64 {
            u64::MAX
        } else {
            0xffff_ffff
        }
    }

    /// Linear address of a memory operand; #GP(0) / #SS(0) when non-canonical in 64-bit
    /// mode (SDM 31, "64-Bit Mode Exceptions"). In 64-bit mode only FS and GS bases apply.
    fn linear(&self, insn: &VmxInsn, env: &dyn VmxEnv) -> Result<u64, Fault> {
        let Some(m) = insn.mem() else {
            return Err(Fault::InvalidOpcode);
        };
        let gprs: [u64; 16] = std::array::from_fn(|i| env.gpr(Gpr(i as u8)));
        let ea = effective_address(m, &gprs);
        if env.long_mode_64() {
            let base = match m.segment {
                Seg::Fs | Seg::Gs => env.segment_base(m.segment),
                _ => 0,
            };
            let la = base.wrapping_add(ea);
            let width = if env.cr4() & (1 << 12) != 0 { 57 } else { 48 };
            if !is_canonical(la, width) {
                return Err(if m.segment == Seg::Ss { Fault::StackFault(0) } else { Fault::GeneralProtection(0) });
            }
            Ok(la)
        } else {
            Ok(env.segment_base(m.segment).wrapping_add(ea) & 0xffff_ffff)
        }
    }

    fn read_mem<const N: usize>(&self, insn: &VmxInsn, env: &mut dyn VmxEnv) -> Result<[u8; N], Fault> {
        let la = self.linear(insn, env)?;
        let mut b = [0u8; N];
        env.read_virt(la, &mut b)?;
        Ok(b)
    }

    fn read_m64(&self, insn: &VmxInsn, env: &mut dyn VmxEnv) -> Result<u64, Fault> {
        Ok(u64::from_le_bytes(self.read_mem::<8>(insn, env)?))
    }

    fn reg2_value(insn: &VmxInsn, env: &dyn VmxEnv) -> Result<u64, Fault> {
        let r = insn.reg2().ok_or(Fault::InvalidOpcode)?;
        Ok(env.gpr(r) & Self::operand_mask(insn))
    }

    fn step(&mut self, insn: &VmxInsn, env: &mut dyn VmxEnv) -> Step {
        match insn.op {
            VmxOp::Vmxon => self.vmxon(insn, env),
            VmxOp::Vmxoff => {
                self.root_checks(env)?;
                self.flush_current(env);
                self.vmxon = false;
                self.current = None;
                self.vmcs = None;
                Ok(Outcome::Succeed)
            }
            VmxOp::Vmclear => self.vmclear(insn, env),
            VmxOp::Vmptrld => self.vmptrld(insn, env),
            VmxOp::Vmptrst => {
                self.root_checks(env)?;
                let la = self.linear(insn, env)?;
                env.write_virt(la, &self.current.unwrap_or(u64::MAX).to_le_bytes())?;
                Ok(Outcome::Succeed)
            }
            VmxOp::Vmread => self.vmread(insn, env),
            VmxOp::Vmwrite => self.vmwrite(insn, env),
            VmxOp::Vmlaunch | VmxOp::Vmresume => {
                self.root_checks(env)?;
                let launch = insn.op == VmxOp::Vmlaunch;
                // A shadow VMCS cannot be entered (SDM 25.10, 27.1): VMfailInvalid.
                let Some(launched) = self.current_vmcs().filter(|v| !v.shadow).map(|v| v.launched) else {
                    return Ok(Outcome::FailInvalid);
                };
                // Before the launch state (SDM 31, VMLAUNCH/VMRESUME pseudocode).
                if env.blocked_by_mov_ss() {
                    return Ok(self.vmfail(VmInstructionError::EntryEventsBlockedByMovSs));
                }
                Ok(match (launch, launched) {
                    (true, true) => self.vmfail(VmInstructionError::VmlaunchNonClearVmcs),
                    (false, false) => self.vmfail(VmInstructionError::VmresumeNonLaunchedVmcs),
                    _ => Outcome::Entry { launch },
                })
            }
            VmxOp::Invept => self.invept(insn, env),
            VmxOp::Invvpid => self.invvpid(insn, env),
            VmxOp::Vmcall => {
                // SDM 31 VMCALL: in VMX root operation without the dual-monitor treatment it
                // fails with error 1. (nestbed sees L1's VMCALL only if the trap source
                // delivers it.)
                self.root_checks(env)?;
                Ok(self.vmfail(VmInstructionError::VmcallInRoot))
            }
            // VMFUNC outside VMX non-root operation is #UD (SDM 31, VMFUNC).
            VmxOp::Vmfunc => Err(Fault::InvalidOpcode),
        }
    }

    fn vmxon(&mut self, insn: &VmxInsn, env: &mut dyn VmxEnv) -> Step {
        if !self.vmxe || Self::mode_ud(env) {
            return Err(Fault::InvalidOpcode);
        }
        if self.vmxon {
            if env.cpl() > 0 {
                return Err(Fault::GeneralProtection(0));
            }
            return Ok(self.vmfail(VmInstructionError::VmxonInRoot));
        }
        let c = &self.caps;
        let cr0 = env.cr0();
        // CR4.VMXE is virtual: check the other CR4 fixed bits only.
        let cr4 = env.cr4() | cr::CR4_VMXE;
        let fc = c.feature_control;
        let fixed_ok = |v: u64, f0: u64, f1: u64| v & f0 == f0 && v & !f1 & 0xffff_ffff == 0;
        if env.cpl() > 0
            || !fixed_ok(cr0, c.cr0_fixed0, c.cr0_fixed1)
            || !fixed_ok(cr4, c.cr4_fixed0, c.cr4_fixed1)
            || fc & super::caps::FEATURE_CONTROL_LOCKED == 0
            || fc & super::caps::FEATURE_CONTROL_VMXON_OUTSIDE_SMX == 0
        {
            return Err(Fault::GeneralProtection(0));
        }
        let addr = self.read_m64(insn, env)?;
        if Self::bad_vmcs_address(addr, env) {
            return Ok(Outcome::FailInvalid);
        }
        let rev = read_phys_u32(env, addr);
        if rev != self.caps.revision() {
            return Ok(Outcome::FailInvalid);
        }
        self.vmxon = true;
        self.vmxon_ptr = addr;
        self.current = None;
        self.vmcs = None;
        Ok(Outcome::Succeed)
    }

    fn vmclear(&mut self, insn: &VmxInsn, env: &mut dyn VmxEnv) -> Step {
        self.root_checks(env)?;
        let addr = self.read_m64(insn, env)?;
        if Self::bad_vmcs_address(addr, env) {
            return Ok(self.vmfail(VmInstructionError::VmclearInvalidAddress));
        }
        if addr == self.vmxon_ptr {
            return Ok(self.vmfail(VmInstructionError::VmclearVmxonPointer));
        }
        if self.current == Some(addr) {
            if let Some(v) = self.vmcs.as_mut() {
                v.launched = false;
            }
            self.flush_current(env);
            self.current = None;
            self.vmcs = None;
        } else {
            let _ = env.write_phys(addr + OFFSET_LAUNCH_STATE as u64, &0u32.to_le_bytes());
        }
        Ok(Outcome::Succeed)
    }

    fn vmptrld(&mut self, insn: &VmxInsn, env: &mut dyn VmxEnv) -> Step {
        self.root_checks(env)?;
        let addr = self.read_m64(insn, env)?;
        if Self::bad_vmcs_address(addr, env) {
            return Ok(self.vmfail(VmInstructionError::VmptrldInvalidAddress));
        }
        if addr == self.vmxon_ptr {
            return Ok(self.vmfail(VmInstructionError::VmptrldVmxonPointer));
        }
        let head = read_phys_u32(env, addr);
        let shadow = head >> 31 == 1;
        if head & 0x7fff_ffff != self.caps.revision() || (shadow && !self.caps.vmcs_shadowing()) {
            return Ok(self.vmfail(VmInstructionError::VmptrldIncorrectRevision));
        }
        if self.current == Some(addr) {
            return Ok(Outcome::Succeed);
        }
        self.flush_current(env);
        let mut region = vec![0u8; VMCS_SIZE];
        if env.read_phys(addr, &mut region).is_err() {
            // The region runs past the end of RAM: the rest reads as zeros.
            region = head.to_le_bytes().to_vec();
        }
        self.current = Some(addr);
        self.vmcs = Some(Vmcs::from_bytes(&region));
        Ok(Outcome::Succeed)
    }

    fn vmread(&mut self, insn: &VmxInsn, env: &mut dyn VmxEnv) -> Step {
        self.root_checks(env)?;
        if self.current_vmcs().is_none() {
            return Ok(Outcome::FailInvalid);
        }
        let enc = Self::reg2_value(insn, env)?;
        let value = u32::try_from(enc).ok().and_then(|e| self.current_vmcs().and_then(|v| v.read(e)));
        let Some(value) = value else {
            return Ok(self.vmfail(VmInstructionError::UnsupportedVmcsComponent));
        };
        self.vmread_store(insn, env, value)?;
        Ok(Outcome::Succeed)
    }

    /// Stores a VMREAD's value in its destination operand.
    fn vmread_store(&self, insn: &VmxInsn, env: &mut dyn VmxEnv, value: u64) -> Result<(), Fault> {
        let value = value & Self::operand_mask(insn);
        match insn.rm() {
            Some(Operand::Reg(r)) => env.set_gpr(r, value),
            Some(Operand::Mem(_)) => {
                let la = self.linear(insn, env)?;
                let n = usize::from(insn.operand_size / 8);
                env.write_virt(la, &value.to_le_bytes()[..n])?;
            }
            None => return Err(Fault::InvalidOpcode),
        }
        Ok(())
    }

    /// A VMWRITE's source operand.
    fn vmwrite_source(&self, insn: &VmxInsn, env: &mut dyn VmxEnv) -> Result<u64, Fault> {
        match insn.rm() {
            Some(Operand::Reg(r)) => Ok(env.gpr(r) & Self::operand_mask(insn)),
            Some(Operand::Mem(_)) => {
                // The source is 32 bits outside 64-bit mode (SDM 31, VMWRITE): reading 8 bytes
                // could fault on the page after it.
                let la = self.linear(insn, env)?;
                let mut b = [0u8; 8];
                env.read_virt(la, &mut b[..usize::from(insn.operand_size / 8)])?;
                Ok(u64::from_le_bytes(b))
            }
            None => Err(Fault::InvalidOpcode),
        }
    }

    /// The field a VMWRITE may write, or the VMfail it ends with (SDM 31, VMWRITE).
    fn vmwrite_field(&mut self, enc: u64) -> Result<u32, Outcome> {
        let Some((_, field)) = u32::try_from(enc).ok().and_then(fields::by_encoding) else {
            return Err(self.vmfail(VmInstructionError::UnsupportedVmcsComponent));
        };
        if field.read_only() && !self.caps.vmwrite_any_field() {
            return Err(self.vmfail(VmInstructionError::VmwriteReadOnlyComponent));
        }
        Ok(enc as u32)
    }

    fn vmwrite(&mut self, insn: &VmxInsn, env: &mut dyn VmxEnv) -> Step {
        self.root_checks(env)?;
        if self.current_vmcs().is_none() {
            return Ok(Outcome::FailInvalid);
        }
        let value = self.vmwrite_source(insn, env)?;
        let enc = Self::reg2_value(insn, env)?;
        let enc = match self.vmwrite_field(enc) {
            Ok(e) => e,
            Err(fail) => return Ok(fail),
        };
        if let Some(v) = self.current_vmcs_mut() {
            v.write(enc, value);
        }
        Ok(Outcome::Succeed)
    }

    /// VMREAD or VMWRITE executed by L2 in VMX non-root operation that causes no VM exit: the
    /// current VMCS has "VMCS shadowing" set and the VMREAD/VMWRITE bitmap bit of the field
    /// is 0 (SDM 25.6.15, 26.1.3; the caller decided that). It reads or writes the VMCS the
    /// current VMCS's link pointer names, in `mem` (L1-physical memory, in nestbed's region
    /// layout); `guest` is L2's context. VMfailInvalid when the link pointer is
    /// FFFFFFFF_FFFFFFFFH; VMfailValid stores its error in the current VMCS (SDM 31,
    /// VMREAD/VMWRITE pseudocode).
    pub fn execute_shadowed(&mut self, insn: &VmxInsn, guest: &mut dyn VmxEnv, mem: &mut dyn GuestMemory) -> Outcome {
        match self.shadowed(insn, guest, mem) {
            Ok(o) => o,
            Err(f) => Outcome::Fault(f),
        }
    }

    fn shadowed(&mut self, insn: &VmxInsn, guest: &mut dyn VmxEnv, mem: &mut dyn GuestMemory) -> Step {
        if Self::mode_ud(guest) || !matches!(insn.op, VmxOp::Vmread | VmxOp::Vmwrite) {
            return Err(Fault::InvalidOpcode);
        }
        if guest.cpl() > 0 {
            return Err(Fault::GeneralProtection(0));
        }
        let link = self.current_vmcs().map_or(u64::MAX, |v| v.get(fields::VMCS_LINK_POINTER));
        if link == u64::MAX {
            return Ok(Outcome::FailInvalid);
        }
        let enc = Self::reg2_value(insn, guest)?;
        if insn.op == VmxOp::Vmread {
            let Some(off) = u32::try_from(enc).ok().and_then(super::vmcs::field_offset) else {
                return Ok(self.vmfail(VmInstructionError::UnsupportedVmcsComponent));
            };
            // A link pointer a script wrote past the end of the address space reads as all ones.
            let stored = link.checked_add(off as u64).map_or(u64::MAX, |at| read_phys_u64(mem, at));
            self.vmread_store(insn, guest, super::vmcs::read_value(stored, enc as u32))?;
            return Ok(Outcome::Succeed);
        }
        let value = self.vmwrite_source(insn, guest)?;
        let enc = match self.vmwrite_field(enc) {
            Ok(e) => e,
            Err(fail) => return Ok(fail),
        };
        let Some(off) = super::vmcs::field_offset(enc) else {
            return Ok(self.vmfail(VmInstructionError::UnsupportedVmcsComponent));
        };
        // Outside RAM the write reaches no device and is lost, as on hardware.
        if let Some(at) = link.checked_add(off as u64) {
            let stored = read_phys_u64(mem, at);
            let _ = mem.write_phys(at, &super::vmcs::written_value(stored, enc, value).to_le_bytes());
        }
        Ok(Outcome::Succeed)
    }

    fn invept(&mut self, insn: &VmxInsn, env: &mut dyn VmxEnv) -> Step {
        if self.caps.ept_vpid_cap & ept_cap::INVEPT == 0 {
            return Err(Fault::InvalidOpcode);
        }
        self.root_checks(env)?;
        let ty = Self::reg2_value(insn, env)?;
        if ty >= 4 || self.caps.ept_vpid_cap & (1 << (24 + ty)) == 0 {
            return Ok(self.vmfail(VmInstructionError::InvalidInveptInvvpidOperand));
        }
        let desc = self.read_mem::<16>(insn, env)?;
        let eptp = u64::from_le_bytes(desc[..8].try_into().unwrap_or_default());
        let inv = if ty == 1 {
            if !eptp_valid(eptp, &self.caps, env.physical_address_width()) {
                return Ok(self.vmfail(VmInstructionError::InvalidInveptInvvpidOperand));
            }
            Invalidation::Ept { eptp: Some(eptp) }
        } else {
            Invalidation::Ept { eptp: None }
        };
        self.invalidations.push(inv);
        Ok(Outcome::Succeed)
    }

    fn invvpid(&mut self, insn: &VmxInsn, env: &mut dyn VmxEnv) -> Step {
        if self.caps.ept_vpid_cap & ept_cap::INVVPID == 0 {
            return Err(Fault::InvalidOpcode);
        }
        self.root_checks(env)?;
        let ty = Self::reg2_value(insn, env)?;
        if ty >= 4 || self.caps.ept_vpid_cap & (1 << (40 + ty)) == 0 {
            return Ok(self.vmfail(VmInstructionError::InvalidInveptInvvpidOperand));
        }
        let desc = self.read_mem::<16>(insn, env)?;
        let lo = u64::from_le_bytes(desc[..8].try_into().unwrap_or_default());
        let address = u64::from_le_bytes(desc[8..].try_into().unwrap_or_default());
        if lo >> 16 != 0 {
            return Ok(self.vmfail(VmInstructionError::InvalidInveptInvvpidOperand));
        }
        let vpid = lo as u16;
        let kind = match ty {
            0 => InvvpidType::IndividualAddress,
            1 => InvvpidType::SingleContext,
            2 => InvvpidType::AllContext,
            _ => InvvpidType::SingleContextRetainingGlobals,
        };
        let bad = match kind {
            InvvpidType::IndividualAddress => vpid == 0 || !is_canonical(address, 48),
            InvvpidType::AllContext => false,
            _ => vpid == 0,
        };
        if bad {
            return Ok(self.vmfail(VmInstructionError::InvalidInveptInvvpidOperand));
        }
        self.invalidations.push(Invalidation::Vpid { kind, vpid, address });
        Ok(Outcome::Succeed)
    }
}

/// Reads a u64 of guest-physical memory; outside RAM reads as all-ones.
fn read_phys_u64(mem: &dyn GuestMemory, gpa: u64) -> u64 {
    let mut b = [0u8; 8];
    match mem.read_phys(gpa, &mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => u64::MAX,
    }
}

/// Reads a u32 of guest-physical memory; outside RAM reads as all-ones (no device answers).
fn read_phys_u32(mem: &dyn VmxEnv, gpa: u64) -> u32 {
    let mut b = [0u8; 4];
    match mem.read_phys(gpa, &mut b) {
        Ok(()) => u32::from_le_bytes(b),
        Err(_) => u32::MAX,
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// SplitMix64: the seeded generator of the VMX model's fuzzers.
    pub struct Rng(pub u64);

    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Guest RAM in a Vec; accesses past the end fault.
    #[derive(Debug, Clone)]
    pub struct Ram(pub Vec<u8>);

    impl GuestMemory for Ram {
        fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemFault> {
            let s = usize::try_from(gpa).map_err(|_| MemFault { gpa })?;
            let src = s.checked_add(buf.len()).and_then(|e| self.0.get(s..e)).ok_or(MemFault { gpa })?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn write_phys(&mut self, gpa: u64, buf: &[u8]) -> Result<(), MemFault> {
            let s = usize::try_from(gpa).map_err(|_| MemFault { gpa })?;
            let dst = s.checked_add(buf.len()).and_then(|e| self.0.get_mut(s..e)).ok_or(MemFault { gpa })?;
            dst.copy_from_slice(buf);
            Ok(())
        }
    }

    impl Ram {
        pub fn put_u64(&mut self, gpa: u64, v: u64) {
            self.write_phys(gpa, &v.to_le_bytes()).unwrap();
        }
        pub fn put_u32(&mut self, gpa: u64, v: u32) {
            self.write_phys(gpa, &v.to_le_bytes()).unwrap();
        }
        pub fn u64_at(&self, gpa: u64) -> u64 {
            let mut b = [0; 8];
            self.read_phys(gpa, &mut b).unwrap();
            u64::from_le_bytes(b)
        }
        pub fn u32_at(&self, gpa: u64) -> u32 {
            let mut b = [0; 4];
            self.read_phys(gpa, &mut b).unwrap();
            u32::from_le_bytes(b)
        }
    }

    /// A 64-bit CPL-0 processor with identity paging over `ram`.
    #[derive(Debug, Clone)]
    pub struct FakeEnv {
        pub ram: Ram,
        pub gprs: [u64; 16],
        pub seg_bases: [u64; 6],
        pub cpl: u8,
        pub cr0: u64,
        pub cr4: u64,
        pub efer: u64,
        pub rflags: u64,
        pub lm64: bool,
        pub mov_ss: bool,
    }

    impl FakeEnv {
        pub fn new(size: usize) -> Self {
            FakeEnv {
                ram: Ram(vec![0; size]),
                gprs: [0; 16],
                seg_bases: [0; 6],
                cpl: 0,
                cr0: 0x8000_0033,
                cr4: 0x20,
                efer: 0x500,
                rflags: 0x2,
                lm64: true,
                mov_ss: false,
            }
        }
    }

    impl GuestMemory for FakeEnv {
        fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemFault> {
            self.ram.read_phys(gpa, buf)
        }
        fn write_phys(&mut self, gpa: u64, buf: &[u8]) -> Result<(), MemFault> {
            self.ram.write_phys(gpa, buf)
        }
    }

    impl VmxEnv for FakeEnv {
        fn gpr(&self, r: Gpr) -> u64 {
            self.gprs[r.index()]
        }
        fn set_gpr(&mut self, r: Gpr, v: u64) {
            self.gprs[r.index()] = v;
        }
        fn segment_base(&self, s: Seg) -> u64 {
            self.seg_bases[s as usize]
        }
        fn read_virt(&mut self, gva: u64, buf: &mut [u8]) -> Result<(), Fault> {
            self.ram.read_phys(gva, buf).map_err(|_| Fault::PageFault { address: gva, error_code: 0 })
        }
        fn write_virt(&mut self, gva: u64, buf: &[u8]) -> Result<(), Fault> {
            self.ram.write_phys(gva, buf).map_err(|_| Fault::PageFault { address: gva, error_code: 2 })
        }
        fn cpl(&self) -> u8 {
            self.cpl
        }
        fn cr0(&self) -> u64 {
            self.cr0
        }
        fn cr4(&self) -> u64 {
            self.cr4
        }
        fn efer(&self) -> u64 {
            self.efer
        }
        fn rflags(&self) -> u64 {
            self.rflags
        }
        fn long_mode_64(&self) -> bool {
            self.lm64
        }
        fn physical_address_width(&self) -> u8 {
            36
        }
        fn blocked_by_mov_ss(&self) -> bool {
            self.mov_ss
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::decode::decode;
    use super::super::fields::*;
    use super::testing::FakeEnv;
    use super::*;
    use VmInstructionError as E;

    const VMXON_REGION: u64 = 0x1000;
    const VMCS_A: u64 = 0x2000;
    const VMCS_B: u64 = 0x3000;
    const OPERAND: u64 = 0x100;

    fn op(bytes: &[u8]) -> VmxInsn {
        decode(bytes, 64, 0).unwrap()
    }

    /// Runs `bytes` with `[rbx]` pointing to a u64 holding `ptr` (when given).
    fn run(cpu: &mut VmxCpu, env: &mut FakeEnv, bytes: &[u8], ptr: Option<u64>) -> Outcome {
        if let Some(p) = ptr {
            env.ram.put_u64(OPERAND, p);
            env.gprs[3] = OPERAND;
        }
        cpu.execute(&op(bytes), env)
    }

    const VMXON: &[u8] = &[0xf3, 0x0f, 0xc7, 0x33];
    const VMPTRLD: &[u8] = &[0x0f, 0xc7, 0x33];
    const VMCLEAR: &[u8] = &[0x66, 0x0f, 0xc7, 0x33];
    const VMPTRST: &[u8] = &[0x0f, 0xc7, 0x3b];
    const VMREAD_RAX_RCX: &[u8] = &[0x0f, 0x78, 0xc8];
    const VMWRITE_RAX_RCX: &[u8] = &[0x0f, 0x79, 0xc1];
    const VMLAUNCH: &[u8] = &[0x0f, 0x01, 0xc2];
    const VMRESUME: &[u8] = &[0x0f, 0x01, 0xc3];
    const VMXOFF: &[u8] = &[0x0f, 0x01, 0xc4];
    const INVEPT: &[u8] = &[0x66, 0x0f, 0x38, 0x80, 0x03];
    const INVVPID: &[u8] = &[0x66, 0x0f, 0x38, 0x81, 0x03];

    fn setup() -> (VmxCpu, FakeEnv) {
        let cpu = VmxCpu::default();
        let mut env = FakeEnv::new(0x10000);
        let rev = cpu.caps.revision();
        for r in [VMXON_REGION, VMCS_A, VMCS_B] {
            env.ram.put_u32(r, rev);
        }
        (cpu, env)
    }

    fn in_root() -> (VmxCpu, FakeEnv) {
        let (mut cpu, mut env) = setup();
        assert_eq!(run(&mut cpu, &mut env, VMXON, Some(VMXON_REGION)), Outcome::Succeed);
        (cpu, env)
    }

    fn with_current() -> (VmxCpu, FakeEnv) {
        let (mut cpu, mut env) = in_root();
        assert_eq!(run(&mut cpu, &mut env, VMCLEAR, Some(VMCS_A)), Outcome::Succeed);
        assert_eq!(run(&mut cpu, &mut env, VMPTRLD, Some(VMCS_A)), Outcome::Succeed);
        (cpu, env)
    }

    fn vmwrite(cpu: &mut VmxCpu, env: &mut FakeEnv, enc: u64, v: u64) -> Outcome {
        env.gprs[0] = enc;
        env.gprs[1] = v;
        run(cpu, env, VMWRITE_RAX_RCX, None)
    }

    fn vmread(cpu: &mut VmxCpu, env: &mut FakeEnv, enc: u64) -> (Outcome, u64) {
        env.gprs[1] = enc;
        let o = run(cpu, env, VMREAD_RAX_RCX, None);
        (o, env.gprs[0])
    }

    fn last_error(cpu: &VmxCpu) -> u64 {
        cpu.current_vmcs().unwrap().get(VM_INSTRUCTION_ERROR)
    }

    #[test]
    fn rflags_conventions() {
        let f = 0x2 | ARITH_FLAGS | (1 << 9);
        assert_eq!(apply_rflags(f, &Outcome::Succeed), 0x202);
        assert_eq!(apply_rflags(f, &Outcome::FailInvalid), 0x203);
        assert_eq!(apply_rflags(f, &Outcome::FailValid(E::VmcallInRoot)), 0x242);
        assert_eq!(apply_rflags(f, &Outcome::Fault(Fault::InvalidOpcode)), f);
        assert!(!Outcome::Entry { launch: true }.advances_rip());
    }

    #[test]
    fn vmxon_checks() {
        let (mut cpu, mut env) = setup();
        // Outside VMX operation everything but VMXON is #UD.
        for b in [VMPTRLD, VMCLEAR, VMXOFF, VMLAUNCH, VMREAD_RAX_RCX, INVEPT] {
            assert_eq!(run(&mut cpu, &mut env, b, Some(VMCS_A)), Outcome::Fault(Fault::InvalidOpcode));
        }
        cpu.vmxe = false;
        assert_eq!(run(&mut cpu, &mut env, VMXON, Some(VMXON_REGION)), Outcome::Fault(Fault::InvalidOpcode));
        cpu.vmxe = true;
        env.cpl = 3;
        assert_eq!(run(&mut cpu, &mut env, VMXON, Some(VMXON_REGION)), Outcome::Fault(Fault::GeneralProtection(0)));
        env.cpl = 0;
        env.cr0 &= !cr::CR0_NE;
        assert_eq!(run(&mut cpu, &mut env, VMXON, Some(VMXON_REGION)), Outcome::Fault(Fault::GeneralProtection(0)));
        env.cr0 |= cr::CR0_NE;
        cpu.caps.feature_control = 1;
        assert_eq!(run(&mut cpu, &mut env, VMXON, Some(VMXON_REGION)), Outcome::Fault(Fault::GeneralProtection(0)));
        cpu.caps.feature_control = 5;
        // Compatibility mode and virtual-8086 mode.
        env.lm64 = false;
        assert_eq!(run(&mut cpu, &mut env, VMXON, Some(VMXON_REGION)), Outcome::Fault(Fault::InvalidOpcode));
        env.lm64 = true;
        env.rflags |= RFLAGS_VM;
        assert_eq!(run(&mut cpu, &mut env, VMXON, Some(VMXON_REGION)), Outcome::Fault(Fault::InvalidOpcode));
        env.rflags = 2;
        // Bad address / revision: VMfailInvalid, still outside VMX operation.
        assert_eq!(run(&mut cpu, &mut env, VMXON, Some(VMXON_REGION + 8)), Outcome::FailInvalid);
        assert_eq!(run(&mut cpu, &mut env, VMXON, Some(1 << 40)), Outcome::FailInvalid);
        env.ram.put_u32(0x4000, 0x1234);
        assert_eq!(run(&mut cpu, &mut env, VMXON, Some(0x4000)), Outcome::FailInvalid);
        env.ram.put_u32(0x4000, cpu.caps.revision() | 1 << 31);
        assert_eq!(run(&mut cpu, &mut env, VMXON, Some(0x4000)), Outcome::FailInvalid);
        assert!(!cpu.vmxon);
        assert_eq!(run(&mut cpu, &mut env, VMXON, Some(VMXON_REGION)), Outcome::Succeed);
        assert!(cpu.vmxon);
        assert_eq!(cpu.vmxon_ptr, VMXON_REGION);
        // VMXON twice: VMfailInvalid without a current VMCS, VMfailValid(15) with one.
        assert_eq!(run(&mut cpu, &mut env, VMXON, Some(VMXON_REGION)), Outcome::FailInvalid);
        assert_eq!(run(&mut cpu, &mut env, VMPTRLD, Some(VMCS_A)), Outcome::Succeed);
        assert_eq!(run(&mut cpu, &mut env, VMXON, Some(VMXON_REGION)), Outcome::FailValid(E::VmxonInRoot));
        assert_eq!(last_error(&cpu), 15);
    }

    #[test]
    fn cpl_and_operand_faults() {
        let (mut cpu, mut env) = in_root();
        env.cpl = 3;
        for b in [VMPTRLD, VMCLEAR, VMXOFF, VMLAUNCH, VMREAD_RAX_RCX, INVEPT, VMXON] {
            assert_eq!(run(&mut cpu, &mut env, b, Some(VMCS_A)), Outcome::Fault(Fault::GeneralProtection(0)));
        }
        env.cpl = 0;
        env.gprs[3] = 0x8000_0000_0000_0000;
        assert_eq!(run(&mut cpu, &mut env, VMPTRLD, None), Outcome::Fault(Fault::GeneralProtection(0)));
        // [rbp] uses SS: #SS(0).
        env.gprs[5] = 0x8000_0000_0000_0000;
        let i = op(&[0x0f, 0xc7, 0x75, 0x00]);
        assert_eq!(cpu.execute(&i, &mut env), Outcome::Fault(Fault::StackFault(0)));
        // Page fault from the environment passes through.
        env.gprs[3] = 0x20000;
        assert!(matches!(
            run(&mut cpu, &mut env, VMPTRLD, None),
            Outcome::Fault(Fault::PageFault { address: 0x20000, .. })
        ));
        // FS base is added in 64-bit mode.
        env.seg_bases[Seg::Fs as usize] = 0x100;
        env.ram.put_u64(0x180, VMCS_B);
        env.gprs[3] = 0x80;
        let i = op(&[0x64, 0x0f, 0xc7, 0x33]);
        assert_eq!(cpu.execute(&i, &mut env), Outcome::Succeed);
        assert_eq!(cpu.current, Some(VMCS_B));
        assert_eq!(run(&mut cpu, &mut env, &[0x0f, 0x01, 0xd4], None), Outcome::Fault(Fault::InvalidOpcode));
    }

    #[test]
    fn vmptrld_failures() {
        let (mut cpu, mut env) = in_root();
        assert_eq!(run(&mut cpu, &mut env, VMPTRLD, Some(VMCS_A + 1)), Outcome::FailInvalid);
        assert_eq!(run(&mut cpu, &mut env, VMPTRLD, Some(VMCS_A)), Outcome::Succeed);
        assert_eq!(run(&mut cpu, &mut env, VMPTRLD, Some(VMCS_A + 0x10)), Outcome::FailValid(E::VmptrldInvalidAddress));
        assert_eq!(last_error(&cpu), 9);
        assert_eq!(run(&mut cpu, &mut env, VMPTRLD, Some(1 << 36)), Outcome::FailValid(E::VmptrldInvalidAddress));
        assert_eq!(run(&mut cpu, &mut env, VMPTRLD, Some(VMXON_REGION)), Outcome::FailValid(E::VmptrldVmxonPointer));
        assert_eq!(last_error(&cpu), 10);
        env.ram.put_u32(0x5000, 7);
        assert_eq!(run(&mut cpu, &mut env, VMPTRLD, Some(0x5000)), Outcome::FailValid(E::VmptrldIncorrectRevision));
        // A shadow VMCS where VMCS shadowing is not supported (SDM 31, VMPTRLD).
        env.ram.put_u32(0x5000, cpu.caps.revision() | 1 << 31);
        cpu.caps.secondary.allowed1 &= !super::super::caps::proc2::VMCS_SHADOWING;
        assert_eq!(run(&mut cpu, &mut env, VMPTRLD, Some(0x5000)), Outcome::FailValid(E::VmptrldIncorrectRevision));
        // Outside RAM reads as all-ones.
        assert_eq!(run(&mut cpu, &mut env, VMPTRLD, Some(0x10_0000)), Outcome::FailValid(E::VmptrldIncorrectRevision));
        assert_eq!(last_error(&cpu), 11);
        assert_eq!(cpu.current, Some(VMCS_A));
    }

    #[test]
    fn vmclear_failures_and_launch_state() {
        let (mut cpu, mut env) = in_root();
        assert_eq!(run(&mut cpu, &mut env, VMCLEAR, Some(VMCS_A + 4)), Outcome::FailInvalid);
        assert_eq!(run(&mut cpu, &mut env, VMCLEAR, Some(VMXON_REGION)), Outcome::FailInvalid);
        assert_eq!(run(&mut cpu, &mut env, VMPTRLD, Some(VMCS_A)), Outcome::Succeed);
        assert_eq!(run(&mut cpu, &mut env, VMCLEAR, Some(VMCS_A + 4)), Outcome::FailValid(E::VmclearInvalidAddress));
        assert_eq!(last_error(&cpu), 2);
        assert_eq!(run(&mut cpu, &mut env, VMCLEAR, Some(VMXON_REGION)), Outcome::FailValid(E::VmclearVmxonPointer));
        assert_eq!(last_error(&cpu), 3);
        // Clearing a non-current VMCS writes its launch state in memory.
        env.ram.put_u32(VMCS_B + 8, 1);
        assert_eq!(run(&mut cpu, &mut env, VMCLEAR, Some(VMCS_B)), Outcome::Succeed);
        assert_eq!(env.ram.u32_at(VMCS_B + 8), 0);
        assert_eq!(cpu.current, Some(VMCS_A));
    }

    #[test]
    fn read_write_round_trip_through_memory() {
        let (mut cpu, mut env) = with_current();
        assert_eq!(vmwrite(&mut cpu, &mut env, GUEST_RIP as u64, 0xdead_beef), Outcome::Succeed);
        assert_eq!(vmwrite(&mut cpu, &mut env, GUEST_CS_SELECTOR as u64, 0x12_3456), Outcome::Succeed);
        assert_eq!(vmread(&mut cpu, &mut env, GUEST_RIP as u64), (Outcome::Succeed, 0xdead_beef));
        assert_eq!(vmread(&mut cpu, &mut env, GUEST_CS_SELECTOR as u64), (Outcome::Succeed, 0x3456));
        // Memory forms: vmwrite rcx, [rbx] and vmread [rbx], rcx.
        env.gprs[1] = HOST_RSP as u64;
        env.gprs[3] = 0x800;
        env.ram.put_u64(0x800, 0x1122_3344_5566_7788);
        assert_eq!(cpu.execute(&op(&[0x0f, 0x79, 0x0b]), &mut env), Outcome::Succeed);
        env.gprs[3] = 0x900;
        assert_eq!(cpu.execute(&op(&[0x0f, 0x78, 0x0b]), &mut env), Outcome::Succeed);
        assert_eq!(env.ram.u64_at(0x900), 0x1122_3344_5566_7788);
        // Switch to B (flushes A), write there, switch back: A's values persist.
        assert_eq!(run(&mut cpu, &mut env, VMCLEAR, Some(VMCS_B)), Outcome::Succeed);
        assert_eq!(run(&mut cpu, &mut env, VMPTRLD, Some(VMCS_B)), Outcome::Succeed);
        assert_eq!(vmread(&mut cpu, &mut env, GUEST_RIP as u64), (Outcome::Succeed, 0));
        assert_eq!(vmwrite(&mut cpu, &mut env, GUEST_RIP as u64, 0xb), Outcome::Succeed);
        assert_eq!(run(&mut cpu, &mut env, VMPTRLD, Some(VMCS_A)), Outcome::Succeed);
        assert_eq!(vmread(&mut cpu, &mut env, GUEST_RIP as u64), (Outcome::Succeed, 0xdead_beef));
        // VMPTRST stores the current pointer.
        env.gprs[3] = 0xa00;
        assert_eq!(run(&mut cpu, &mut env, VMPTRST, None), Outcome::Succeed);
        assert_eq!(env.ram.u64_at(0xa00), VMCS_A);
        // VMCLEAR of the current VMCS writes it back and leaves no current VMCS.
        assert_eq!(run(&mut cpu, &mut env, VMCLEAR, Some(VMCS_A)), Outcome::Succeed);
        assert_eq!(cpu.current, None);
        let v = Vmcs::from_bytes(&env.ram.0[VMCS_A as usize..VMCS_A as usize + VMCS_SIZE]);
        assert_eq!(v.get(GUEST_RIP), 0xdead_beef);
        assert!(!v.launched);
        env.gprs[3] = 0xa00;
        assert_eq!(run(&mut cpu, &mut env, VMPTRST, None), Outcome::Succeed);
        assert_eq!(env.ram.u64_at(0xa00), u64::MAX);
        assert_eq!(vmread(&mut cpu, &mut env, GUEST_RIP as u64).0, Outcome::FailInvalid);
        assert_eq!(vmwrite(&mut cpu, &mut env, GUEST_RIP as u64, 1), Outcome::FailInvalid);
    }

    #[test]
    fn vmread_vmwrite_failures() {
        let (mut cpu, mut env) = with_current();
        assert_eq!(vmread(&mut cpu, &mut env, 0x7777).0, Outcome::FailValid(E::UnsupportedVmcsComponent));
        assert_eq!(last_error(&cpu), 12);
        assert_eq!(
            vmread(&mut cpu, &mut env, 1 << 32 | GUEST_RIP as u64).0,
            Outcome::FailValid(E::UnsupportedVmcsComponent)
        );
        assert_eq!(vmwrite(&mut cpu, &mut env, 0x7777, 0), Outcome::FailValid(E::UnsupportedVmcsComponent));
        assert_eq!(
            vmwrite(&mut cpu, &mut env, VM_EXIT_REASON as u64, 1),
            Outcome::FailValid(E::VmwriteReadOnlyComponent)
        );
        assert_eq!(last_error(&cpu), 13);
        // VMREAD of the error field itself works.
        assert_eq!(vmread(&mut cpu, &mut env, VM_INSTRUCTION_ERROR as u64), (Outcome::Succeed, 13));
        // High access.
        assert_eq!(vmwrite(&mut cpu, &mut env, u64::from(TSC_OFFSET | 1), 0xabcd), Outcome::Succeed);
        assert_eq!(vmread(&mut cpu, &mut env, TSC_OFFSET as u64), (Outcome::Succeed, 0xabcd_0000_0000));
    }

    #[test]
    fn vmread_32bit_mode() {
        let (mut cpu, mut env) = with_current();
        assert_eq!(vmwrite(&mut cpu, &mut env, GUEST_RIP as u64, 0x1_2345_6789), Outcome::Succeed);
        env.efer = 0;
        env.lm64 = false;
        env.gprs[1] = GUEST_RIP as u64;
        env.gprs[3] = 0x800;
        env.ram.put_u64(0x800, u64::MAX);
        let i = decode(&[0x0f, 0x78, 0x0b], 32, 0).unwrap();
        assert_eq!(cpu.execute(&i, &mut env), Outcome::Succeed);
        assert_eq!(env.ram.u64_at(0x800), 0xffff_ffff_2345_6789);
    }

    #[test]
    fn vmwrite_32bit_memory_operand() {
        let (mut cpu, mut env) = with_current();
        let end = env.ram.0.len() as u64;
        env.ram.put_u32(end - 4, 0x1357_9bdf);
        env.gprs[1] = GUEST_RSP as u64;
        env.gprs[3] = end - 4;
        // vmwrite rcx, [rbx] needs 8 bytes in 64-bit mode: the last 4 bytes of RAM fault.
        assert!(matches!(cpu.execute(&op(&[0x0f, 0x79, 0x0b]), &mut env), Outcome::Fault(Fault::PageFault { .. })));
        // vmwrite ecx, [ebx] in 32-bit mode reads 4.
        env.efer = 0;
        env.lm64 = false;
        let i = decode(&[0x0f, 0x79, 0x0b], 32, 0).unwrap();
        assert_eq!(cpu.execute(&i, &mut env), Outcome::Succeed);
        assert_eq!(cpu.current_vmcs().unwrap().get(GUEST_RSP), 0x1357_9bdf);
    }

    /// The sequence of the vmx-legacy32 guest: legacy protected mode with 32-bit paging,
    /// 32-bit operands, m64 pointers (SDM 31, VMX instruction reference).
    #[test]
    fn legacy_32bit_mode_sequence() {
        fn go(cpu: &mut VmxCpu, env: &mut FakeEnv, bytes: &[u8]) -> Outcome {
            cpu.execute(&decode(bytes, 32, 0).unwrap(), env)
        }
        // vmwrite ecx, eax and vmread ebx, ecx: the upper halves of the registers are not part
        // of the operands.
        fn write(cpu: &mut VmxCpu, env: &mut FakeEnv, enc: u32, v: u32) -> Outcome {
            (env.gprs[1], env.gprs[0]) = (0xffff_ffff_0000_0000 | u64::from(enc), 0xffff_ffff_0000_0000 | u64::from(v));
            go(cpu, env, &[0x0f, 0x79, 0xc8])
        }
        fn read(cpu: &mut VmxCpu, env: &mut FakeEnv, enc: u32) -> (Outcome, u64) {
            env.gprs[1] = 0xffff_ffff_0000_0000 | u64::from(enc);
            (go(cpu, env, &[0x0f, 0x78, 0xcb]), env.gprs[3])
        }
        let (mut cpu, mut env) = setup();
        (env.cr0, env.cr4, env.efer, env.lm64) = (0x8000_0031, 0x10, 0, false);
        let (c, e) = (&mut cpu, &mut env);
        // m64 pointers at 0x100 (VMXON region), 0x108 (VMCS A), 0x118 (VMCS A with bit 63 set).
        e.ram.put_u64(0x100, VMXON_REGION);
        e.ram.put_u64(0x108, VMCS_A);
        e.ram.put_u64(0x118, VMCS_A | 1 << 63);
        let vmxon = [0xf3, 0x0f, 0xc7, 0x35, 0x00, 0x01, 0x00, 0x00];
        assert_eq!(go(c, e, &vmxon), Outcome::Succeed);
        assert_eq!(go(c, e, &vmxon), Outcome::FailInvalid);
        assert_eq!(go(c, e, &[0x66, 0x0f, 0xc7, 0x35, 0x08, 0x01, 0x00, 0x00]), Outcome::Succeed);
        assert_eq!(go(c, e, &[0x0f, 0xc7, 0x35, 0x08, 0x01, 0x00, 0x00]), Outcome::Succeed);
        e.ram.put_u64(0x110, u64::MAX);
        assert_eq!(go(c, e, &[0x0f, 0xc7, 0x3d, 0x10, 0x01, 0x00, 0x00]), Outcome::Succeed);
        assert_eq!(e.ram.u64_at(0x110), VMCS_A);
        assert_eq!(go(c, e, &vmxon), Outcome::FailValid(E::VmxonInRoot));
        assert_eq!(go(c, e, &[0x0f, 0xc7, 0x35, 0x18, 0x01, 0x00, 0x00]), Outcome::FailValid(E::VmptrldInvalidAddress));

        assert_eq!(write(c, e, GUEST_RIP, 0x89ab_cdef), Outcome::Succeed);
        assert_eq!(write(c, e, TSC_OFFSET | 1, 0xdead_beef), Outcome::Succeed);
        assert_eq!(read(c, e, TSC_OFFSET | 1), (Outcome::Succeed, 0xdead_beef));
        assert_eq!(write(c, e, TSC_OFFSET, 0x1234_5678), Outcome::Succeed);
        assert_eq!(write(c, e, VM_INSTRUCTION_ERROR, 1), Outcome::FailValid(E::VmwriteReadOnlyComponent));
        assert_eq!(read(c, e, GUEST_RIP), (Outcome::Succeed, 0x89ab_cdef));
        assert_eq!(read(c, e, TSC_OFFSET), (Outcome::Succeed, 0x1234_5678));
        assert_eq!(read(c, e, TSC_OFFSET | 1), (Outcome::Succeed, 0));
        assert_eq!(read(c, e, 0x7777).0, Outcome::FailValid(E::UnsupportedVmcsComponent));
        assert_eq!(read(c, e, GUEST_RIP | 1).0, Outcome::FailValid(E::UnsupportedVmcsComponent));
        assert_eq!(read(c, e, VM_INSTRUCTION_ERROR), (Outcome::Succeed, 12));
        // vmread [0x120], ecx stores 4 bytes.
        e.ram.put_u64(0x120, 0xa5a5_a5a5_0000_0000);
        e.gprs[1] = u64::from(GUEST_RIP);
        assert_eq!(go(c, e, &[0x0f, 0x78, 0x0d, 0x20, 0x01, 0x00, 0x00]), Outcome::Succeed);
        assert_eq!(e.ram.u64_at(0x120), 0xa5a5_a5a5_89ab_cdef);
        assert_eq!(go(c, e, &[0x0f, 0x01, 0xc4]), Outcome::Succeed);
        assert_eq!(read(c, e, GUEST_RIP).0, Outcome::Fault(Fault::InvalidOpcode));
    }

    /// VMXON checks CR0 against the CR0_FIXED0 advertised (SDM 31, VMXON; A.7): with PG
    /// dropped from it, VMX operation starts with paging off.
    #[test]
    fn vmxon_without_paging_follows_cr0_fixed0() {
        let (mut cpu, mut env) = setup();
        (env.cr0, env.cr4, env.efer, env.lm64) = (0x31, 0, 0, false);
        env.ram.put_u64(0x100, VMXON_REGION);
        let vmxon = decode(&[0xf3, 0x0f, 0xc7, 0x35, 0x00, 0x01, 0x00, 0x00], 32, 0).unwrap();
        assert_eq!(cpu.execute(&vmxon, &mut env), Outcome::Fault(Fault::GeneralProtection(0)));
        cpu.caps.set_msr(super::super::caps::IA32_VMX_CR0_FIXED0, cr::CR0_PE | cr::CR0_NE).unwrap();
        assert_eq!(cpu.execute(&vmxon, &mut env), Outcome::Succeed);
        assert!(cpu.vmxon);
    }

    /// A shadow VMCS in VMX root operation (SDM 25.10, 31): VMPTRLD makes it current, VMREAD
    /// and VMWRITE work on it, VMLAUNCH and VMRESUME fail with VMfailInvalid, VMCLEAR writes
    /// it back with its shadow-VMCS indicator.
    #[test]
    fn shadow_vmcs_in_root() {
        let (mut cpu, mut env) = in_root();
        assert!(cpu.caps.vmcs_shadowing());
        env.ram.put_u32(VMCS_B, cpu.caps.revision() | 1 << 31);
        assert_eq!(run(&mut cpu, &mut env, VMPTRLD, Some(VMCS_B)), Outcome::Succeed);
        assert!(cpu.current_vmcs().unwrap().shadow);
        assert_eq!(vmwrite(&mut cpu, &mut env, GUEST_RIP as u64, 0x1234), Outcome::Succeed);
        assert_eq!(vmread(&mut cpu, &mut env, GUEST_RIP as u64), (Outcome::Succeed, 0x1234));
        for insn in [VMLAUNCH, VMRESUME] {
            assert_eq!(run(&mut cpu, &mut env, insn, None), Outcome::FailInvalid);
        }
        assert_eq!(run(&mut cpu, &mut env, VMCLEAR, Some(VMCS_B)), Outcome::Succeed);
        assert_eq!(env.ram.u32_at(VMCS_B), cpu.caps.revision() | 1 << 31);
        let v = Vmcs::from_bytes(&env.ram.0[VMCS_B as usize..VMCS_B as usize + VMCS_SIZE]);
        assert!(v.shadow);
        assert_eq!(v.get(GUEST_RIP), 0x1234);
        // An ordinary VMCS is entered as before.
        assert_eq!(run(&mut cpu, &mut env, VMPTRLD, Some(VMCS_A)), Outcome::Succeed);
        assert_eq!(run(&mut cpu, &mut env, VMLAUNCH, None), Outcome::Entry { launch: true });
    }

    /// L2's VMREAD and VMWRITE served from the shadow VMCS (SDM 25.10, 31 VMREAD/VMWRITE):
    /// the link pointer's region in L1 memory changes, the ordinary VMCS only takes the
    /// VM-instruction error of a VMfailValid.
    #[test]
    fn shadowed_vmread_vmwrite() {
        let (mut cpu, mut l1) = with_current();
        let rev = cpu.caps.revision();
        let mut shadow = Vmcs::new(rev);
        shadow.shadow = true;
        shadow.set(GUEST_RIP, 0x5555);
        shadow.set(TSC_OFFSET, 0x1111_2222_3333_4444);
        l1.ram.write_phys(VMCS_B, &shadow.to_bytes()).unwrap();
        let mut l2 = FakeEnv::new(0x1000);
        let vmread_insn = op(VMREAD_RAX_RCX);
        let vmwrite_insn = op(VMWRITE_RAX_RCX);
        let go = |cpu: &mut VmxCpu, l1: &mut FakeEnv, l2: &mut FakeEnv, i: &VmxInsn| {
            cpu.execute_shadowed(i, l2, &mut l1.ram)
        };

        // Link pointer FFFFFFFF_FFFFFFFFH: VMfailInvalid.
        assert_eq!(vmwrite(&mut cpu, &mut l1, VMCS_LINK_POINTER as u64, u64::MAX), Outcome::Succeed);
        l2.gprs[1] = GUEST_RIP as u64;
        assert_eq!(go(&mut cpu, &mut l1, &mut l2, &vmread_insn), Outcome::FailInvalid);

        assert_eq!(vmwrite(&mut cpu, &mut l1, VMCS_LINK_POINTER as u64, VMCS_B), Outcome::Succeed);
        assert_eq!(vmwrite(&mut cpu, &mut l1, GUEST_RIP as u64, 0xaaaa), Outcome::Succeed);
        assert_eq!(go(&mut cpu, &mut l1, &mut l2, &vmread_insn), Outcome::Succeed);
        assert_eq!(l2.gprs[0], 0x5555);
        l2.gprs[1] = u64::from(TSC_OFFSET | 1);
        assert_eq!(go(&mut cpu, &mut l1, &mut l2, &vmread_insn), Outcome::Succeed);
        assert_eq!(l2.gprs[0], 0x1111_2222);

        // vmwrite rcx, rax: field in RAX, value in RCX; truncated to the field's width.
        (l2.gprs[0], l2.gprs[1]) = (u64::from(GUEST_CS_SELECTOR), 0x1_0018);
        assert_eq!(go(&mut cpu, &mut l1, &mut l2, &vmwrite_insn), Outcome::Succeed);
        (l2.gprs[0], l2.gprs[1]) = (u64::from(TSC_OFFSET | 1), 0xdead);
        assert_eq!(go(&mut cpu, &mut l1, &mut l2, &vmwrite_insn), Outcome::Succeed);
        let b = Vmcs::from_bytes(&l1.ram.0[VMCS_B as usize..VMCS_B as usize + VMCS_SIZE]);
        assert_eq!(b.get(GUEST_CS_SELECTOR), 0x18);
        assert_eq!(b.get(TSC_OFFSET), 0x0000_dead_3333_4444);
        assert!(b.shadow, "the header is untouched");
        assert_eq!(cpu.current_vmcs().unwrap().get(GUEST_CS_SELECTOR), 0, "the ordinary VMCS is untouched");
        assert_eq!(cpu.current_vmcs().unwrap().get(GUEST_RIP), 0xaaaa);

        // VMfailValid: the error goes to the current (ordinary) VMCS.
        l2.gprs[1] = 0x7777;
        assert_eq!(go(&mut cpu, &mut l1, &mut l2, &vmread_insn), Outcome::FailValid(E::UnsupportedVmcsComponent));
        assert_eq!(last_error(&cpu), 12);
        (l2.gprs[0], l2.gprs[1]) = (u64::from(VM_EXIT_REASON), 1);
        assert_eq!(go(&mut cpu, &mut l1, &mut l2, &vmwrite_insn), Outcome::FailValid(E::VmwriteReadOnlyComponent));
        assert_eq!(last_error(&cpu), 13);
        // With IA32_VMX_MISC bit 29 the read-only field is written.
        cpu.caps.misc |= super::super::caps::misc::VMWRITE_ANY_FIELD;
        (l2.gprs[0], l2.gprs[1]) = (u64::from(VM_EXIT_REASON), 30);
        assert_eq!(go(&mut cpu, &mut l1, &mut l2, &vmwrite_insn), Outcome::Succeed);
        let b = Vmcs::from_bytes(&l1.ram.0[VMCS_B as usize..VMCS_B as usize + VMCS_SIZE]);
        assert_eq!(b.get(VM_EXIT_REASON), 30);

        // A memory destination is in L2's memory (vmread [rbx], rcx).
        (l2.gprs[1], l2.gprs[3]) = (u64::from(GUEST_RIP), 0x800);
        assert_eq!(go(&mut cpu, &mut l1, &mut l2, &op(&[0x0f, 0x78, 0x0b])), Outcome::Succeed);
        assert_eq!(l2.ram.u64_at(0x800), 0x5555);
        l2.gprs[3] = 0x2000;
        assert!(matches!(
            go(&mut cpu, &mut l1, &mut l2, &op(&[0x0f, 0x78, 0x0b])),
            Outcome::Fault(Fault::PageFault { .. })
        ));

        // CPL > 0: #GP(0); compatibility mode: #UD; other instructions are no shadow access.
        l2.cpl = 3;
        assert_eq!(go(&mut cpu, &mut l1, &mut l2, &vmread_insn), Outcome::Fault(Fault::GeneralProtection(0)));
        l2.cpl = 0;
        l2.lm64 = false;
        assert_eq!(go(&mut cpu, &mut l1, &mut l2, &vmread_insn), Outcome::Fault(Fault::InvalidOpcode));
        l2.lm64 = true;
        assert_eq!(go(&mut cpu, &mut l1, &mut l2, &op(VMLAUNCH)), Outcome::Fault(Fault::InvalidOpcode));

        // A link pointer at the end of the address space (a script can write one while L2
        // runs): all ones, the write lost, no overflow.
        cpu.current_vmcs_mut().unwrap().set(VMCS_LINK_POINTER, u64::MAX - 0xfff);
        l2.gprs[1] = u64::from(GUEST_RIP);
        assert_eq!(go(&mut cpu, &mut l1, &mut l2, &vmread_insn), Outcome::Succeed);
        assert_eq!(l2.gprs[0], u64::MAX);
        (l2.gprs[0], l2.gprs[1]) = (u64::from(GUEST_RIP), 1);
        assert_eq!(go(&mut cpu, &mut l1, &mut l2, &vmwrite_insn), Outcome::Succeed);

        // A link pointer whose region ends past RAM: reads are all ones, writes are lost.
        let end = l1.ram.0.len() as u64;
        assert_eq!(vmwrite(&mut cpu, &mut l1, VMCS_LINK_POINTER as u64, end), Outcome::Succeed);
        l2.gprs[1] = u64::from(GUEST_RIP);
        assert_eq!(go(&mut cpu, &mut l1, &mut l2, &vmread_insn), Outcome::Succeed);
        assert_eq!(l2.gprs[0], u64::MAX);
        (l2.gprs[0], l2.gprs[1]) = (u64::from(GUEST_RIP), 1);
        assert_eq!(go(&mut cpu, &mut l1, &mut l2, &vmwrite_insn), Outcome::Succeed);
    }

    #[test]
    fn launch_and_resume() {
        let (mut cpu, mut env) = in_root();
        assert_eq!(run(&mut cpu, &mut env, VMLAUNCH, None), Outcome::FailInvalid);
        assert_eq!(run(&mut cpu, &mut env, VMRESUME, None), Outcome::FailInvalid);
        assert_eq!(run(&mut cpu, &mut env, VMPTRLD, Some(VMCS_A)), Outcome::Succeed);
        assert_eq!(run(&mut cpu, &mut env, VMRESUME, None), Outcome::FailValid(E::VmresumeNonLaunchedVmcs));
        assert_eq!(last_error(&cpu), 5);
        assert_eq!(run(&mut cpu, &mut env, VMLAUNCH, None), Outcome::Entry { launch: true });
        cpu.mark_launched();
        assert_eq!(run(&mut cpu, &mut env, VMLAUNCH, None), Outcome::FailValid(E::VmlaunchNonClearVmcs));
        assert_eq!(last_error(&cpu), 4);
        assert_eq!(run(&mut cpu, &mut env, VMRESUME, None), Outcome::Entry { launch: false });
        // Launch state survives a VMPTRLD round trip, VMCLEAR resets it.
        assert_eq!(run(&mut cpu, &mut env, VMPTRLD, Some(VMCS_B)), Outcome::Succeed);
        assert_eq!(env.ram.u32_at(VMCS_A + 8), 1);
        assert_eq!(run(&mut cpu, &mut env, VMPTRLD, Some(VMCS_A)), Outcome::Succeed);
        assert_eq!(run(&mut cpu, &mut env, VMRESUME, None), Outcome::Entry { launch: false });
        assert_eq!(run(&mut cpu, &mut env, VMCLEAR, Some(VMCS_A)), Outcome::Succeed);
        assert_eq!(run(&mut cpu, &mut env, VMPTRLD, Some(VMCS_A)), Outcome::Succeed);
        assert_eq!(run(&mut cpu, &mut env, VMLAUNCH, None), Outcome::Entry { launch: true });
        let v = Violation { rule: "x", sdm: "27.2.1.1", class: CheckClass::Control };
        assert_eq!(cpu.entry_check_failed(&v), Some(Outcome::FailValid(E::EntryInvalidControlFields)));
        assert_eq!(last_error(&cpu), 7);
        let v = Violation { rule: "x", sdm: "27.2.2", class: CheckClass::HostState };
        assert_eq!(cpu.entry_check_failed(&v), Some(Outcome::FailValid(E::EntryInvalidHostStateFields)));
        let v = Violation { rule: "x", sdm: "27.3.1", class: CheckClass::GuestState { qualification: 0 } };
        assert_eq!(cpu.entry_check_failed(&v), None);
    }

    /// VMLAUNCH/VMRESUME right after MOV SS: VMfailInvalid without a current VMCS, else
    /// VMfailValid(26) before the launch-state checks (SDM 31, VMLAUNCH/VMRESUME).
    #[test]
    fn entry_blocked_by_mov_ss() {
        let (mut cpu, mut env) = in_root();
        env.mov_ss = true;
        assert_eq!(run(&mut cpu, &mut env, VMLAUNCH, None), Outcome::FailInvalid);
        assert_eq!(run(&mut cpu, &mut env, VMPTRLD, Some(VMCS_A)), Outcome::Succeed);
        for insn in [VMLAUNCH, VMRESUME] {
            assert_eq!(run(&mut cpu, &mut env, insn, None), Outcome::FailValid(E::EntryEventsBlockedByMovSs));
            assert_eq!(last_error(&cpu), 26);
        }
        cpu.mark_launched();
        assert_eq!(run(&mut cpu, &mut env, VMLAUNCH, None), Outcome::FailValid(E::EntryEventsBlockedByMovSs));
        env.mov_ss = false;
        assert_eq!(run(&mut cpu, &mut env, VMLAUNCH, None), Outcome::FailValid(E::VmlaunchNonClearVmcs));
        assert_eq!(run(&mut cpu, &mut env, VMRESUME, None), Outcome::Entry { launch: false });
        // #UD and #GP come first.
        env.mov_ss = true;
        env.cpl = 3;
        assert_eq!(run(&mut cpu, &mut env, VMRESUME, None), Outcome::Fault(Fault::GeneralProtection(0)));
    }

    #[test]
    fn vmxoff_and_vmcall() {
        let (mut cpu, mut env) = with_current();
        assert_eq!(vmwrite(&mut cpu, &mut env, GUEST_RSP as u64, 0x55), Outcome::Succeed);
        assert_eq!(run(&mut cpu, &mut env, &[0x0f, 0x01, 0xc1], None), Outcome::FailValid(E::VmcallInRoot));
        assert_eq!(last_error(&cpu), 1);
        assert_eq!(run(&mut cpu, &mut env, VMXOFF, None), Outcome::Succeed);
        assert!(!cpu.vmxon);
        assert_eq!(cpu.current, None);
        let v = Vmcs::from_bytes(&env.ram.0[VMCS_A as usize..VMCS_A as usize + VMCS_SIZE]);
        assert_eq!(v.get(GUEST_RSP), 0x55);
        assert_eq!(run(&mut cpu, &mut env, VMXOFF, None), Outcome::Fault(Fault::InvalidOpcode));
        assert_eq!(run(&mut cpu, &mut env, &[0x0f, 0x01, 0xc1], None), Outcome::Fault(Fault::InvalidOpcode));
    }

    fn desc(env: &mut FakeEnv, lo: u64, hi: u64) {
        env.ram.put_u64(0x700, lo);
        env.ram.put_u64(0x708, hi);
        env.gprs[3] = 0x700;
    }

    #[test]
    fn invept_invvpid() {
        let (mut cpu, mut env) = with_current();
        let good_eptp = 0x5000 | 6 | 3 << 3;
        for (ty, eptp, want) in [
            (0, good_eptp, Outcome::FailValid(E::InvalidInveptInvvpidOperand)),
            (3, good_eptp, Outcome::FailValid(E::InvalidInveptInvvpidOperand)),
            (1 << 40, good_eptp, Outcome::FailValid(E::InvalidInveptInvvpidOperand)),
            (1, 0x5000 | 6 | 4 << 3, Outcome::FailValid(E::InvalidInveptInvvpidOperand)),
            (1, good_eptp, Outcome::Succeed),
            (2, 0, Outcome::Succeed),
        ] {
            env.gprs[0] = ty;
            desc(&mut env, eptp, 0);
            assert_eq!(run(&mut cpu, &mut env, INVEPT, None), want, "type {ty}");
        }
        assert_eq!(last_error(&cpu), 28);
        assert_eq!(cpu.take_invalidation(), Some(Invalidation::Ept { eptp: Some(good_eptp) }));
        assert_eq!(cpu.take_invalidation(), Some(Invalidation::Ept { eptp: None }));
        assert_eq!(cpu.take_invalidation(), None);

        let fail = Outcome::FailValid(E::InvalidInveptInvvpidOperand);
        for (ty, lo, hi, want) in [
            (0, 0, 0x1000, fail),
            (1, 0, 0, fail),
            (3, 0, 0, fail),
            (4, 1, 0, fail),
            (1, 1 << 16, 0, fail),
            (0, 1, 0x8000_0000_0000_0000, fail),
            (0, 1, 0xffff_8000_0000_0000, Outcome::Succeed),
            (1, 1, 0, Outcome::Succeed),
            (2, 0, 0, Outcome::Succeed),
            (3, 7, 0, Outcome::Succeed),
        ] {
            env.gprs[0] = ty;
            desc(&mut env, lo, hi);
            assert_eq!(run(&mut cpu, &mut env, INVVPID, None), want, "type {ty} {lo:#x} {hi:#x}");
        }
        assert_eq!(
            cpu.take_invalidation(),
            Some(Invalidation::Vpid { kind: InvvpidType::IndividualAddress, vpid: 1, address: 0xffff_8000_0000_0000 })
        );
        // Without a current VMCS, failures are VMfailInvalid.
        assert_eq!(run(&mut cpu, &mut env, VMCLEAR, Some(VMCS_A)), Outcome::Succeed);
        env.gprs[0] = 0;
        assert_eq!(run(&mut cpu, &mut env, INVEPT, None), Outcome::FailInvalid);
    }
}
