//! VM entry and VM exit as transitions between the L1 and L2 vCPUs: the model's guest-state
//! area into the L2 vCPU (SDM 27.3.2) and back (28.3), the exit information into the VMCS
//! (28.2), the host-state area into L1 (28.5). Registers move through sync regs only; SREGS,
//! the SYSENTER MSRs, the MSR filter and the memslots are touched only when they changed.

use kvm_ioctls::Kvm;

use super::env::{L1Env, PHYS_ADDR_WIDTH};
use super::space::{Source, SyncError};
use super::{transfer, L2};
use crate::error::Error;
use crate::machine::vm::CpuidOverride;
use crate::machine::{GuestRam, RawExit, Vcpu};
use crate::trace::{Phase, Phases};
use crate::vmx::caps::exit;
use crate::vmx::checks::{check_vm_entry, CheckClass};
use crate::vmx::cpu::{Invalidation, Outcome as VmxOutcome, VmxCpu};
use crate::vmx::decode::{VmxInsn, VmxOp};
use crate::vmx::ept::active_eptp;
use crate::vmx::exit_info::ExitInfo;
use crate::vmx::exits::{ExitReason, VM_ENTRY_FAILURE};
use crate::vmx::fields::{EPT_POINTER, VM_EXIT_CONTROLS};
use crate::vmx::state::{load_guest_state, load_host_state, save_guest_state};

/// L2-physical addresses below this are followed through L1's EPT (the physical-address
/// width nestbed reports).
pub const MAX_L2_GPA: u64 = 1 << PHYS_ADDR_WIDTH;

/// Where an L2 exit left its instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub rip: u64,
    pub len: u8,
    /// KVM completes the instruction on the next KVM_RUN (IN, RDMSR, WRMSR, MMIO).
    pub pending: bool,
}

/// How a VMLAUNCH or VMRESUME that passed the instruction checks ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// L2 runs next.
    Entered,
    /// VMfailInvalid or VMfailValid (SDM 27.2): L1 goes on after the instruction.
    Failed(VmxOutcome),
    /// A guest-state check failed: a VM exit with the entry-failure bit (SDM 27.8), L1 goes
    /// on at HOST_RIP without L2 having run.
    ExitedOnEntry,
    /// The host refused what L2's memory needs.
    Refused(String),
}

/// The virtual VMX of L1's vCPU and the L2 VM it runs.
pub struct Nested {
    pub vmx: VmxCpu,
    pub l2: Option<L2>,
    kvm: Kvm,
    /// CPUID answers for the L2 vCPU, applied when it is created.
    l2_cpuid: Vec<CpuidOverride>,
}

impl Nested {
    pub fn new(kvm: Kvm, vmx: VmxCpu, l2_cpuid: Vec<CpuidOverride>) -> Self {
        Nested { vmx, l2: None, kvm, l2_cpuid }
    }

    /// Executes one trapped VMX instruction of L1 on the model, then drops what it
    /// invalidated. `written` is the field encoding of a VMWRITE.
    pub fn execute(&mut self, insn: &VmxInsn, l1: &mut Vcpu, ram: &GuestRam, written: Option<u64>) -> VmxOutcome {
        let outcome = self.vmx.execute(insn, &mut L1Env { vcpu: l1, ram });
        self.apply_invalidations(insn.op, written, &outcome);
        outcome
    }

    /// Cached guest-physical translations of L2 go away after INVEPT (SDM 29.4.3.1) and, as
    /// nestbed's choice, when L1 enters or leaves VMX operation or writes EPT_POINTER.
    fn apply_invalidations(&mut self, op: VmxOp, written: Option<u64>, outcome: &VmxOutcome) {
        while let Some(inv) = self.vmx.take_invalidation() {
            if let (Invalidation::Ept { eptp }, Some(l2)) = (inv, self.l2.as_mut()) {
                l2.space.invept(eptp);
            }
        }
        let eptp_written = written.is_some_and(|f| f & !1 == u64::from(EPT_POINTER));
        let flush = matches!(op, VmxOp::Vmxon | VmxOp::Vmxoff) || eptp_written;
        if flush && *outcome == VmxOutcome::Succeed {
            if let Some(l2) = self.l2.as_mut() {
                l2.space.invalidate();
            }
        }
    }

    /// VM entry (SDM 27): the checks of 27.2 and 27.3, then L2's memory, MSR filter and guest
    /// state, so that the next KVM_RUN runs L2. `t` is a clock reading where the model's work
    /// started.
    pub fn vm_entry(
        &mut self,
        l1: &mut Vcpu,
        ram: &GuestRam,
        notes: &mut Vec<String>,
        phases: &mut Phases,
        t: u64,
    ) -> Result<Entry, Error> {
        let Some(vmcs) = self.vmx.current_vmcs() else {
            return Ok(Entry::Failed(VmxOutcome::FailInvalid));
        };
        if let Err(v) = check_vm_entry(vmcs, &self.vmx.caps, PHYS_ADDR_WIDTH) {
            tracing::info!(rule = v.rule, sdm = v.sdm, "VM-entry check failed: {v}");
            notes.push(format!("VM-entry check failed: {} (SDM {})", v.rule, v.sdm));
            if let Some(o) = self.vmx.entry_check_failed(&v) {
                return Ok(Entry::Failed(o));
            }
            let qualification = match v.class {
                CheckClass::GuestState { qualification } => qualification,
                _ => 0,
            };
            let info = ExitInfo::new(ExitReason::ENTRY_FAIL_GUEST_STATE as u32 | VM_ENTRY_FAILURE, qualification);
            if let Some(vmcs) = self.vmx.current_vmcs_mut() {
                info.record(vmcs);
            }
            self.load_host_state(l1);
            return Ok(Entry::ExitedOnEntry);
        }
        let t = phases.add_since(Phase::Model, t);
        if self.l2.is_none() {
            self.l2 = Some(L2::new(&self.kvm, ram, &self.l2_cpuid)?);
        }
        let (Some(l2), Some(vmcs)) = (self.l2.as_mut(), self.vmx.current_vmcs()) else {
            return Ok(Entry::Failed(VmxOutcome::FailInvalid));
        };
        l2.msr_filter.sync(&l2.vm, ram, vmcs)?;
        let source = active_eptp(vmcs).map_or(Source::Identity, Source::Ept);
        match l2.space.sync(&l2.vm, ram, source, MAX_L2_GPA) {
            Ok(false) => {}
            Ok(true) => {
                let n = l2.space.regions().count();
                tracing::debug!(?source, regions = n, "L2 memslots rebuilt");
                notes.push(format!("L2 memslots rebuilt for {source:?}: {n} regions"));
            }
            Err(e) => {
                let why = match e {
                    SyncError::Layout(e) => e.to_string(),
                    SyncError::Host(e) => format!("KVM refused L2's memory layout: {e}"),
                };
                return Ok(Entry::Refused(why));
            }
        }
        let t = phases.add_since(Phase::Memslots, t);
        let st = load_guest_state(vmcs);
        transfer::copy_gprs(l1, &mut l2.vcpu);
        transfer::load(&mut l2.vcpu, &st);
        let sysenter = [u64::from(st.sysenter_cs), st.sysenter_esp, st.sysenter_eip];
        if l2.sysenter != Some(sysenter) {
            transfer::load_msrs(&l2.vcpu, sysenter)?;
            l2.sysenter = Some(sysenter);
        }
        if let Some(pat) = st.pat.filter(|&p| l2.pat != Some(p)) {
            l2.vcpu.set_msrs(&[(transfer::IA32_PAT, pat)])?;
            l2.pat = Some(pat);
        }
        self.vmx.mark_launched();
        phases.add_since(Phase::Transfer, t);
        Ok(Entry::Entered)
    }

    /// VM exit from L2 to L1 (SDM 28): L2's state into the guest-state area, the exit
    /// information into the VMCS, L2's general registers to L1, the host state into L1.
    pub fn vm_exit(&mut self, l1: &mut Vcpu, info: &ExitInfo, insn: &Insn) -> Result<(), Error> {
        let (Some(l2), Some(vmcs)) = (self.l2.as_mut(), self.vmx.current_vmcs_mut()) else {
            return Ok(());
        };
        let mut st = load_guest_state(vmcs);
        transfer::save(&l2.vcpu, &mut st);
        if let Some([cs, esp, eip]) = l2.sysenter {
            (st.sysenter_cs, st.sysenter_esp, st.sysenter_eip) = (cs as u32, esp, eip);
        }
        // "save IA32_PAT" (SDM 28.3.1): what L2's PAT is now.
        if vmcs.get32(VM_EXIT_CONTROLS) & exit::SAVE_IA32_PAT != 0 {
            if l2.pat.is_none() {
                l2.pat = l2.vcpu.get_msrs(&[transfer::IA32_PAT])?.first().copied();
            }
            st.pat = l2.pat;
        }
        st.rip = insn.rip;
        save_guest_state(vmcs, &st);
        info.record(vmcs);
        transfer::copy_gprs(&l2.vcpu, l1);
        if insn.pending {
            // Let KVM finish the instruction it is holding, without running L2: the state it
            // leaves behind is replaced at the next VM entry. An MMIO access split in pieces
            // comes back once per piece.
            l2.vcpu.set_immediate_exit(true);
            for _ in 0..4 {
                match l2.vcpu.run() {
                    Ok(RawExit::MmioRead { .. }) => l2.vcpu.complete_read(u64::MAX),
                    Ok(RawExit::MmioWrite { .. }) => {}
                    _ => break,
                }
            }
            l2.vcpu.set_immediate_exit(false);
        }
        self.load_host_state(l1);
        Ok(())
    }

    /// Loads the host-state area into L1 (SDM 28.5) after a VM exit was recorded; with "load
    /// IA32_PAT", HOST_IA32_PAT too (SDM 28.5.1).
    fn load_host_state(&mut self, l1: &mut Vcpu) {
        let efer = l1.sregs().efer;
        if let Some(vmcs) = self.vmx.current_vmcs() {
            let host = load_host_state(vmcs, efer);
            transfer::load(l1, &host);
            if let Some(pat) = host.pat {
                if let Err(e) = l1.set_msrs(&[(transfer::IA32_PAT, pat)]) {
                    tracing::warn!("loading L1's IA32_PAT at VM exit: {e}");
                }
            }
        }
    }

    /// L2 wrote IA32_SYSENTER_CS/ESP/EIP or IA32_PAT and L1 does not intercept it: nestbed
    /// performs the write and keeps the value for the next VM exit to save.
    pub fn l2_tracked_msr_write(&mut self, index: u32, value: u64) -> Result<bool, Error> {
        let Some(l2) = self.l2.as_mut() else { return Ok(false) };
        if index == transfer::IA32_PAT {
            l2.vcpu.set_msrs(&[(index, value)])?;
            l2.pat = Some(value);
            return Ok(true);
        }
        let Some(i) = transfer::SYSENTER_MSRS.iter().position(|&m| m == index) else { return Ok(false) };
        l2.vcpu.set_msrs(&[(index, value)])?;
        let mut s = l2.sysenter.unwrap_or_default();
        s[i] = if i == 0 { value & 0xffff_ffff } else { value };
        l2.sysenter = Some(s);
        Ok(true)
    }
}
