//! VM entry and VM exit as transitions between the L1 and L2 vCPUs: the model's guest-state
//! area into the L2 vCPU (SDM 27.3.2) and back (28.3), the MSR areas (27.4, 28.4, 28.6), the
//! exit information into the VMCS (28.2), the host-state area into L1 (28.5). Registers move
//! through sync regs only; SREGS, the SYSENTER MSRs, the debug registers, the MSR filter and
//! the memslots are touched only when they changed, the MSR areas only when their count is
//! not 0.

use kvm_ioctls::Kvm;

use super::debug_regs::{DebugState, IA32_DEBUGCTL};
use super::env::{gpr, L1Env, RamView, PHYS_ADDR_WIDTH};
use super::msr_lists::{self, ModelMsrs, NoModel};
use super::space::{Source, SyncError};
use super::{transfer, L2};
use crate::error::Error;
use crate::machine::vm::CpuidOverride;
use crate::machine::{GuestRam, Vcpu};
use crate::trace::{Phase, Phases};
use crate::vmx::caps::{cr, exit};
use crate::vmx::checks::{check_vm_entry, CheckClass};
use crate::vmx::cpu::{Invalidation, Outcome as VmxOutcome, VmxCpu};
use crate::vmx::decode::{VmxInsn, VmxOp};
use crate::vmx::ept::active_eptp;
use crate::vmx::exit_info::ExitInfo;
use crate::vmx::exits::{ExitReason, VM_ENTRY_FAILURE};
use crate::vmx::fields::{EPT_POINTER, GUEST_DR7, VM_EXIT_CONTROLS};
use crate::vmx::guest_levels::GuestLevels;
use crate::vmx::msr_list::{read_area, store_value, EntryFault, MsrArea, MsrEntry};
use crate::vmx::state::{load_guest_state, load_host_state, save_guest_state};
use crate::vmx::vmcs::OFFSET_ABORT;

const IA32_EFER: u32 = 0xc000_0080;
const IA32_APIC_BASE: u32 = 0x1b;

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
    /// A guest-state check or the VM-entry MSR-load area failed: a VM exit with the
    /// entry-failure bit (SDM 27.8), L1 goes on at HOST_RIP without L2 having run.
    ExitedOnEntry,
    /// The host refused what L2's memory needs.
    Refused(String),
    /// The VM-exit MSR-load area of the failed entry failed too.
    Aborted(VmxAbort),
}

/// A VMX abort (SDM 28.7): the indicator is in the VMCS region and the logical processor is in
/// the VMX-abort shutdown state, which only RESET leaves. nestbed's one vCPU has no RESET, so
/// the run ends there (KVM, as an L0, makes it a triple fault of L1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmxAbort {
    /// 1: a failure in saving guest MSRs; 4: a failure in loading host MSRs.
    pub indicator: u32,
    pub why: String,
}

impl std::fmt::Display for VmxAbort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VMX abort (SDM 28.7), indicator {}: {}; the logical processor is in the VMX-abort shutdown \
             state, which only RESET leaves",
            self.indicator, self.why
        )
    }
}

/// VMX-abort indicators (SDM 28.7).
const ABORT_SAVING_GUEST_MSRS: u32 = 1;
const ABORT_LOADING_HOST_MSRS: u32 = 4;

/// The virtual VMX of L1's vCPU and the L2 VM it runs.
pub struct Nested {
    pub vmx: VmxCpu,
    pub l2: Option<L2>,
    /// DR7 and IA32_DEBUGCTL of both levels.
    pub debug: DebugState,
    kvm: Kvm,
    /// CPUID answers for the L2 vCPU, applied when it is created.
    l2_cpuid: Vec<CpuidOverride>,
    /// The level, as L1 sees it, of each guest L1 runs (L3 under a hypervisor L2).
    pub levels: GuestLevels,
}

impl Nested {
    pub fn new(kvm: Kvm, vmx: VmxCpu, l2_cpuid: Vec<CpuidOverride>) -> Self {
        Nested { vmx, l2: None, debug: DebugState::default(), kvm, l2_cpuid, levels: GuestLevels::default() }
    }

    /// Executes one trapped VMX instruction of L1 on the model, then drops what it
    /// invalidated. `written` is the field encoding of a VMWRITE.
    pub fn execute(
        &mut self,
        insn: &VmxInsn,
        l1: &mut Vcpu,
        ram: &GuestRam,
        written: Option<u64>,
    ) -> Result<VmxOutcome, Error> {
        self.guest_dr7_before(insn, l1)?;
        let outcome = self.vmx.execute(insn, &mut L1Env { vcpu: l1, ram });
        if written.is_some_and(|f| f == u64::from(GUEST_DR7)) && outcome == VmxOutcome::Succeed {
            if let Some(addr) = self.vmx.current {
                self.debug.guest_dr7_written(addr);
            }
        }
        self.apply_invalidations(insn.op, written, &outcome);
        Ok(outcome)
    }

    /// GUEST_DR7 saved by the last VM exit may still be in L2's vCPU (`debug_regs`): read it
    /// before L1 reads the field or the VMCS leaves the processor.
    fn guest_dr7_before(&mut self, insn: &VmxInsn, l1: &Vcpu) -> Result<(), Error> {
        let Some(addr) = self.vmx.current.filter(|&a| self.debug.dr7_pending(a)) else { return Ok(()) };
        let reads_dr7 = insn.op == VmxOp::Vmread
            && insn.reg2().is_some_and(|r| gpr(l1.peek_regs(), r) & 0xffff_ffff == u64::from(GUEST_DR7));
        if !(reads_dr7 || matches!(insn.op, VmxOp::Vmclear | VmxOp::Vmptrld | VmxOp::Vmxoff)) {
            return Ok(());
        }
        self.resolve_guest_dr7(addr)
    }

    fn resolve_guest_dr7(&mut self, addr: u64) -> Result<(), Error> {
        if let (Some(l2), Some(vmcs)) = (self.l2.as_ref(), self.vmx.vmcs.as_mut()) {
            self.debug.resolve(&l2.vcpu, vmcs, addr)?;
        }
        Ok(())
    }

    /// The current VMCS with GUEST_DR7 up to date, for a debugger or script that shows it.
    pub fn settle_guest_dr7(&mut self) -> Result<(), Error> {
        match self.vmx.current.filter(|&a| self.debug.dr7_pending(a)) {
            Some(addr) => self.resolve_guest_dr7(addr),
            None => Ok(()),
        }
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

    /// VM entry (SDM 27): the checks of 27.2 and 27.3, then L2's memory, MSR filter, guest
    /// state, debug registers and VM-entry MSR-load area, so that the next KVM_RUN runs L2. `t`
    /// is a clock reading where the model's work started; `model` takes L1's MSRs nestbed
    /// models (for the VM-exit MSR-load area of a failed entry).
    #[allow(clippy::too_many_arguments)]
    pub fn vm_entry(
        &mut self,
        l1: &mut Vcpu,
        ram: &GuestRam,
        notes: &mut Vec<String>,
        phases: &mut Phases,
        t: u64,
        launch: bool,
        model: &mut dyn ModelMsrs,
    ) -> Result<Entry, Error> {
        let Some(vmcs) = self.vmx.current_vmcs() else {
            return Ok(Entry::Failed(VmxOutcome::FailInvalid));
        };
        if let Err(v) = check_vm_entry(vmcs, &self.vmx.caps, PHYS_ADDR_WIDTH, &RamView(ram)) {
            tracing::info!(rule = v.rule, sdm = v.sdm, "VM-entry check failed: {v}");
            notes.push(format!("VM-entry check failed: {} (SDM {})", v.rule, v.sdm));
            if let Some(o) = self.vmx.entry_check_failed(&v) {
                return Ok(Entry::Failed(o));
            }
            let qualification = match v.class {
                CheckClass::GuestState { qualification } => qualification,
                _ => 0,
            };
            return self.fail_entry(l1, ram, ExitReason::ENTRY_FAIL_GUEST_STATE, qualification, model);
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
        let (Some(l2), Some(addr), Some(vmcs)) = (self.l2.as_mut(), self.vmx.current, self.vmx.vmcs.as_mut()) else {
            return Ok(Entry::Failed(VmxOutcome::FailInvalid));
        };
        let mut st = load_guest_state(vmcs);
        // VM entry neither checks nor loads CR0.CD and CR0.NW: they keep L1's values (SDM
        // 27.3.1.1, 27.3.2.1). KVM refuses NW=1 with CD=0.
        const CR0_NW_CD: u64 = 3 << 29;
        st.cr0 = (st.cr0 & !CR0_NW_CD) | (l1.sregs().cr0 & CR0_NW_CD);
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
        self.debug.entry(&*l1, &l2.vcpu, vmcs, addr, launch)?;
        // SDM 27.4: after the guest state, the VM-entry MSR-load area.
        if MsrArea::EntryLoad.count(vmcs) != 0 {
            let area = read_area(vmcs, MsrArea::EntryLoad, &RamView(ram), &self.vmx.caps);
            let refused = msr_lists::load(&area.entries, &l2.vcpu, l1, &mut NoModel)?;
            let loaded = &area.entries[..refused.unwrap_or(area.entries.len())];
            if loaded.iter().any(|e| e.index == IA32_DEBUGCTL) {
                self.debug.l2_debugctl_loaded();
            }
            l2.msrs_loaded(loaded);
            mirror_sregs_msrs(&mut l2.vcpu, loaded, true);
            let failed = refused.map(|i| (i, EntryFault::Refused)).or(area.fault);
            if let Some((i, why)) = failed {
                let index = msr_at(ram, area.addr, i);
                tracing::info!(entry = i + 1, msr = format_args!("{index:#x}"), "VM-entry MSR loading failed: {why}");
                notes.push(format!("VM-entry MSR-load entry {} (MSR {index:#x}) failed: {why} (SDM 27.4)", i + 1));
                return self.fail_entry(l1, ram, ExitReason::ENTRY_FAIL_MSR_LOADING, i as u64 + 1, model);
            }
        }
        self.vmx.mark_launched();
        phases.add_since(Phase::Transfer, t);
        Ok(Entry::Entered)
    }

    /// A VM-entry failure after the checks of the VMCS (SDM 27.8): the exit reason and
    /// qualification are recorded (no other exit-information field, no guest state), the host
    /// state is loaded, then the VM-exit MSR-load area.
    fn fail_entry(
        &mut self,
        l1: &mut Vcpu,
        ram: &GuestRam,
        reason: ExitReason,
        qualification: u64,
        model: &mut dyn ModelMsrs,
    ) -> Result<Entry, Error> {
        let info = ExitInfo::new(reason as u32 | VM_ENTRY_FAILURE, qualification);
        if let Some(vmcs) = self.vmx.current_vmcs_mut() {
            info.record_entry_failure(vmcs);
        }
        self.load_host_state(l1, false)?;
        Ok(match self.load_exit_msrs(l1, ram, model)? {
            Some(abort) => Entry::Aborted(abort),
            None => Entry::ExitedOnEntry,
        })
    }

    /// VM exit from L2 to L1 (SDM 28): L2's state into the guest-state area, the exit
    /// information into the VMCS, the VM-exit MSR-store area, L2's general registers to L1,
    /// the host state into L1, the VM-exit MSR-load area. `Some` for a VMX abort.
    pub fn vm_exit(
        &mut self,
        l1: &mut Vcpu,
        ram: &GuestRam,
        info: &ExitInfo,
        insn: &Insn,
        model: &mut dyn ModelMsrs,
    ) -> Result<Option<VmxAbort>, Error> {
        let (Some(l2), Some(addr), Some(vmcs)) = (self.l2.as_mut(), self.vmx.current, self.vmx.vmcs.as_mut()) else {
            return Ok(None);
        };
        let mut st = load_guest_state(vmcs);
        transfer::save(&l2.vcpu, &mut st);
        if let Some([cs, esp, eip]) = l2.sysenter {
            (st.sysenter_cs, st.sysenter_esp, st.sysenter_eip) = (cs as u32, esp, eip);
        }
        let exitv = vmcs.get32(VM_EXIT_CONTROLS);
        // "save IA32_PAT" (SDM 28.3.1): what L2's PAT is now.
        if exitv & exit::SAVE_IA32_PAT != 0 {
            if l2.pat.is_none() {
                l2.pat = l2.vcpu.get_msrs(&[transfer::IA32_PAT])?.first().copied();
            }
            st.pat = l2.pat;
        }
        // "save debug controls" (SDM 28.3.1).
        let (dr7, debugctl) = self.debug.exit_save(&l2.vcpu, exitv & exit::SAVE_DEBUG_CONTROLS != 0, addr)?;
        if let Some(d) = dr7 {
            st.dr7 = d;
        }
        st.debugctl = Some(debugctl);
        st.rip = insn.rip;
        save_guest_state(vmcs, &st);
        info.record(vmcs);
        if let Some(abort) = self.store_exit_msrs(l1, ram)? {
            return Ok(Some(abort));
        }
        let Some(l2) = self.l2.as_mut() else { return Ok(None) };
        transfer::copy_gprs(&l2.vcpu, l1);
        if insn.pending {
            // KVM finishes the instruction it holds without running L2: the state it leaves
            // behind is replaced at the next VM entry.
            l2.vcpu.finish_pending();
        }
        self.load_host_state(l1, true)?;
        self.load_exit_msrs(l1, ram, model)
    }

    /// The VM-exit MSR-store area (SDM 28.4): L2's MSRs as of the exit, in order. A failure
    /// is a VMX abort.
    fn store_exit_msrs(&mut self, l1: &Vcpu, ram: &GuestRam) -> Result<Option<VmxAbort>, Error> {
        let (Some(l2), Some(vmcs)) = (self.l2.as_ref(), self.vmx.current_vmcs()) else { return Ok(None) };
        if MsrArea::ExitStore.count(vmcs) == 0 {
            return Ok(None);
        }
        let area = read_area(vmcs, MsrArea::ExitStore, &RamView(ram), &self.vmx.caps);
        let (caps, debugctl) = (&self.vmx.caps, self.debug.l2_debugctl());
        let kept = |index: u32| match index {
            0x174..=0x176 => l2.sysenter.map(|s| s[index as usize - 0x174]),
            transfer::IA32_PAT => l2.pat,
            IA32_DEBUGCTL => debugctl,
            IA32_EFER => Some(l2.vcpu.peek_sregs().efer),
            i => caps.msr(i),
        };
        let (values, refused) = match msr_lists::read(&area.entries, &l2.vcpu, l1, kept)? {
            Ok(v) => (v, None),
            Err(i) => (Vec::new(), Some(i)),
        };
        let mut mem = RamView(ram);
        for (i, &v) in values.iter().enumerate() {
            store_value(&mut mem, area.addr, i, v);
        }
        let failed = refused.map(|i| (i, EntryFault::Refused)).or(area.fault);
        Ok(failed.map(|(i, why)| self.abort(ram, ABORT_SAVING_GUEST_MSRS, MsrArea::ExitStore, area.addr, i, why)))
    }

    /// The VM-exit MSR-load area into L1 (SDM 28.6), after the host state. A failure is a VMX
    /// abort: the SDM leaves the processor no way on.
    fn load_exit_msrs(
        &mut self,
        l1: &mut Vcpu,
        ram: &GuestRam,
        model: &mut dyn ModelMsrs,
    ) -> Result<Option<VmxAbort>, Error> {
        let Some(vmcs) = self.vmx.current_vmcs() else { return Ok(None) };
        if MsrArea::ExitLoad.count(vmcs) == 0 {
            return Ok(None);
        }
        let area = read_area(vmcs, MsrArea::ExitLoad, &RamView(ram), &self.vmx.caps);
        let refused = msr_lists::load(&area.entries, l1, l1, model)?;
        let loaded: Vec<MsrEntry> = area.entries[..refused.unwrap_or(area.entries.len())]
            .iter()
            .filter(|e| !model.handles(e.index))
            .copied()
            .collect();
        if loaded.iter().any(|e| e.index == IA32_DEBUGCTL) {
            self.debug.l1_debugctl_loaded(l1)?;
        }
        mirror_sregs_msrs(l1, &loaded, false);
        let failed = refused.map(|i| (i, EntryFault::Refused)).or(area.fault);
        Ok(failed.map(|(i, why)| self.abort(ram, ABORT_LOADING_HOST_MSRS, MsrArea::ExitLoad, area.addr, i, why)))
    }

    /// A VMX abort (SDM 28.7): the indicator goes into the VMX-abort field of the current VMCS
    /// region.
    fn abort(
        &mut self,
        ram: &GuestRam,
        indicator: u32,
        area: MsrArea,
        addr: u64,
        i: usize,
        why: EntryFault,
    ) -> VmxAbort {
        if let (Some(ptr), Some(vmcs)) = (self.vmx.current, self.vmx.vmcs.as_mut()) {
            vmcs.abort = indicator;
            let _ = ram.write(ptr + OFFSET_ABORT as u64, &indicator.to_le_bytes());
        }
        let index = msr_at(ram, addr, i);
        let what = if indicator == ABORT_SAVING_GUEST_MSRS { "saving guest MSRs" } else { "loading host MSRs" };
        VmxAbort {
            indicator,
            why: format!("a failure in {what}: {area} entry {} (MSR {index:#x}): {why} (SDM {})", i + 1, area.sdm()),
        }
    }

    /// Loads the host-state area into L1 (SDM 28.5) after a VM exit was recorded (`from_l2`)
    /// or a VM entry failed; with "load IA32_PAT", HOST_IA32_PAT too (SDM 28.5.1); DR7 400H and
    /// IA32_DEBUGCTL 0 (28.5.1, `debug_regs`).
    fn load_host_state(&mut self, l1: &mut Vcpu, from_l2: bool) -> Result<(), Error> {
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
        self.debug.host_state(&*l1, from_l2)
    }

    /// L2 wrote IA32_SYSENTER_CS/ESP/EIP, IA32_PAT or IA32_DEBUGCTL and L1 does not intercept
    /// it: nestbed performs the write and keeps the value for the next VM exit to save.
    /// `Ok(None)` for another MSR, `Ok(Some(false))` when the host refuses the write.
    pub fn l2_tracked_msr_write(&mut self, index: u32, value: u64) -> Result<Option<bool>, Error> {
        let Some(l2) = self.l2.as_mut() else { return Ok(None) };
        if index == IA32_DEBUGCTL {
            return self.debug.l2_debugctl_write(&l2.vcpu, value).map(Some);
        }
        if index != transfer::IA32_PAT && !transfer::SYSENTER_MSRS.contains(&index) {
            return Ok(None);
        }
        if l2.vcpu.set_msrs_prefix(&[(index, value)])? == 0 {
            return Ok(Some(false));
        }
        l2.msrs_loaded(&[MsrEntry { index, reserved: 0, data: value }]);
        Ok(Some(true))
    }

    /// L1's WRMSR of IA32_DEBUGCTL (it always reaches nestbed): false when the host refuses it.
    pub fn l1_debugctl_write(&mut self, l1: &Vcpu, value: u64) -> Result<bool, Error> {
        self.debug.l1_debugctl_write(l1, value)
    }
}

/// IA32_EFER and IA32_APIC_BASE (`apic_base`: for L2; L1's is nestbed's model) are also in
/// SREGS, which the sync-regs area sets at the next KVM_RUN over what KVM_SET_MSRS wrote: the
/// values an MSR area loaded go there too. WRMSR keeps IA32_EFER.LMA (SDM 10.8.5).
fn mirror_sregs_msrs(vcpu: &mut Vcpu, loaded: &[MsrEntry], apic_base: bool) {
    for e in loaded {
        match e.index {
            IA32_EFER => {
                let s = vcpu.sregs_mut();
                s.efer = e.data & !cr::EFER_LMA | s.efer & cr::EFER_LMA;
            }
            IA32_APIC_BASE if apic_base => vcpu.sregs_mut().apic_base = e.data,
            _ => {}
        }
    }
}

/// The MSR index of entry `i` of the area at `addr`, for messages.
fn msr_at(ram: &GuestRam, addr: u64, i: usize) -> u32 {
    let mut b = [0xffu8; 4];
    let _ = ram.read(addr.wrapping_add(i as u64 * 16), &mut b);
    u32::from_le_bytes(b)
}
