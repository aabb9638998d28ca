//! L1's exits: what each KVM exit of L1 is as an `Exit`, and nestbed's handling of L1's MSRs.
//! Every L1 exit is nestbed's (the L0's) to handle.

use super::dispatch::{Event, Normalized, Work};
use super::{Flow, Outcome, Runner};
use crate::error::Error;
use crate::exit::{ExitDetail, Level, VmcsAccess};
use crate::machine::RawExit;
use crate::nested::debug_regs::IA32_DEBUGCTL;
use crate::nested::env::{gpr, gprs, RamView, PHYS_ADDR_WIDTH};
use crate::nested::trap;
use crate::vmx::decode::{effective_address, exit_qualification, MemOperand, Operand, Seg, VmxInsn, VmxOp};
use crate::vmx::evmcs;
use crate::vmx::exits::{io_qualification, ExitReason};
use crate::vmx::fields;
use crate::vmx::sensitive::decode_sensitive;

const IA32_FEATURE_CONTROL: u32 = 0x3a;
/// VMMCALL's bytes: AMD's hypercall instruction.
pub(super) const VMMCALL: [u8; 3] = [0x0f, 0x01, 0xd9];

impl Runner {
    pub(super) fn normalize_l1(&mut self, raw: RawExit) -> Result<Normalized, Error> {
        let rip = self.l1.regs().rip;
        let (reason, qualification, detail, work) = match raw {
            RawExit::IoOut { port, size, data } => (
                ExitReason::IO_INSTRUCTION,
                io_qualification(port, size, false, false, false, false),
                ExitDetail::Io { port, size, write: true, data },
                Work::PortOut { port, size, data },
            ),
            RawExit::IoIn { port, size, count } => (
                ExitReason::IO_INSTRUCTION,
                io_qualification(port, size, true, count > 1, false, false),
                ExitDetail::Io { port, size, write: false, data: 0 },
                Work::PortIn { port, size, count },
            ),
            RawExit::Shutdown => (ExitReason::TRIPLE_FAULT, 0, ExitDetail::None, Work::TripleFault),
            // This host sometimes reports HLT where L1 executed none (seen after an interrupt
            // injected while L1 was single-stepped): nothing halted, so L1 goes on.
            RawExit::Hlt if !self.follows_hlt(rip) => {
                tracing::debug!(rip = format_args!("{rip:#x}"), "HLT exit not after an HLT: ignored");
                return Ok(Normalized::Quiet { reason: ExitReason::HLT as u32, flow: Flow::Continue });
            }
            RawExit::Hlt => (ExitReason::HLT, 0, ExitDetail::None, Work::L1Hlt),
            RawExit::EmulationFailure { bytes } => {
                self.l1.refresh()?;
                // The host reports an instruction's bytes only up to the end of its page: one
                // that crosses into the next page is read again from L1's memory.
                let mut fetched = [0u8; 15];
                let bytes = if bytes.len() < fetched.len() && self.read_l1_virt(rip, &mut fetched) {
                    fetched.to_vec()
                } else {
                    bytes
                };
                self.track_l1_idt();
                if self.simulated_ud(&bytes, rip) {
                    return Ok(Normalized::Quiet { reason: ExitReason::EXCEPTION_NMI as u32, flow: Flow::Continue });
                }
                self.note_host_trapped(Level::L1, rip, &bytes);
                return self.normalize_l1_vmx(&bytes);
            }
            // L1 can take the interrupt it had pending: delivered before the next KVM_RUN.
            RawExit::IrqWindowOpen => {
                return Ok(Normalized::Quiet { reason: ExitReason::INTERRUPT_WINDOW as u32, flow: Flow::Continue })
            }
            RawExit::Patched { bytes } if bytes.starts_with(&VMMCALL) => {
                let exit = self.next_exit(Level::L1, ExitReason::VMCALL as u32, 0, rip);
                let work = Work::Hypercall { len: VMMCALL.len() as u8, rip };
                return Ok(Normalized::Event(Event { exit, work, l2: None }));
            }
            RawExit::Patched { bytes } => {
                self.l1.refresh()?;
                self.track_l1_idt();
                let bitness = trap::bitness(self.l1.peek_sregs());
                return match decode_sensitive(&bytes, bitness, rip) {
                    Some(insn) => Ok(self.normalize_l1_sensitive(insn, rip)),
                    None => self.normalize_l1_vmx(&bytes),
                };
            }
            RawExit::RdMsr { index } => (
                ExitReason::RDMSR,
                0,
                ExitDetail::Msr { index, name: crate::msr::name(index), write: false, value: 0 },
                Work::L1Rdmsr { index },
            ),
            RawExit::WrMsr { index, data } => (
                ExitReason::WRMSR,
                0,
                ExitDetail::Msr { index, name: crate::msr::name(index), write: true, value: data },
                Work::L1Wrmsr { index, value: data },
            ),
            // Outside RAM there is no device: reads return all ones, writes are dropped.
            RawExit::MmioRead { gpa, len } => (
                ExitReason::EPT_VIOLATION,
                1,
                ExitDetail::Mmio { gpa, len, write: false, data: 0 },
                Work::MmioRead { gpa, len },
            ),
            RawExit::MmioWrite { gpa, len, data } => (
                ExitReason::EPT_VIOLATION,
                2,
                ExitDetail::Mmio { gpa, len, write: true, data },
                Work::MmioWrite { gpa, len, data },
            ),
            // KVM could not fetch L1's instruction: say where, and what is there.
            RawExit::InternalError { suberror: 1 } => {
                let gpa = self.debug_translate(Level::L1, rip);
                let place = match gpa {
                    Some(g) if self.l1_vm.ram.contains(g, 1) => format!("guest-physical {g:#x}, in RAM"),
                    Some(g) => {
                        format!("guest-physical {g:#x}, outside guest RAM ({} MiB)", self.l1_vm.ram.size() >> 20)
                    }
                    None => "an address L1's page tables do not map".to_string(),
                };
                let why = format!(
                    "L1 cannot run the code at RIP {rip:#x} ({place}): KVM could not fetch or emulate it\n{}",
                    super::dump_registers(&mut self.l1)
                );
                return Ok(Normalized::Quiet { reason: 0, flow: Flow::Stop(Outcome::Unsupported(why)) });
            }
            other => {
                let why = format!("unexpected L1 exit {other:?}\n{}", super::dump_registers(&mut self.l1));
                return Ok(Normalized::Quiet { reason: 0, flow: Flow::Stop(Outcome::Unsupported(why)) });
            }
        };
        let mut exit = self.next_exit(Level::L1, reason as u32, qualification, rip);
        exit.detail = detail;
        Ok(Normalized::Event(Event { exit, work, l2: None }))
    }

    /// A VMX instruction L1 executed, trapped as an emulation failure.
    fn normalize_l1_vmx(&mut self, bytes: &[u8]) -> Result<Normalized, Error> {
        self.l1.refresh()?;
        let rip = self.l1.regs().rip;
        let insn = match trap::decode_trap(bytes, self.l1.peek_sregs(), rip) {
            Ok(i) => i,
            Err(e) => {
                // Not a VMX instruction KVM could not emulate (e.g. MWAIT): #UD, as without
                // the feature.
                tracing::debug!(rip = format_args!("{rip:#x}"), ?bytes, "L1 emulation failure: {e}; injecting #UD");
                self.l1.raise_fault(6, None);
                return Ok(Normalized::Quiet { reason: ExitReason::EXCEPTION_NMI as u32, flow: Flow::Continue });
            }
        };
        let exit = self.vmx_exit(Level::L1, &insn, bytes, rip);
        Ok(Normalized::Event(Event { exit, work: Work::L1Vmx { insn, rip }, l2: None }))
    }

    /// The exit for a trapped VMX instruction. Its text (mnemonic, operands, bytes) is only
    /// built when a trace or a script will read it.
    pub(super) fn vmx_exit(&mut self, level: Level, insn: &VmxInsn, bytes: &[u8], rip: u64) -> crate::exit::Exit {
        let observed = self.observed();
        let mut exit = self.next_exit(level, insn.op.exit_reason() as u32, exit_qualification(insn), rip);
        exit.detail = if observed {
            exit.insn = bytes[..usize::from(insn.len).min(bytes.len())].to_vec();
            let vmcs = self.vmcs_access(level, insn);
            ExitDetail::Vmx { mnemonic: insn.op.name().to_string(), operands: insn.to_string(), vmcs }
        } else {
            ExitDetail::Vmx { mnemonic: String::new(), operands: String::new(), vmcs: None }
        };
        exit
    }

    /// The field a VMREAD or VMWRITE names, from the register operand of the guest that
    /// executed it; for L1 also the value: the field's for a VMREAD, the source's for a VMWRITE.
    fn vmcs_access(&mut self, level: Level, insn: &VmxInsn) -> Option<VmcsAccess> {
        if !matches!(insn.op, VmxOp::Vmread | VmxOp::Vmwrite) {
            return None;
        }
        let vcpu = match level {
            Level::L1 => &self.l1,
            Level::L2 => &self.nested.l2.as_ref()?.vcpu,
        };
        let mask = if insn.operand_size == 64 { u64::MAX } else { 0xffff_ffff };
        let encoding = (gpr(vcpu.peek_regs(), insn.reg2()?) & mask) as u32;
        let field = fields::by_encoding(encoding).map(|(_, f)| f.name);
        let value = match (level, insn.op, insn.rm()) {
            (Level::L2, ..) => None,
            (_, VmxOp::Vmread, _) => self.nested.vmx.current_vmcs().and_then(|v| v.read(encoding)),
            (_, _, Some(Operand::Reg(r))) => Some(gpr(vcpu.peek_regs(), r) & mask),
            (_, _, Some(Operand::Mem(m))) => self.vmwrite_source(insn, &m),
            _ => None,
        };
        Some(VmcsAccess { field, encoding, value })
    }

    /// VMWRITE's memory source, read through L1's segments and page tables (the model reads it
    /// again when it executes the instruction, with its faults).
    fn vmwrite_source(&mut self, insn: &VmxInsn, m: &MemOperand) -> Option<u64> {
        let (regs, sregs) = (self.l1.peek_regs(), self.l1.peek_sregs());
        let ea = effective_address(m, &gprs(regs));
        let long = sregs.efer & (1 << 10) != 0 && sregs.cs.l != 0;
        let base = match m.segment {
            Seg::Fs => sregs.fs.base,
            Seg::Gs => sregs.gs.base,
            _ if long => 0,
            Seg::Es => sregs.es.base,
            Seg::Cs => sregs.cs.base,
            Seg::Ss => sregs.ss.base,
            Seg::Ds => sregs.ds.base,
        };
        let mut b = [0u8; 8];
        let n = usize::from(insn.operand_size / 8);
        (self.debug_read(Level::L1, base.wrapping_add(ea), &mut b[..n]) == n).then(|| u64::from_le_bytes(b))
    }

    /// The field a VMWRITE of L1 writes, read before the instruction can change registers.
    pub(super) fn vmwrite_field(&self, insn: &VmxInsn) -> Option<u64> {
        insn.reg2().filter(|_| insn.op == VmxOp::Vmwrite).map(|r| gpr(self.l1.peek_regs(), r))
    }

    /// RDMSR of L1: the VMX capability MSRs and IA32_FEATURE_CONTROL; any other MSR that
    /// reaches nestbed is unknown to the host: #GP.
    pub(super) fn l1_rdmsr(&mut self, index: u32) -> Flow {
        if index == evmcs::MSR_EVMCS && self.evmcs {
            let v = self.nested.vmx.read_evmcs_msr();
            self.l1.complete_read(v);
            return Flow::Continue;
        }
        match self.platform.rdmsr(index) {
            Some(Ok(v)) => {
                self.l1.complete_read(v);
                return Flow::Continue;
            }
            Some(Err(_)) => {
                self.l1.fail_msr();
                return Flow::Continue;
            }
            None => {}
        }
        match self.nested.vmx.caps.msr(index) {
            Some(v) => self.l1.complete_read(v),
            None => {
                tracing::debug!(msr = format_args!("{index:#x}"), "L1 RDMSR of an unknown MSR: #GP");
                self.l1.fail_msr();
            }
        }
        Flow::Continue
    }

    /// WRMSR of L1: IA32_DEBUGCTL is performed and kept (`nested::debug_regs`); the local
    /// APIC's MSRs go to the platform; IA32_FEATURE_CONTROL is locked and the capability MSRs
    /// are read-only: #GP (SDM 24.7, Appendix A). Writing back the same locked value is
    /// tolerated.
    pub(super) fn l1_wrmsr(&mut self, index: u32, value: u64) -> Flow {
        if index == evmcs::MSR_EVMCS && self.evmcs {
            let r = self.nested.vmx.write_evmcs_msr(value, &mut RamView(&self.l1_vm.ram), PHYS_ADDR_WIDTH);
            if let Err(why) = r {
                tracing::debug!(
                    value = format_args!("{value:#x}"),
                    ?why,
                    "L1 WRMSR of the enlightened-VMCS MSR refused: #GP"
                );
                self.l1.fail_msr();
            }
            return Flow::Continue;
        }
        if index == IA32_DEBUGCTL {
            match self.nested.l1_debugctl_write(&self.l1, value) {
                Ok(true) => {}
                Ok(false) => self.l1.fail_msr(),
                Err(e) => {
                    tracing::warn!("L1 WRMSR of IA32_DEBUGCTL: {e}");
                    self.l1.fail_msr();
                }
            }
            return Flow::Continue;
        }
        match self.platform.wrmsr(index, value) {
            Some(Ok(())) => return Flow::Continue,
            Some(Err(_)) => {
                self.l1.fail_msr();
                return Flow::Continue;
            }
            None => {}
        }
        let same = index == IA32_FEATURE_CONTROL && self.nested.vmx.caps.msr(index) == Some(value);
        if !same {
            tracing::debug!(msr = format_args!("{index:#x}"), "L1 WRMSR refused: #GP");
            self.l1.fail_msr();
        }
        Flow::Continue
    }
}

impl Runner {
    /// Whether L1's instruction before `rip` is HLT (0xF4).
    fn follows_hlt(&mut self, rip: u64) -> bool {
        let Some(gpa) = self.debug_translate(Level::L1, rip.wrapping_sub(1)) else { return false };
        let mut b = [0u8; 1];
        self.l1_vm.ram.read(gpa, &mut b).is_ok() && b[0] == 0xf4
    }
}

impl Runner {
    /// Reads L1's memory at virtual `gva` through its page tables.
    fn read_l1_virt(&mut self, gva: u64, buf: &mut [u8]) -> bool {
        let m = self.l1.paging();
        crate::machine::paging::read_virt(&self.l1_vm.ram, m, gva, buf).is_ok()
    }
}
