//! Rhai scripts on nestbed's events (SCRIPTING.md is the reference).
//!
//! Each script file gets its own engine, AST and `Scope`. Its top-level statements run once at
//! load; the variables they declare are the script's globals, which the hooks `on_start`,
//! `on_exit(e)` and `on_stop` read and update directly (they are called with that scope).
//!
//! Scripts run *inline*, on the vCPU thread before nestbed handles the exit, unless every
//! script only observes (`analysis`): those run *pipelined*, on a second thread fed with copies
//! of the exits (`pipeline`), so the guest does not wait for them.

mod analysis;
mod api;
mod context;
mod guard;
mod pipeline;
mod rng;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rhai::{CallFnOptions, Dynamic, Engine, EvalAltResult, Position, Scope, AST};

pub use analysis::Needs;
pub use context::{ApiError, ControlRegs, ExitContext, ExitRecord, GPR_NAMES};
pub use guard::MAX_DEPTH;

use api::ScriptState;
use context::ExitRef;
use guard::{Halt, HookClock};
use pipeline::Pipeline;

use crate::error::Error;
use crate::exit::Level;
use crate::machine::vm::CpuidOverride;

/// What a runtime error in a script does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnScriptError {
    /// The hook returns `Error::Script` (nestbed stops).
    #[default]
    Stop,
    /// Log a warning and go on as if the script had not decided anything further.
    Continue,
}

/// Where `on_exit` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScriptMode {
    /// Pipelined when every script only observes and nestbed may use more than one CPU, else
    /// inline.
    #[default]
    Auto,
    /// Always on the vCPU thread, before nestbed handles the exit.
    Inline,
    /// Pipelined when every script only observes, even with one CPU.
    Pipelined,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptOptions {
    /// Operation budget of one hook call (0 = unlimited).
    pub max_operations: u64,
    /// Wall-clock budget of one hook call in milliseconds (0 = unlimited).
    pub max_time_ms: u64,
    pub on_error: OnScriptError,
    pub mode: ScriptMode,
}

impl Default for ScriptOptions {
    fn default() -> Self {
        ScriptOptions {
            max_operations: 1_000_000,
            max_time_ms: DEFAULT_TIME_MS,
            on_error: OnScriptError::Stop,
            mode: ScriptMode::Auto,
        }
    }
}

/// `--script-time` unless given: far above what a hook within the operation budget takes.
pub const DEFAULT_TIME_MS: u64 = 5_000;

/// Stack of the threads that run scripts: Rhai drops, copies and sizes nested values
/// recursively, a few hundred bytes a level, and values may nest `MAX_DEPTH` levels plus
/// what one hook call builds. Only the pages touched are committed.
pub const STACK: usize = 512 << 20;

const ON_START: &str = "on_start";
const ON_EXIT: &str = "on_exit";
const ON_STOP: &str = "on_stop";

/// A script file's name (as given) and text.
#[derive(Clone)]
struct Source {
    name: String,
    text: String,
}

impl Source {
    fn read(path: &Path) -> Result<Self, Error> {
        let text = crate::error::read_text_limited(path, crate::error::limit::TEXT)?;
        Ok(Source { name: path.display().to_string(), text })
    }
}

/// One script file, compiled, with the hooks it defines.
struct Compiled {
    name: String,
    engine: Engine,
    ast: AST,
    state: Rc<RefCell<ScriptState>>,
    clock: Rc<HookClock>,
    has: [bool; 3],
}

impl Compiled {
    fn new(src: &Source, opts: &ScriptOptions) -> Result<Self, Error> {
        let name = src.name.clone();
        let state = Rc::new(RefCell::new(ScriptState::new(name.clone())));
        let clock = HookClock::new(opts.max_time_ms);
        let engine = api::build_engine(&state, &clock, opts);
        let mut ast = engine.compile(&src.text).map_err(|e| {
            let (kind, pos) = (e.0, e.1);
            Error::ScriptCompile(format!("{}: {kind}", at(&name, pos)))
        })?;
        ast.set_source(name.as_str());

        let mut has = [false; 3];
        for f in ast.iter_functions() {
            let (slot, arity) = match f.name {
                ON_START => (0, 0),
                ON_EXIT => (1, 1),
                ON_STOP => (2, 0),
                _ => continue,
            };
            if f.params.len() != arity {
                let want = if arity == 1 { "one parameter (the exit)" } else { "no parameters" };
                return Err(Error::ScriptCompile(format!("{name}: fn {} must take {want}", f.name)));
            }
            has[slot] = true;
        }
        Ok(Compiled { name, engine, ast, state, clock, has })
    }
}

/// One loaded script: its globals initialized.
struct Script {
    name: String,
    engine: Engine,
    ast: AST,
    scope: Scope<'static>,
    state: Rc<RefCell<ScriptState>>,
    clock: Rc<HookClock>,
    has: [bool; 3],
    max_operations: u64,
}

/// Why a hook call failed.
enum HookError {
    /// The script's own error (what `--on-script-error` decides about).
    Script(String),
    /// A stop request halted it: the run ends whatever `--on-script-error` says.
    Stopped(Error),
}

impl Script {
    /// Runs the top-level statements, which initialize the globals, once.
    fn start(c: Compiled, opts: &ScriptOptions) -> Result<Self, Error> {
        let Compiled { name, engine, mut ast, state, clock, has } = c;
        let mut script = Script {
            name,
            engine,
            ast: AST::empty(),
            scope: Scope::new(),
            state,
            clock,
            has,
            max_operations: opts.max_operations,
        };
        script.clock.start();
        let r =
            script.engine.run_ast_with_scope(&mut script.scope, &ast).map_err(|e| script.failure("top-level code", &e));
        r.and_then(|()| script.check_depth("top-level code")).map_err(|e| match e {
            HookError::Script(msg) => Error::Script(msg),
            HookError::Stopped(e) => e,
        })?;
        ast.clear_statements();
        script.ast = ast;
        Ok(script)
    }

    fn call(&mut self, hook: &str, args: impl rhai::FuncArgs) -> Result<(), HookError> {
        // Rewinding drops the hook's own locals; assignments to globals stay in the scope.
        let opts = CallFnOptions::new().eval_ast(false).rewind_scope(true);
        self.clock.start();
        let r = self.engine.call_fn_with_options::<Dynamic>(opts, &mut self.scope, &self.ast, hook, args);
        r.map(drop).map_err(|e| self.failure(hook, &e))?;
        self.check_depth(hook)
    }

    fn failure(&self, hook: &str, e: &EvalAltResult) -> HookError {
        match guard::halted(e) {
            Some(Halt::Interrupt) => {
                HookError::Stopped(Error::Interrupted(format!("{}: {hook} interrupted", self.name)))
            }
            Some(Halt::Timeout) => {
                HookError::Stopped(Error::TimedOut(format!("{}: {hook} stopped by --timeout", self.name)))
            }
            Some(Halt::TimeLimit) => HookError::Script(format!(
                "{}: {hook} ran over the limit of {} ms per call (--script-time)",
                self.name,
                self.clock.limit_ms()
            )),
            None => HookError::Script(runtime_message(&self.name, hook, self.max_operations, e)),
        }
    }

    /// Refuses globals nested deeper than `MAX_DEPTH` (a hook's own locals are gone by now).
    fn check_depth(&self, hook: &str) -> Result<(), HookError> {
        let d = guard::depth(self.scope.iter_raw().map(|(_, _, v)| v), MAX_DEPTH);
        if d > MAX_DEPTH {
            return Err(HookError::Script(format!(
                "{}: after {hook}, a global nests arrays, maps or closures deeper than {MAX_DEPTH} levels",
                self.name
            )));
        }
        Ok(())
    }
}

/// Scripts called on the calling thread, in the order their files were given.
struct Inline {
    scripts: Vec<Script>,
    opts: ScriptOptions,
    stopped: bool,
}

impl Inline {
    fn start(compiled: Vec<Compiled>, opts: ScriptOptions) -> Result<Self, Error> {
        let scripts = compiled.into_iter().map(|c| Script::start(c, &opts)).collect::<Result<_, _>>()?;
        Ok(Inline { scripts, opts, stopped: false })
    }

    /// Compiles and starts `sources` (on the thread that will call them).
    fn load(sources: &[Source], opts: ScriptOptions) -> Result<Self, Error> {
        let compiled = sources.iter().map(|s| Compiled::new(s, &opts)).collect::<Result<_, _>>()?;
        Inline::start(compiled, opts)
    }

    fn on_start(&mut self) -> Result<Vec<(Level, CpuidOverride)>, Error> {
        let mut overrides = Vec::new();
        for i in 0..self.scripts.len() {
            if !self.scripts[i].has[0] {
                continue;
            }
            let s = &mut self.scripts[i];
            s.state.borrow_mut().in_on_start = true;
            let r = s.call(ON_START, ());
            let mut st = s.state.borrow_mut();
            st.in_on_start = false;
            overrides.append(&mut st.cpuid);
            drop(st);
            self.outcome(r)?;
        }
        Ok(overrides)
    }

    fn on_exit(&mut self, ctx: &mut ExitContext) -> Result<(), Error> {
        let placeholder = ctx.placeholder();
        let handle = ExitRef::new(std::mem::replace(ctx, placeholder));
        let mut result = Ok(());
        for i in 0..self.scripts.len() {
            if !self.scripts[i].has[1] {
                continue;
            }
            let r = self.scripts[i].call(ON_EXIT, (Dynamic::from(handle.clone()),));
            result = self.outcome(r);
            if result.is_err() {
                break;
            }
        }
        if let Some(back) = handle.take() {
            *ctx = back;
        }
        result
    }

    fn on_stop(&mut self) -> Result<(), Error> {
        if std::mem::replace(&mut self.stopped, true) {
            return Ok(());
        }
        let mut first = Ok(());
        for i in 0..self.scripts.len() {
            if self.scripts[i].has[2] {
                let r = self.scripts[i].call(ON_STOP, ());
                let r = self.outcome(r);
                if first.is_ok() {
                    first = r;
                }
            }
        }
        first
    }

    fn outcome(&self, r: Result<(), HookError>) -> Result<(), Error> {
        match (r, self.opts.on_error) {
            (Ok(()), _) => Ok(()),
            (Err(HookError::Stopped(e)), _) => Err(e),
            (Err(HookError::Script(msg)), OnScriptError::Stop) => Err(Error::Script(msg)),
            (Err(HookError::Script(msg)), OnScriptError::Continue) => {
                tracing::warn!("script error (continuing): {msg}");
                Ok(())
            }
        }
    }
}

enum Run {
    Inline(Inline),
    Pipelined(Pipeline),
}

/// The loaded scripts.
pub struct ScriptHost {
    run: Run,
    /// What the scripts' code can use, all files together.
    needs: Needs,
    has_on_exit: bool,
}

impl ScriptHost {
    /// Compiles every file, works out what the scripts use, and runs their top-level statements
    /// (on the thread that will call their hooks).
    pub fn load(paths: &[PathBuf], opts: ScriptOptions) -> Result<Self, Error> {
        let sources = paths.iter().map(|p| Source::read(p)).collect::<Result<Vec<_>, _>>()?;
        let compiled = sources.iter().map(|s| Compiled::new(s, &opts)).collect::<Result<Vec<_>, _>>()?;
        for c in &compiled {
            for w in hook_warnings(&c.name, &c.ast, c.has) {
                crate::error::to_stderr(&format!("nestbed: warning: {w}\n"));
            }
        }
        if opts.mode == ScriptMode::Pipelined {
            if let Some(c) = compiled.iter().find(|c| c.has[1] && !Needs::of(&c.ast).observe_only()) {
                return Err(Error::Config(format!(
                    "--script-mode pipelined: {} changes the guest, decides, or reads memory or the VMCS, so its \
                     on_exit must run inline, before nestbed handles the exit (SCRIPTING.md, \"Inline and pipelined\"); \
                     leave --script-mode out",
                    c.name
                )));
            }
        }
        let needs = compiled.iter().fold(Needs::default(), |n, c| n.union(Needs::of(&c.ast)));
        let has_on_exit = compiled.iter().any(|c| c.has[1]);
        // A second thread only pays where it gets a CPU of its own.
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let pipeline = match opts.mode {
            ScriptMode::Auto => cpus > 1,
            ScriptMode::Inline => false,
            ScriptMode::Pipelined => true,
        };
        let run = if pipeline && has_on_exit && needs.observe_only() {
            drop(compiled);
            Run::Pipelined(Pipeline::start(sources, opts)?)
        } else {
            Run::Inline(Inline::start(compiled, opts)?)
        };
        let mode = if matches!(run, Run::Pipelined(_)) { "pipelined" } else { "inline" };
        tracing::info!("scripts run {mode}; they use {needs:?}");
        Ok(ScriptHost { run, needs, has_on_exit })
    }

    /// Runs `on_start` of each script; returns the CPUID overrides they set, in order.
    pub fn on_start(&mut self) -> Result<Vec<(Level, CpuidOverride)>, Error> {
        match &mut self.run {
            Run::Inline(i) => i.on_start(),
            Run::Pipelined(p) => p.on_start(),
        }
    }

    /// Runs `on_exit(e)` of each script on `ctx`; scripts' changes and decision are in `ctx`
    /// afterwards (a later script's decision replaces an earlier one's). Pipelined, `ctx` is
    /// queued for the scripts and an error returned is one an earlier exit raised.
    pub fn on_exit(&mut self, ctx: &mut ExitContext) -> Result<(), Error> {
        if !self.has_on_exit {
            return Ok(());
        }
        match &mut self.run {
            Run::Inline(i) => i.on_exit(ctx),
            Run::Pipelined(p) => p.on_exit(ctx.record.clone()),
        }
    }

    /// Queues `record` for pipelined scripts (the run loop's way, with no context to build).
    pub fn queue(&mut self, record: ExitRecord) -> Result<(), Error> {
        match &mut self.run {
            Run::Pipelined(p) if self.has_on_exit => p.on_exit(record),
            Run::Pipelined(_) => Ok(()),
            Run::Inline(i) => i.on_exit(&mut ExitContext::with_record(record, None)),
        }
    }

    /// Waits until pipelined scripts have seen every exit so far (a no-op inline): before a
    /// person looks (a gdb stop), so the scripts' output is current.
    pub fn flush(&mut self) -> Result<(), Error> {
        match &mut self.run {
            Run::Inline(_) => Ok(()),
            Run::Pipelined(p) => p.flush(),
        }
    }

    /// Runs `on_stop` of each script, once, after every exit was seen; every script runs even
    /// if one fails.
    pub fn on_stop(&mut self) -> Result<(), Error> {
        match &mut self.run {
            Run::Inline(i) => i.on_stop(),
            Run::Pipelined(p) => p.on_stop(),
        }
    }

    /// True when some script defines `on_exit`.
    pub fn has_on_exit(&self) -> bool {
        self.has_on_exit
    }

    /// What the scripts can use, so the run loop captures only that.
    pub fn needs(&self) -> Needs {
        self.needs
    }

    /// True when `on_exit` runs on copies of the exits, which then need no RAM or VMCS.
    pub fn pipelined(&self) -> bool {
        matches!(self.run, Run::Pipelined(_))
    }
}

/// Warnings for a script whose hooks will not run as its author meant: a function whose name
/// is a slip from a hook's (`on_exitt`, `On_Exit`), or no hook at all.
fn hook_warnings(file: &str, ast: &AST, has: [bool; 3]) -> Vec<String> {
    const HOOKS: [&str; 3] = [ON_START, ON_EXIT, ON_STOP];
    let mut warnings: Vec<String> = ast
        .iter_functions()
        .filter(|f| !HOOKS.contains(&f.name))
        .filter_map(|f| {
            let hook = crate::suggest::nearest(f.name, HOOKS)?;
            Some(format!("{file}: fn {} is not a hook and nestbed never calls it; did you mean {hook}?", f.name))
        })
        .collect();
    if !has.contains(&true) {
        warnings.push(format!(
            "{file} defines no hook (on_start, on_exit(e), on_stop): only its top-level code runs, once, at load"
        ));
    }
    warnings
}

/// `FILE:LINE:COL` (or just `FILE` when Rhai gives no position).
fn at(file: &str, pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(l), Some(c)) => format!("{file}:{l}:{c}"),
        (Some(l), None) => format!("{file}:{l}"),
        _ => file.to_string(),
    }
}

/// `FILE:LINE:COL: message (in HOOK)`, from the innermost error that has a position. Rhai
/// reports the operation limit without a position (it resets it at the call boundary).
fn runtime_message(file: &str, hook: &str, max_operations: u64, e: &EvalAltResult) -> String {
    let mut pos = e.position();
    let mut cur = e;
    while let EvalAltResult::ErrorInFunctionCall(_, _, inner, _) = cur {
        cur = inner;
        if !cur.position().is_none() {
            pos = cur.position();
        }
    }
    let mut msg = cur.to_string();
    if !cur.position().is_none() {
        let suffix = format!(" ({})", cur.position());
        if let Some(m) = msg.strip_suffix(&suffix) {
            msg = m.to_string();
        }
    }
    let msg = msg.strip_prefix("Runtime error: ").unwrap_or(&msg);
    if matches!(cur, EvalAltResult::ErrorTooManyOperations(_)) {
        return format!("{file}: {hook} ran over the limit of {max_operations} operations per call");
    }
    format!("{}: {msg} (in {hook})", at(file, pos))
}
