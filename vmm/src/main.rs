//! The `nestbed` command line.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nestbed::error::{code, Error};
use nestbed::gdb::GdbOptions;
use nestbed::machine::devices::ExitConvention;
use nestbed::machine::loader::Module;
use nestbed::qemu;
use nestbed::runner::{self, PatchMode, RunConfig};
use nestbed::script::{OnScriptError, ScriptMode, ScriptOptions};

#[derive(Parser)]
#[command(
    name = "nestbed",
    version,
    about = "Nested-virtualization research testbed: a KVM VMM with a virtual Intel VMX"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
enum PatchArg {
    #[default]
    Off,
    Auto,
    On,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest (the embedded default when --guest is not given).
    Run(Box<RunArgs>),
    /// List the embedded guests.
    Guests {
        /// Print the path of NAME's ELF image with symbols (for gdb's `file`) instead.
        #[arg(long, value_name = "NAME")]
        symbols: Option<String>,
    },
    /// Run scenario files (tests/scenarios/*.toml) or rewrite their golden traces.
    Scenario {
        #[command(subcommand)]
        command: ScenarioCommand,
    },
    /// List the sensitive instructions of a guest image that load-time patching would replace.
    PatchReport {
        /// Embedded guest name (see `nestbed guests`) or path to a multiboot ELF kernel.
        image: String,
        /// Add the L2-fidelity group (RDTSC, CR0/CR3/CR8 moves, INVLPG, ...) to the VMX
        /// instructions, CR4 moves and CPUID.
        #[arg(long)]
        all: bool,
    },
    /// Compare or summarize `--trace` files.
    Trace {
        #[command(subcommand)]
        command: TraceCommand,
    },
    /// Boot with QEMU's command line (-kernel, -append, -initrd, -m, -device isa-debug-exit,...)
    /// and exit conventions, as kvm-unit-tests' runner drives QEMU; the same when nestbed is
    /// started as qemu-system-x86_64. `nestbed qemu -h` lists the flags.
    #[command(disable_help_flag = true)]
    Qemu {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ScenarioCommand {
    /// Run each scenario and check its expectations; exit 0 when all pass, 210 otherwise.
    Run {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Run with this --patch-sensitive mode; other than off, golden traces are not compared
        /// (patched instructions add exits).
        #[arg(long, value_name = "MODE")]
        patch_sensitive: Option<PatchArg>,
    },
    /// Run each scenario and rewrite its golden trace (exit code and console must still match).
    Bless {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TraceCommand {
    /// Show where two traces part, ignoring timing; exit 0 when they match, 1 when they differ.
    Diff {
        a: PathBuf,
        b: PathBuf,
        /// Compare only the level, reason and handler of each exit.
        #[arg(long)]
        coarse: bool,
        /// Leave out the console I/O exits nestbed handled (as golden traces do).
        #[arg(long)]
        skip_console: bool,
    },
    /// Print the statistics table of a trace and draw it as SVG.
    Report {
        file: PathBuf,
        /// Where to write the SVG (default: FILE with the extension .svg).
        #[arg(long, value_name = "OUT")]
        svg: Option<PathBuf>,
    },
}

#[derive(clap::Args, Default)]
struct RunArgs {
    /// Embedded guest name (see `nestbed guests`) or path to a multiboot v1 ELF kernel.
    #[arg(long, short = 'g')]
    guest: Option<String>,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 128)]
    mem: u64,
    /// Kernel command line (the guest sees "<guest name or path as given> <cmdline>", as under QEMU).
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Load FILE as the first multiboot module (QEMU's -initrd; kvm-unit-tests' environment file).
    #[arg(long, value_name = "FILE")]
    initrd: Option<String>,
    /// Load FILE as a multiboot module after the image (and the --initrd), page-aligned; the
    /// guest sees the string "FILE CMDLINE". Repeatable, in order.
    #[arg(long = "module", value_name = "FILE[,CMDLINE]")]
    modules: Vec<String>,
    /// What the guest's exit writes mean: nestbed (a write to port 0xf4 exits with the byte
    /// written) or qemu (isa-debug-exit at 0xf4: status (value << 1) | 1; "Shutdown" written to
    /// port 0x8900: status 0).
    #[arg(long, value_enum, default_value_t = ExitArg::Nestbed)]
    exit_convention: ExitArg,
    /// Write the serial console to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    serial: Option<PathBuf>,
    /// Print exit statistics on stderr when the run ends (on every way out).
    #[arg(long)]
    stats: bool,
    /// Stop the guest after SECS seconds (exit code 204).
    #[arg(long, value_name = "SECS")]
    timeout: Option<u32>,
    /// Write every exit as one JSON line to FILE.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Stop writing the --trace file before it grows past SIZE (bytes, or with K, M, G); the
    /// run goes on, and a warning and the statistics say where it stopped.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = nestbed::trace::writer::parse_size)]
    trace_limit: u64,
    /// Run a Rhai script on every exit (repeatable; hooks run in the order given). See SCRIPTING.md.
    #[arg(long = "script", value_name = "FILE")]
    scripts: Vec<PathBuf>,
    /// What a runtime error in a script does: stop nestbed (exit code 206) or print it and continue.
    #[arg(long, value_enum, default_value_t = ScriptErrorArg::Stop)]
    on_script_error: ScriptErrorArg,
    /// Serve gdb on ADDR (default 127.0.0.1:1234; a non-loopback address is reachable by others).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = nestbed::gdb::DEFAULT_ADDR)]
    gdb: Option<String>,
    /// With the gdb server: hold before the first guest instruction until gdb continues (implies --gdb).
    #[arg(long)]
    gdb_wait: bool,
    /// With the gdb server: end nestbed (exit code 130) when gdb detaches, instead of running on.
    #[arg(long)]
    gdb_exit_on_detach: bool,
    /// Advertise VALUE in VMX capability MSR INDEX (IA32_FEATURE_CONTROL 0x3a or 0x480-0x491) instead of
    /// nestbed's default, e.g. 0x486=0x21 for an IA32_VMX_CR0_FIXED0 without CR0.PG; the virtual VMX
    /// enforces what it advertises. Hex (0x...) or decimal; repeatable.
    #[arg(long = "vmx-msr", value_name = "INDEX=VALUE")]
    vmx_msrs: Vec<String>,
    /// Patch sensitive instructions into int3 traps of the same length that nestbed maps back to
    /// the original, so they reach nestbed on any KVM host (`nestbed patch-report IMAGE` lists
    /// them). off: only what the host traps by itself. auto: what this host needs (VMX
    /// instructions it does not report, VMCALL, MOV CR4 with a virtual CR4.VMXE, CPUID), then
    /// what L1's exit controls ask for (RDTSC, CR0/CR3/CR8, INVLPG, ...). on: everything.
    #[arg(long, value_name = "MODE", default_value = "off")]
    patch_sensitive: PatchArg,
    /// Operation budget of one script hook call (0 = unlimited).
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    script_ops: u64,
    /// Wall-clock budget of one script hook call in milliseconds (0 = unlimited).
    #[arg(long, value_name = "MS", default_value_t = nestbed::script::DEFAULT_TIME_MS)]
    script_time: u64,
    /// Where on_exit runs: auto runs scripts that only observe (no change, decision, memory or
    /// VMCS access) on a second thread, on copies of the exits, so the guest does not wait for
    /// them, when there is a second CPU; pipelined does so even on one CPU; inline always runs
    /// them before nestbed handles the exit. See SCRIPTING.md.
    #[arg(long, value_enum, default_value_t = ScriptModeArg::Auto)]
    script_mode: ScriptModeArg,
}

#[derive(clap::ValueEnum, Clone, Copy, Default)]
enum ExitArg {
    #[default]
    Nestbed,
    Qemu,
}

#[derive(clap::ValueEnum, Clone, Copy, Default)]
enum ScriptModeArg {
    #[default]
    Auto,
    Inline,
    Pipelined,
}

#[derive(clap::ValueEnum, Clone, Copy, Default)]
enum ScriptErrorArg {
    #[default]
    Stop,
    Continue,
}

fn load_guest(spec: Option<&str>) -> Result<(String, Vec<u8>), Error> {
    let name = spec.unwrap_or(nestbed::guests::DEFAULT);
    if let Some(img) = nestbed::guests::find(name) {
        return Ok((name.to_string(), img.to_vec()));
    }
    let path = PathBuf::from(name);
    let bytes = nestbed::error::read_limited(&path, nestbed::error::limit::IMAGE)?;
    Ok((path.display().to_string(), bytes))
}

fn run(args: RunArgs) -> Result<i32, Error> {
    let vmx_msrs = args
        .vmx_msrs
        .iter()
        .map(|text| {
            nestbed::vmx::caps::parse_msr_setting(text).map_err(|e| Error::Config(format!("--vmx-msr {text}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (name, image) = load_guest(args.guest.as_deref())?;
    let mut cfg = RunConfig::new(&name, image);
    if let Some(path) = &args.initrd {
        cfg.modules.push(Module::read(path, "")?);
    }
    for spec in &args.modules {
        let (path, text) = spec.split_once(',').unwrap_or((spec, ""));
        cfg.modules.push(Module::read(path, text)?);
    }
    cfg.exit_convention = match args.exit_convention {
        ExitArg::Nestbed => ExitConvention::Nestbed,
        ExitArg::Qemu => ExitConvention::Qemu,
    };
    cfg.mem_mib = args.mem;
    cfg.cmdline = args.cmdline;
    cfg.timeout = args.timeout;
    cfg.trace = args.trace;
    cfg.trace_limit = args.trace_limit;
    cfg.scripts = args.scripts;
    cfg.vmx_msrs = vmx_msrs;
    cfg.patch = match args.patch_sensitive {
        PatchArg::Off => PatchMode::Off,
        PatchArg::Auto => PatchMode::Auto,
        PatchArg::On => PatchMode::On,
    };
    cfg.script_options = ScriptOptions {
        max_operations: args.script_ops,
        max_time_ms: args.script_time,
        on_error: match args.on_script_error {
            ScriptErrorArg::Stop => OnScriptError::Stop,
            ScriptErrorArg::Continue => OnScriptError::Continue,
        },
        mode: match args.script_mode {
            ScriptModeArg::Auto => ScriptMode::Auto,
            ScriptModeArg::Inline => ScriptMode::Inline,
            ScriptModeArg::Pipelined => ScriptMode::Pipelined,
        },
    };
    if let Some(path) = &args.serial {
        let f = std::fs::File::create(path).map_err(|source| Error::File { path: path.clone(), source })?;
        cfg.console = Some(Box::new(std::io::LineWriter::new(f)));
    }
    let gdb = args.gdb.or_else(|| args.gdb_wait.then(|| nestbed::gdb::DEFAULT_ADDR.to_string()));
    let gdb = gdb.map(|addr| GdbOptions { addr, wait: args.gdb_wait, exit_on_detach: args.gdb_exit_on_detach });
    execute(cfg, gdb, args.stats)
}

/// Boots `cfg` (under a gdb server with `gdb`) and reports how the run ended.
fn execute(cfg: RunConfig, gdb: Option<GdbOptions>, stats: bool) -> Result<i32, Error> {
    let report = match gdb {
        Some(opts) => nestbed::gdb::run(runner::Runner::new(cfg)?, opts)?,
        None => runner::run(cfg)?,
    };
    if stats {
        nestbed::error::to_stderr(&report.stats.report());
    }
    if let Some(msg) = report.outcome.message() {
        nestbed::error::to_stderr(&format!("nestbed: {msg}\n"));
    }
    Ok(report.outcome.exit_code())
}

/// The QEMU-compatible front (`nestbed qemu`, or started as qemu-system-x86_64).
fn qemu_front(args: Vec<OsString>) -> Result<i32, Error> {
    use nestbed::qemu::{self, Invocation};
    let args = args
        .into_iter()
        .map(|a| a.into_string().map_err(|a| Error::Config(format!("{}: not UTF-8", a.to_string_lossy()))))
        .collect::<Result<Vec<_>, _>>()?;
    match qemu::parse(&args)? {
        Invocation::Help => print!("{}", qemu::help()),
        Invocation::Version => println!("{}", qemu::version_line()),
        Invocation::DeviceList => print!("{}", qemu::device_list()),
        Invocation::CpuList => print!("{}", qemu::cpu_list()),
        Invocation::Run(run) => {
            for w in &run.warnings {
                eprintln!("nestbed: warning: {w}");
            }
            return execute(run.into_run_config()?, None, false);
        }
    }
    Ok(0)
}

fn scenario(command: ScenarioCommand) -> Result<i32, Error> {
    use nestbed::scenario::{run_files, Mode};
    let exe = std::env::current_exe().map_err(|e| Error::HostIo(format!("finding the nestbed binary: {e}")))?;
    let (files, mode, patch) = match command {
        ScenarioCommand::Run { files, patch_sensitive } => (files, Mode::Run, patch_sensitive),
        ScenarioCommand::Bless { files } => (files, Mode::Bless, None),
    };
    let patch = patch.map(|p| match p {
        PatchArg::Off => "off",
        PatchArg::Auto => "auto",
        PatchArg::On => "on",
    });
    run_files(&exe, &files, mode, patch, &mut std::io::stdout())
}

fn trace(command: TraceCommand) -> Result<i32, Error> {
    use nestbed::trace::{diff, file, report};
    match command {
        TraceCommand::Diff { a, b, coarse, skip_console } => {
            let (ta, tb) = (file::read(&a)?, file::read(&b)?);
            let opts = diff::DiffOptions { coarse, skip_console };
            match diff::first_difference(&ta, &tb, opts) {
                None => {
                    println!("traces match ({} exits compared)", diff::selected(&ta, opts).len());
                    Ok(0)
                }
                Some(d) => {
                    println!("traces differ: A = {}, B = {}", a.display(), b.display());
                    let (na, nb) = (diff::selected(&ta, opts).len(), diff::selected(&tb, opts).len());
                    print!("{}", d.render("A", "B", na, nb));
                    Ok(1)
                }
            }
        }
        TraceCommand::Report { file, svg } => {
            print!("{}", report::report_file(&file, svg.as_deref())?);
            Ok(0)
        }
    }
}

fn patch_report(image: &str, all: bool) -> Result<i32, Error> {
    use nestbed::patch::{self, Selection};
    let (name, bytes) = load_guest(Some(image))?;
    let selection = if all { Selection::all() } else { Selection::default_set() };
    let scan = patch::scan(&bytes, selection).map_err(|source| Error::Scan { path: PathBuf::from(&name), source })?;
    print!("{}", patch::report(&scan));
    Ok(0)
}

fn main() -> ExitCode {
    // Scripts run on this thread (and the pipelined scripts' worker), with Rhai's recursive
    // drops and copies of nested values: it gets their stack. Signals go to it, so its
    // blocking calls see EINTR.
    let worker =
        std::thread::Builder::new().name("nestbed".into()).stack_size(nestbed::script::STACK).spawn(nestbed_main);
    match worker {
        Ok(w) => {
            nestbed::runner::signals::block_here();
            w.join().unwrap_or(ExitCode::from(101))
        }
        Err(_) => nestbed_main(),
    }
}

fn nestbed_main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let invoked_as_qemu = argv.first().and_then(|a| Path::new(a).file_name()) == Some(OsStr::new(qemu::PROGRAM));
    if invoked_as_qemu || argv.get(1).is_some_and(|a| a == "qemu") {
        let skip = if invoked_as_qemu { 1 } else { 2 };
        return exit_with(qemu_front(argv.into_iter().skip(skip).collect()));
    }
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { code::CONFIG as u8 } else { 0 });
        }
    };
    let result = match cli.command.unwrap_or(Command::Run(Box::new(RunArgs {
        mem: 128,
        script_ops: 1_000_000,
        script_time: nestbed::script::DEFAULT_TIME_MS,
        ..Default::default()
    }))) {
        Command::Run(args) => run(*args),
        Command::Guests { symbols: Some(name) } => match nestbed::guests::find(&name) {
            Some(_) => {
                println!("{}", std::path::Path::new(nestbed::guests::SYMBOLS_DIR).join(&name).display());
                Ok(0)
            }
            None => Err(Error::Config(format!("no embedded guest named '{name}' (see `nestbed guests`)"))),
        },
        Command::Guests { symbols: None } => {
            for (name, desc, _) in nestbed::guests::GUESTS {
                println!("{name:<16} {desc}");
            }
            Ok(0)
        }
        Command::Scenario { command } => scenario(command),
        Command::Trace { command } => trace(command),
        Command::PatchReport { image, all } => patch_report(&image, all),
        Command::Qemu { args } => qemu_front(args.into_iter().map(OsString::from).collect()),
    };
    exit_with(result)
}

fn exit_with(result: Result<i32, Error>) -> ExitCode {
    match result {
        Ok(c) => ExitCode::from(c as u8),
        Err(e) => {
            nestbed::error::to_stderr(&format!("nestbed: error: {e}\n"));
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
