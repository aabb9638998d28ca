//! One KVM vCPU. Registers are read and written through `kvm_run->s.regs` (sync regs; dirty
//! bits make KVM load them on the next KVM_RUN).
//!
//! KVM copies every valid sync-regs set out on every exit, which costs measurably (see
//! BENCHMARKS.md). A *lean* vCPU asks for REGS only; its SREGS and EVENTS are then fetched with
//! one ioctl each, on demand, the first time they are used after an exit.

use kvm_bindings::{kvm_regs, kvm_run, kvm_sregs, kvm_vcpu_events};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};

use super::paging::PagingMode;
use crate::error::{host, Error};

const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;

/// KVM_GET_MSRS and KVM_SET_MSRS take fewer than 256 MSRs at once (MAX_IO_MSRS).
pub const MSRS_PER_IOCTL: usize = 255;

/// A KVM exit, copied out of `kvm_run` so the vCPU is free again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawExit {
    IoOut {
        port: u16,
        size: u8,
        data: u64,
    },
    /// `in`, or INS: KVM asks for `count` elements at once (measured: one exit per INS
    /// with count = RCX; OUTS exits once per element).
    IoIn {
        port: u16,
        size: u8,
        count: u32,
    },
    MmioRead {
        gpa: u64,
        len: u8,
    },
    MmioWrite {
        gpa: u64,
        len: u8,
        data: u64,
    },
    Hlt,
    Shutdown,
    /// An instruction KVM could not emulate, with up to 15 of its bytes (every VMX
    /// instruction on a host without VMX).
    EmulationFailure {
        bytes: Vec<u8>,
    },
    InternalError {
        suberror: u32,
    },
    RdMsr {
        index: u32,
    },
    WrMsr {
        index: u32,
        data: u64,
    },
    Debug {
        exception: u32,
        pc: u64,
        dr6: u64,
        dr7: u64,
    },
    /// KVM_RUN returned EINTR (a signal or immediate_exit).
    Interrupted,
    /// The guest can take an interrupt now (requested with `request_interrupt_window`).
    IrqWindowOpen,
    /// An int3 nestbed wrote over a sensitive instruction at load (`crate::patch`), with the
    /// original instruction's bytes: the trap source that works on every host.
    Patched {
        bytes: Vec<u8>,
    },
    FailEntry {
        reason: u64,
    },
    Other(String),
}

pub struct Vcpu {
    fd: VcpuFd,
    /// The vCPU's kvm_run mapping, stable for the life of `fd`.
    run: *mut kvm_run,
    lean: bool,
    /// The SREGS and EVENTS in the sync area predate the last exit (lean vCPUs only).
    stale: bool,
    /// The CPUID table given to KVM (KVM_SET_CPUID2), for instructions nestbed emulates.
    pub cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
}

impl Vcpu {
    pub fn new(mut fd: VcpuFd) -> Self {
        fd.set_sync_valid_reg(SyncReg::Register);
        fd.set_sync_valid_reg(SyncReg::SystemRegister);
        fd.set_sync_valid_reg(SyncReg::VcpuEvents);
        let run = fd.get_kvm_run() as *mut kvm_run;
        Vcpu { fd, run, lean: false, stale: false, cpuid: Vec::new() }
    }

    /// Lean: only REGS are synced on exits, SREGS and EVENTS are fetched when first used.
    pub fn set_lean(&mut self, lean: bool) {
        if lean == self.lean {
            return;
        }
        self.lean = lean;
        if lean {
            self.fd.clear_sync_valid_reg(SyncReg::SystemRegister);
            self.fd.clear_sync_valid_reg(SyncReg::VcpuEvents);
        } else {
            self.fd.set_sync_valid_reg(SyncReg::SystemRegister);
            self.fd.set_sync_valid_reg(SyncReg::VcpuEvents);
        }
    }

    /// Makes SREGS and EVENTS in the sync area current (a no-op unless lean and stale).
    pub fn refresh(&mut self) -> Result<(), Error> {
        if !self.stale {
            return Ok(());
        }
        let sregs = self.fd.get_sregs().map_err(host("KVM_GET_SREGS"))?;
        let events = self.fd.get_vcpu_events().map_err(host("KVM_GET_VCPU_EVENTS"))?;
        let s = self.fd.sync_regs_mut();
        s.sregs = sregs;
        s.events = events;
        self.stale = false;
        Ok(())
    }

    /// `refresh`, for paths that cannot report an error: on failure the registers stay as of
    /// the last full sync and the failure is logged.
    fn refresh_or_log(&mut self) {
        if let Err(e) = self.refresh() {
            tracing::error!("{e}");
        }
    }

    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The bare KVM vCPU, for loops that bypass nestbed (the benchmark's raw baseline).
    pub fn into_fd(self) -> VcpuFd {
        self.fd
    }

    /// Loads registers from KVM once (after creation, before any KVM_RUN filled the sync area).
    pub fn prime(&mut self) -> Result<(), Error> {
        let regs = self.fd.get_regs().map_err(host("KVM_GET_REGS"))?;
        let sregs = self.fd.get_sregs().map_err(host("KVM_GET_SREGS"))?;
        let events = self.fd.get_vcpu_events().map_err(host("KVM_GET_VCPU_EVENTS"))?;
        let s = self.fd.sync_regs_mut();
        s.regs = regs;
        s.sregs = sregs;
        s.events = events;
        Ok(())
    }

    /// Registers without `&mut` (the sync-regs area as of the last exit or change; for a lean
    /// vCPU, SREGS only after `refresh`).
    pub fn peek_regs(&self) -> &kvm_regs {
        &self.regs_area().regs
    }

    pub fn peek_sregs(&self) -> &kvm_sregs {
        &self.regs_area().sregs
    }

    /// Pending and injected events and interruptibility, as of the last exit or change (for a
    /// lean vCPU, only after `refresh`).
    pub fn peek_events(&self) -> &kvm_vcpu_events {
        &self.regs_area().events
    }

    fn regs_area(&self) -> &kvm_bindings::kvm_sync_regs {
        // SAFETY: the kvm_run mapping lives as long as the VcpuFd; `s.regs` is the x86 sync-regs
        // member, valid because sync regs are enabled for REGS|SREGS|EVENTS at creation. The
        // pointer is only read while no `&mut` to the area exists (we hold `&self`).
        unsafe { &(*self.run).s.regs }
    }

    pub fn regs(&mut self) -> &kvm_regs {
        &self.fd.sync_regs_mut().regs
    }

    pub fn regs_mut(&mut self) -> &mut kvm_regs {
        self.fd.set_sync_dirty_reg(SyncReg::Register);
        &mut self.fd.sync_regs_mut().regs
    }

    pub fn sregs(&mut self) -> &kvm_sregs {
        self.refresh_or_log();
        &self.fd.sync_regs_mut().sregs
    }

    pub fn sregs_mut(&mut self) -> &mut kvm_sregs {
        self.refresh_or_log();
        self.fd.set_sync_dirty_reg(SyncReg::SystemRegister);
        &mut self.fd.sync_regs_mut().sregs
    }

    /// Loads `s` into KVM at once (KVM_SET_SREGS) instead of at the next KVM_RUN, so a state
    /// KVM refuses is an error here, with the vCPU unchanged, rather than a failed KVM_RUN.
    pub fn try_set_sregs(&mut self, s: &kvm_sregs) -> Result<(), Error> {
        self.refresh()?;
        self.fd.set_sregs(s).map_err(host("KVM_SET_SREGS"))?;
        self.fd.sync_regs_mut().sregs = *s;
        Ok(())
    }

    pub fn events_mut(&mut self) -> &mut kvm_vcpu_events {
        self.refresh_or_log();
        self.fd.set_sync_dirty_reg(SyncReg::VcpuEvents);
        &mut self.fd.sync_regs_mut().events
    }

    pub fn paging(&mut self) -> PagingMode {
        let s = self.sregs();
        PagingMode { cr0: s.cr0, cr3: s.cr3, cr4: s.cr4, efer: s.efer }
    }

    /// Reads MSRs with one KVM_GET_MSRS per [`MSRS_PER_IOCTL`] (not on the common exit path).
    /// KVM stops at the first MSR it cannot read: the values are those of the leading
    /// indices it read, so fewer values than indices says which one it refused.
    pub fn get_msrs(&self, indices: &[u32]) -> Result<Vec<u64>, Error> {
        let mut values = Vec::with_capacity(indices.len());
        for chunk in indices.chunks(MSRS_PER_IOCTL) {
            let entries: Vec<kvm_bindings::kvm_msr_entry> =
                chunk.iter().map(|&index| kvm_bindings::kvm_msr_entry { index, ..Default::default() }).collect();
            let mut msrs =
                kvm_bindings::Msrs::from_entries(&entries).map_err(|e| Error::HostIo(format!("MSR list: {e:?}")))?;
            let n = self.fd.get_msrs(&mut msrs).map_err(host("KVM_GET_MSRS"))?;
            values.extend(msrs.as_slice().iter().take(n).map(|e| e.data));
            if n < chunk.len() {
                break;
            }
        }
        Ok(values)
    }

    /// Writes MSRs with KVM_SET_MSRS; an MSR KVM refuses is an error naming it.
    pub fn set_msrs(&self, values: &[(u32, u64)]) -> Result<(), Error> {
        let n = self.set_msrs_prefix(values)?;
        match values.get(n) {
            None => Ok(()),
            Some(&(index, data)) => Err(Error::HostIo(format!("KVM_SET_MSRS refused MSR {index:#x} = {data:#x}"))),
        }
    }

    /// Writes MSRs in order with one KVM_SET_MSRS per [`MSRS_PER_IOCTL`] and returns how many
    /// KVM took: it stops at the first it refuses.
    pub fn set_msrs_prefix(&self, values: &[(u32, u64)]) -> Result<usize, Error> {
        let mut done = 0;
        for chunk in values.chunks(MSRS_PER_IOCTL) {
            let entries: Vec<kvm_bindings::kvm_msr_entry> = chunk
                .iter()
                .map(|&(index, data)| kvm_bindings::kvm_msr_entry { index, data, ..Default::default() })
                .collect();
            let msrs =
                kvm_bindings::Msrs::from_entries(&entries).map_err(|e| Error::HostIo(format!("MSR list: {e:?}")))?;
            let n = self.fd.set_msrs(&msrs).map_err(host("KVM_SET_MSRS"))?;
            done += n;
            if n < chunk.len() {
                break;
            }
        }
        Ok(done)
    }

    /// DR0-DR3, DR6 and DR7 as the guest has them (KVM_GET_DEBUGREGS).
    pub fn debugregs(&self) -> Result<kvm_bindings::kvm_debugregs, Error> {
        self.fd.get_debug_regs().map_err(host("KVM_GET_DEBUGREGS"))
    }

    pub fn set_debugregs(&self, d: &kvm_bindings::kvm_debugregs) -> Result<(), Error> {
        self.fd.set_debug_regs(d).map_err(host("KVM_SET_DEBUGREGS"))
    }

    /// Sets XCR0 with KVM_SET_XCRS (not on the common exit path); KVM refuses invalid values.
    pub fn set_xcr0(&self, value: u64) -> Result<(), Error> {
        let mut xcrs = kvm_bindings::kvm_xcrs { nr_xcrs: 1, ..Default::default() };
        xcrs.xcrs[0] = kvm_bindings::kvm_xcr { xcr: 0, reserved: 0, value };
        self.fd.set_xcrs(&xcrs).map_err(host("KVM_SET_XCRS"))
    }

    /// Whether KVM can inject an external interrupt at the next KVM_RUN (RFLAGS.IF set, no
    /// interrupt shadow, nothing else being injected), as of the last exit.
    pub fn ready_for_interrupt(&self) -> bool {
        // SAFETY: plain integer fields of the mapped kvm_run, which KVM sets on every exit.
        unsafe { (*self.run).ready_for_interrupt_injection != 0 && (*self.run).if_flag != 0 }
    }

    /// CR8 as KVM last reported it. Without an in-kernel local APIC, KVM copies `kvm_run->cr8`
    /// into the vCPU at every KVM_RUN and back at every exit: this field is the vCPU's CR8.
    pub fn cr8(&self) -> u64 {
        // SAFETY: a plain integer field of the mapped kvm_run, set by KVM at every exit.
        unsafe { (*self.run).cr8 }
    }

    pub fn set_cr8(&mut self, value: u64) {
        // SAFETY: a plain integer field of the mapped kvm_run, read by KVM at KVM_RUN.
        unsafe { (*self.run).cr8 = value };
    }

    /// Asks KVM to exit (KVM_EXIT_IRQ_WINDOW_OPEN) as soon as the guest can take an interrupt.
    pub fn request_interrupt_window(&mut self, on: bool) {
        // SAFETY: a plain integer field of the mapped kvm_run, read by KVM at KVM_RUN.
        unsafe { (*self.run).request_interrupt_window = u8::from(on) };
    }

    /// Queues external interrupt `vector` for delivery at the next entry (userspace irqchip).
    pub fn inject_interrupt(&mut self, vector: u8) {
        let ev = self.events_mut();
        ev.interrupt.injected = 1;
        ev.interrupt.nr = vector;
        ev.interrupt.soft = 0;
    }

    /// Queues exception `vector` for delivery at the next entry (KVM_SET_VCPU_EVENTS semantics).
    pub fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        let ev = self.events_mut();
        ev.exception.injected = 1;
        ev.exception.nr = vector;
        ev.exception.has_error_code = u8::from(error_code.is_some());
        ev.exception.error_code = error_code.unwrap_or(0);
    }

    /// Raises exception `vector` for the instruction at RIP, as the CPU delivers a fault of that
    /// instruction: RF is set in the RFLAGS image pushed (SDM Vol. 3A 18.3.1.1), so an
    /// instruction breakpoint at the faulting instruction does not fire again when the handler
    /// returns to it. KVM sets RF only for exceptions it raises itself, not for injected ones.
    pub fn raise_fault(&mut self, vector: u8, error_code: Option<u32>) {
        if is_fault_class(vector) {
            self.regs_mut().rflags |= RFLAGS_RF;
        }
        self.inject_exception(vector, error_code);
    }

    pub fn kvm_run_ptr(&self) -> *mut kvm_run {
        self.run
    }

    pub fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(on));
    }

    /// KVM_RUN once, with the exit copied out.
    pub fn run(&mut self) -> Result<RawExit, Error> {
        self.stale = self.lean;
        let run = self.run;
        let exit = match self.fd.run() {
            Ok(e) => e,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => return Ok(RawExit::Interrupted),
            Err(e) => return Err(Error::Host { what: "KVM_RUN", source: e }),
        };
        Ok(match exit {
            VcpuExit::IoOut(port, data) => RawExit::IoOut { port, size: data.len() as u8, data: le(data) },
            VcpuExit::IoIn(port, _) => {
                // SAFETY: the exit is KVM_EXIT_IO, so the io member of the mapped kvm_run is the
                // active one; only plain integers are read.
                let io = unsafe { (*run).__bindgen_anon_1.io };
                RawExit::IoIn { port, size: io.size, count: io.count.max(1) }
            }
            VcpuExit::MmioRead(gpa, data) => RawExit::MmioRead { gpa, len: data.len() as u8 },
            VcpuExit::MmioWrite(gpa, data) => RawExit::MmioWrite { gpa, len: data.len() as u8, data: le(data) },
            VcpuExit::Hlt => RawExit::Hlt,
            VcpuExit::Shutdown => RawExit::Shutdown,
            VcpuExit::X86Rdmsr(m) => RawExit::RdMsr { index: m.index },
            VcpuExit::X86Wrmsr(m) => RawExit::WrMsr { index: m.index, data: m.data },
            VcpuExit::Debug(d) => RawExit::Debug { exception: d.exception, pc: d.pc, dr6: d.dr6, dr7: d.dr7 },
            VcpuExit::FailEntry(reason, _) => RawExit::FailEntry { reason },
            VcpuExit::Intr => RawExit::Interrupted,
            VcpuExit::IrqWindowOpen => RawExit::IrqWindowOpen,
            VcpuExit::InternalError => {
                let run = self.fd.get_kvm_run();
                // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal`/`emulation_failure`
                // is the active union member.
                let ef = unsafe { run.__bindgen_anon_1.emulation_failure };
                if ef.suberror == KVM_INTERNAL_ERROR_EMULATION && ef.ndata >= 2 && ef.flags & 1 != 0 {
                    // SAFETY: flags bit 0 (KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)
                    // says insn_size/insn_bytes are valid.
                    let ib = unsafe { ef.__bindgen_anon_1.__bindgen_anon_1 };
                    let n = usize::from(ib.insn_size).min(15);
                    RawExit::EmulationFailure { bytes: ib.insn_bytes[..n].to_vec() }
                } else {
                    RawExit::InternalError { suberror: ef.suberror }
                }
            }
            other => RawExit::Other(format!("{other:?}")),
        })
    }

    /// Lets KVM finish the instruction it holds (an I/O, MMIO or MSR access whose data was
    /// supplied) without running the guest further: KVM_RUN with `immediate_exit`. An MMIO
    /// access split in pieces comes back once per piece (reads of nothing get all ones).
    pub fn finish_pending(&mut self) {
        self.set_immediate_exit(true);
        for _ in 0..4 {
            match self.run() {
                Ok(RawExit::MmioRead { .. }) => self.complete_read(u64::MAX),
                Ok(RawExit::MmioWrite { .. }) => {}
                _ => break,
            }
        }
        self.set_immediate_exit(false);
    }

    /// Supplies the value of a pending `in`, MMIO read or RDMSR before the next KVM_RUN.
    pub fn complete_read(&mut self, value: u64) {
        let run = self.fd.get_kvm_run();
        match run.exit_reason {
            kvm_bindings::KVM_EXIT_IO => {
                // SAFETY: the io member is active for KVM_EXIT_IO; data_offset points inside the
                // kvm_run mapping, which holds at least `size * count` bytes there.
                unsafe {
                    let io = run.__bindgen_anon_1.io;
                    let p = (run as *mut kvm_run as *mut u8).add(io.data_offset as usize);
                    let n = (usize::from(io.size) * io.count as usize).min(8);
                    std::ptr::copy_nonoverlapping(value.to_le_bytes().as_ptr(), p, n);
                }
            }
            kvm_bindings::KVM_EXIT_MMIO => {
                // SAFETY: the mmio member is active for KVM_EXIT_MMIO.
                unsafe {
                    let m = &mut run.__bindgen_anon_1.mmio;
                    let n = (m.len as usize).min(8);
                    m.data[..n].copy_from_slice(&value.to_le_bytes()[..n]);
                }
            }
            kvm_bindings::KVM_EXIT_X86_RDMSR => {
                run.__bindgen_anon_1.msr.data = value;
            }
            _ => {}
        }
    }

    /// Supplies every element of a pending INS (`values` holds `size * count` bytes).
    pub fn complete_string_in(&mut self, values: &[u8]) {
        let run = self.fd.get_kvm_run();
        if run.exit_reason != kvm_bindings::KVM_EXIT_IO {
            return;
        }
        // SAFETY: the io member is active for KVM_EXIT_IO; data_offset points inside the kvm_run
        // mapping, which holds `size * count` bytes there.
        unsafe {
            let io = run.__bindgen_anon_1.io;
            let p = (run as *mut kvm_run as *mut u8).add(io.data_offset as usize);
            let n = (usize::from(io.size) * io.count as usize).min(values.len());
            std::ptr::copy_nonoverlapping(values.as_ptr(), p, n);
        }
    }

    /// Makes a pending RDMSR/WRMSR fail: KVM injects #GP on the next entry.
    pub fn fail_msr(&mut self) {
        let run = self.fd.get_kvm_run();
        if matches!(run.exit_reason, kvm_bindings::KVM_EXIT_X86_RDMSR | kvm_bindings::KVM_EXIT_X86_WRMSR) {
            run.__bindgen_anon_1.msr.error = 1;
        }
    }
}

fn le(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

const RFLAGS_RF: u64 = 1 << 16;

/// Fault-class exceptions (SDM Vol. 3A Table 6-1); #DB is left out, being a trap or a fault by
/// its cause, and every cause nestbed raises it for is a trap.
fn is_fault_class(vector: u8) -> bool {
    matches!(vector, 0 | 5 | 6 | 7 | 10..=14 | 16 | 17 | 19 | 20 | 21)
}
