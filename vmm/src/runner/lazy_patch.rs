//! Patching at run time what was not patched at load (code L1 writes at run time), on hosts
//! that raise #UD for VMX instructions (`VmxTrap::NotReported`): nestbed keeps an execution
//! breakpoint at the first instruction of L1's #UD handler (IDT vector 6). When it fires, the
//! exception frame on L1's stack (SDM 6.12.1, 6.14.2) gives the faulting instruction; one of a
//! class nestbed patches is patched there and the delivery undone (the frame's RIP, CS,
//! RFLAGS, RSP and SS restored), so that L1 executes it again and it traps to nestbed. Any
//! other #UD goes on to L1's handler.
//!
//! The handler's address is computed again at L1's trapped and patched exits, where its
//! SREGS are fresh, when IDTR or the mode changed. Only L1; one debug register, one gdb leaves
//! free.
//!
//! `NESTBED_SIMULATE_HOST=vmx-ud` simulates such a host on one that reports VMX instructions:
//! nestbed raises #UD for L1's VMX instructions at unpatched addresses.

use iced_x86::{Decoder, DecoderOptions};

use super::Runner;
use crate::exit::Level;
use crate::machine::idt::{idt_target, return_frame, FrameKind, HandlerState, ReturnFrame};
use crate::machine::paging::{self, Access};
use crate::nested::trap::bitness;
use crate::patch::{Class, FoundBy, Site};
use crate::vmx::decode::VmxOp;

/// #UD (SDM 6.15, interrupt 6).
const UD: u8 = 6;
const CR0_PE: u64 = 1;
const EFER_LMA: u64 = 1 << 10;

/// The #UD catch's state.
#[derive(Debug, Default)]
pub struct UdCatch {
    /// Patching is active on a host that raises #UD for VMX instructions.
    pub armed: bool,
    /// The host is simulated (`NESTBED_SIMULATE_HOST=vmx-ud`).
    pub simulate: bool,
    /// IDTR base and limit, CR0.PE and EFER.LMA the handler was found for.
    key: Option<(u64, u16, u64, u64)>,
    /// Linear address of L1's #UD handler.
    handler: Option<u64>,
    /// gdb holds every debug register: said once.
    said_blocked: bool,
    /// L1 is single-stepped over its handler's first instruction, without the breakpoint (this
    /// host does not honour RFLAGS.RF, SDM 17.3.1.1, for its guest-debug breakpoints).
    stepping: bool,
}

impl UdCatch {
    pub fn new(armed: bool, simulate: bool) -> Self {
        UdCatch { armed, simulate, ..UdCatch::default() }
    }
}

impl Runner {
    /// At an L1 exit with fresh SREGS: finds L1's #UD handler again when IDTR or the mode changed.
    pub(super) fn track_l1_idt(&mut self) {
        if !self.ud_catch.armed {
            return;
        }
        let s = *self.l1.peek_sregs();
        let key = (s.idt.base, s.idt.limit, s.cr0 & CR0_PE, s.efer & EFER_LMA);
        if self.ud_catch.key == Some(key) {
            return;
        }
        self.ud_catch.key = Some(key);
        let m = paging::PagingMode { cr0: s.cr0, cr3: s.cr3, cr4: s.cr4, efer: s.efer };
        let ram = &self.l1_vm.ram;
        let handler = idt_target(|a, b| paging::read_virt(ram, m, a, b).is_ok(), &s, UD);
        tracing::debug!(handler = ?handler.map(|h| format!("{h:#x}")), "L1's #UD handler");
        if handler != self.ud_catch.handler {
            self.ud_catch.handler = handler;
            self.debug_generation_changed();
        }
    }

    /// nestbed's breakpoint at L1's #UD handler, while L1 runs.
    pub(super) fn ud_breakpoint(&self) -> Option<u64> {
        let on = self.level == Level::L1 && self.ud_catch.armed && !self.ud_catch.stepping;
        on.then_some(self.ud_catch.handler).flatten()
    }

    /// Whether L1 is single-stepped past its #UD handler's first instruction.
    pub(super) fn ud_stepping(&self) -> bool {
        self.level == Level::L1 && self.ud_catch.stepping
    }

    /// A single-step of L1 completed: the breakpoint goes back. True when it was the step past
    /// the handler's first instruction.
    pub(super) fn ud_stepped(&mut self) -> bool {
        if !self.ud_stepping() {
            return false;
        }
        self.ud_catch.stepping = false;
        self.debug_generation_changed();
        true
    }

    /// gdb holds every debug register: the catch waits for one (said once).
    pub(super) fn ud_catch_blocked(&mut self) {
        if std::mem::replace(&mut self.ud_catch.said_blocked, true) {
            return;
        }
        let note = "gdb uses all four debug registers: the #UD catch for VMX instructions written at run time is \
                    off until one is free"
            .to_string();
        tracing::warn!("{note}");
        self.notes.push(note);
    }

    /// Under the simulation: an L1 VMX instruction at an unpatched address takes #UD, as on
    /// `kvm_intel` with nested=0 (VMCALL is the host's hypercall there, not #UD). True when
    /// raised.
    pub(super) fn simulated_ud(&mut self, bytes: &[u8], rip: u64) -> bool {
        if !self.ud_catch.simulate {
            return false;
        }
        let vmx = crate::nested::trap::decode_trap(bytes, self.l1.peek_sregs(), rip);
        if vmx.is_err() || vmx.is_ok_and(|i| i.op == VmxOp::Vmcall) {
            return false;
        }
        tracing::debug!(rip = format_args!("{rip:#x}"), "simulated host: L1 VMX instruction takes #UD");
        self.l1.raise_fault(UD, None);
        true
    }

    /// The breakpoint at L1's #UD handler fired: a #UD of an unpatched instruction nestbed
    /// patches is undone after patching it; any other goes on to L1's handler, past the
    /// breakpoint.
    pub(super) fn catch_ud(&mut self) {
        if let Err(e) = self.l1.refresh() {
            tracing::warn!("#UD catch: {e}");
            return;
        }
        match self.ud_frame().and_then(|f| self.patch_faulting(f).map(|site| (f, site))) {
            Some((frame, (site, first))) => self.undo_delivery(frame, site, first),
            None => {
                tracing::debug!("L1 #UD not of an unpatched instruction: to L1's handler");
                self.ud_catch.stepping = true;
                self.debug_generation_changed();
            }
        }
    }

    /// The frame the #UD's delivery pushed, when L1 can return to it with the handler's CS
    /// and SS (real mode: any segment).
    fn ud_frame(&mut self) -> Option<ReturnFrame> {
        let s = *self.l1.sregs();
        let r = *self.l1.regs();
        let kind = FrameKind::of(&s);
        let now = HandlerState { rsp: r.rsp, ss: s.ss.selector, rflags: r.rflags, cpl: (s.cs.selector & 3) as u8 };
        let mut stack = [0u8; 40];
        let stack = &mut stack[..kind.max_len()];
        let base = if kind == FrameKind::Ia32e { 0 } else { s.ss.base };
        let n = self.l1_read_linear(base.wrapping_add(r.rsp), stack);
        let frame = return_frame(kind, &stack[..n], now)?;
        let same = frame.cs == s.cs.selector && frame.ss == s.ss.selector;
        (kind == FrameKind::Real || same).then_some(frame)
    }

    /// Patches the instruction at the frame's RIP when it is one of a patched class, not
    /// patched now; returns the site, and whether it is the first time there.
    fn patch_faulting(&mut self, frame: ReturnFrame) -> Option<(Site, bool)> {
        let s = *self.l1.sregs();
        let (cs_base, bits) = match FrameKind::of(&s) {
            FrameKind::Real => (u64::from(frame.cs) << 4, 16),
            _ => (if bitness(&s) == 64 { 0 } else { s.cs.base }, bitness(&s)),
        };
        let linear = cs_base.wrapping_add(frame.rip);
        let mut bytes = [0u8; 15];
        let n = self.l1_read_linear(linear, &mut bytes);
        let ins = Decoder::with_ip(bits, &bytes[..n], frame.rip, DecoderOptions::NONE).decode();
        let class = Class::of(&ins).filter(|&c| self.patches.as_ref().is_some_and(|p| p.patches(c)))?;
        let len = ins.len() as u64;
        let gpa = self.debug_translate(Level::L1, linear)?;
        // A site is one run of guest-physical bytes.
        if self.debug_translate(Level::L1, linear + len - 1) != Some(gpa + len - 1) {
            return None;
        }
        let original = bytes[..ins.len()].to_vec();
        let site = Site { addr: gpa, len: len as u8, original, class, text: ins.to_string(), found_by: FoundBy::Sweep };
        let ram = self.l1_vm.ram.clone();
        let p = self.patches.as_mut()?;
        let first = !p.at_run_time.contains(&gpa);
        p.patch_at_run_time(site.clone(), &ram).then_some((site, first))
    }

    /// L1 returns to the faulting instruction, now a trap (SDM 6.14.3: what IRET would do);
    /// said the `first` time at a site.
    fn undo_delivery(&mut self, frame: ReturnFrame, site: Site, first: bool) {
        if FrameKind::of(self.l1.sregs()) == FrameKind::Real {
            let cs = &mut self.l1.sregs_mut().cs;
            cs.selector = frame.cs;
            cs.base = u64::from(frame.cs) << 4;
        }
        let r = self.l1.regs_mut();
        r.rip = frame.rip;
        r.rflags = frame.rflags;
        r.rsp = frame.rsp;
        if !first {
            return;
        }
        let note = format!(
            "L1 {} at {:#x} took #UD (not patched at load: code written at run time?): patched now and re-executed",
            site.class, frame.rip
        );
        tracing::warn!("{note}");
        self.notes.push(note);
    }

    /// Reads L1's linear memory as the CPU sees it (patched sites as their traps); returns
    /// how many bytes were readable from the start.
    fn l1_read_linear(&mut self, addr: u64, buf: &mut [u8]) -> usize {
        let m = self.l1.paging();
        let mut done = 0;
        while done < buf.len() {
            let at = addr.wrapping_add(done as u64);
            let Ok(gpa) = paging::translate(&self.l1_vm.ram, m, at, Access::default()) else { break };
            let n = ((4096 - at % 4096) as usize).min(buf.len() - done);
            if self.l1_vm.ram.read(gpa, &mut buf[done..done + n]).is_err() {
                break;
            }
            done += n;
        }
        done
    }
}
