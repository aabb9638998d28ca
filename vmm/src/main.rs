//! The `nestbed` command line.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nestbed::error::{code, Error};
use nestbed::gdb::GdbOptions;
use nestbed::machine::bios::Firmware;
use nestbed::machine::devices::ExitConvention;
use nestbed::machine::loader::Module;
use nestbed::qemu;
use nestbed::runner::{self, Outcome, PatchMode, RunConfig};
use nestbed::script::{OnScriptError, ScriptMode, ScriptOptions};
use nestbed::stdio::to_stdout;
use nestbed::trace::stats::Format;

#[derive(Parser)]
#[command(
    name = "nestbed",
    version,
    about = "Nested-virtualization research testbed: a KVM VMM with a virtual Intel VMX",
    after_help = "Without a command, nestbed runs `nestbed run`: the embedded nested demo (an L1 hypervisor \
                  running an L2). `nestbed COMMAND --help` describes each command's arguments; the README, \
                  SCRIPTING.md, GDB.md and TRACE.md the rest."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// `nestbed run --help`'s table of exit statuses (the README has the same).
const EXIT_CODES: &str = "\
Exit status:
  the guest's    whatever the guest sets (0-255): by default the byte it writes to port 0xf4;
                 a non-zero one is followed by \"nestbed: exit status N, set by the guest\" on stderr
  130            interrupted (Ctrl-C, SIGTERM, SIGHUP) or ended from gdb
  141            stdout or stderr closed (128 + SIGPIPE), e.g. `nestbed run | head -1`
  201            bad guest image
  202            bad command line or file, or the --trace file could not be written
  203            triple fault, or L1's VMX abort
  204            --timeout expired
  205, 206, 207  script compile error, script runtime error, stopped by a script
  208            host or KVM error
  209            the guest did something nestbed cannot continue from
nestbed's own statuses come with a \"nestbed: ...\" message on stderr. --exit-code-file FILE
writes \"STATUS SETTER WHAT\" (e.g. \"204 guest exit\" or \"204 nestbed timeout\") for scripts and CI.";

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
    #[command(after_help = EXIT_CODES)]
    Run(Box<RunArgs>),
    /// List the embedded guests.
    Guests {
        /// Print the path of embedded guest NAME's ELF image with debug symbols (for gdb's `file`)
        /// instead of the list.
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
        /// QEMU's arguments (`nestbed qemu -h` lists those nestbed takes).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ScenarioCommand {
    /// Run each scenario and check its expectations; exit 0 when all pass, 210 otherwise.
    Run {
        /// Scenario files (TOML, see tests/scenarios/README.md).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Run with this --patch-sensitive mode; other than off, golden traces are not compared
        /// (patched instructions add exits).
        #[arg(long, value_name = "MODE")]
        patch_sensitive: Option<PatchArg>,
        /// Run without the enlightened VMCS (`run --no-evmcs`); golden traces are not compared
        /// (L1's VMREADs and VMWRITEs trap again).
        #[arg(long)]
        no_evmcs: bool,
    },
    /// Run each scenario and rewrite its golden trace (exit code and console must still match).
    Bless {
        /// Scenario files whose `golden` trace is rewritten.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TraceCommand {
    /// Show where two traces part, ignoring timing; exit 0 when they match, 1 when they differ.
    Diff {
        /// The first trace (`--trace` output, JSON lines; see TRACE.md).
        a: PathBuf,
        /// The second trace.
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
        /// A `--trace` file (JSON lines; see TRACE.md).
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
    /// What runs before the image: none (the machine as a multiboot loader leaves it) or bios
    /// (also the 8259s, the PIT's 18.2 Hz tick and the real-mode vector table as a PC BIOS
    /// leaves them; the QEMU front's choice).
    #[arg(long, value_enum, default_value_t = FirmwareArg::None)]
    firmware: FirmwareArg,
    /// Write the serial console to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    serial: Option<PathBuf>,
    /// Print exit statistics on stderr when the run ends (on every way out): per level, reason
    /// and handler, count, share of exits and of time, total, mean, min, max and 99th percentile
    /// of nestbed's handling time (from KVM_RUN's return to the next VM entry; the guest's run
    /// is not in it, unlike `trace report`'s gap between exits).
    #[arg(long)]
    stats: bool,
    /// No progress line. Without it, a run whose stderr is a terminal shows one (elapsed time,
    /// exits per second, L1 and L2 exits, the last exit's reason), redrawn at most twice a
    /// second and erased at the end; never in pipes or files, nor under --gdb.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// How --stats prints: a table, one JSON object or CSV (JSON and CSV: times in ns, shares in
    /// percent); implies --stats.
    #[arg(long, value_enum, value_name = "FORMAT")]
    stats_format: Option<StatsFormatArg>,
    /// Write the --stats output to FILE instead of stderr; implies --stats.
    #[arg(long, value_name = "FILE")]
    stats_file: Option<PathBuf>,
    /// Stop the guest after SECS seconds, at least 1 (exit code 204); no limit without it.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u32>,
    /// Write the exit status and who set it to FILE when nestbed ends, as one line "STATUS
    /// SETTER WHAT": `42 guest exit`, `204 nestbed timeout`, `202 nestbed config`...
    #[arg(long, value_name = "FILE")]
    exit_code_file: Option<PathBuf>,
    /// Write every exit as one JSON line to FILE (TRACE.md); `-` writes them to stdout and moves
    /// the serial console to stderr unless --serial says where it goes.
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
    /// Do not offer the enlightened VMCS (EVMCS.md): no CPUID leaf 0x400000E0, the MSR takes #GP.
    #[arg(long)]
    no_evmcs: bool,
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
enum FirmwareArg {
    #[default]
    None,
    Bios,
}

#[derive(clap::ValueEnum, Clone, Copy, Default)]
enum ExitArg {
    #[default]
    Nestbed,
    Qemu,
}

#[derive(clap::ValueEnum, Clone, Copy, Default)]
enum StatsFormatArg {
    #[default]
    Table,
    Json,
    Csv,
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
    if !path.exists() && !name.contains('/') {
        return Err(Error::Config(format!("{}; no file of that name either", nestbed::guests::unknown(name))));
    }
    let bytes = nestbed::error::read_limited(&path, nestbed::error::limit::IMAGE)?;
    Ok((path.display().to_string(), bytes))
}

/// Combinations of flags that cannot do what they say.
fn check_flags(args: &RunArgs) -> Result<(), Error> {
    if args.gdb_exit_on_detach && args.gdb.is_none() && !args.gdb_wait {
        return Err(Error::Config("--gdb-exit-on-detach needs the gdb server: add --gdb [ADDR] or --gdb-wait".into()));
    }
    if args.timeout == Some(0) {
        return Err(Error::Config(
            "--timeout 0: give a number of seconds above 0, or leave --timeout out to run without a limit".into(),
        ));
    }
    Ok(())
}

/// `nestbed run`: boots, then says who set the status: a line on stderr for a guest's non-zero
/// status (nestbed's own come with their message), and `--exit-code-file`.
fn run(args: RunArgs) -> Result<i32, Error> {
    let file = args.exit_code_file.clone();
    let result = boot(args);
    let (status, setter, what) = match &result {
        _ if nestbed::stdio::closed() => (nestbed::stdio::CLOSED, "nestbed", "output-closed"),
        Ok((code, outcome)) => {
            let (setter, what) = outcome.origin();
            (*code, setter, what)
        }
        Err(e) => (e.exit_code(), "nestbed", e.kind()),
    };
    // nestbed's own statuses come with their message; a guest's may look like one of them.
    if status != 0 && setter == "guest" {
        nestbed::error::to_stderr(&format!("nestbed: exit status {status}, set by the guest\n"));
    }
    if let Some(path) = file {
        std::fs::write(&path, format!("{status} {setter} {what}\n"))
            .map_err(|source| Error::File { path: path.clone(), source })?;
    }
    result.map(|(code, _)| code)
}

fn boot(args: RunArgs) -> Result<(i32, Outcome), Error> {
    check_flags(&args)?;
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
    cfg.firmware = match args.firmware {
        FirmwareArg::None => Firmware::None,
        FirmwareArg::Bios => Firmware::Bios,
    };
    cfg.mem_mib = args.mem;
    cfg.cmdline = args.cmdline;
    cfg.timeout = args.timeout;
    cfg.trace = args.trace;
    cfg.trace_limit = args.trace_limit;
    cfg.scripts = args.scripts;
    cfg.vmx_msrs = vmx_msrs;
    cfg.evmcs = !args.no_evmcs;
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
    } else if cfg.trace.as_deref() == Some(Path::new(nestbed::trace::writer::STDOUT)) {
        cfg.console = Some(Box::new(std::io::LineWriter::new(nestbed::stdio::BesideStatus(std::io::stderr()))));
    }
    let gdb = args.gdb.or_else(|| args.gdb_wait.then(|| nestbed::gdb::DEFAULT_ADDR.to_string()));
    cfg.progress = !args.quiet && gdb.is_none();
    let gdb = gdb.map(|addr| GdbOptions { addr, wait: args.gdb_wait, exit_on_detach: args.gdb_exit_on_detach });
    let stats = (args.stats || args.stats_format.is_some() || args.stats_file.is_some()).then(|| StatsOut {
        format: match args.stats_format.unwrap_or_default() {
            StatsFormatArg::Table => Format::Table,
            StatsFormatArg::Json => Format::Json,
            StatsFormatArg::Csv => Format::Csv,
        },
        file: args.stats_file,
    });
    execute(cfg, gdb, stats)
}

/// Where and how `--stats` goes.
struct StatsOut {
    format: Format,
    /// stderr when None.
    file: Option<PathBuf>,
}

/// Boots `cfg` (under a gdb server with `gdb`) and reports how the run ended.
fn execute(cfg: RunConfig, gdb: Option<GdbOptions>, stats: Option<StatsOut>) -> Result<(i32, Outcome), Error> {
    let report = match gdb {
        Some(opts) => nestbed::gdb::run(runner::Runner::new(cfg)?, opts)?,
        None => runner::run(cfg)?,
    };
    if let Some(out) = stats {
        let text = report.stats.render(out.format);
        match &out.file {
            Some(path) => std::fs::write(path, text).map_err(|source| Error::File { path: path.clone(), source })?,
            None => nestbed::error::to_stderr(&text),
        }
    }
    if let Some(msg) = report.outcome.message() {
        nestbed::error::to_stderr(&format!("nestbed: {msg}\n"));
    }
    Ok((report.outcome.exit_code(), report.outcome))
}

/// The QEMU-compatible front (`nestbed qemu`, or started as qemu-system-x86_64).
fn qemu_front(args: Vec<OsString>) -> Result<i32, Error> {
    use nestbed::qemu::{self, Invocation};
    let args = args
        .into_iter()
        .map(|a| a.into_string().map_err(|a| Error::Config(format!("{}: not UTF-8", a.to_string_lossy()))))
        .collect::<Result<Vec<_>, _>>()?;
    match qemu::parse(&args)? {
        Invocation::Help => to_stdout(&qemu::help()),
        Invocation::Version => to_stdout(&format!("{}\n", qemu::version_line())),
        Invocation::DeviceList => to_stdout(&qemu::device_list()),
        Invocation::CpuList => to_stdout(&qemu::cpu_list()),
        Invocation::Run(run) => {
            for w in &run.warnings {
                nestbed::error::to_stderr(&format!("nestbed: warning: {w}\n"));
            }
            return execute(run.into_run_config()?, None, None).map(|(code, _)| code);
        }
    }
    Ok(0)
}

fn scenario(command: ScenarioCommand) -> Result<i32, Error> {
    use nestbed::scenario::{run_files, Mode};
    let exe = std::env::current_exe().map_err(|e| Error::HostIo(format!("finding the nestbed binary: {e}")))?;
    let (files, mode, patch, no_evmcs) = match command {
        ScenarioCommand::Run { files, patch_sensitive, no_evmcs } => (files, Mode::Run, patch_sensitive, no_evmcs),
        ScenarioCommand::Bless { files } => (files, Mode::Bless, None, false),
    };
    let patch = patch.map(|p| match p {
        PatchArg::Off => "off",
        PatchArg::Auto => "auto",
        PatchArg::On => "on",
    });
    run_files(&exe, &files, mode, patch, no_evmcs, &mut std::io::stdout())
}

fn trace(command: TraceCommand) -> Result<i32, Error> {
    use nestbed::trace::{diff, file, report};
    match command {
        TraceCommand::Diff { a, b, coarse, skip_console } => {
            let (ta, tb) = (file::read(&a)?, file::read(&b)?);
            let opts = diff::DiffOptions { coarse, skip_console };
            match diff::first_difference(&ta, &tb, opts) {
                None => {
                    to_stdout(&format!("traces match ({} exits compared)\n", diff::selected(&ta, opts).len()));
                    Ok(0)
                }
                Some(d) => {
                    to_stdout(&format!("traces differ: A = {}, B = {}\n", a.display(), b.display()));
                    let (na, nb) = (diff::selected(&ta, opts).len(), diff::selected(&tb, opts).len());
                    to_stdout(&d.render("A", "B", na, nb));
                    Ok(1)
                }
            }
        }
        TraceCommand::Report { file, svg } => {
            to_stdout(&report::report_file(&file, svg.as_deref())?);
            Ok(0)
        }
    }
}

fn patch_report(image: &str, all: bool) -> Result<i32, Error> {
    use nestbed::patch::{self, Selection};
    let (name, bytes) = load_guest(Some(image))?;
    let selection = if all { Selection::all() } else { Selection::default_set() };
    let scan = patch::scan(&bytes, selection).map_err(|source| Error::Scan { path: PathBuf::from(&name), source })?;
    to_stdout(&patch::report(&scan));
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
        .with_writer(nestbed::stdio::Stderr)
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
                let path = Path::new(nestbed::guests::SYMBOLS_DIR).join(&name);
                if !path.exists() {
                    return exit_with(Err(Error::Config(format!(
                        "{}: {name}'s image with symbols is gone from where nestbed was built (a `cargo clean`, or \
                         `cargo install` without `--target-dir target`); rebuild with `just install` or `cargo build`",
                        path.display()
                    ))));
                }
                to_stdout(&format!("{}\n", path.display()));
                Ok(0)
            }
            None => Err(Error::Config(nestbed::guests::unknown(&name))),
        },
        Command::Guests { symbols: None } => {
            for (name, desc, _) in nestbed::guests::GUESTS {
                to_stdout(&format!("{name:<16} {desc}\n"));
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
        Ok(c) => ExitCode::from(nestbed::stdio::status(c) as u8),
        Err(e) => {
            nestbed::error::to_stderr(&format!("nestbed: error: {e}\n"));
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
