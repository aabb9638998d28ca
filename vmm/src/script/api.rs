//! Everything a script can call: the engine's limits and sandbox, the `Exit` type's properties
//! and methods, and the global functions. SCRIPTING.md documents each name registered here (a
//! test keeps the two in step).

use std::cell::RefCell;
use std::rc::Rc;

use rhai::{Array, Blob, Dynamic, Engine, EvalAltResult, ImmutableString};

use super::context::{action_name, unsigned, ApiError, ExitRef, GPR_NAMES};
use super::guard::HookClock;
use super::rng::{SplitMix64, DEFAULT_SEED};
use super::ScriptOptions;
use crate::exit::{Action, ExitDetail, Level};
use crate::machine::vm::CpuidOverride;
use crate::vmx::exits::reason_name;

type Res<T> = Result<T, Box<EvalAltResult>>;

/// Per-script state behind the global functions.
pub struct ScriptState {
    /// File name, prefixed to `print`/`debug` output.
    pub name: String,
    pub rng: SplitMix64,
    /// True only while `on_start` runs (`cpuid_set` is refused otherwise).
    pub in_on_start: bool,
    pub cpuid: Vec<(Level, CpuidOverride)>,
}

impl ScriptState {
    pub fn new(name: String) -> Self {
        ScriptState { name, rng: SplitMix64::new(DEFAULT_SEED), in_on_start: false, cpuid: Vec::new() }
    }
}

fn err(e: ApiError) -> Box<EvalAltResult> {
    e.to_string().into()
}

/// A sandboxed engine with the nestbed API, for one script.
pub fn build_engine(state: &Rc<RefCell<ScriptState>>, clock: &Rc<HookClock>, opts: &ScriptOptions) -> Engine {
    let mut engine = Engine::new();
    let c = clock.clone();
    engine.on_progress(move |ops| c.progress(ops));
    engine
        .set_max_operations(opts.max_operations)
        .set_max_call_levels(64)
        .set_max_expr_depths(64, 32)
        .set_max_string_size(1 << 20)
        .set_max_array_size(1 << 20)
        .set_max_map_size(1 << 20)
        .set_max_variables(4096)
        .disable_symbol("eval");

    let name = state.borrow().name.clone();
    let n = name.clone();
    engine.on_print(move |s| crate::error::to_stderr(&format!("{n}: {s}\n")));
    engine.on_debug(move |s, _, pos| match pos.line() {
        Some(line) => crate::error::to_stderr(&format!("{name}:{line}: {s}\n")),
        None => crate::error::to_stderr(&format!("{name}: {s}\n")),
    });

    register_exit(&mut engine);
    register_globals(&mut engine, state);
    refuse_function_names(&mut engine);
    refuse_blocking(&mut engine);
    engine
}

/// Rhai's `sleep` would stop the whole machine inside a hook for as long as it asks, out of
/// reach of `--script-ops`: scripts get an error instead.
fn refuse_blocking(engine: &mut Engine) {
    fn refused() -> Result<(), Box<EvalAltResult>> {
        Err("sleep is not available in nestbed scripts: a hook runs while the guest is stopped".into())
    }
    engine.register_fn("sleep", |_: i64| refused()).register_fn("sleep", |_: f64| refused());
}

/// Rhai's array functions that call a function given by *name* (a string) instead of a function
/// pointer. A name computed at run time would call a function the code analysis cannot see
/// (`analysis`), so these refuse; `index_of` with a string looks for that string instead.
fn refuse_function_names(engine: &mut Engine) {
    fn refused(f: &str, name: &str) -> Box<EvalAltResult> {
        format!("{f}({name:?}): pass a function pointer or a closure (Fn(\"{name}\"), |x| ...), not a name").into()
    }
    for f in ["map", "filter", "some", "all", "dedup", "reduce", "reduce_rev", "sort", "drain", "retain"] {
        engine.register_fn(f, move |_: &mut Array, name: ImmutableString| -> Res<Dynamic> { Err(refused(f, &name)) });
    }
    for f in ["reduce", "reduce_rev"] {
        engine.register_fn(f, move |_: &mut Array, name: ImmutableString, _: Dynamic| -> Res<Dynamic> {
            Err(refused(f, &name))
        });
    }
    engine.register_fn("index_of", |a: &mut Array, s: ImmutableString| index_of(a, &s, 0));
    engine.register_fn("index_of", |a: &mut Array, s: ImmutableString, start: i64| index_of(a, &s, start));
}

/// The index of the first string `s` in `a` at or after `start` (from the end when negative),
/// or -1.
fn index_of(a: &Array, s: &str, start: i64) -> i64 {
    let len = a.len() as i64;
    let from = if start < 0 { (len + start).max(0) } else { start };
    a.iter()
        .enumerate()
        .skip(from as usize)
        .find(|(_, v)| v.read_lock::<ImmutableString>().is_some_and(|x| x.as_str() == s))
        .map_or(-1, |(i, _)| i as i64)
}

/// The level and reason names scripts read on most exits, made once per engine: the getters
/// hand out shared copies instead of a new string per exit.
struct Names {
    l1: ImmutableString,
    l2: ImmutableString,
    /// By basic exit reason (SDM Appendix C).
    reasons: Vec<ImmutableString>,
}

impl Names {
    fn new() -> Self {
        let reasons = (0..REASONS).map(|r| reason_name(r).into()).collect();
        Names { l1: "L1".into(), l2: "L2".into(), reasons }
    }

    fn level(&self, level: Level) -> ImmutableString {
        match level {
            Level::L1 => self.l1.clone(),
            Level::L2 => self.l2.clone(),
        }
    }

    /// A failed VM entry's reason (bit 31 set) is made anew: it is rare.
    fn reason(&self, raw: u32) -> ImmutableString {
        match self.reasons.get(raw as usize) {
            Some(name) => name.clone(),
            None => reason_name(raw).into(),
        }
    }
}

/// Basic exit reasons the SDM defines are below this.
const REASONS: u32 = 128;

fn register_exit(engine: &mut Engine) {
    engine.register_type_with_name::<ExitRef>("Exit");
    let to_string = |e: &mut ExitRef| -> Res<String> {
        e.get(|c| {
            format!(
                "#{} {} {} rip={:#x}",
                c.record.exit.seq,
                c.record.exit.level.as_str(),
                c.record.exit.reason_name(),
                c.record.rip
            )
        })
        .map_err(err)
    };
    engine.register_fn("to_string", to_string).register_fn("to_debug", to_string);

    // The exit itself.
    let names = std::rc::Rc::new(Names::new());
    let names2 = names.clone();
    engine
        .register_get("level", move |e: &mut ExitRef| e.get(|c| names.level(c.record.exit.level)).map_err(err))
        .register_get("reason", move |e: &mut ExitRef| e.get(|c| names2.reason(c.record.exit.reason)).map_err(err))
        .register_get("reason_nr", |e: &mut ExitRef| e.get(|c| i64::from(c.record.exit.reason)).map_err(err))
        .register_get("qualification", |e: &mut ExitRef| e.get(|c| c.record.exit.qualification as i64).map_err(err))
        .register_get("seq", |e: &mut ExitRef| e.get(|c| c.record.exit.seq as i64).map_err(err))
        .register_get("vmcs", |e: &mut ExitRef| e.get(|c| c.record.exit.vmcs.map_or(-1, |v| v as i64)).map_err(err))
        .register_get("guest_level", |e: &mut ExitRef| {
            e.get(|c| {
                let x = &c.record.exit;
                match (x.level, x.guest_level) {
                    (_, Some(g)) => format!("L{g}"),
                    (level, None) => level.as_str().to_string(),
                }
            })
            .map_err(err)
        })
        .register_get("insn", |e: &mut ExitRef| e.get(|c| Blob::from(c.record.exit.insn.clone())).map_err(err))
        .register_get("insn_len", |e: &mut ExitRef| e.get(|c| c.record.exit.insn.len() as i64).map_err(err))
        .register_get("action", |e: &mut ExitRef| e.get(|c| action_name(&c.action).to_string()).map_err(err))
        .register_get("route", |e: &mut ExitRef| e.get(|c| c.record.route.as_str().to_string()).map_err(err));

    // Registers.
    for (i, reg) in GPR_NAMES.iter().enumerate() {
        engine.register_get_set(
            reg,
            move |e: &mut ExitRef| e.get(|c| c.record.gprs[i] as i64).map_err(err),
            move |e: &mut ExitRef, v: i64| e.set_gpr(i, v as u64).map_err(err),
        );
    }
    engine
        .register_get_set(
            "rip",
            |e: &mut ExitRef| e.get(|c| c.record.rip as i64).map_err(err),
            |e: &mut ExitRef, v: i64| e.set_rip(v as u64).map_err(err),
        )
        .register_get_set(
            "rflags",
            |e: &mut ExitRef| e.get(|c| c.record.rflags as i64).map_err(err),
            |e: &mut ExitRef, v: i64| e.set_rflags(v as u64).map_err(err),
        )
        .register_get("cr0", |e: &mut ExitRef| e.with(|c| Ok(c.control()?.cr0 as i64)).map_err(err))
        .register_get("cr2", |e: &mut ExitRef| e.with(|c| Ok(c.control()?.cr2 as i64)).map_err(err))
        .register_get("cr3", |e: &mut ExitRef| e.with(|c| Ok(c.control()?.cr3 as i64)).map_err(err))
        .register_get("cr4", |e: &mut ExitRef| e.with(|c| Ok(c.control()?.cr4 as i64)).map_err(err))
        .register_get("efer", |e: &mut ExitRef| e.with(|c| Ok(c.control()?.efer as i64)).map_err(err))
        .register_get("interruptibility", |e: &mut ExitRef| {
            e.with(|c| Ok(i64::from(c.control()?.interruptibility))).map_err(err)
        })
        .register_get("pending_event", |e: &mut ExitRef| {
            e.with(|c| Ok(i64::from(c.control()?.pending_event))).map_err(err)
        });

    // Per-reason details: () when the exit has no such detail.
    fn opt<T: Into<Dynamic>>(r: Result<Option<T>, ApiError>) -> Res<Dynamic> {
        r.map(|v| v.map_or(Dynamic::UNIT, Into::into)).map_err(err)
    }
    engine
        .register_get("port", |e: &mut ExitRef| {
            opt(e.exit_detail(|d| match d {
                ExitDetail::Io { port, .. } => Some(i64::from(*port)),
                _ => None,
            }))
        })
        .register_get("size", |e: &mut ExitRef| {
            opt(e.exit_detail(|d| match d {
                ExitDetail::Io { size, .. } => Some(i64::from(*size)),
                ExitDetail::Mmio { len, .. } => Some(i64::from(*len)),
                _ => None,
            }))
        })
        .register_get("is_write", |e: &mut ExitRef| {
            opt(e.exit_detail(|d| match d {
                ExitDetail::Io { write, .. } | ExitDetail::Msr { write, .. } | ExitDetail::Mmio { write, .. } => {
                    Some(*write)
                }
                _ => None,
            }))
        })
        .register_get("is_in", |e: &mut ExitRef| {
            opt(e.exit_detail(|d| match d {
                ExitDetail::Io { write, .. } => Some(!*write),
                _ => None,
            }))
        })
        .register_get("data", |e: &mut ExitRef| {
            opt(e.exit_detail(|d| match d {
                ExitDetail::Io { data, .. } | ExitDetail::Mmio { data, .. } => Some(*data as i64),
                _ => None,
            }))
        })
        .register_get("msr", |e: &mut ExitRef| {
            opt(e.exit_detail(|d| match d {
                ExitDetail::Msr { index, .. } => Some(i64::from(*index)),
                _ => None,
            }))
        })
        .register_get("value", |e: &mut ExitRef| {
            opt(e.exit_detail(|d| match d {
                ExitDetail::Msr { value, .. } => Some(*value as i64),
                _ => None,
            }))
        })
        .register_get("gpa", |e: &mut ExitRef| {
            opt(e.exit_detail(|d| match d {
                ExitDetail::Mmio { gpa, .. } => Some(*gpa as i64),
                _ => None,
            }))
        })
        .register_get("mnemonic", |e: &mut ExitRef| {
            opt(e.exit_detail(|d| match d {
                ExitDetail::Vmx { mnemonic, .. } => Some(mnemonic.clone()),
                _ => None,
            }))
        })
        .register_get("msr_name", |e: &mut ExitRef| {
            opt(e.exit_detail(|d| match d {
                ExitDetail::Msr { name, .. } => name.map(|n| n.to_string()),
                _ => None,
            }))
        })
        .register_get("vmx", |e: &mut ExitRef| {
            opt(e.exit_detail(|d| match d {
                ExitDetail::Vmx { vmcs: Some(a), .. } => {
                    let mut m = rhai::Map::new();
                    m.insert("field".into(), a.field.map_or(Dynamic::UNIT, |f| f.into()));
                    m.insert("encoding".into(), i64::from(a.encoding).into());
                    m.insert("value".into(), a.value.map_or(Dynamic::UNIT, |v| (v as i64).into()));
                    Some(m)
                }
                _ => None,
            }))
        })
        .register_get("operands", |e: &mut ExitRef| {
            opt(e.exit_detail(|d| match d {
                ExitDetail::Vmx { operands, .. } => Some(operands.clone()),
                _ => None,
            }))
        });

    // Memory.
    engine
        .register_fn("read_phys", |e: &mut ExitRef, a: i64, n: i64| e.read_phys(a, n).map_err(err))
        .register_fn("write_phys", |e: &mut ExitRef, a: i64, b: Blob| e.write_phys(a, &b).map_err(err))
        .register_fn("write_phys", |e: &mut ExitRef, a: i64, b: Array| e.write_phys(a, &bytes(&b)?).map_err(err))
        .register_fn("read_u64", |e: &mut ExitRef, a: i64| e.read_u64(a).map_err(err))
        .register_fn("write_u64", |e: &mut ExitRef, a: i64, v: i64| e.write_u64(a, v).map_err(err))
        .register_fn("read_virt", |e: &mut ExitRef, a: i64, n: i64| e.read_virt(a, n).map_err(err))
        .register_fn("write_virt", |e: &mut ExitRef, a: i64, b: Blob| e.write_virt(a, &b).map_err(err))
        .register_fn("write_virt", |e: &mut ExitRef, a: i64, b: Array| e.write_virt(a, &bytes(&b)?).map_err(err));

    // VMCS, by name or by encoding.
    engine
        .register_fn("vmcs_read", |e: &mut ExitRef, f: ImmutableString| e.vmcs_read(&f).map_err(err))
        .register_fn("vmcs_read", |e: &mut ExitRef, f: i64| e.vmcs_read_enc(enc(f)?).map_err(err))
        .register_fn("vmcs_write", |e: &mut ExitRef, f: ImmutableString, v: i64| e.vmcs_write(&f, v).map_err(err))
        .register_fn("vmcs_write", |e: &mut ExitRef, f: i64, v: i64| e.vmcs_write_enc(enc(f)?, v).map_err(err));

    // Decisions.
    engine
        .register_fn("skip", |e: &mut ExitRef| e.decide(Action::Skip).map_err(err))
        .register_fn("set_result", |e: &mut ExitRef, v: i64| e.decide(Action::Value(v as u64)).map_err(err))
        .register_fn("inject", |e: &mut ExitRef, v: i64| {
            let vector = unsigned("vector", v, 8).map_err(err)? as u8;
            injectable(vector, None)?;
            e.decide(Action::Inject { vector, error_code: None }).map_err(err)
        })
        .register_fn("inject", |e: &mut ExitRef, v: i64, code: i64| {
            let vector = unsigned("vector", v, 8).map_err(err)? as u8;
            let error_code = Some(unsigned("error code", code, 32).map_err(err)? as u32);
            injectable(vector, error_code)?;
            e.decide(Action::Inject { vector, error_code }).map_err(err)
        })
        .register_fn("reflect", |e: &mut ExitRef| e.decide(Action::Reflect).map_err(err))
        .register_fn("keep_in_l0", |e: &mut ExitRef| e.decide(Action::KeepInL0).map_err(err))
        .register_fn("patch_range", |e: &mut ExitRef, a: i64, n: i64| e.patch_range(a, n).map_err(err))
        .register_fn("stop", |e: &mut ExitRef, why: ImmutableString| {
            e.decide(Action::Stop(why.to_string())).map_err(err)
        });
}

fn bytes(a: &Array) -> Res<Vec<u8>> {
    a.iter()
        .map(|v| match v.as_int() {
            Ok(b) => unsigned("byte", b, 8).map(|b| b as u8).map_err(err),
            Err(t) => Err(format!("byte arrays hold integers, not {t}").into()),
        })
        .collect()
}

fn enc(f: i64) -> Res<u32> {
    unsigned("VMCS encoding", f, 32).map(|v| v as u32).map_err(err)
}

fn register_globals(engine: &mut Engine, state: &Rc<RefCell<ScriptState>>) {
    let s = state.clone();
    engine.register_fn("rand", move |seed: i64| s.borrow_mut().rng = SplitMix64::new(seed as u64));
    let s = state.clone();
    engine.register_fn("rand", move || s.borrow_mut().rng.next_u64() as i64);
    let s = state.clone();
    engine.register_fn("rand_int", move |lo: i64, hi: i64| -> Res<i64> {
        s.borrow_mut().rng.in_range(lo, hi).ok_or_else(|| format!("rand_int({lo}, {hi}): lo > hi").into())
    });
    let s = state.clone();
    engine.register_fn(
        "cpuid_set",
        move |level: ImmutableString, leaf: i64, sub: i64, eax: i64, ebx: i64, ecx: i64, edx: i64| -> Res<()> {
            let level = match level.as_str() {
                "L1" | "l1" => Level::L1,
                "L2" | "l2" => Level::L2,
                other => return Err(format!("cpuid_set: level must be \"L1\" or \"L2\", not {other:?}").into()),
            };
            let r = |what, v| unsigned(what, v, 32).map(|v| v as u32).map_err(err);
            let ov = CpuidOverride {
                leaf: r("leaf", leaf)?,
                subleaf: r("subleaf", sub)?,
                regs: [r("eax", eax)?, r("ebx", ebx)?, r("ecx", ecx)?, r("edx", edx)?],
            };
            let mut st = s.borrow_mut();
            if !st.in_on_start {
                return Err("cpuid_set is only possible in on_start (KVM fixes CPUID before the guest runs)".into());
            }
            st.cpuid.push((level, ov));
            Ok(())
        },
    );
    engine.register_fn("hex", |v: i64| format!("{:#x}", v as u64));
    engine.register_fn("le32", |s: ImmutableString| -> Res<i64> {
        let b = s.as_bytes();
        if b.len() > 4 {
            return Err(format!("le32: {s:?} is longer than 4 bytes").into());
        }
        let mut w = [0u8; 4];
        w[..b.len()].copy_from_slice(b);
        Ok(i64::from(u32::from_le_bytes(w)))
    });
}

/// Exceptions that deliver an error code (SDM 6.13, Table 6-1): #DF, #TS, #NP, #SS, #GP, #PF,
/// #AC, #CP, #VC, #SX.
const ERROR_CODE_VECTORS: [u8; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];

/// What `e.inject` accepts: an exception with an error code exactly when it delivers one, an
/// NMI (2) or an external interrupt (32-255) without one.
fn injectable(vector: u8, error_code: Option<u32>) -> Result<(), Box<EvalAltResult>> {
    let takes_code = ERROR_CODE_VECTORS.contains(&vector);
    match (vector, error_code) {
        (2 | 32.., Some(_)) => {
            Err(format!("e.inject: vector {vector} is an NMI or an external interrupt, which has no error code").into())
        }
        (v, None) if takes_code => {
            Err(format!("e.inject: exception {v} delivers an error code: e.inject({v}, code)").into())
        }
        (v, Some(_)) if v < 32 && !takes_code => {
            Err(format!("e.inject: exception {v} delivers no error code: e.inject({v})").into())
        }
        _ => Ok(()),
    }
}
