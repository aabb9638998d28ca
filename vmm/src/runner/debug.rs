//! What a debugger needs from the machine: guest debug (single-step, hardware breakpoints) on
//! whichever vCPU runs, data watchpoints, software breakpoints keyed by guest-physical address,
//! memory of either level through its own page tables (and L1's EPT for L2), and the decision
//! when a step is complete, including steps that cross a VM entry or exit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvm_bindings::{
    kvm_guest_debug, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_USE_SW_BP,
};

use super::Runner;
use crate::error::{host, Error};
use crate::exit::{Exit, ExitDetail, Handler, Level};
use crate::machine::insn::memory_accesses;
use crate::machine::paging::{self, Access};
use crate::machine::Vcpu;
use crate::nested::trap::bitness;
use crate::script::ScriptHost;
use crate::vmx::exits::reason_name;
use crate::vmx::state::{load_guest_state, save_guest_state};
use crate::vmx::vmcs::Vmcs;

pub const INT3: u8 = 0xcc;
const DR6_BS: u64 = 1 << 14;
const PAGE: u64 = 4096;

/// Flags the debugger side raises to get the run loop's attention; it also kicks the vCPU out
/// of KVM_RUN with a signal.
#[derive(Debug, Default)]
pub struct Link {
    /// The debugger sent data.
    pub data: AtomicBool,
    /// A debugger is connecting.
    pub attach: AtomicBool,
}

impl Link {
    pub fn wants_attention(&self) -> bool {
        self.data.load(Ordering::SeqCst) || self.attach.load(Ordering::SeqCst)
    }
}

/// What a hardware debug register watches (SDM 17.2.4, DR7 R/W bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HwKind {
    Exec,
    Write,
    Access,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HwSlot {
    pub addr: u64,
    pub kind: HwKind,
    pub len: u8,
}

/// Why the guest stopped for the debugger. The stopped thread is the level running then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DebugEvent {
    Step,
    SwBreak,
    HwBreak,
    Watch { addr: u64, kind: HwKind },
    ScriptStop(String),
    BreakOnExit(String),
}

/// A data watchpoint: the address gdb gave, and the guest-physical range it covers, so a
/// level's access through any mapping of that memory hits it.
#[derive(Debug, Clone, Copy)]
struct SoftWatch {
    addr: u64,
    gpa: u64,
    len: u64,
    kind: HwKind,
}

const MAX_WATCHES: usize = 4;

#[derive(Debug, Default)]
pub struct DebugState {
    pub link: Option<Arc<Link>>,
    pub attached: bool,
    pub step: bool,
    /// Software breakpoints: guest-physical address → the byte the int3 replaced.
    sw: BTreeMap<u64, u8>,
    hw: [Option<HwSlot>; 4],
    /// Data watchpoints, emulated by single-stepping (see `watch_candidate`).
    watches: Vec<SoftWatch>,
    /// The watchpoint the instruction being stepped touches.
    candidate: Option<(u64, HwKind)>,
    break_on_exit: Vec<(u32, Option<Level>)>,
    pending: Option<DebugEvent>,
    /// Bumped on every change of the guest-debug settings; `applied` is what each vCPU has.
    generation: u64,
    applied: [u64; 2],
    /// The last exits while a debugger is attached, oldest first, for gdb's `exits`.
    recent: std::collections::VecDeque<String>,
}

/// How many exits gdb's `exits` lists.
const RECENT: usize = 16;

impl DebugState {
    /// Whether gdb has a software breakpoint at guest-physical `gpa`.
    pub(super) fn has_sw_breakpoint(&self, gpa: u64) -> bool {
        self.sw.contains_key(&gpa)
    }

    /// A debug state whose guest-debug settings are applied at the first entry when
    /// `generation` is not 0 (patched sites need software breakpoints without a debugger).
    pub(super) fn with_generation(generation: u64) -> Self {
        DebugState { generation, ..DebugState::default() }
    }

    /// Notes an exit for gdb's `exits`: number, level, reason, what it names (a VMCS field
    /// with its value, an MSR, a port), RIP and handler.
    pub(super) fn remember(&mut self, exit: &Exit, handler: Handler) {
        let what = match &exit.detail {
            ExitDetail::Vmx { vmcs: Some(a), .. } => a.describe(),
            ExitDetail::Msr { index, name, .. } => format!("{} ({index:#x})", name.unwrap_or("MSR")),
            ExitDetail::Io { port, write, .. } => format!("port {port:#x} {}", if *write { "out" } else { "in" }),
            ExitDetail::Mmio { gpa, .. } => format!("gpa {gpa:#x}"),
            _ => String::new(),
        };
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(format!(
            "#{:<8} {} {:<20} {:<40} rip {:#x} -> {}",
            exit.seq,
            exit.level.as_str(),
            exit.reason_name(),
            what,
            exit.rip,
            handler.as_str()
        ));
    }

    /// The exits `remember` kept, oldest first.
    pub(crate) fn recent(&self) -> impl Iterator<Item = &String> {
        self.recent.iter()
    }

    /// Single-stepping: for gdb's step, or to watch data accesses.
    fn stepping(&self) -> bool {
        self.step || !self.watches.is_empty()
    }
}

fn level_index(l: Level) -> usize {
    match l {
        Level::L1 => 0,
        Level::L2 => 1,
    }
}

/// DR7 for the slots (SDM 17.2.4): L0-3 enables, R/W0-3 and LEN0-3 fields.
fn dr7(slots: &[Option<HwSlot>; 4]) -> u64 {
    let mut v = 0u64;
    for (i, s) in slots.iter().enumerate() {
        let Some(s) = s else { continue };
        let rw = match s.kind {
            HwKind::Exec => 0b00,
            HwKind::Write => 0b01,
            HwKind::Access => 0b11,
        };
        let len = match (s.kind, s.len) {
            (HwKind::Exec, _) | (_, 1) => 0b00,
            (_, 2) => 0b01,
            (_, 8) => 0b10,
            _ => 0b11,
        };
        v |= 0b11 << (2 * i);
        v |= (rw | len << 2) << (16 + 4 * i);
    }
    v
}

impl Runner {
    pub fn level(&self) -> Level {
        self.level
    }

    pub(crate) fn set_debug_link(&mut self, link: Arc<Link>) {
        self.debug.link = Some(link);
    }

    pub(crate) fn debug_attach(&mut self) {
        self.debug.attached = true;
        self.debug.generation += 1;
    }

    /// The debugger left: its breakpoints go, the guest runs on untouched.
    pub(crate) fn debug_detach(&mut self) {
        for (gpa, orig) in std::mem::take(&mut self.debug.sw) {
            let _ = self.l1_vm.ram.write(gpa, &[orig]);
        }
        self.debug.hw = [None; 4];
        self.debug.watches.clear();
        self.debug.candidate = None;
        self.debug.step = false;
        self.debug.break_on_exit.clear();
        self.debug.pending = None;
        self.debug.attached = false;
        self.debug.generation += 1;
    }

    pub(crate) fn set_step(&mut self, on: bool) {
        if self.debug.step != on {
            self.debug.step = on;
            self.debug.generation += 1;
        }
    }

    /// The guest-debug settings must be applied again (the monitor trap flag changed).
    pub(super) fn debug_generation_changed(&mut self) {
        self.debug.generation += 1;
    }

    /// Brings the running vCPU's KVM guest-debug settings up to date.
    pub(super) fn apply_guest_debug(&mut self) -> Result<(), Error> {
        let i = level_index(self.level);
        if self.debug.applied[i] == self.debug.generation {
            return Ok(());
        }
        let mut dbg = kvm_guest_debug::default();
        // Patched sites are int3 traps: software breakpoints must exit to nestbed.
        if self.patches.is_some() && !self.debug.attached {
            dbg.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP;
        }
        // The monitor trap flag (SDM 26.5.2), or waiting for an interrupt window: L2
        // single-stepped.
        if self.events_stepping() {
            dbg.control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP;
        }
        // L1 intercepts #BP: L2's INT3 must reach nestbed.
        if self.level == Level::L2 && self.l2_events.intercept_bp {
            dbg.control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP;
        }
        if self.debug.attached {
            dbg.control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP;
            if self.debug.stepping() {
                dbg.control |= KVM_GUESTDBG_SINGLESTEP;
            }
            if self.debug.hw.iter().any(Option::is_some) {
                dbg.control |= KVM_GUESTDBG_USE_HW_BP;
                for (r, s) in dbg.arch.debugreg.iter_mut().zip(self.debug.hw.iter()) {
                    *r = s.map_or(0, |s| s.addr);
                }
                dbg.arch.debugreg[7] = dr7(&self.debug.hw);
            }
        }
        // Where L2's injected event lands, or L1's #UD handler: an execution breakpoint in a
        // slot gdb leaves free.
        let own = self.stop_breakpoint().or_else(|| self.ud_breakpoint());
        match (own, self.debug.hw.iter().position(Option::is_none)) {
            (Some(addr), Some(i)) => {
                dbg.control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP;
                let mut slots = self.debug.hw;
                slots[i] = Some(HwSlot { addr, kind: HwKind::Exec, len: 1 });
                for (r, s) in dbg.arch.debugreg.iter_mut().zip(slots.iter()) {
                    *r = s.map_or(0, |s| s.addr);
                }
                dbg.arch.debugreg[7] = dr7(&slots);
            }
            (Some(_), None) if self.level == Level::L1 => self.ud_catch_blocked(),
            _ => {}
        }
        tracing::debug!(
            level = self.level.as_str(),
            control = format_args!("{:#x}", dbg.control),
            "KVM_SET_GUEST_DEBUG"
        );
        self.active().fd().set_guest_debug(&dbg).map_err(host("KVM_SET_GUEST_DEBUG"))?;
        self.debug.applied[i] = self.debug.generation;
        Ok(())
    }

    /// A KVM_EXIT_DEBUG: ours (a step, one of our breakpoints) or the guest's own, which is
    /// re-injected.
    pub(super) fn debug_exit(&mut self, exception: u32, pc: u64, dr6: u64) -> Option<DebugEvent> {
        match exception {
            1 if dr6 & DR6_BS != 0 && self.ud_stepped() && !self.debug.stepping() && !self.l1_window_step => None,
            1 if dr6 & DR6_BS != 0 && self.events_step(pc) => None,
            1 if self.stop_breakpoint() == Some(pc) && self.delivered() => None,
            1 if dr6 & DR6_BS == 0 && self.ud_breakpoint() == Some(pc) => {
                self.catch_ud();
                None
            }
            1 => {
                let hit = (0..4).find(|i| dr6 & (1 << i) != 0).and_then(|i| self.debug.hw[i]);
                if let Some(slot) = hit {
                    return Some(match slot.kind {
                        HwKind::Exec => DebugEvent::HwBreak,
                        kind => DebugEvent::Watch { addr: slot.addr, kind },
                    });
                }
                if self.debug.stepping() || dr6 & DR6_BS != 0 {
                    return self.step_done();
                }
                self.active().inject_exception(1, None);
                None
            }
            3 => {
                let level = self.level;
                if self.debug_translate(level, pc).is_some_and(|gpa| self.debug.sw.contains_key(&gpa)) {
                    return Some(DebugEvent::SwBreak);
                }
                // The guest's own int3: deliver #BP past it, as the CPU would.
                let r = self.active().regs_mut();
                r.rip = r.rip.wrapping_add(1);
                self.active().inject_exception(3, None);
                None
            }
            _ => None,
        }
    }

    /// After an exit was handled: a break-on-exit hit, or the end of a step. A step ends when
    /// the instruction completed (RIP moved from where it stood at KVM_RUN: an `out` KVM
    /// finished before exiting, a trapped VMX instruction) or control changed level (VM entry,
    /// reflected VM exit); an `in` KVM still has to complete runs on to its debug exit.
    pub(super) fn debug_after_exit(&mut self, level_before: Level, rip_entry: u64) -> Option<DebugEvent> {
        if let Some(ev) = self.debug.pending.take() {
            return Some(ev);
        }
        if self.debug.attached
            && self.debug.stepping()
            && (self.level != level_before || self.active().regs().rip != rip_entry)
        {
            return self.step_done();
        }
        None
    }

    /// One instruction completed while stepping: a watchpoint it touched, gdb's step, or
    /// (watching only) nothing to report.
    fn step_done(&mut self) -> Option<DebugEvent> {
        if let Some((addr, kind)) = self.debug.candidate.take() {
            return Some(DebugEvent::Watch { addr, kind });
        }
        self.debug.step.then_some(DebugEvent::Step)
    }

    /// Before stepping an instruction with watchpoints set: does it touch one? (x86 debug
    /// registers report data hits after the instruction, SDM 17.3.1.2; so does this.)
    pub(super) fn prepare_watch_step(&mut self) {
        self.debug.candidate = None;
        if !self.debug.attached || self.debug.watches.is_empty() {
            return;
        }
        let level = self.level;
        let Some(v) = self.vcpu_of(level) else { return };
        let (r, s) = (*v.regs(), *v.sregs());
        let mut bytes = [0u8; 15];
        let n = self.debug_read(level, r.rip, &mut bytes);
        for a in memory_accesses(&bytes[..n], bitness(&s), r.rip, &r, &s) {
            let Some(gpa) = self.debug_translate(level, a.addr) else { continue };
            let hit = self
                .debug
                .watches
                .iter()
                .find(|w| gpa < w.gpa + w.len && w.gpa < gpa + a.size && (a.write || w.kind == HwKind::Access));
            if let Some(w) = hit {
                self.debug.candidate = Some((w.addr, if a.write { HwKind::Write } else { HwKind::Access }));
                return;
            }
        }
    }

    pub(crate) fn add_watch(&mut self, level: Level, addr: u64, len: u64, kind: HwKind) -> bool {
        if self.debug.watches.len() >= MAX_WATCHES || len == 0 {
            return false;
        }
        let Some(gpa) = self.debug_translate(level, addr) else { return false };
        self.debug.watches.push(SoftWatch { addr, gpa, len, kind });
        self.debug.generation += 1;
        true
    }

    pub(crate) fn remove_watch(&mut self, addr: u64, kind: HwKind) -> bool {
        let before = self.debug.watches.len();
        self.debug.watches.retain(|w| !(w.addr == addr && w.kind == kind));
        self.debug.generation += 1;
        self.debug.watches.len() != before
    }

    pub(super) fn check_break_on_exit(&mut self, exit: &Exit) {
        if !self.debug.attached {
            return;
        }
        let hit = self
            .debug
            .break_on_exit
            .iter()
            .any(|&(r, l)| r == exit.reason & 0xffff && l.is_none_or(|l| l == exit.level));
        if hit {
            self.debug.pending = Some(DebugEvent::BreakOnExit(format!(
                "{} {} at {:#x}",
                exit.level.as_str(),
                exit.reason_name(),
                exit.rip
            )));
        }
    }

    /// The vCPU holding a level's registers: L2's keeps its state as of its last exit while
    /// L1 runs.
    pub(crate) fn vcpu_of(&mut self, level: Level) -> Option<&mut Vcpu> {
        match level {
            Level::L1 => Some(&mut self.l1),
            Level::L2 => self.nested.l2.as_mut().map(|l2| &mut l2.vcpu),
        }
    }

    /// The current VMCS address while it is launched: the L2 thread exists.
    pub(crate) fn l2_vmcs(&self) -> Option<u64> {
        self.nested.l2.as_ref()?;
        self.nested.vmx.current_vmcs().filter(|v| v.launched).and(self.nested.vmx.current)
    }

    /// L1-physical address of a level's linear address: its page tables, then for L2 its
    /// address space (L1's EPT when enabled, else identity), as L2 itself sees memory.
    pub(crate) fn debug_translate(&mut self, level: Level, gva: u64) -> Option<u64> {
        match level {
            Level::L1 => {
                let m = self.l1.paging();
                paging::translate(&self.l1_vm.ram, m, gva, Access::default()).ok()
            }
            Level::L2 => {
                let l2 = self.nested.l2.as_mut()?;
                let m = l2.vcpu.paging();
                let mem = l2.memory();
                let gpa = paging::translate(&mem, m, gva, Access::default()).ok()?;
                let r = l2.space.lookup(gpa)?;
                Some(r.l1 + (gpa - r.gpa))
            }
        }
    }

    /// Reads a level's virtual memory as the debugger sees it (our int3s hidden); returns how
    /// many bytes were readable from the start.
    pub(crate) fn debug_read(&mut self, level: Level, gva: u64, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let addr = gva.wrapping_add(done as u64);
            let n = ((PAGE - addr % PAGE) as usize).min(buf.len() - done);
            let Some(gpa) = self.debug_translate(level, addr) else { break };
            if self.l1_vm.ram.read(gpa, &mut buf[done..done + n]).is_err() {
                break;
            }
            for (i, b) in buf[done..done + n].iter_mut().enumerate() {
                let at = gpa + i as u64;
                if let Some(orig) = self.debug.sw.get(&at) {
                    *b = *orig;
                }
                // Patched sites show their original instruction, as the guest's code has it.
                if let Some(orig) = self.patches.as_ref().and_then(|p| p.original_byte(at)) {
                    *b = orig;
                }
            }
            done += n;
        }
        done
    }

    /// Writes a level's virtual memory; bytes under our int3s update the saved originals.
    pub(crate) fn debug_write(&mut self, level: Level, gva: u64, data: &[u8]) -> bool {
        let mut done = 0;
        while done < data.len() {
            let addr = gva.wrapping_add(done as u64);
            let n = ((PAGE - addr % PAGE) as usize).min(data.len() - done);
            let Some(gpa) = self.debug_translate(level, addr) else { return false };
            for (i, &b) in data[done..done + n].iter().enumerate() {
                let a = gpa + i as u64;
                let r = match self.debug.sw.get_mut(&a) {
                    Some(orig) => {
                        *orig = b;
                        Ok(())
                    }
                    None => self.l1_vm.ram.write(a, &[b]),
                };
                if r.is_err() {
                    return false;
                }
            }
            done += n;
        }
        true
    }

    pub(crate) fn add_sw_breakpoint(&mut self, level: Level, gva: u64) -> bool {
        let Some(gpa) = self.debug_translate(level, gva) else { return false };
        if self.debug.sw.contains_key(&gpa) {
            return true;
        }
        let mut orig = [0u8];
        if self.l1_vm.ram.read(gpa, &mut orig).is_err() || self.l1_vm.ram.write(gpa, &[INT3]).is_err() {
            return false;
        }
        self.debug.sw.insert(gpa, orig[0]);
        true
    }

    pub(crate) fn remove_sw_breakpoint(&mut self, level: Level, gva: u64) -> bool {
        let Some(gpa) = self.debug_translate(level, gva) else { return false };
        match self.debug.sw.remove(&gpa) {
            Some(orig) => self.l1_vm.ram.write(gpa, &[orig]).is_ok(),
            None => false,
        }
    }

    /// Takes a free debug register; false when all four are in use.
    pub(crate) fn add_hw(&mut self, slot: HwSlot) -> bool {
        let Some(free) = self.debug.hw.iter_mut().find(|s| s.is_none()) else { return false };
        *free = Some(slot);
        self.debug.generation += 1;
        true
    }

    pub(crate) fn remove_hw(&mut self, addr: u64, kind: HwKind) -> bool {
        let Some(s) = self.debug.hw.iter_mut().find(|s| s.is_some_and(|s| s.addr == addr && s.kind == kind)) else {
            return false;
        };
        *s = None;
        self.debug.generation += 1;
        true
    }

    /// The current VMCS with L2's live guest state while L2 runs (the VMCS itself is only
    /// written at VM exits).
    pub(crate) fn vmcs_view(&mut self) -> Option<Vmcs> {
        if let Err(e) = self.nested.settle_guest_dr7() {
            tracing::warn!("reading L2's DR7 for the debugger: {e}");
        }
        let mut v = self.nested.vmx.current_vmcs()?.clone();
        if let (Level::L2, Some(l2)) = (self.level, self.nested.l2.as_ref()) {
            let mut st = load_guest_state(&v);
            crate::nested::transfer::save(&l2.vcpu, &mut st);
            save_guest_state(&mut v, &st);
        }
        Some(v)
    }

    /// gdb's `exits`: the statistics so far, then the last exits with the VMCS fields and MSRs
    /// they name.
    pub(crate) fn stats_report(&mut self) -> String {
        self.stats.wall = self.start.elapsed();
        let mut s = self.stats.report();
        s.push_str("last exits:\n");
        for line in self.debug.recent() {
            s.push_str(line.trim_end());
            s.push('\n');
        }
        s
    }

    /// Turns trace writing on or off; an error when the run has no trace file.
    pub(crate) fn set_tracing(&mut self, on: bool) -> Result<(), String> {
        if self.trace.is_none() {
            return Err("no trace file: start nestbed with --trace FILE".into());
        }
        self.tracing = on;
        Ok(())
    }

    /// Recompiles the scripts from their files (globals start afresh; on_start does not run
    /// again, CPUID being fixed once the vCPUs exist).
    pub(crate) fn reload_scripts(&mut self) -> Result<usize, Error> {
        if self.script_paths.is_empty() {
            return Ok(0);
        }
        self.scripts = Some(ScriptHost::load(&self.script_paths, self.script_options)?);
        Ok(self.script_paths.len())
    }

    pub(crate) fn break_on_exit(&mut self) -> &mut Vec<(u32, Option<Level>)> {
        &mut self.debug.break_on_exit
    }

    pub(crate) fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.l1_vm.ram.read(gpa, buf).is_ok()
    }
}

/// The exit-reason number for a name as `reason_name` prints it (case ignored).
pub fn reason_by_name(name: &str) -> Option<u32> {
    (0..=80u32).find(|&r| reason_name(r).eq_ignore_ascii_case(name) && reason_name(r) != "UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dr7_encodes_enables_kinds_and_lengths() {
        let mut slots = [None; 4];
        slots[0] = Some(HwSlot { addr: 0x1000, kind: HwKind::Exec, len: 1 });
        slots[2] = Some(HwSlot { addr: 0x2000, kind: HwKind::Write, len: 4 });
        slots[3] = Some(HwSlot { addr: 0x3000, kind: HwKind::Access, len: 8 });
        let v = dr7(&slots);
        assert_eq!(v & 0xff, 0b1111_0011);
        assert_eq!((v >> 16) & 0xf, 0b0000);
        assert_eq!((v >> 24) & 0xf, 0b1101);
        assert_eq!((v >> 28) & 0xf, 0b1011);
    }

    #[test]
    fn exit_reasons_by_name() {
        assert_eq!(reason_by_name("io_instruction"), Some(30));
        assert_eq!(reason_by_name("HLT"), Some(12));
        assert_eq!(reason_by_name("nonsense"), None);
    }
}
