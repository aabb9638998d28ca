//! L2's exits: what each KVM exit of L2 is as an `Exit`, with the facts the reflect decision
//! needs, the VM exit L1 gets if it is reflected (SDM 28.2), and nestbed's handling otherwise.

use super::dispatch::{Event, L2Event, Normalized, Work};
use super::{Flow, Outcome, Runner};
use crate::error::Error;
use crate::exit::{ExitDetail, Level};
use crate::machine::insn::register_value;
use crate::machine::paging::{self, Access, WalkError};
use crate::machine::RawExit;
use crate::nested::access::{find_access, AccessInsn};
use crate::nested::env::{gpr, RamView, VcpuEnv, PHYS_ADDR_WIDTH};
use crate::nested::route::L0Keeps;
use crate::nested::space::{L2Memory, Source, SyncError};
use crate::nested::transition::MAX_L2_GPA;
use crate::nested::{trap, Insn};
use crate::vmx::caps::{proc, proc2};
use crate::vmx::cpu::{apply_rflags, Outcome as VmxOutcome};
use crate::vmx::decode::{exit_qualification, instruction_info, VmxInsn, VmxOp};
use crate::vmx::ept::{ept_translate_width, ept_violation_qualification, EptPerms};
use crate::vmx::exit_info::ExitInfo;
use crate::vmx::exits::{io_qualification, ExitReason};
use crate::vmx::fields::{CPU_BASED_VM_EXEC_CONTROL, SECONDARY_VM_EXEC_CONTROL};
use crate::vmx::route::ExitFacts;
use crate::vmx::sensitive::{decode_sensitive, invlpg_address, Sensitive};

/// Exit qualification bit 8 of an EPT violation: the access was to the translated linear
/// address, not to a paging-structure entry (SDM 28.2.1, Table 28-7).
const EPT_QUAL_TRANSLATED_ACCESS: u64 = 1 << 8;

/// An L2 exit before it is numbered.
struct Parts {
    reason: ExitReason,
    qualification: u64,
    /// Where the exit is reported: at the instruction, even when KVM already moved past it.
    rip: u64,
    detail: ExitDetail,
    work: Work,
    facts: ExitFacts,
    keeps: Option<L0Keeps>,
    reflect: Result<(ExitInfo, Insn), String>,
}

impl Parts {
    /// An L2 exit L1 may take as a VM exit with this information.
    fn reflectable(reason: ExitReason, qualification: u64, insn: Insn, detail: ExitDetail, work: Work) -> Self {
        let info = ExitInfo { instruction_len: u32::from(insn.len), ..ExitInfo::new(reason as u32, qualification) };
        Parts {
            reason,
            qualification,
            rip: insn.rip,
            detail,
            work,
            facts: ExitFacts { reason: reason as u32, qualification, ..ExitFacts::default() },
            keeps: None,
            reflect: Ok((info, insn)),
        }
    }

    /// An L2 exit nestbed keeps whatever L1's controls say.
    fn kept(reason: ExitReason, qualification: u64, rip: u64, detail: ExitDetail, work: Work, keeps: L0Keeps) -> Self {
        let facts = ExitFacts { reason: reason as u32, qualification, ..ExitFacts::default() };
        Parts { reason, qualification, rip, detail, work, facts, keeps: Some(keeps), reflect: Err(String::new()) }
    }

    fn into_event(self, r: &mut Runner) -> Normalized {
        let mut exit = r.next_exit(Level::L2, self.reason as u32, self.qualification, self.rip);
        exit.detail = self.detail;
        let l2 = L2Event { facts: self.facts, keeps: self.keeps, reflect: self.reflect };
        Normalized::Event(Event { exit, work: self.work, l2: Some(l2) })
    }
}

impl Runner {
    pub(super) fn normalize_l2(&mut self, raw: RawExit) -> Result<Normalized, Error> {
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
                    if let Some(n) = self.l2_ept_fetch(eptp, rip, false)? {
                        return Ok(n);
                    }
                }
                _ => {}
            }
        }
        let parts = match raw {
            RawExit::IoOut { port, size, data } => self.l2_io(rip, port, size, Some(data), 1),
            RawExit::IoIn { port, size, count } => self.l2_io(rip, port, size, None, count),
            RawExit::Hlt => {
                let mut b = [0u8; 1];
                let at_rip = self.l2_bytes(rip.wrapping_sub(1), &mut b) && b[0] == 0xf4;
                let insn = Insn { rip: if at_rip { rip - 1 } else { rip }, len: 1, pending: false };
                Parts::reflectable(ExitReason::HLT, 0, insn, ExitDetail::None, Work::L2Hlt)
            }
            // L2 can take the interrupt it waits for: decided before the next KVM_RUN.
            RawExit::IrqWindowOpen => {
                return Ok(Normalized::Quiet { reason: ExitReason::INTERRUPT_WINDOW as u32, flow: Flow::Continue })
            }
            RawExit::Shutdown => {
                let insn = Insn { rip, len: 0, pending: false };
                Parts::reflectable(ExitReason::TRIPLE_FAULT, 0, insn, ExitDetail::None, Work::TripleFault)
            }
            RawExit::EmulationFailure { bytes } => {
                self.active().refresh()?;
                // As for L1: the host cuts an instruction's bytes at the end of its page.
                let mut fetched = [0u8; 15];
                let bytes = if bytes.len() < fetched.len() && self.l2_bytes(rip, &mut fetched) {
                    fetched.to_vec()
                } else {
                    bytes
                };
                self.note_host_trapped(Level::L2, rip, &bytes);
                return Ok(self.l2_vmx(&bytes, rip));
            }
            // VMMCALL is #UD on the Intel CPU L2 sees; it causes no VM exit (SDM 26.1).
            RawExit::Patched { bytes } if bytes.starts_with(&super::l1::VMMCALL) => return Ok(self.l2_ud(rip)),
            RawExit::Patched { bytes } => {
                let bitness = self.nested.l2.as_ref().map_or(64, |l2| trap::bitness(l2.vcpu.peek_sregs()));
                let Some(insn) = decode_sensitive(&bytes, bitness, rip) else {
                    return Ok(self.l2_vmx(&bytes, rip));
                };
                // With "enable RDTSCP" 0, RDTSCP is #UD before any VM exit (SDM 25.3).
                if insn.op == Sensitive::Rdtscp && !self.l2_rdtscp_enabled() {
                    return Ok(self.l2_ud(rip));
                }
                let mut q = self.sensitive_qualification(&insn);
                if insn.op == Sensitive::Invlpg {
                    // The qualification is INVLPG's linear-address operand (SDM 28.2.1).
                    let (r, s) = (*self.active().regs(), *self.active().sregs());
                    q = invlpg_address(&bytes, bitness, rip, |reg| register_value(reg, &r, &s)).unwrap_or(0);
                }
                let detail = ExitDetail::Vmx { mnemonic: insn.name().to_string(), operands: String::new(), vmcs: None };
                let at = Insn { rip, len: insn.len, pending: false };
                let mut p = Parts::reflectable(insn.exit_reason(), q, at, detail, Work::Sensitive { insn, rip });
                p.facts.cr_value = self.sensitive_value(&insn);
                p
            }
            RawExit::RdMsr { index } | RawExit::WrMsr { index, .. } => {
                let (write, value) = match raw {
                    RawExit::WrMsr { data, .. } => (true, data),
                    _ => (false, 0),
                };
                let reason = if write { ExitReason::WRMSR } else { ExitReason::RDMSR };
                let work = if write { Work::L2Wrmsr { index, value } } else { Work::L2Rdmsr { index } };
                let insn = Insn { rip, len: 2, pending: true };
                let mut p = Parts::reflectable(
                    reason,
                    0,
                    insn,
                    ExitDetail::Msr { index, name: crate::msr::name(index), write, value },
                    work,
                );
                p.facts.msr = index;
                p
            }
            RawExit::MmioRead { gpa, len } => {
                let detail = ExitDetail::Mmio { gpa, len, write: false, data: 0 };
                Parts::kept(
                    ExitReason::EPT_VIOLATION,
                    1,
                    rip,
                    detail,
                    Work::MmioRead { gpa, len },
                    L0Keeps::OutsideL1Memory,
                )
            }
            RawExit::MmioWrite { gpa, len, data } => {
                let detail = ExitDetail::Mmio { gpa, len, write: true, data };
                Parts::kept(
                    ExitReason::EPT_VIOLATION,
                    2,
                    rip,
                    detail,
                    Work::MmioWrite { gpa, len, data },
                    L0Keeps::OutsideL1Memory,
                )
            }
            other => {
                let why = format!("unexpected L2 exit {other:?} at RIP {rip:#x}");
                return Ok(Normalized::Quiet { reason: 0, flow: Flow::Stop(Outcome::Unsupported(why)) });
            }
        };
        Ok(parts.into_event(self))
    }

    fn l2_rdtscp_enabled(&self) -> bool {
        self.nested.vmx.current_vmcs().is_some_and(|v| {
            v.get32(CPU_BASED_VM_EXEC_CONTROL) & proc::ACTIVATE_SECONDARY_CONTROLS != 0
                && v.get32(SECONDARY_VM_EXEC_CONTROL) & proc2::ENABLE_RDTSCP != 0
        })
    }

    /// #UD for L2's instruction at `rip`, raised by nestbed (it is no VMX instruction KVM could
    /// run): an exception exit when L1's exception bitmap intercepts #UD (SDM 26.2), else
    /// delivered through L2's IDT.
    fn l2_ud(&mut self, rip: u64) -> Normalized {
        let insn = Insn { rip, len: 0, pending: false };
        let mut p =
            Parts::reflectable(ExitReason::EXCEPTION_NMI, 0, insn, ExitDetail::None, Work::Inject { vector: 6 });
        let ud = crate::vmx::events::Event {
            ty: crate::vmx::events::InterruptionType::HardwareException,
            vector: 6,
            error_code: None,
            instruction_len: 0,
        };
        p.facts.intr_info = ud.info();
        if let Ok((info, _)) = p.reflect.as_mut() {
            info.intr_info = ud.info();
        }
        p.into_event(self)
    }

    /// A VMX instruction L2 executed (trapped, or from a patched site): every one exits to L1
    /// in VMX non-root operation (SDM 26.1.2) except VMREAD and VMWRITE that VMCS shadowing
    /// lets through (26.1.3): they name their field in a register, which the route looks up in
    /// L1's VMREAD/VMWRITE bitmap, and nestbed serves them from the shadow VMCS when L1 does
    /// not want them. Bytes that are no VMX instruction: #UD for L2.
    fn l2_vmx(&mut self, bytes: &[u8], rip: u64) -> Normalized {
        let decoded = self.nested.l2.as_ref().map(|l2| trap::decode_trap(bytes, l2.vcpu.peek_sregs(), rip));
        let Some(Ok(insn)) = decoded else { return self.l2_ud(rip) };
        let at = Insn { rip, len: insn.len, pending: false };
        let work = match insn.op {
            VmxOp::Vmread | VmxOp::Vmwrite => Work::Shadowed { insn: insn.clone(), rip },
            _ => Work::Inject { vector: 6 },
        };
        let mut p = Parts::reflectable(insn.op.exit_reason(), exit_qualification(&insn), at, ExitDetail::None, work);
        if let (VmxOp::Vmread | VmxOp::Vmwrite, Some(r), Some(l2)) = (insn.op, insn.reg2(), self.nested.l2.as_ref()) {
            p.facts.field = gpr(l2.vcpu.peek_regs(), r);
        }
        if let Ok((info, _)) = p.reflect.as_mut() {
            info.instruction_info = instruction_info(&insn);
        }
        let exit = self.vmx_exit(Level::L2, &insn, bytes, rip);
        let l2 = L2Event { facts: p.facts, keeps: None, reflect: p.reflect };
        Normalized::Event(Event { exit, work: p.work, l2: Some(l2) })
    }

    /// L2's VMREAD or VMWRITE that L1's VMREAD/VMWRITE bitmap lets through: the model reads or
    /// writes the shadow VMCS in L1's memory, L2 goes on after the instruction with RFLAGS as
    /// VMsucceed/VMfail set them (SDM 31.2). An exception it raises (#GP at CPL > 0, #PF on a
    /// memory operand) goes to L2's IDT.
    pub(super) fn l2_shadowed(&mut self, insn: &VmxInsn, rip: u64) -> Flow {
        let Some(l2) = self.nested.l2.as_mut() else { return Flow::Continue };
        let mem = L2Memory { ram: &l2.vm.ram, space: &l2.space };
        let mut guest = VcpuEnv { vcpu: &mut l2.vcpu, ram: &mem };
        let outcome = self.nested.vmx.execute_shadowed(insn, &mut guest, &mut RamView(&self.l1_vm.ram));
        tracing::debug!(rip = format_args!("{rip:#x}"), insn = %insn, ?outcome, "L2 VMX instruction served from the shadow VMCS");
        match outcome {
            VmxOutcome::Fault(f) => self.inject_fault(f),
            o => {
                let r = self.active().regs_mut();
                r.rflags = apply_rflags(r.rflags, &o);
                r.rip = rip.wrapping_add(u64::from(insn.len));
            }
        }
        Flow::Continue
    }

    /// IN or OUT (`data`: OUT's value), or INS/OUTS, of L2.
    fn l2_io(&mut self, rip: u64, port: u16, size: u8, data: Option<u64>, count: u32) -> Parts {
        let write = data.is_some();
        let (insn, imm) = self.io_insn(rip, !write, port, size);
        let string = count > 1 || self.l2_string_io(rip);
        let q = io_qualification(port, size, !write, string, false, imm);
        let detail = ExitDetail::Io { port, size, write, data: data.unwrap_or(0) };
        let work = match data {
            Some(data) => Work::PortOut { port, size, data },
            None => Work::PortIn { port, size, count },
        };
        let mut p = Parts::reflectable(ExitReason::IO_INSTRUCTION, q, insn, detail, work);
        if string {
            // KVM runs INS/OUTS itself, element by element, before userspace sees them: there
            // is no point left where L1 could take the exit.
            p.reflect = Err(format!(
                "L2 executed INS/OUTS on port {port:#x}, which L1 intercepts, at RIP {:#x}: string I/O \
                 exits cannot be reflected to L1 (the host's KVM emulates them in the kernel)",
                insn.rip
            ));
        }
        p
    }

    /// An L2 data access its memslots did not allow while they follow L1's EPT: an EPT
    /// violation or misconfiguration for L1, unless L1's tables allow it now, in which case
    /// nestbed performs it on L1's memory and refreshes the memslots.
    fn l2_ept_access(&mut self, eptp: u64, gpa: u64, len: u8, data: Option<u64>) -> Result<Normalized, Error> {
        let write = data.is_some();
        let rip = self.active().regs().rip;
        let detail = ExitDetail::Mmio { gpa, len, write, data: data.unwrap_or(0) };
        let (reason, perms) = match ept_translate_width(&RamView(&self.l1_vm.ram), eptp, gpa, PHYS_ADDR_WIDTH) {
            Ok((hpa, p)) if !write || p.write => {
                let work = Work::EptAllowed { eptp, hpa, len, data };
                let p = Parts::kept(ExitReason::EPT_VIOLATION, 0, rip, detail, work, L0Keeps::StaleEptTranslation);
                return Ok(p.into_event(self));
            }
            Ok((_, p)) => (ExitReason::EPT_VIOLATION, p),
            Err(f) if f.misconfig => (ExitReason::EPT_MISCONFIG, EptPerms::default()),
            Err(_) => (ExitReason::EPT_VIOLATION, EptPerms::default()),
        };
        let found = self.nested.l2.as_ref().and_then(|l2| find_access(&l2.view(), rip, gpa, len, write));
        let Some(AccessInsn { rip: at, len: insn_len, linear }) = found else {
            let why = format!(
                "L2 wrote to L2-physical {gpa:#x}, which L1's EPT does not let it write, with an instruction \
                 nestbed cannot identify before RIP {rip:#x}, so it cannot report the EPT violation at it"
            );
            return Ok(Normalized::Quiet { reason: reason as u32, flow: Flow::Stop(Outcome::Unsupported(why)) });
        };
        let q = match reason {
            ExitReason::EPT_VIOLATION => ept_violation_qualification(!write, write, false, perms, linear.is_some()),
            _ => 0,
        };
        let insn = Insn { rip: at, len: insn_len, pending: true };
        let work = if write { Work::DropWrite } else { Work::ReadAllOnes };
        let mut p = Parts::reflectable(reason, q, insn, detail, work);
        if let Ok((info, _)) = p.reflect.as_mut() {
            info.guest_physical = Some(gpa);
            if reason == ExitReason::EPT_VIOLATION {
                info.guest_linear = Some(linear.unwrap_or(0));
            }
        }
        Ok(p.into_event(self))
    }

    /// An access L1's EPT allows at L1-physical `hpa`: done on L1 RAM (outside it, reads
    /// return all ones and writes are dropped, as with no device there).
    pub(super) fn l2_ept_allowed(&mut self, eptp: u64, hpa: u64, len: u8, data: Option<u64>) -> Result<Flow, Error> {
        let n = usize::from(len.min(8));
        // L1's EPT maps the page to L1's devices (its local APIC, IOAPIC, pc-testdev): the
        // access reaches them as L1's own would.
        if !self.l1_vm.ram.contains(hpa, n as u64) {
            match data {
                Some(v) => {
                    self.platform.mmio_write(hpa, len, v);
                }
                None => {
                    let v = self.platform.mmio_read(hpa, len).unwrap_or(u64::MAX);
                    self.active().complete_read(v);
                }
            }
            return Ok(Flow::Continue);
        }
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
        Ok(flow.unwrap_or(Flow::Continue))
    }

    /// Makes L2's memslots follow L1's current EPT tables again (they allowed an access the
    /// memslots did not: a stale TLB in SDM 29.4 terms).
    fn refresh_l2_space(&mut self, eptp: u64) -> Result<Option<Flow>, Error> {
        let Some(l2) = self.nested.l2.as_mut() else { return Ok(None) };
        l2.space.invalidate();
        match l2.space.sync(&l2.vm, &self.l1_vm.ram, Source::Ept(eptp), MAX_L2_GPA) {
            Ok(_) => Ok(None),
            Err(SyncError::Layout(e)) => Ok(Some(Flow::Stop(Outcome::Unsupported(e.to_string())))),
            Err(SyncError::Host(e)) => Err(e),
        }
    }

    /// An instruction fetch KVM could not do (no memslot at L2's RIP, or at a paging structure
    /// of its translation) while L2's memslots follow L1's EPT: an EPT violation (fetch, or a
    /// read of a paging-structure entry with bit 8 clear, SDM 28.2.1) or a misconfiguration.
    /// `None` when the fetch is not EPT's doing, or (unless `retry`) when L1's tables allow it.
    fn l2_ept_fetch(&mut self, eptp: u64, rip: u64, retry: bool) -> Result<Option<Normalized>, Error> {
        let Some(l2) = self.nested.l2.as_ref() else { return Ok(None) };
        let v = l2.view();
        let (gpa, paging_structure) = match paging::translate(&v.mem, v.paging, rip, Access::default()) {
            Ok(gpa) => (gpa, false),
            Err(WalkError::Memory(f)) => (f.gpa, true),
            Err(WalkError::PageFault { .. }) => return Ok(None),
        };
        let (reason, perms) = match ept_translate_width(&RamView(&self.l1_vm.ram), eptp, gpa, PHYS_ADDR_WIDTH) {
            Ok((hpa, p)) if p.exec || paging_structure => {
                if !retry || !self.l1_vm.ram.contains(hpa, 1) || l2.space.lookup(gpa).is_some() {
                    return Ok(None);
                }
                let flow = self.refresh_l2_space(eptp)?.unwrap_or(Flow::Continue);
                return Ok(Some(Normalized::Quiet { reason: ExitReason::EPT_VIOLATION as u32, flow }));
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
        let why = format!(
            "L2 executes at RIP {rip:#x} (L2-physical {gpa:#x}), which L1's EPT does not map; kept in L0, it cannot continue"
        );
        let insn = Insn { rip, len: 0, pending: false };
        let detail = ExitDetail::Mmio { gpa, len: 0, write: false, data: 0 };
        let mut p = Parts::reflectable(reason, q, insn, detail, Work::Unsupported(why));
        if let Ok((info, _)) = p.reflect.as_mut() {
            info.guest_physical = Some(gpa);
            if reason == ExitReason::EPT_VIOLATION {
                info.guest_linear = Some(rip);
            }
        }
        Ok(Some(p.into_event(self)))
    }

    /// KVM could not fetch L2's instruction at `rip` while L2's memslots follow L1's EPT.
    fn l2_fetch_failure(&mut self, eptp: u64, rip: u64, raw: &RawExit) -> Result<Normalized, Error> {
        if let Some(n) = self.l2_ept_fetch(eptp, rip, true)? {
            return Ok(n);
        }
        let why = format!("L2 cannot fetch its instruction at RIP {rip:#x} ({raw:?})");
        Ok(Normalized::Quiet { reason: 0, flow: Flow::Stop(Outcome::Unsupported(why)) })
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
        // Where the host leaves RIP decides which to try first: two identical instructions in
        // a row match both ways.
        let past = self.nested.l2.as_ref().is_some_and(|l2| if input { l2.io_rip.in_past } else { l2.io_rip.out_past });
        let mut at = [0u8; 3];
        let here = self.l2_bytes(rip, &mut at).then(|| matches(&at)).flatten();
        if let (Some((len, imm)), false) = (here, past) {
            return (Insn { rip, len, pending: true }, imm);
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
        if let Some((len, imm)) = here {
            return (Insn { rip, len, pending: true }, imm);
        }
        (Insn { rip, len: 1, pending: input }, false)
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

    pub(super) fn l2_bytes(&mut self, rip: u64, buf: &mut [u8]) -> bool {
        let Some(l2) = self.nested.l2.as_ref() else { return false };
        let v = l2.view();
        paging::read_virt(&v.mem, v.paging, rip, buf).is_ok()
    }

    /// The EPTP L2's address space follows, if L1 enabled EPT.
    fn l2_eptp(&self) -> Option<u64> {
        self.nested.l2.as_ref().and_then(|l2| l2.space.eptp())
    }

    /// RDMSR of L2 that L1 does not take: the MSR as the L2 vCPU holds it; one KVM does not
    /// know is #GP.
    pub(super) fn l2_rdmsr(&mut self, index: u32) -> Result<Flow, Error> {
        let value = self.nested.l2.as_ref().map(|l2| l2.vcpu.get_msrs(&[index]));
        match value {
            Some(Ok(v)) if v.len() == 1 => self.active().complete_read(v[0]),
            _ => self.active().fail_msr(),
        }
        Ok(Flow::Continue)
    }

    /// WRMSR of L2 that L1 does not take: done on the L2 vCPU (IA32_SYSENTER_*, IA32_PAT and
    /// IA32_DEBUGCTL also kept for VM exits to save); one KVM refuses is #GP.
    pub(super) fn l2_wrmsr(&mut self, index: u32, value: u64) -> Result<Flow, Error> {
        let done = match self.nested.l2_tracked_msr_write(index, value) {
            Ok(Some(done)) => done,
            Ok(None) => self.nested.l2.as_ref().is_some_and(|l2| l2.vcpu.set_msrs(&[(index, value)]).is_ok()),
            Err(_) => false,
        };
        if !done {
            self.active().fail_msr();
        }
        Ok(Flow::Continue)
    }
}
