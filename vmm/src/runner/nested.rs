//! The nested half of the run loop: L1's VMX instructions (executed by the model), VM entry
//! into the L2 VM, and L2 exits, each either reflected to L1 as a VM exit (SDM ch. 28) or
//! handled by nestbed as the L0.

use super::{Flow, Outcome, Runner};
use crate::error::Error;
use crate::exit::{Action, Exit, ExitDetail, Handler, Level};
use crate::machine::devices::PortEffect;
use crate::machine::paging::{self, Access, WalkError};
use crate::machine::RawExit;
use crate::nested::access::{find_access, AccessInsn};
use crate::nested::env::{gpr, L1Env, RamView, PHYS_ADDR_WIDTH};
use crate::nested::space::{Source, SyncError};
use crate::nested::{transfer, trap, L2};
use crate::vmx::checks::{check_vm_entry, CheckClass};
use crate::vmx::cpu::{apply_rflags, Fault, Invalidation, Outcome as VmxOutcome};
use crate::vmx::decode::{exit_qualification, instruction_info, VmxInsn, VmxOp};
use crate::vmx::ept::{active_eptp, ept_translate_width, ept_violation_qualification, EptPerms};
use crate::vmx::exits::{io_qualification, ExitReason, VM_ENTRY_FAILURE};
use crate::vmx::fields::{EPT_POINTER, GUEST_LINEAR_ADDRESS, GUEST_PHYSICAL_ADDRESS};
use crate::vmx::route::{l1_wants_exit, ExitFacts};
use crate::vmx::state::{load_guest_state, load_host_state, record_exit, save_guest_state};

const IA32_FEATURE_CONTROL: u32 = 0x3a;

type Step = Result<(Flow, u32, Handler), Error>;

/// Where an L2 exit left the instruction and whether KVM still has to complete it.
struct Insn {
    rip: u64,
    len: u8,
    /// KVM completes the instruction on the next KVM_RUN (IN, RDMSR, WRMSR, MMIO).
    pending: bool,
}

/// Exit qualification bit 8 of an EPT violation: the access was to the translated linear
/// address, not to a paging-structure entry (SDM 28.2.1, Table 28-7).
const EPT_QUAL_TRANSLATED_ACCESS: u64 = 1 << 8;

/// L2-physical addresses below this are followed through L1's EPT (the physical-address
/// width nestbed reports).
const MAX_L2_GPA: u64 = 1 << PHYS_ADDR_WIDTH;

impl Runner {
    fn inject_fault(&mut self, f: Fault) {
        if let Fault::PageFault { address, .. } = f {
            self.active().sregs_mut().cr2 = address;
        }
        self.active().inject_exception(f.vector(), f.error_code());
    }

    /// The exit for a trapped VMX instruction. Its text (mnemonic, operands, bytes) is only
    /// built when a trace or a script will read it.
    fn vmx_exit(&mut self, level: Level, insn: &VmxInsn, bytes: &[u8]) -> Exit {
        let observed = self.observed();
        let detail = if observed {
            ExitDetail::Vmx { mnemonic: insn.op.name().to_string(), operands: insn.to_string() }
        } else {
            ExitDetail::Vmx { mnemonic: String::new(), operands: String::new() }
        };
        let mut exit = self.next_exit(level, insn.op.exit_reason(), exit_qualification(insn), detail);
        if observed {
            exit.insn = bytes[..usize::from(insn.len).min(bytes.len())].to_vec();
        }
        exit
    }

    /// A VMX instruction L1 executed, trapped as an emulation failure.
    pub(super) fn l1_vmx_instruction(&mut self, bytes: &[u8]) -> Step {
        self.l1.refresh()?;
        let rip = self.l1.regs().rip;
        let insn = match trap::decode_trap(bytes, self.l1.peek_sregs(), rip) {
            Ok(i) => i,
            Err(e) => {
                // Not a VMX instruction KVM could not emulate (e.g. MWAIT): #UD, as without
                // the feature.
                tracing::debug!(rip = format_args!("{rip:#x}"), "L1 emulation failure: {e}; injecting #UD");
                self.l1.inject_exception(6, None);
                return Ok((Flow::Continue, ExitReason::EXCEPTION_NMI as u32, Handler::L0));
            }
        };
        let len = u64::from(insn.len);
        let exit = self.vmx_exit(Level::L1, &insn, bytes);
        let reason = exit.reason;
        match self.observe(&exit, Handler::L0)? {
            Action::Default => {}
            Action::Skip => {
                self.l1.regs_mut().rip = rip.wrapping_add(len);
                return Ok((Flow::Continue, reason, Handler::Script));
            }
            other => return Ok((self.apply_action(other)?, reason, Handler::Script)),
        }
        // The field a VMWRITE writes, read before the instruction can change registers.
        let written = insn.reg2().filter(|_| insn.op == VmxOp::Vmwrite).map(|r| gpr(self.l1.peek_regs(), r));
        let outcome = self.vmx.execute(&insn, &mut L1Env { vcpu: &mut self.l1, ram: &self.l1_vm.ram });
        tracing::debug!(rip = format_args!("{rip:#x}"), insn = %insn, ?outcome, "L1 VMX instruction");
        self.apply_invalidations(insn.op, written, &outcome);
        match outcome {
            VmxOutcome::Fault(f) => self.inject_fault(f),
            VmxOutcome::Entry { .. } => return self.vm_entry(rip, len).map(|f| (f, reason, Handler::L0)),
            o => {
                let r = self.l1.regs_mut();
                r.rflags = apply_rflags(r.rflags, &o);
                r.rip = rip.wrapping_add(len);
            }
        }
        Ok((Flow::Continue, reason, Handler::L0))
    }

    /// Cached guest-physical translations of L2 go away after INVEPT (SDM 29.4.3.1) and, as
    /// nestbed's choice, when L1 enters or leaves VMX operation or writes EPT_POINTER
    /// (`written`: the field encoding of a VMWRITE).
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

    /// VMLAUNCH/VMRESUME passed the instruction checks: VM-entry checks (SDM 27.2, 27.3),
    /// then load the guest state into the L2 vCPU (27.3.2) and switch to it.
    fn vm_entry(&mut self, rip: u64, len: u64) -> Result<Flow, Error> {
        let Some(vmcs) = self.vmx.current_vmcs() else {
            return Ok(Flow::Continue);
        };
        if let Err(v) = check_vm_entry(vmcs, &self.vmx.caps, PHYS_ADDR_WIDTH) {
            tracing::info!(rule = v.rule, sdm = v.sdm, "VM-entry check failed: {v}");
            self.notes.push(format!("VM-entry check failed: {} (SDM {})", v.rule, v.sdm));
            if let Some(o) = self.vmx.entry_check_failed(&v) {
                let r = self.l1.regs_mut();
                r.rflags = apply_rflags(r.rflags, &o);
                r.rip = rip.wrapping_add(len);
                return Ok(Flow::Continue);
            }
            // Guest-state failure: a VM exit with the entry-failure bit (SDM 27.8); L1
            // continues at HOST_RIP without L2 having run.
            let qualification = match v.class {
                CheckClass::GuestState { qualification } => qualification,
                _ => 0,
            };
            let reason = ExitReason::ENTRY_FAIL_GUEST_STATE as u32 | VM_ENTRY_FAILURE;
            if let Some(vmcs) = self.vmx.current_vmcs_mut() {
                record_exit(vmcs, reason, qualification, 0, 0);
            }
            self.load_host_state();
            return Ok(Flow::Continue);
        }
        if self.l2.is_none() {
            self.l2 = Some(L2::new(&self.kvm, &self.l1_vm.ram, &self.l2_cpuid)?);
        }
        let (Some(l2), Some(vmcs)) = (self.l2.as_mut(), self.vmx.current_vmcs()) else {
            return Ok(Flow::Continue);
        };
        l2.msr_filter.sync(&l2.vm, &self.l1_vm.ram, vmcs)?;
        let source = active_eptp(vmcs).map_or(Source::Identity, Source::Ept);
        match l2.space.sync(&l2.vm, &self.l1_vm.ram, source, MAX_L2_GPA) {
            Ok(false) => {}
            Ok(true) => {
                let n = l2.space.regions().count();
                tracing::debug!(?source, regions = n, "L2 memslots rebuilt");
                self.notes.push(format!("L2 memslots rebuilt for {source:?}: {n} regions"));
            }
            Err(e) => {
                let why = match e {
                    SyncError::Layout(e) => e.to_string(),
                    SyncError::Host(e) => format!("KVM refused L2's memory layout: {e}"),
                };
                return Ok(Flow::Stop(Outcome::Unsupported(format!("VM entry at L1 RIP {rip:#x}: {why}"))));
            }
        }
        let st = load_guest_state(vmcs);
        transfer::copy_gprs(&self.l1, &mut l2.vcpu);
        transfer::load(&mut l2.vcpu, &st);
        let sysenter = [u64::from(st.sysenter_cs), st.sysenter_esp, st.sysenter_eip];
        if l2.sysenter != Some(sysenter) {
            transfer::load_msrs(&l2.vcpu, &st)?;
            l2.sysenter = Some(sysenter);
        }
        self.vmx.mark_launched();
        self.level = Level::L2;
        Ok(Flow::Continue)
    }

    /// Loads the host-state area into L1 (SDM 28.5) after a VM exit was recorded.
    fn load_host_state(&mut self) {
        let efer = self.l1.peek_sregs().efer;
        if let Some(vmcs) = self.vmx.current_vmcs() {
            let host = load_host_state(vmcs, efer);
            transfer::load(&mut self.l1, &host);
        }
        self.level = Level::L1;
    }

    /// A VM exit from L2 to L1 (SDM 28): save L2's state into the VMCS, record the exit
    /// information, hand L2's general registers to L1 and load the host state.
    fn reflect(&mut self, reason: ExitReason, qualification: u64, insn: &Insn, info: u32) -> Result<(), Error> {
        let (Some(l2), Some(vmcs)) = (self.l2.as_mut(), self.vmx.current_vmcs_mut()) else {
            return Ok(());
        };
        let mut st = load_guest_state(vmcs);
        transfer::save(&l2.vcpu, &mut st);
        transfer::save_msrs(&l2.vcpu, &mut st)?;
        l2.sysenter = Some([u64::from(st.sysenter_cs), st.sysenter_esp, st.sysenter_eip]);
        st.rip = insn.rip;
        save_guest_state(vmcs, &st);
        record_exit(vmcs, reason as u32, qualification, u32::from(insn.len), info);
        for &(enc, v) in &self.script_vmcs_writes {
            vmcs.write(enc, v);
        }
        transfer::copy_gprs(&l2.vcpu, &mut self.l1);
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
        self.load_host_state();
        Ok(())
    }

    /// Whether the instruction at L2's `rip` is INS or OUTS (after any prefixes).
    fn l2_string_io(&mut self, rip: u64) -> bool {
        let mut b = [0u8; 15];
        if !self.l2_bytes(rip, &mut b) {
            return false;
        }
        let prefixes =
            |x: u8| matches!(x, 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf2 | 0xf3 | 0x40..=0x4f);
        b.iter().find(|&&x| !prefixes(x)).is_some_and(|&op| matches!(op, 0x6c..=0x6f))
    }

    fn l2_bytes(&mut self, rip: u64, buf: &mut [u8]) -> bool {
        let Some(l2) = self.l2.as_ref() else { return false };
        let v = l2.view();
        paging::read_virt(&v.mem, v.paging, rip, buf).is_ok()
    }

    /// The EPTP L2's address space follows, if L1 enabled EPT.
    fn l2_eptp(&self) -> Option<u64> {
        self.l2.as_ref().and_then(|l2| l2.space.eptp())
    }

    /// A VM exit for an EPT violation or misconfiguration (SDM 28.2.1, 29.3.3): the
    /// guest-physical address, and the guest-linear address when known, are saved too.
    fn reflect_ept(
        &mut self,
        reason: ExitReason,
        q: u64,
        gpa: u64,
        linear: Option<u64>,
        insn: &Insn,
    ) -> Result<(), Error> {
        if let Some(vmcs) = self.vmx.current_vmcs_mut() {
            vmcs.set(GUEST_PHYSICAL_ADDRESS, gpa);
            if reason == ExitReason::EPT_VIOLATION {
                vmcs.set(GUEST_LINEAR_ADDRESS, linear.unwrap_or(0));
            }
        }
        self.reflect(reason, q, insn, 0)
    }

    /// Makes L2's memslots follow L1's current EPT tables again (they allowed an access the
    /// memslots did not: a stale TLB in SDM 29.4 terms).
    fn refresh_l2_space(&mut self, eptp: u64) -> Result<Option<Flow>, Error> {
        let Some(l2) = self.l2.as_mut() else { return Ok(None) };
        l2.space.invalidate();
        match l2.space.sync(&l2.vm, &self.l1_vm.ram, Source::Ept(eptp), MAX_L2_GPA) {
            Ok(_) => Ok(None),
            Err(SyncError::Layout(e)) => Ok(Some(Flow::Stop(Outcome::Unsupported(e.to_string())))),
            Err(SyncError::Host(e)) => Err(e),
        }
    }

    /// An L2 data access its memslots did not allow while they follow L1's EPT: an EPT
    /// violation or misconfiguration for L1, unless L1's tables allow it now, in which case
    /// nestbed performs it on L1's memory and refreshes the memslots.
    fn l2_ept_access(&mut self, eptp: u64, gpa: u64, len: u8, data: Option<u64>) -> Step {
        let write = data.is_some();
        let rip = self.active().regs().rip;
        let detail = ExitDetail::Mmio { gpa, len, write, data: data.unwrap_or(0) };
        let (reason, perms) = match ept_translate_width(&RamView(&self.l1_vm.ram), eptp, gpa, PHYS_ADDR_WIDTH) {
            Ok((hpa, p)) if !write || p.write => return self.l2_ept_allowed(eptp, hpa, len, data, detail),
            Ok((_, p)) => (ExitReason::EPT_VIOLATION, p),
            Err(f) if f.misconfig => (ExitReason::EPT_MISCONFIG, EptPerms::default()),
            Err(_) => (ExitReason::EPT_VIOLATION, EptPerms::default()),
        };
        let found = self.l2.as_ref().and_then(|l2| find_access(&l2.view(), rip, gpa, len, write));
        let Some(AccessInsn { rip: at, len: insn_len, linear }) = found else {
            return Ok((
                Flow::Stop(Outcome::Unsupported(format!(
                    "L2 wrote to L2-physical {gpa:#x}, which L1's EPT does not let it write, with an instruction \
                     nestbed cannot identify before RIP {rip:#x}, so it cannot report the EPT violation at it"
                ))),
                reason as u32,
                Handler::L0,
            ));
        };
        let q = match reason {
            ExitReason::EPT_VIOLATION => ept_violation_qualification(!write, write, false, perms, linear.is_some()),
            _ => 0,
        };
        let mut exit = self.next_exit(Level::L2, reason, q, detail);
        exit.rip = at;
        let action = self.observe(&exit, Handler::L1)?;
        let insn = Insn { rip: at, len: insn_len, pending: true };
        self.l2_route(
            exit.reason,
            action,
            true,
            |me| {
                me.reflect_ept(reason, q, gpa, linear, &insn)?;
                Ok(Flow::Continue)
            },
            |me| {
                if !write {
                    me.active().complete_read(u64::MAX);
                }
                Ok(Flow::Continue)
            },
        )
    }

    /// An access L1's EPT allows at L1-physical `hpa`: done on L1 RAM (outside it, reads
    /// return all ones and writes are dropped, as with no device there).
    fn l2_ept_allowed(&mut self, eptp: u64, hpa: u64, len: u8, data: Option<u64>, detail: ExitDetail) -> Step {
        let exit = self.next_exit(Level::L2, ExitReason::EPT_VIOLATION, 0, detail);
        let action = self.observe(&exit, Handler::L0)?;
        if action != Action::Default {
            return Ok((self.apply_action(action)?, exit.reason, Handler::Script));
        }
        let n = usize::from(len.min(8));
        let ram = &self.l1_vm.ram;
        match data {
            Some(v) => {
                let _ = ram.write(hpa, &v.to_le_bytes()[..n]);
            }
            None => {
                let mut b = [0xffu8; 8];
                if ram.read(hpa, &mut b[..n]).is_err() {
                    b = [0xff; 8];
                }
                let v = u64::from_le_bytes(b);
                self.active().complete_read(v);
            }
        }
        let flow = if self.l1_vm.ram.contains(hpa, n as u64) { self.refresh_l2_space(eptp)? } else { None };
        Ok((flow.unwrap_or(Flow::Continue), exit.reason, Handler::L0))
    }

    /// An instruction fetch KVM could not do (no memslot at L2's RIP, or at a paging structure
    /// of its translation) while L2's memslots follow L1's EPT: an EPT violation (fetch, or a
    /// read of a paging-structure entry with bit 8 clear, SDM 28.2.1) or a misconfiguration.
    /// `None` when the fetch is not EPT's doing, or (unless `retry`) when L1's tables allow it.
    fn l2_ept_fetch(&mut self, eptp: u64, rip: u64, retry: bool) -> Option<Step> {
        let l2 = self.l2.as_ref()?;
        let v = l2.view();
        let (gpa, paging_structure) = match paging::translate(&v.mem, v.paging, rip, Access::default()) {
            Ok(gpa) => (gpa, false),
            Err(WalkError::Memory(f)) => (f.gpa, true),
            Err(WalkError::PageFault { .. }) => return None,
        };
        let (reason, perms) = match ept_translate_width(&RamView(&self.l1_vm.ram), eptp, gpa, PHYS_ADDR_WIDTH) {
            Ok((hpa, p)) if p.exec || paging_structure => {
                if !retry || !self.l1_vm.ram.contains(hpa, 1) || l2.space.lookup(gpa).is_some() {
                    return None;
                }
                return Some(
                    self.refresh_l2_space(eptp)
                        .map(|f| (f.unwrap_or(Flow::Continue), ExitReason::EPT_VIOLATION as u32, Handler::L0)),
                );
            }
            Ok((_, p)) => (ExitReason::EPT_VIOLATION, p),
            Err(f) if f.misconfig => (ExitReason::EPT_MISCONFIG, EptPerms::default()),
            Err(_) => (ExitReason::EPT_VIOLATION, EptPerms::default()),
        };
        let q = match (reason, paging_structure) {
            (ExitReason::EPT_VIOLATION, false) => ept_violation_qualification(false, false, true, perms, true),
            (ExitReason::EPT_VIOLATION, true) => {
                ept_violation_qualification(true, false, false, perms, true) & !EPT_QUAL_TRANSLATED_ACCESS
            }
            _ => 0,
        };
        let mut exit = self.next_exit(Level::L2, reason, q, ExitDetail::Mmio { gpa, len: 0, write: false, data: 0 });
        exit.rip = rip;
        let action = match self.observe(&exit, Handler::L1) {
            Ok(a) => a,
            Err(e) => return Some(Err(e)),
        };
        let insn = Insn { rip, len: 0, pending: false };
        Some(self.l2_route(
            exit.reason,
            action,
            true,
            |me| {
                me.reflect_ept(reason, q, gpa, Some(rip), &insn)?;
                Ok(Flow::Continue)
            },
            |_| {
                Ok(Flow::Stop(Outcome::Unsupported(format!(
                    "L2 executes at RIP {rip:#x} (L2-physical {gpa:#x}), which L1's EPT does not map; kept in L0, it cannot continue"
                ))))
            },
        ))
    }

    /// Finds the I/O instruction of an exit: KVM may report RIP at it (IN) or past it (OUT,
    /// already completed), depending on the host.
    fn io_insn(&mut self, rip: u64, input: bool, port: u16, size: u8) -> (Insn, bool) {
        let matches = |b: &[u8]| -> Option<(u8, bool)> {
            let (prefix, rest) = if b[0] == 0x66 { (1u8, &b[1..]) } else { (0, b) };
            let (op, imm) = (rest[0], rest[1]);
            let want_size_bit = size != 1;
            match op {
                0xe4..=0xe7 => {
                    let is_in = op & 2 == 0;
                    (is_in == input && (op & 1 == 1) == want_size_bit && u16::from(imm) == port)
                        .then_some((prefix + 2, true))
                }
                0xec..=0xef => {
                    let is_in = op & 2 == 0;
                    (is_in == input && (op & 1 == 1) == want_size_bit).then_some((prefix + 1, false))
                }
                _ => None,
            }
        };
        let mut at = [0u8; 3];
        if self.l2_bytes(rip, &mut at) {
            if let Some((len, imm)) = matches(&at) {
                return (Insn { rip, len, pending: true }, imm);
            }
        }
        for back in [1u64, 2, 3] {
            let mut b = [0u8; 3];
            if self.l2_bytes(rip.wrapping_sub(back), &mut b) {
                if let Some((len, imm)) = matches(&b) {
                    if u64::from(len) == back {
                        return (Insn { rip: rip - back, len, pending: false }, imm);
                    }
                }
            }
        }
        (Insn { rip, len: 1, pending: input }, false)
    }

    pub(super) fn l2_exit(&mut self, raw: RawExit) -> Step {
        let rip = self.active().regs().rip;
        if let Some(eptp) = self.l2_eptp() {
            match raw {
                RawExit::MmioRead { gpa, len } => return self.l2_ept_access(eptp, gpa, len, None),
                RawExit::MmioWrite { gpa, len, data } => return self.l2_ept_access(eptp, gpa, len, Some(data)),
                // KVM could not fetch the instruction: an emulation failure without its bytes.
                RawExit::InternalError { suberror: 1 } => return self.l2_fetch_failure(eptp, rip, &raw),
                RawExit::EmulationFailure { ref bytes } if bytes.is_empty() => {
                    return self.l2_fetch_failure(eptp, rip, &raw)
                }
                // KVM turns a paging structure it cannot read into a fault, and ends in a
                // shutdown when the exception handlers are unmapped too; on hardware the
                // fetch's EPT violation comes first.
                RawExit::Shutdown => {
                    if let Some(step) = self.l2_ept_fetch(eptp, rip, false) {
                        return step;
                    }
                }
                _ => {}
            }
        }
        match raw {
            RawExit::IoOut { .. } | RawExit::IoIn { .. } => {
                let (port, size, write, data, count) = match raw {
                    RawExit::IoOut { port, size, data } => (port, size, true, data, 1),
                    RawExit::IoIn { port, size, count } => (port, size, false, 0, count),
                    _ => unreachable!("matched above"),
                };
                let (insn, imm) = self.io_insn(rip, !write, port, size);
                let string = count > 1 || self.l2_string_io(rip);
                let q = io_qualification(port, size, !write, string, false, imm);
                let mut exit = self.next_exit(
                    Level::L2,
                    ExitReason::IO_INSTRUCTION,
                    q,
                    ExitDetail::Io { port, size, write, data },
                );
                exit.rip = insn.rip;
                let facts =
                    ExitFacts { reason: ExitReason::IO_INSTRUCTION as u32, qualification: q, ..ExitFacts::default() };
                let wants = match self.vmx.current_vmcs() {
                    Some(v) => l1_wants_exit(v, &RamView(&self.l1_vm.ram), &facts),
                    None => false,
                };
                let action = self.observe(&exit, if wants { Handler::L1 } else { Handler::L0 })?;
                self.l2_route(
                    exit.reason,
                    action,
                    wants,
                    move |me| {
                        if string {
                            // KVM runs INS/OUTS itself, element by element, before userspace sees
                            // them: there is no point left where L1 could take the exit.
                            return Ok(Flow::Stop(Outcome::Unsupported(format!(
                                "L2 executed INS/OUTS on port {port:#x}, which L1 intercepts, at RIP {:#x}: string I/O \
                                 exits cannot be reflected to L1 (the host's KVM emulates them in the kernel)",
                                insn.rip
                            ))));
                        }
                        me.reflect(ExitReason::IO_INSTRUCTION, q, &insn, 0)?;
                        Ok(Flow::Continue)
                    },
                    move |me| {
                        Ok(if write {
                            match me.devices.write(port, size, data) {
                                PortEffect::Exit(c) => Flow::Stop(Outcome::GuestExit(c)),
                                PortEffect::None => Flow::Continue,
                            }
                        } else {
                            me.device_in(port, size, count);
                            Flow::Continue
                        })
                    },
                )
            }
            RawExit::Hlt => {
                let mut b = [0u8; 1];
                let at_rip = self.l2_bytes(rip.wrapping_sub(1), &mut b) && b[0] == 0xf4;
                let insn = Insn { rip: if at_rip { rip - 1 } else { rip }, len: 1, pending: false };
                let mut exit = self.next_exit(Level::L2, ExitReason::HLT, 0, ExitDetail::None);
                exit.rip = insn.rip;
                let facts = ExitFacts { reason: ExitReason::HLT as u32, ..ExitFacts::default() };
                let wants =
                    self.vmx.current_vmcs().is_some_and(|v| l1_wants_exit(v, &RamView(&self.l1_vm.ram), &facts));
                let action = self.observe(&exit, if wants { Handler::L1 } else { Handler::L0 })?;
                self.l2_route(exit.reason, action, wants, |me| {
                    me.reflect(ExitReason::HLT, 0, &insn, 0)?;
                    Ok(Flow::Continue)
                }, |_| {
                    Ok(Flow::Stop(Outcome::Unsupported(format!(
                        "L2 executed HLT at RIP {:#x} without HLT exiting; nestbed has no interrupt sources, so it would never wake",
                        insn.rip
                    ))))
                })
            }
            RawExit::Shutdown => {
                let exit = self.next_exit(Level::L2, ExitReason::TRIPLE_FAULT, 0, ExitDetail::None);
                let action = self.observe(&exit, Handler::L1)?;
                let insn = Insn { rip, len: 0, pending: false };
                self.l2_route(
                    exit.reason,
                    action,
                    true,
                    |me| {
                        me.reflect(ExitReason::TRIPLE_FAULT, 0, &insn, 0)?;
                        Ok(Flow::Continue)
                    },
                    |me| {
                        let registers = super::dump_registers(me.active());
                        Ok(Flow::Stop(Outcome::TripleFault { level: Level::L2, registers }))
                    },
                )
            }
            RawExit::EmulationFailure { bytes } => {
                let insn = match self.l2.as_ref().map(|l2| trap::decode_trap(&bytes, l2.vcpu.peek_sregs(), rip)) {
                    Some(Ok(i)) => i,
                    _ => {
                        self.active().inject_exception(6, None);
                        return Ok((Flow::Continue, ExitReason::EXCEPTION_NMI as u32, Handler::L0));
                    }
                };
                // Every VMX instruction in VMX non-root operation exits to L1 (SDM 26.1.2).
                let reason = insn.op.exit_reason();
                let q = exit_qualification(&insn);
                let info = instruction_info(&insn);
                let exit = self.vmx_exit(Level::L2, &insn, &bytes);
                let action = self.observe(&exit, Handler::L1)?;
                let at = Insn { rip, len: insn.len, pending: false };
                self.l2_route(
                    exit.reason,
                    action,
                    true,
                    |me| {
                        me.reflect(reason, q, &at, info)?;
                        Ok(Flow::Continue)
                    },
                    |me| {
                        me.active().inject_exception(6, None);
                        Ok(Flow::Continue)
                    },
                )
            }
            RawExit::RdMsr { .. } | RawExit::WrMsr { .. } => {
                let (index, write, value) = match raw {
                    RawExit::WrMsr { index, data } => (index, true, data),
                    RawExit::RdMsr { index } => (index, false, 0),
                    _ => unreachable!("matched above"),
                };
                let reason = if write { ExitReason::WRMSR } else { ExitReason::RDMSR };
                let exit = self.next_exit(Level::L2, reason, 0, ExitDetail::Msr { index, write, value });
                // Only MSRs L1 intercepts reach here (the L2 VM's MSR filter mirrors L1's bitmap).
                let action = self.observe(&exit, Handler::L1)?;
                let insn = Insn { rip, len: 2, pending: true };
                self.l2_route(
                    exit.reason,
                    action,
                    true,
                    |me| {
                        me.reflect(reason, 0, &insn, 0)?;
                        Ok(Flow::Continue)
                    },
                    |me| {
                        if !write {
                            me.active().complete_read(0);
                        }
                        Ok(Flow::Continue)
                    },
                )
            }
            RawExit::MmioRead { gpa, len } => {
                let exit = self.next_exit(
                    Level::L2,
                    ExitReason::EPT_VIOLATION,
                    1,
                    ExitDetail::Mmio { gpa, len, write: false, data: 0 },
                );
                let action = self.observe(&exit, Handler::L0)?;
                let flow = match action {
                    Action::Default => {
                        self.active().complete_read(u64::MAX);
                        Flow::Continue
                    }
                    other => self.apply_action(other)?,
                };
                Ok((flow, exit.reason, Handler::L0))
            }
            RawExit::MmioWrite { gpa, len, data } => {
                let exit = self.next_exit(
                    Level::L2,
                    ExitReason::EPT_VIOLATION,
                    2,
                    ExitDetail::Mmio { gpa, len, write: true, data },
                );
                let action = self.observe(&exit, Handler::L0)?;
                Ok((self.apply_action(action)?, exit.reason, Handler::L0))
            }
            other => Ok((
                Flow::Stop(Outcome::Unsupported(format!("unexpected L2 exit {other:?} at RIP {rip:#x}"))),
                0,
                Handler::L0,
            )),
        }
    }

    /// KVM could not fetch L2's instruction at `rip` while L2's memslots follow L1's EPT.
    fn l2_fetch_failure(&mut self, eptp: u64, rip: u64, raw: &RawExit) -> Step {
        if let Some(step) = self.l2_ept_fetch(eptp, rip, true) {
            return step;
        }
        Ok((
            Flow::Stop(Outcome::Unsupported(format!("L2 cannot fetch its instruction at RIP {rip:#x} ({raw:?})"))),
            0,
            Handler::L0,
        ))
    }

    /// Applies the reflect-or-keep decision for an L2 exit, with a script's action on top.
    fn l2_route(
        &mut self,
        reason: u32,
        action: Action,
        l1_wants: bool,
        to_l1: impl FnOnce(&mut Self) -> Result<Flow, Error>,
        in_l0: impl FnOnce(&mut Self) -> Result<Flow, Error>,
    ) -> Step {
        let (flow, handler) = match action {
            Action::Default if l1_wants => (to_l1(self)?, Handler::L1),
            Action::Default => (in_l0(self)?, Handler::L0),
            Action::Reflect => (to_l1(self)?, Handler::L1),
            Action::KeepInL0 => (in_l0(self)?, Handler::L0),
            other => (self.apply_action(other)?, Handler::Script),
        };
        Ok((flow, reason, handler))
    }

    pub(super) fn l1_rdmsr(&mut self, index: u32) -> Step {
        let exit = self.next_exit(Level::L1, ExitReason::RDMSR, 0, ExitDetail::Msr { index, write: false, value: 0 });
        let action = self.observe(&exit, Handler::L0)?;
        if action != Action::Default {
            return Ok((self.apply_action(action)?, exit.reason, Handler::Script));
        }
        match self.vmx.caps.msr(index) {
            Some(v) => self.l1.complete_read(v),
            None => {
                tracing::debug!(msr = format_args!("{index:#x}"), "L1 RDMSR of an unknown MSR: #GP");
                self.l1.fail_msr();
            }
        }
        Ok((Flow::Continue, exit.reason, Handler::L0))
    }

    pub(super) fn l1_wrmsr(&mut self, index: u32, value: u64) -> Step {
        let exit = self.next_exit(Level::L1, ExitReason::WRMSR, 0, ExitDetail::Msr { index, write: true, value });
        let action = self.observe(&exit, Handler::L0)?;
        if action != Action::Default {
            return Ok((self.apply_action(action)?, exit.reason, Handler::Script));
        }
        // IA32_FEATURE_CONTROL is locked and the capability MSRs are read-only: #GP (SDM
        // 24.7, Appendix A). Writing back the same locked value is tolerated.
        let same = index == IA32_FEATURE_CONTROL && self.vmx.caps.msr(index) == Some(value);
        if !same {
            tracing::debug!(msr = format_args!("{index:#x}"), "L1 WRMSR refused: #GP");
            self.l1.fail_msr();
        }
        Ok((Flow::Continue, exit.reason, Handler::L0))
    }
}
