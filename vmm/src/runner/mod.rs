//! The run loop: enter the active vCPU (L1, or L2 while L1 runs a nested guest) and hand each
//! exit to [`dispatch`](Runner::dispatch), the one path every exit of either level takes.

mod acpi_sleep;
pub mod boot;
pub mod debug;
mod dispatch;
mod events;
mod hooks;
mod l1;
mod l2;
mod lazy_patch;
mod patching;
mod platform;
mod progress;
mod sensitive;
pub mod signals;

pub use patching::PatchMode;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use kvm_ioctls::Kvm;

use crate::error::{code, host, Error};
use crate::exit::Level;
use crate::machine::bios::{self, Firmware};
use crate::machine::devices::{Devices, ExitConvention};
use crate::machine::probe::{probe_cr4_bits, probe_legacy_paging, probe_vmx_trap, simulates_vmx_ud, VmxTrap};
use crate::machine::{loader, GuestRam, RawExit, Vcpu, Vm};
use crate::nested::Nested;
use crate::script::{ScriptHost, ScriptOptions};
use crate::trace::{Clock, Phase, Phases, Stats, TraceWriter};
use crate::vmx::caps::VmxCaps;
use crate::vmx::cpu::VmxCpu;
use debug::{DebugEvent, DebugState, INT3};

/// Everything `nestbed run` needs.
pub struct RunConfig {
    pub image: Vec<u8>,
    /// Shown in messages and passed as the first word of the command line.
    pub image_name: String,
    pub mem_mib: u64,
    pub cmdline: String,
    /// Serial console destination; stdout when None.
    pub console: Option<Box<dyn Write + Send>>,
    pub timeout: Option<u32>,
    pub trace: Option<PathBuf>,
    /// Largest `--trace` file in bytes.
    pub trace_limit: u64,
    /// Rhai scripts, run in this order on every event.
    pub scripts: Vec<PathBuf>,
    pub script_options: ScriptOptions,
    /// Capability MSRs (index, value) advertised and enforced instead of the defaults
    /// (`--vmx-msr`), applied in order.
    pub vmx_msrs: Vec<(u32, u64)>,
    /// Which sensitive instructions become int3 traps (`--patch-sensitive`).
    pub patch: PatchMode,
    /// Multiboot modules, loaded after the image in this order (`--initrd`, `--module`).
    pub modules: Vec<loader::Module>,
    /// What the guest's writes to the exit ports mean (`--exit-convention`).
    pub exit_convention: ExitConvention,
    /// What runs before the image (`--firmware`).
    pub firmware: Firmware,
    /// Show the progress line when stderr is a terminal (off with `--quiet`).
    pub progress: bool,
    /// Offer the enlightened VMCS (EVMCS.md) to L1; `--no-evmcs` turns it off.
    pub evmcs: bool,
}

impl RunConfig {
    pub fn new(image_name: &str, image: Vec<u8>) -> Self {
        RunConfig {
            image,
            image_name: image_name.to_string(),
            mem_mib: 128,
            cmdline: String::new(),
            console: None,
            timeout: None,
            trace: None,
            trace_limit: crate::trace::writer::DEFAULT_LIMIT,
            scripts: Vec::new(),
            script_options: ScriptOptions::default(),
            vmx_msrs: Vec::new(),
            patch: PatchMode::Off,
            modules: Vec::new(),
            exit_convention: ExitConvention::Nestbed,
            firmware: Firmware::None,
            progress: false,
            evmcs: true,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest's exit status, from its write to the exit ports (see `ExitConvention`).
    GuestExit(u8),
    TripleFault {
        level: Level,
        registers: String,
    },
    Timeout,
    Interrupted,
    ScriptStop(String),
    /// The guest did something nestbed cannot continue from.
    Unsupported(String),
    /// A VMX abort (SDM 28.7) shut L1's logical processor down.
    VmxAbort(String),
    /// The debugger ended the run (`kill`, or a detach with --gdb-exit-on-detach).
    Debugger(String),
    /// stdout or stderr lost its reader (`nestbed run | head -1`): nestbed ends quietly.
    OutputClosed,
    /// nestbed stopped on an error (a script error, a failed KVM call) after the run started;
    /// statistics and traces are still complete.
    Failed {
        code: i32,
        message: String,
    },
}

impl Outcome {
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::GuestExit(c) => i32::from(*c),
            Outcome::TripleFault { .. } | Outcome::VmxAbort(_) => code::TRIPLE_FAULT,
            Outcome::Timeout => code::TIMEOUT,
            Outcome::Interrupted => code::INTERRUPTED,
            Outcome::ScriptStop(_) => code::SCRIPT_STOP,
            Outcome::Unsupported(_) => code::GUEST_UNSUPPORTED,
            Outcome::Failed { code, .. } => *code,
            Outcome::Debugger(_) => code::INTERRUPTED,
            Outcome::OutputClosed => crate::stdio::CLOSED,
        }
    }

    /// Who set the exit status, "guest" or "nestbed", and a one-word name of the outcome (for
    /// `--exit-code-file`).
    pub fn origin(&self) -> (&'static str, &'static str) {
        match self {
            Outcome::GuestExit(_) => ("guest", "exit"),
            Outcome::TripleFault { .. } => ("nestbed", "triple-fault"),
            Outcome::VmxAbort(_) => ("nestbed", "vmx-abort"),
            Outcome::Timeout => ("nestbed", "timeout"),
            Outcome::Interrupted => ("nestbed", "interrupted"),
            Outcome::ScriptStop(_) => ("nestbed", "script-stop"),
            Outcome::Unsupported(_) => ("nestbed", "unsupported"),
            Outcome::Debugger(_) => ("nestbed", "debugger"),
            Outcome::OutputClosed => ("nestbed", "output-closed"),
            Outcome::Failed { code, .. } => ("nestbed", crate::error::code::name(*code)),
        }
    }

    pub fn message(&self) -> Option<String> {
        match self {
            Outcome::GuestExit(_) | Outcome::OutputClosed => None,
            Outcome::TripleFault { level, registers } => {
                Some(format!("{} triple fault (shutdown)\n{registers}", level.as_str()))
            }
            Outcome::Timeout => Some("timeout: the guest ran longer than --timeout".into()),
            Outcome::Interrupted => Some("interrupted".into()),
            Outcome::ScriptStop(r) => Some(format!("stopped by script: {r}")),
            Outcome::Unsupported(r) => Some(r.clone()),
            Outcome::VmxAbort(why) => Some(format!("L1 {why}")),
            Outcome::Failed { message, .. } => Some(format!("error: {message}")),
            Outcome::Debugger(why) => Some(why.clone()),
        }
    }
}

/// The result of a run: its outcome and statistics.
pub struct Report {
    pub outcome: Outcome,
    pub stats: Stats,
}

enum Flow {
    Continue,
    Stop(Outcome),
}

/// Why `run_until_stop` returned.
pub enum Stop {
    Finished(Outcome),
    Debug(DebugEvent),
    /// The debugger has data for us, or a debugger is connecting.
    Debugger,
}

pub struct Runner {
    l1_vm: Vm,
    l1: Vcpu,
    devices: Devices,
    level: Level,
    /// The virtual VMX and the L2 VM.
    nested: Nested,
    stats: Stats,
    trace: Option<TraceWriter>,
    seq: u64,
    start: Instant,
    clock: Clock,
    /// What happened beside the exits (failed entry checks...), for the trace and scripts.
    notes: Vec<String>,
    scripts: Option<ScriptHost>,
    /// L1's PC platform: interrupt controllers, timer, fw_cfg, test device.
    platform: platform::Platform,
    /// Sensitive instructions patched into traps (`--patch-sensitive`).
    patches: Option<patching::Patches>,
    patch_mode: PatchMode,
    /// Whether the host runs paging outside IA-32e mode; nestbed's own MOV to CR0 refuses
    /// it (#GP) where the host does.
    host_legacy_paging: bool,
    script_paths: Vec<PathBuf>,
    script_options: ScriptOptions,
    /// Whether exits are written to the trace file (gdb's `monitor trace on|off`).
    tracing: bool,
    debug: DebugState,
    /// L2's events for the current VM entry.
    l2_events: events::L2Events,
    /// L1 runs single-stepped while an interrupt waits for its window.
    l1_window_step: bool,
    /// RIP and RFLAGS a script wrote at the current exit.
    script_rip: Option<(u64, u64)>,
    /// Steps left for the interrupt that waits for L1's window.
    l1_window_budget: u32,
    /// The CR8 value last given to L1's and to L2's vCPU (the APIC's TPR[7:4]).
    cr8_seen: [u64; 2],
    /// The breakpoint at L1's #UD handler that catches VMX instructions not patched at load.
    ud_catch: lazy_patch::UdCatch,
    /// What ran before the image (the BIOS's set-up is redone at S3 resume).
    firmware: Firmware,
    /// The progress line, on a terminal.
    progress: Option<progress::Progress>,
    /// The enlightened VMCS is offered (EVMCS.md).
    evmcs: bool,
}

impl Runner {
    pub fn new(mut cfg: RunConfig) -> Result<Self, Error> {
        // `--timeout` covers loading and probing too.
        signals::install();
        if let Some(t) = cfg.timeout {
            signals::arm_timeout(t);
        }
        let mut caps = VmxCaps::default();
        if cfg.patch != PatchMode::Off {
            caps.advertise_patched_exits();
        }
        for &(index, value) in &cfg.vmx_msrs {
            caps.set_msr(index, value).map_err(|e| Error::Config(format!("--vmx-msr {index:#x}={value:#x}: {e}")))?;
        }
        // Scripts compile, and set CPUID answers in on_start, before the guest exists.
        let mut scripts =
            if cfg.scripts.is_empty() { None } else { Some(ScriptHost::load(&cfg.scripts, cfg.script_options)?) };
        let (mut l1_cpuid, mut l2_cpuid) = (Vec::new(), Vec::new());
        if cfg.evmcs {
            let regs = crate::vmx::evmcs::cpuid_regs();
            l1_cpuid.push(crate::machine::vm::CpuidOverride { leaf: crate::vmx::evmcs::CPUID_LEAF, subleaf: 0, regs });
        }
        if let Some(s) = scripts.as_mut() {
            for (level, ov) in s.on_start()? {
                match level {
                    Level::L1 => l1_cpuid.push(ov),
                    Level::L2 => l2_cpuid.push(ov),
                }
            }
        }
        let ram = GuestRam::new(cfg.mem_mib)?;
        let cmdline =
            if cfg.cmdline.is_empty() { cfg.image_name.clone() } else { format!("{} {}", cfg.image_name, cfg.cmdline) };
        if cfg.firmware == Firmware::Bios {
            let (ivt, handlers) = bios::ivt_and_handlers();
            let oob =
                |_| Error::Config(format!("--firmware bios needs at least 1 MiB of RAM ({} MiB given)", cfg.mem_mib));
            ram.write(0, &ivt).map_err(oob)?;
            ram.write(bios::HANDLERS, &handlers).map_err(oob)?;
            for (addr, table) in crate::machine::acpi::tables() {
                ram.write(addr, &table).map_err(oob)?;
            }
        }
        let boot = loader::load_with_modules(&ram, &cfg.image, &cmdline, &cfg.modules)
            .map_err(|source| Error::Image { path: PathBuf::from(&cfg.image_name), source })?;
        let kvm = Kvm::new().map_err(host("opening /dev/kvm"))?;
        let mut notes = Vec::new();
        let simulate = simulates_vmx_ud()?;
        let mut catch = false;
        let patches = match cfg.patch {
            PatchMode::Off => None,
            mode => {
                let mut p = patching::Patches::scan(&cfg.image_name, &cfg.image)?;
                let host_traps = match mode {
                    _ if simulate => VmxTrap::NotReported,
                    PatchMode::Auto => probe_vmx_trap(&kvm)?,
                    _ => VmxTrap::Reported,
                };
                let n = p.apply(patching::Patches::at_load(mode, host_traps), &ram);
                tracing::info!(sites = n, ?host_traps, "patched sensitive instructions at load");
                notes.push(format!("patched {n} sensitive instructions at load ({mode:?}, host {host_traps:?})"));
                catch = host_traps == VmxTrap::NotReported;
                Some(p)
            }
        };

        let host_legacy_paging = if patches.is_some() { probe_legacy_paging(&kvm)? } else { true };
        let l1_vm = Vm::new(&kvm, ram)?;
        let mut l1 = l1_vm.create_vcpu(&kvm, 0, true, &l1_cpuid)?;
        let tsc_khz = l1.fd().get_tsc_khz().ok().map(u64::from);
        let clock = Clock::new(tsc_khz);
        let guest_tsc = l1.get_msrs(&[0x10]).ok().and_then(|v| v.first().copied());
        let mut platform = platform::Platform::new(l1_vm.ram.size(), tsc_khz.unwrap_or(1_000_000), guest_tsc);
        if cfg.firmware == Firmware::Bios {
            for &(port, value) in bios::PORT_WRITES {
                platform.port_write(port, 1, u64::from(value));
            }
        }
        l1.prime()?;
        boot::set_entry_state(&mut l1, &boot);
        // IA32_VMX_CR4_FIXED1 offers only CR4 bits the host can give L2 (VMXE is virtual).
        let vmxe = crate::nested::transfer::CR4_VMXE;
        caps.cr4_fixed1 = caps.cr4_fixed1 & vmxe | probe_cr4_bits(l1.fd(), caps.cr4_fixed1 & !vmxe)?;
        let mut vmx = VmxCpu::new(caps);
        // With MOV to CR4 patched, CR4.VMXE is L1's to set (virtual, as on hardware).
        vmx.vmxe = !patches.as_ref().is_some_and(|p| p.patches(crate::patch::Class::MovToCr4));
        let progress = if cfg.progress { progress::Progress::start() } else { None };
        // The console's whole lines erase the progress line when they reach the terminal.
        let console = cfg.console.take().unwrap_or_else(|| match progress {
            Some(_) => Box::new(std::io::LineWriter::new(crate::stdio::BesideStatus(std::io::stdout()))),
            None => Box::new(std::io::LineWriter::new(std::io::stdout())),
        });
        let trace = cfg.trace.as_deref().map(|p| TraceWriter::create(p, cfg.trace_limit)).transpose()?;
        Ok(Runner {
            l1_vm,
            l1,
            devices: Devices::new(console).with_exit_convention(cfg.exit_convention),
            level: Level::L1,
            nested: Nested::new(kvm, vmx, l2_cpuid),
            stats: Stats::new(Phases::new(clock)),
            trace,
            seq: 0,
            start: Instant::now(),
            clock,
            notes,
            scripts,
            debug: DebugState::with_generation(u64::from(patches.is_some())),
            platform,
            patches,
            patch_mode: cfg.patch,
            host_legacy_paging,
            script_paths: cfg.scripts.clone(),
            script_options: cfg.script_options,
            tracing: true,
            l2_events: events::L2Events::default(),
            l1_window_step: false,
            script_rip: None,
            l1_window_budget: platform::WINDOW_STEPS,
            cr8_seen: [0; 2],
            ud_catch: lazy_patch::UdCatch::new(catch, simulate),
            firmware: cfg.firmware,
            progress,
            evmcs: cfg.evmcs,
        })
    }

    /// Runs until the guest exits or something stops it; statistics and traces are flushed on
    /// every way out.
    pub fn run(self) -> Result<Report, Error> {
        self.run_with(|mut r| {
            let outcome = r.run_loop();
            (r, outcome)
        })
    }

    /// Runs `drive` (the plain run loop, or a gdb server around it), then ends the run: scripts'
    /// `on_stop`, console, trace and statistics flushed, whatever way `drive` ended.
    pub fn run_with(self, drive: impl FnOnce(Runner) -> (Runner, Result<Outcome, Error>)) -> Result<Report, Error> {
        signals::install();
        let (mut this, mut result) = drive(self);
        let this = &mut this;
        this.progress = None;
        // SAFETY: null clears the registration.
        unsafe { signals::set_running(std::ptr::null_mut()) };
        if let Some(s) = this.scripts.as_mut() {
            let stopped = s.on_stop();
            if result.is_ok() {
                if let Err(e) = stopped {
                    result = Err(e);
                }
            }
        }
        this.devices.flush();
        if let Some(t) = this.trace.as_mut() {
            t.flush();
            this.stats.trace_truncated = t.truncated;
        }
        this.stats.wall = this.start.elapsed();
        this.stats.patched = this.patches.as_ref().map(|p| crate::trace::stats::PatchStats {
            sites: p.len(),
            traps: p.traps,
            written: p.repatched + p.dropped,
            unpatched: p.unpatched.len(),
            at_run_time: p.at_run_time.len(),
        });
        let outcome = result.unwrap_or_else(|e| match e {
            Error::Interrupted(_) => Outcome::Interrupted,
            Error::TimedOut(_) => Outcome::Timeout,
            e => Outcome::Failed { code: e.exit_code(), message: e.to_string() },
        });
        Ok(Report { outcome, stats: std::mem::take(&mut this.stats) })
    }

    fn active(&mut self) -> &mut Vcpu {
        match (self.level, self.nested.l2.as_mut()) {
            (Level::L2, Some(l2)) => &mut l2.vcpu,
            _ => &mut self.l1,
        }
    }

    fn run_loop(&mut self) -> Result<Outcome, Error> {
        loop {
            if let Stop::Finished(o) = self.run_until_stop()? {
                return Ok(o);
            }
        }
    }

    /// Runs the guest until it finishes, or, with a debugger attached, until a debug event or
    /// data from the debugger. Pipelined scripts have seen every exit when a debugger stops.
    pub fn run_until_stop(&mut self) -> Result<Stop, Error> {
        let stop = self.next_stop()?;
        if let (Stop::Debug(_) | Stop::Debugger, Some(s)) = (&stop, self.scripts.as_mut()) {
            s.flush()?;
        }
        Ok(stop)
    }

    fn next_stop(&mut self) -> Result<Stop, Error> {
        loop {
            if let Some(link) = self.debug.link.as_ref() {
                if link.wants_attention() {
                    return Ok(Stop::Debugger);
                }
            }
            self.prepare_watch_step();
            // SREGS/EVENTS are synced on every exit only where they are used on most exits:
            // L1 in VMX operation (VMX instructions, VM entries) and L2.
            // SREGS are read for scripts only when one names a control register.
            let scripts_lean = self.scripts.as_ref().is_none_or(|s| !s.needs().control_regs);
            let lean = !self.nested.vmx.vmxon && self.level == Level::L1 && scripts_lean && !self.debug.attached;
            self.l1.set_lean(lean);
            // Where the instruction a debugger steps starts (only read while one is attached).
            let rip_entry = if self.debug.attached { self.active().regs().rip } else { 0 };
            let run = self.active().kvm_run_ptr();
            // SAFETY: the active vCPU's mapping lives as long as the Runner, which clears the
            // registration before returning.
            unsafe { signals::set_running(run) };
            match self.level {
                Level::L1 => self.deliver_l1_interrupt(),
                Level::L2 => match self.events_before_l2()? {
                    events::BeforeL2::Run => {}
                    events::BeforeL2::Again => match signals::cause() {
                        signals::INTERRUPT => return Ok(Stop::Finished(Outcome::Interrupted)),
                        signals::TIMEOUT => return Ok(Stop::Finished(Outcome::Timeout)),
                        _ => continue,
                    },
                    events::BeforeL2::Flow(flow) => {
                        if let Some(stop) = self.after_dispatch(flow, Level::L2, rip_entry) {
                            return Ok(stop);
                        }
                        continue;
                    }
                },
            }
            self.apply_guest_debug()?;
            let entered = self.clock.now();
            let raw = self.active().run()?;
            let phase = if self.level == Level::L1 { Phase::KvmRunL1 } else { Phase::KvmRunL2 };
            let t0 = self.stats.phases.add_since(phase, entered);
            match signals::cause() {
                signals::INTERRUPT => return Ok(Stop::Finished(Outcome::Interrupted)),
                signals::TIMEOUT => return Ok(Stop::Finished(Outcome::Timeout)),
                _ => {}
            }
            if self.level == Level::L2 {
                self.events_after_l2_run();
            }
            if raw == RawExit::Interrupted {
                self.active().set_immediate_exit(false);
                continue;
            }
            // int3 reaches us as a #BP debug exit, or, on hosts whose KVM cannot run it, as an
            // emulation failure with its byte: both are the same breakpoint event.
            let mut debug = match &raw {
                RawExit::Debug { exception, pc, dr6, .. } => Some((*exception, *pc, *dr6)),
                RawExit::EmulationFailure { bytes } if bytes.first() == Some(&INT3) => {
                    Some((3, self.active().regs().rip, 0))
                }
                _ => None,
            };
            let mut raw = raw;
            if let Some((3, pc, _)) = debug {
                match self.patched_original(pc)? {
                    Some(patching::PatchedTrap::Original(bytes)) => {
                        raw = RawExit::Patched { bytes };
                        debug = None;
                    }
                    // The CPU now runs the original instruction at the same RIP.
                    Some(patching::PatchedTrap::Restored(note)) => {
                        self.notes.push(note);
                        continue;
                    }
                    None => {}
                }
            }
            if let Some((3, pc, _)) = debug {
                let gdb_breakpoint =
                    self.debug_translate(self.level, pc).is_some_and(|g| self.debug.has_sw_breakpoint(g));
                if !gdb_breakpoint {
                    if let Some(flow) = self.l2_breakpoint(pc) {
                        if let Some(stop) = self.after_dispatch(flow?, Level::L2, rip_entry) {
                            return Ok(stop);
                        }
                        continue;
                    }
                }
            }
            if let Some((exception, pc, dr6)) = debug {
                match self.debug_exit(exception, pc, dr6) {
                    Some(ev) => return Ok(Stop::Debug(ev)),
                    None => continue,
                }
            }
            let level = self.level;
            let flow = self.dispatch(raw, t0)?;
            if let Some(stop) = self.after_dispatch(flow, level, rip_entry) {
                return Ok(stop);
            }
        }
    }

    /// Where an exit of `level` leaves the run: finished, stopped for the debugger, or going on.
    fn after_dispatch(&mut self, flow: Flow, level: Level, rip_entry: u64) -> Option<Stop> {
        if crate::stdio::closed() {
            return Some(Stop::Finished(Outcome::OutputClosed));
        }
        match flow {
            Flow::Stop(Outcome::ScriptStop(why)) if self.debug.attached => {
                return Some(Stop::Debug(DebugEvent::ScriptStop(why)));
            }
            Flow::Stop(o) => return Some(Stop::Finished(o)),
            Flow::Continue => {}
        }
        self.debug_after_exit(level, rip_entry).map(Stop::Debug)
    }
}

/// A register dump for fatal guest errors.
pub fn dump_registers(v: &mut Vcpu) -> String {
    let r = *v.regs();
    let s = *v.sregs();
    format!(
        "  rip={:#018x} rflags={:#x}\n  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n  rsi={:#018x} rdi={:#018x} rbp={:#018x} rsp={:#018x}\n  r8 ={:#018x} r9 ={:#018x} r10={:#018x} r11={:#018x}\n  r12={:#018x} r13={:#018x} r14={:#018x} r15={:#018x}\n  cs={:#x} ss={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
        r.rip, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13,
        r.r14, r.r15, s.cs.selector, s.ss.selector, s.cr0, s.cr2, s.cr3, s.cr4, s.efer
    )
}

/// Runs a guest to completion.
pub fn run(cfg: RunConfig) -> Result<Report, Error> {
    Runner::new(cfg)?.run()
}
