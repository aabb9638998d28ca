//! The QEMU-compatible command line: `nestbed qemu ARGS...`, or nestbed started under the name
//! `qemu-system-x86_64`. It takes the flags kvm-unit-tests' runner (x86/run,
//! scripts/arch-run.bash, x86/unittests.cfg) passes for one-vCPU x86 tests and maps them onto
//! the [`RunConfig`] of `nestbed run`, with QEMU's exit convention. What nestbed does not do as
//! asked is a warning (the runner fails a run whose stderr has other lines); what it cannot do
//! at all is an error; unknown flags are refused by name.

#[cfg(test)]
mod tests;

use crate::error::Error;
use crate::machine::devices::{ExitConvention, DEBUG_EXIT};
use crate::machine::loader::Module;
use crate::machine::memory::{MAX_MIB, MIN_MIB};
use crate::runner::RunConfig;

/// The program name that selects this front (argv[0]'s file name).
pub const PROGRAM: &str = "qemu-system-x86_64";
/// The QEMU version the front answers to.
pub const QEMU_VERSION: &str = "7.2.0";
/// QEMU's default RAM size.
const DEFAULT_MIB: u64 = 128;

/// The first line of `-h` and `--version`, in QEMU's format (the runner reads the version
/// from its fourth word).
pub fn version_line() -> String {
    format!("QEMU emulator version {QEMU_VERSION} (nestbed {})", env!("CARGO_PKG_VERSION"))
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    /// `-h`, `-help`, `--help`.
    Help,
    /// `-version`, `--version`.
    Version,
    /// `-device help` or `-device ?`.
    DeviceList,
    /// `-cpu help` or `-cpu ?`.
    CpuList,
    Run(Box<QemuRun>),
}

/// Where `-serial` sends the console.
#[derive(Debug, PartialEq, Eq)]
pub enum Serial {
    Stdio,
    File(String),
    Null,
}

/// A boot under the front.
#[derive(Debug, PartialEq, Eq)]
pub struct QemuRun {
    pub kernel: Option<String>,
    pub append: String,
    /// `-initrd`: multiboot modules, each "FILE ARGS" (QEMU's syntax: comma-separated, `,,` for
    /// a comma).
    pub modules: Vec<String>,
    pub mem_mib: u64,
    pub serial: Serial,
    /// What nestbed does differently from what was asked, for stderr.
    pub warnings: Vec<String>,
}

/// The devices `-device` takes: (name, bus, what nestbed does with it).
pub const DEVICES: &[(&str, &str, &str)] = &[
    ("isa-debug-exit", "ISA", "port 0xf4: exit status (value << 1) | 1 (iobase=0xf4 only)"),
    ("pc-testdev", "ISA", "kvm-unit-tests' test device"),
];

fn config(msg: impl Into<String>) -> Error {
    Error::Config(msg.into())
}

/// Parses the arguments after the program name. QEMU takes `--flag` for `-flag`.
pub fn parse(args: &[String]) -> Result<Invocation, Error> {
    let mut run = QemuRun {
        kernel: None,
        append: String::new(),
        modules: Vec::new(),
        mem_mib: DEFAULT_MIB,
        serial: Serial::Stdio,
        warnings: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')).filter(|f| !f.is_empty()) else {
            return Err(config(format!("{arg}: disk images are not supported; nestbed boots -kernel FILE")));
        };
        let mut value = || it.next().ok_or_else(|| config(format!("-{flag}: requires an argument")));
        match flag {
            "h" | "help" => return Ok(Invocation::Help),
            "version" => return Ok(Invocation::Version),
            "kernel" => run.kernel = Some(value()?.clone()),
            "append" => run.append = value()?.clone(),
            "initrd" => run.modules = split_modules(value()?),
            "m" => run.mem_mib = parse_mem(value()?, &mut run.warnings)?,
            "smp" => check_smp(value()?, &mut run.warnings)?,
            "cpu" => {
                if !check_cpu(value()?, &mut run.warnings)? {
                    return Ok(Invocation::CpuList);
                }
            }
            "machine" | "M" => check_machine(value()?, &mut run.warnings)?,
            "accel" => check_accel(value()?, &mut run.warnings)?,
            "enable-kvm" | "nodefaults" | "no-reboot" | "nographic" => {}
            "device" => {
                if !check_device(value()?, &mut run.warnings)? {
                    return Ok(Invocation::DeviceList);
                }
            }
            "serial" => run.serial = parse_serial(value()?)?,
            "display" | "vnc" => {
                let v = value()?;
                if v != "none" {
                    run.warnings.push(format!("-{flag} {v}: nestbed has no display; ignored"));
                }
            }
            "monitor" => {
                let v = value()?;
                if v != "none" {
                    return Err(config(format!("-monitor {v}: nestbed has no QEMU monitor (only -monitor none)")));
                }
            }
            "global" => {
                let v = value()?;
                if !v.starts_with("kvm-pit.lost_tick_policy=") {
                    run.warnings.push(format!("-global {v}: ignored"));
                }
            }
            "name" => {
                value()?;
            }
            _ => return Err(config(format!("-{flag}: option not supported by nestbed's QEMU front (see -h)"))),
        }
    }
    Ok(Invocation::Run(Box::new(run)))
}

/// QEMU's `-initrd` for multiboot: modules separated by `,`, `,,` standing for a comma.
fn split_modules(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != ',' {
            cur.push(c);
        } else if chars.next_if_eq(&',').is_some() {
            cur.push(',');
        } else {
            out.push(std::mem::take(&mut cur));
        }
    }
    out.push(cur);
    out.retain(|m| !m.trim().is_empty());
    out
}

/// Splits `a,b=c,...` into its first item and the `key=value` properties after it.
fn props(text: &str) -> (&str, impl Iterator<Item = (&str, &str)>) {
    let mut parts = text.split(',');
    let first = parts.next().unwrap_or("");
    (first, parts.filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, ""))))
}

/// A size in bytes: a number with an optional K/M/G/T suffix, `default_shift` without one.
fn parse_size(text: &str, default_shift: u32) -> Option<u64> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let shift = match text[digits.len()..].to_ascii_lowercase().as_str() {
        "" => default_shift,
        "b" => 0,
        "k" | "kb" => 10,
        "m" | "mb" => 20,
        "g" | "gb" => 30,
        "t" | "tb" => 40,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// `-m [size=]SIZE[,slots=N,maxmem=SIZE]`, SIZE in MiB unless suffixed.
fn parse_mem(text: &str, warnings: &mut Vec<String>) -> Result<u64, Error> {
    let (first, rest) = props(text);
    let mut size = (!first.is_empty() && !first.contains('=')).then_some(first);
    if let Some(s) = text.split(',').find_map(|p| p.strip_prefix("size=")) {
        size = Some(s);
    }
    for (k, _) in rest.filter(|(k, _)| *k != "size") {
        warnings.push(format!("-m {text}: {k} ignored (nestbed has no memory hotplug)"));
    }
    let bytes = size.and_then(|s| parse_size(s, 20)).ok_or_else(|| config(format!("-m {text}: not a size")))?;
    if bytes % (1 << 20) != 0 {
        return Err(config(format!("-m {text}: nestbed's RAM is a whole number of MiB")));
    }
    let mib = bytes >> 20;
    if !(MIN_MIB..=MAX_MIB).contains(&mib) {
        return Err(config(format!("-m {text}: RAM must be between {MIN_MIB} and {MAX_MIB} MiB")));
    }
    Ok(mib)
}

/// `-smp [cpus=]N[,sockets=,dies=,cores=,threads=,maxcpus=]`: nestbed has one vCPU. The error
/// ends with the maximum, as QEMU's (the runner's MAX_SMP probe reads the last word).
fn check_smp(text: &str, warnings: &mut Vec<String>) -> Result<(), Error> {
    let bad = || config(format!("-smp {text}: not a CPU count"));
    let mut cpus = None;
    let mut topology = 1u64;
    for (i, part) in text.split(',').enumerate() {
        let (k, v) = match part.split_once('=') {
            Some(kv) => kv,
            None if i == 0 => ("cpus", part),
            None => return Err(bad()),
        };
        let n = v.parse::<u64>().map_err(|_| bad())?;
        match k {
            "cpus" => cpus = Some(n),
            "sockets" | "dies" | "clusters" | "cores" | "threads" => topology = topology.saturating_mul(n),
            "maxcpus" if n > 1 => warnings.push(format!("-smp {text}: maxcpus ignored (no CPU hotplug)")),
            "maxcpus" => {}
            _ => return Err(config(format!("-smp {text}: unknown property {k}"))),
        }
    }
    let n = cpus.unwrap_or(topology);
    if n > 1 {
        return Err(config(format!("Invalid SMP CPUs {n}. The max CPUs supported by nestbed is 1")));
    }
    Ok(())
}

/// `-cpu MODEL[,+feat,-feat,feat=value,...]`. `host` and `max` are nestbed's CPU as it is
/// (KVM's supported CPUID with nestbed's virtual VMX); any other model, and any feature but
/// VMX, is a warning: nestbed does not change CPUID for them. Returns false for `-cpu help`.
fn check_cpu(text: &str, warnings: &mut Vec<String>) -> Result<bool, Error> {
    let mut parts = text.split(',');
    let model = parts.next().unwrap_or("");
    match model {
        "help" | "?" => return Ok(false),
        "host" | "max" => {}
        "" => return Err(config("-cpu: requires a CPU model")),
        m => warnings
            .push(format!("-cpu {m}: nestbed presents the host CPU (as -cpu host, with its virtual VMX), not {m}")),
    }
    let mut ignored = Vec::new();
    for feat in parts.filter(|f| !f.is_empty()) {
        match feat {
            "+vmx" | "vmx" | "vmx=on" => {}
            "-vmx" | "vmx=off" => warnings.push("-cpu: nestbed's CPU always has VMX; -vmx ignored".into()),
            f => ignored.push(f),
        }
    }
    if !ignored.is_empty() {
        warnings.push(format!("-cpu {model}: nestbed does not change CPUID for {}; ignored", ignored.join(",")));
    }
    Ok(true)
}

/// KVM must be among the accelerators (`kvm`, or a `:`-separated list with it).
fn check_accel_name(list: &str, flag: &str) -> Result<(), Error> {
    if list.split(':').any(|a| a == "kvm") {
        Ok(())
    } else {
        Err(config(format!("{flag}: nestbed runs on KVM only (accel=kvm)")))
    }
}

/// `-machine [type=]TYPE,accel=...,...`: a PC; properties other than accel are warnings.
fn check_machine(text: &str, warnings: &mut Vec<String>) -> Result<(), Error> {
    let (first, rest) = props(text);
    let mut machine = if first.contains('=') { None } else { Some(first) };
    let mut all = rest.collect::<Vec<_>>();
    if let Some(kv) = first.split_once('=') {
        all.insert(0, kv);
    }
    for (k, v) in all {
        match k {
            "accel" => check_accel_name(v, &format!("-machine {text}"))?,
            "type" => machine = Some(v),
            _ => warnings.push(format!("-machine {text}: {k}{} ignored", if v.is_empty() { "" } else { "=..." })),
        }
    }
    match machine {
        Some("help" | "?") => Err(config("-machine help: nestbed is one machine, a PC with a multiboot loader")),
        None | Some("" | "pc") => Ok(()),
        Some(m) if m.starts_with("pc-i440fx") => Ok(()),
        Some(m) => {
            warnings.push(format!("-machine {m}: nestbed's machine is not {m}; running as pc"));
            Ok(())
        }
    }
}

/// `-accel kvm[,props]`.
fn check_accel(text: &str, warnings: &mut Vec<String>) -> Result<(), Error> {
    let (name, rest) = props(text);
    check_accel_name(name, &format!("-accel {text}"))?;
    for (k, _) in rest {
        warnings.push(format!("-accel {text}: {k} ignored"));
    }
    Ok(())
}

/// `-device DRIVER[,props]`: the devices of [`DEVICES`]; pci-testdev is a warning (no PCI:
/// the tests that look for it skip their PCI parts). Returns false for `-device help`.
fn check_device(text: &str, warnings: &mut Vec<String>) -> Result<bool, Error> {
    let (driver, mut rest) = props(text);
    match driver {
        "help" | "?" => Ok(false),
        "isa-debug-exit" => {
            let mut iobase = None;
            for (k, v) in rest {
                let num = || parse_int(v).ok_or_else(|| config(format!("-device {text}: {k}={v} is not a number")));
                match k {
                    "iobase" => iobase = Some(num()?),
                    "iosize" if matches!(num()?, 1 | 2 | 4) => {}
                    "iosize" => return Err(config(format!("-device {text}: iosize must be 1, 2 or 4"))),
                    _ => return Err(config(format!("-device {text}: unknown property {k}"))),
                }
            }
            // QEMU's default iobase is 0x501; nestbed's port is fixed.
            if iobase != Some(u64::from(DEBUG_EXIT)) {
                return Err(config(format!(
                    "-device {text}: nestbed's isa-debug-exit is at iobase={DEBUG_EXIT:#x} only"
                )));
            }
            Ok(true)
        }
        "pc-testdev" => {
            if let Some((k, _)) = rest.next() {
                return Err(config(format!("-device {text}: unknown property {k}")));
            }
            Ok(true)
        }
        "pci-testdev" => {
            warnings.push("-device pci-testdev: nestbed has no PCI bus; not provided".into());
            Ok(true)
        }
        d => Err(config(format!("-device {d}: not a device nestbed provides (see -device help)"))),
    }
}

fn parse_int(v: &str) -> Option<u64> {
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// `-serial stdio|mon:stdio|none|null|file:PATH`.
fn parse_serial(text: &str) -> Result<Serial, Error> {
    match text {
        "stdio" | "mon:stdio" => Ok(Serial::Stdio),
        "none" | "null" => Ok(Serial::Null),
        t => match t.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(Serial::File(path.to_string())),
            _ => Err(config(format!("-serial {t}: nestbed takes stdio, file:PATH, none or null"))),
        },
    }
}

impl QemuRun {
    /// Reads the kernel and modules into the configuration `nestbed run` would build.
    pub fn into_run_config(self) -> Result<RunConfig, Error> {
        let kernel = self
            .kernel
            .ok_or_else(|| config("no -kernel given: nestbed boots multiboot kernels (-kernel FILE) only"))?;
        // QEMU's wording, which the runner looks for to tell a missing kernel from a failure.
        let image = crate::error::read_limited(std::path::Path::new(&kernel), crate::error::limit::IMAGE).map_err(
            |e| match e {
                Error::File { source, .. } => config(format!("could not load kernel '{kernel}': {}", io_text(&source))),
                other => other,
            },
        )?;
        let mut cfg = RunConfig::new(&kernel, image);
        cfg.mem_mib = self.mem_mib;
        cfg.cmdline = self.append;
        cfg.exit_convention = ExitConvention::Qemu;
        // QEMU's PC boots the kernel through its BIOS, whose set-up images may rely on.
        cfg.firmware = crate::machine::bios::Firmware::Bios;
        // Images written for hardware set CR4.VMXE with a plain `mov cr4` and end VMX tests
        // with VMCALL in L2: what this host needs patched is (README, "Patching").
        cfg.patch = crate::runner::PatchMode::Auto;
        for m in &self.modules {
            let m = m.trim_start();
            let (path, args) = m.split_once(' ').unwrap_or((m, ""));
            cfg.modules.push(Module::read(path, args.trim_start())?);
        }
        cfg.console = match self.serial {
            Serial::Stdio => None,
            Serial::Null => Some(Box::new(std::io::sink())),
            Serial::File(path) => {
                let f = std::fs::File::create(&path).map_err(|source| Error::File { path: path.into(), source })?;
                Some(Box::new(std::io::LineWriter::new(f)))
            }
        };
        Ok(cfg)
    }
}

/// An I/O error without Rust's "(os error N)".
fn io_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// `-h` / `--help`.
pub fn help() -> String {
    let mut s = version_line();
    s.push_str(&format!(
        "\nusage: {PROGRAM} [options]\n\
         \n\
         nestbed's QEMU-compatible front (also `nestbed qemu [options]`): boots a multiboot kernel\n\
         on KVM with nestbed's virtual VMX, one vCPU, the serial console and QEMU's exit\n\
         convention (isa-debug-exit at 0xf4: status (value << 1) | 1; \"Shutdown\" to 0x8900:\n\
         status 0). Errors use nestbed's exit codes (202: bad option or file). Options:\n\
         \n\
         -kernel FILE           multiboot v1 kernel (the guest's first word is FILE)\n\
         -append TEXT           its command line\n\
         -initrd FILE[ ARGS][,FILE...]  multiboot modules\n\
         -m [size=]SIZE         RAM (MiB unless suffixed K/M/G; default {DEFAULT_MIB})\n\
         -smp 1                 one vCPU (more is an error)\n\
         -cpu host|max[,+vmx]   nestbed's CPU; other models and features are warnings\n\
         -machine [pc,]accel=kvm, -accel kvm, -enable-kvm\n\
         -device isa-debug-exit,iobase=0xf4,iosize=0x4 | pc-testdev | pci-testdev (warning: no PCI)\n\
         -serial stdio|file:PATH|none   console (default stdio)\n\
         -display none, -nographic, -vnc none, -monitor none, -nodefaults, -no-reboot,\n\
         -global kvm-pit.lost_tick_policy=..., -name NAME    accepted\n\
         -device help, -cpu help, -version, -h\n"
    ));
    s
}

/// `-device help`, in QEMU's format (the runner greps for `"pc-testdev"`).
pub fn device_list() -> String {
    let mut s = String::from("Misc devices:\n");
    for (name, bus, desc) in DEVICES {
        s.push_str(&format!("name \"{name}\", bus {bus}, desc \"{desc}\"\n"));
    }
    s
}

/// `-cpu help`.
pub fn cpu_list() -> String {
    "Available CPUs:\n  host  nestbed's CPU: KVM's supported CPUID with nestbed's virtual VMX\n  \
     max   the same as host\n(other models run as host, with a warning)\n"
        .to_string()
}
