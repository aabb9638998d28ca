use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::exit::{Action, Exit, ExitDetail};
use crate::machine::memory::GuestRam;
use crate::vmx::fields;
use crate::vmx::vmcs::Vmcs;

/// Writes `src` to a fresh file named `name` and returns its path.
fn file(name: &str, src: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "nestbed-script-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, src).unwrap();
    p
}

/// Inline scripts, whose globals the tests read (see `scope`).
fn inline() -> ScriptOptions {
    ScriptOptions { mode: ScriptMode::Inline, ..ScriptOptions::default() }
}

/// Scripts that only observe run pipelined, whatever the number of CPUs.
fn pipelined() -> ScriptOptions {
    ScriptOptions { mode: ScriptMode::Pipelined, ..ScriptOptions::default() }
}

fn host(src: &str) -> ScriptHost {
    ScriptHost::load(&[file("t.rhai", src)], inline()).unwrap()
}

/// The globals of inline script `i`.
fn scope(h: &ScriptHost, i: usize) -> &rhai::Scope<'static> {
    match &h.run {
        Run::Inline(s) => &s.scripts[i].scope,
        Run::Pipelined(_) => panic!("pipelined scripts keep their globals on their thread"),
    }
}

fn io_exit(level: Level, port: u16, write: bool) -> ExitContext {
    let exit = Exit {
        seq: 7,
        level,
        reason: 30,
        qualification: 0x80_0000,
        rip: 0x1000,
        insn: vec![0xe6, 0x80],
        detail: ExitDetail::Io { port, size: 1, write, data: 0x42 },
        vmcs: None,
        guest_level: None,
    };
    let mut c = ExitContext::new(exit, Some(GuestRam::new(4).unwrap()));
    c.record.rip = 0x1000;
    c.record.control = Some(ControlRegs::default());
    c
}

fn script_err(r: Result<(), Error>) -> String {
    match r {
        Err(Error::Script(m)) => m,
        other => panic!("expected a script error, got {other:?}"),
    }
}

#[test]
fn compile_error_names_file_line_col() {
    let p = file("bad.rhai", "let x = 1;\nfn on_exit(e) {\n  let = 5;\n}\n");
    let Err(Error::ScriptCompile(m)) = ScriptHost::load(std::slice::from_ref(&p), ScriptOptions::default()) else {
        panic!("expected a compile error");
    };
    assert!(m.starts_with(&format!("{}:3:", p.display())), "{m}");
    let missing = ScriptHost::load(&[PathBuf::from("/nonexistent/x.rhai")], ScriptOptions::default());
    assert!(matches!(missing, Err(Error::File { .. })));
    let arity = ScriptHost::load(&[file("a.rhai", "fn on_exit() {}")], ScriptOptions::default());
    assert!(matches!(arity, Err(Error::ScriptCompile(m)) if m.contains("one parameter")));
}

#[test]
fn globals_persist_across_calls_and_scripts_are_separate() {
    let a = file("a.rhai", "let n = 0; let seen = #{}; fn on_exit(e) { n += 1; seen[e.reason] = n; let tmp = 1; }");
    let b = file("b.rhai", "let n = 100; fn on_exit(e) { n += 1; e.rax = n; }");
    let mut h = ScriptHost::load(&[a, b], inline()).unwrap();
    let mut c = io_exit(Level::L1, 0x80, true);
    for _ in 0..3 {
        h.on_exit(&mut c).unwrap();
    }
    assert_eq!(scope(&h, 0).get_value::<i64>("n"), Some(3));
    assert_eq!(scope(&h, 1).get_value::<i64>("n"), Some(103));
    assert_eq!(c.record.gprs[0], 103);
    // Hook locals do not pile up in the scope.
    assert_eq!(scope(&h, 0).len(), 2);
    let seen = scope(&h, 0).get_value::<rhai::Map>("seen").unwrap();
    assert_eq!(seen["IO_INSTRUCTION"].as_int().unwrap(), 3);
}

#[test]
fn register_change_marks_dirty_and_records() {
    let mut h = host("fn on_exit(e) { if e.rax == 0 { e.rax = 5; e.r15 = e.rip + e.insn_len; } }");
    let mut c = io_exit(Level::L1, 0x80, true);
    h.on_exit(&mut c).unwrap();
    assert!(c.regs_dirty);
    assert_eq!(c.record.gprs[0], 5);
    assert_eq!(c.record.gprs[15], 0x1002);
    assert_eq!(c.changes, ["rax=0x5", "r15=0x1002"]);
    assert_eq!(c.record.exit.seq, 7, "context returned to the caller");

    let mut h = host("fn on_exit(e) { let x = e.rax + e.cr3; }");
    let mut c = io_exit(Level::L1, 0x80, true);
    h.on_exit(&mut c).unwrap();
    assert!(!c.regs_dirty && c.changes.is_empty());
}

#[test]
fn getters_per_reason() {
    let mut h = host(
        r#"let out = []; fn on_exit(e) { out = [e.level, e.reason, e.reason_nr, e.port, e.size, e.is_in, e.data,
            e.msr, e.mnemonic, e.insn[0], e.seq, e.port == 0x80, e.msr == 0x10, `${e}`]; }"#,
    );
    let mut c = io_exit(Level::L2, 0x80, false);
    h.on_exit(&mut c).unwrap();
    let out: Vec<String> =
        scope(&h, 0).get_value::<rhai::Array>("out").unwrap().iter().map(|d| d.to_string()).collect();
    assert_eq!(
        out,
        [
            "L2",
            "IO_INSTRUCTION",
            "30",
            "128",
            "1",
            "true",
            "66",
            "",
            "",
            "230",
            "7",
            "true",
            "false",
            "#7 L2 IO_INSTRUCTION rip=0x1000"
        ]
    );
}

#[test]
fn decisions_set_the_action() {
    let cases: &[(&str, Action)] = &[
        ("e.skip()", Action::Skip),
        ("e.set_result(0x1234)", Action::Value(0x1234)),
        ("e.inject(14, 2)", Action::Inject { vector: 14, error_code: Some(2) }),
        ("e.inject(6)", Action::Inject { vector: 6, error_code: None }),
        ("e.inject(2)", Action::Inject { vector: 2, error_code: None }),
        ("e.inject(0x40)", Action::Inject { vector: 0x40, error_code: None }),
        ("e.reflect()", Action::Reflect),
        ("e.keep_in_l0()", Action::KeepInL0),
        ("e.stop(\"port 0x80\")", Action::Stop("port 0x80".into())),
    ];
    for (call, want) in cases {
        let mut h = host(&format!("fn on_exit(e) {{ {call}; }}"));
        let mut c = io_exit(Level::L2, 0x80, false);
        h.on_exit(&mut c).unwrap();
        assert_eq!(&c.action, want, "{call}");
        assert!(c.changes[0].starts_with("action="), "{:?}", c.changes);
    }
    // Misplaced decisions are script errors that name the exit.
    for call in [
        "e.reflect()",
        "e.set_result(1)",
        "e.inject(300)",
        "e.inject(13)",
        "e.inject(6, 0)",
        "e.inject(2, 0)",
        "e.inject(0x40, 1)",
    ] {
        let mut h = host(&format!("fn on_exit(e) {{ {call}; }}"));
        let mut c = io_exit(Level::L1, 0x80, true);
        let m = script_err(h.on_exit(&mut c));
        assert!(m.contains("t.rhai:1:"), "{m}");
        assert_eq!(c.action, Action::Default);
    }
}

#[test]
fn vmcs_by_name() {
    let mut h = host(
        r#"fn on_exit(e) { let q = e.vmcs_read("EXIT_QUALIFICATION"); e.vmcs_write("exit_qualification", q ^ 0x10);
           e.rax = e.vmcs_read("GUEST_RIP"); }"#,
    );
    let mut c = io_exit(Level::L2, 0x80, true);
    let mut v = Vmcs::new(1);
    v.set(fields::EXIT_QUALIFICATION, 0x3);
    v.set(fields::GUEST_RIP, 0xabc);
    c.vmcs = Some(v);
    h.on_exit(&mut c).unwrap();
    assert_eq!(c.vmcs.as_ref().unwrap().get(fields::EXIT_QUALIFICATION), 0x13);
    assert!(c.vmcs_dirty);
    assert_eq!(c.vmcs_writes, [(fields::EXIT_QUALIFICATION, 0x13)]);
    assert_eq!(c.record.gprs[0], 0xabc);
    assert!(c.changes.contains(&"vmcs EXIT_QUALIFICATION=0x13".to_string()), "{:?}", c.changes);

    let mut h = host(r#"fn on_exit(e) { e.vmcs_read("NOT_A_FIELD"); }"#);
    let mut c = io_exit(Level::L2, 0x80, true);
    c.vmcs = Some(Vmcs::new(1));
    assert!(script_err(h.on_exit(&mut c)).contains("unknown VMCS field 'NOT_A_FIELD'"));
    let mut h = host(r#"fn on_exit(e) { e.vmcs_write("GUEST_RIP", 1); }"#);
    let mut c = io_exit(Level::L2, 0x80, true);
    assert!(script_err(h.on_exit(&mut c)).contains("no current VMCS"));
}

#[test]
fn operation_limit_stops_endless_loop() {
    let p = file("spin.rhai", "fn on_exit(e) {\n  loop { }\n}\n");
    let opts = ScriptOptions { max_operations: 10_000, on_error: OnScriptError::Stop, ..inline() };
    let mut h = ScriptHost::load(std::slice::from_ref(&p), opts).unwrap();
    let mut c = io_exit(Level::L1, 0x80, true);
    let m = script_err(h.on_exit(&mut c));
    assert!(m.starts_with(&p.display().to_string()), "{m}");
    assert!(m.ends_with("on_exit ran over the limit of 10000 operations per call"), "{m}");
    assert_eq!(c.record.exit.seq, 7, "context returned after an error");

    // Continue: warn and go on.
    let opts = ScriptOptions { max_operations: 10_000, on_error: OnScriptError::Continue, ..inline() };
    let mut h = ScriptHost::load(&[p], opts).unwrap();
    assert!(h.on_exit(&mut c).is_ok());
}

#[test]
fn rand_is_reproducible() {
    let src = "let xs = []; fn on_start() { rand(42); for i in 0..5 { xs.push(rand()); xs.push(rand_int(0, 63)); } }";
    let run = || {
        let mut h = host(src);
        h.on_start().unwrap();
        scope(&h, 0).get_value::<rhai::Array>("xs").unwrap().iter().map(|d| d.as_int().unwrap()).collect::<Vec<_>>()
    };
    let (a, b) = (run(), run());
    assert_eq!(a, b);
    assert!(a.iter().skip(1).step_by(2).all(|v| (0..=63).contains(v)));
    let mut h = host("fn on_start() { rand_int(5, 1); }");
    assert!(matches!(h.on_start(), Err(Error::Script(m)) if m.contains("lo > hi")));
}

#[test]
fn cpuid_set_only_in_on_start() {
    let mut h = host(
        r#"fn on_start() { cpuid_set("L2", 0x40000000, 0, 0x40000001, le32("Nest"), le32("bedV"), le32("MM")); }
           fn on_exit(e) { cpuid_set("L1", 1, 0, 0, 0, 0, 0); }"#,
    );
    let ov = h.on_start().unwrap();
    assert_eq!(ov.len(), 1);
    assert_eq!(ov[0].0, Level::L2);
    assert_eq!(ov[0].1.leaf, 0x4000_0000);
    assert_eq!(ov[0].1.regs, [0x4000_0001, u32::from_le_bytes(*b"Nest"), u32::from_le_bytes(*b"bedV"), 0x4d4d]);
    let mut c = io_exit(Level::L1, 0x80, true);
    assert!(script_err(h.on_exit(&mut c)).contains("only possible in on_start"));
    let bad = ScriptHost::load(&[file("top.rhai", "cpuid_set(\"L1\", 1, 0, 0, 0, 0, 0);")], ScriptOptions::default());
    assert!(matches!(bad, Err(Error::Script(_))));
}

#[test]
fn memory_access() {
    let mut h = host(
        "fn on_exit(e) { e.write_u64(0x2000, 0x1122334455667788); e.write_phys(0x3000, [1, 2, 3]);
           e.rbx = e.read_u64(0x2000); let b = e.read_virt(0x3000, 3); e.rcx = b[2]; e.write_virt(0x3001, e.read_phys(0x2000, 1)); }",
    );
    let mut c = io_exit(Level::L1, 0x80, true);
    h.on_exit(&mut c).unwrap();
    assert_eq!(c.record.gprs[3], 0x1122_3344_5566_7788);
    assert_eq!(c.record.gprs[1], 3);
    let mut b = [0u8; 3];
    c.ram.as_ref().unwrap().read(0x3000, &mut b).unwrap();
    assert_eq!(b, [1, 0x88, 3]);
    for bad in
        ["e.read_u64(0x7fff_ffff)", "e.read_phys(-1, 8)", "e.write_phys(0x3ffffe, [1,2,3])", "e.read_phys(0, -1)"]
    {
        let mut h = host(&format!("fn on_exit(e) {{ {bad}; }}"));
        let m = script_err(h.on_exit(&mut c));
        assert!(m.contains("t.rhai:1:"), "{bad}: {m}");
    }
}

#[test]
fn kept_exit_expires() {
    let mut h = host("let last = (); fn on_exit(e) { if last != () { last.rax; } last = e; }");
    let mut c = io_exit(Level::L1, 0x80, true);
    h.on_exit(&mut c).unwrap();
    assert!(script_err(h.on_exit(&mut c)).contains("only valid during the on_exit"));
}

#[test]
fn on_stop_runs_once_for_every_script() {
    let a = file("a.rhai", "let n = 0; fn on_stop() { n += 1; throw \"boom\"; }");
    let b = file("b.rhai", "let n = 0; fn on_stop() { n += 1; }");
    let mut h = ScriptHost::load(&[a, b], inline()).unwrap();
    assert!(!h.has_on_exit());
    assert!(script_err(h.on_stop()).contains("boom"));
    assert!(h.on_stop().is_ok());
    assert_eq!(scope(&h, 1).get_value::<i64>("n"), Some(1));
}

#[test]
fn sleep_is_refused() {
    let mut h = host("fn on_exit(e) { sleep(3600); }");
    let mut c = io_exit(Level::L1, 0x80, true);
    let m = script_err(h.on_exit(&mut c));
    assert!(m.contains("sleep is not available"), "{m}");
}

#[test]
fn eval_is_disabled() {
    let r = ScriptHost::load(&[file("e.rhai", "eval(\"1\");")], ScriptOptions::default());
    assert!(matches!(r, Err(Error::ScriptCompile(_))), "{:?}", r.err());
}

/// Names in the reference tables of SCRIPTING.md: each `name` quoted in the first cell of a
/// table row.
fn documented() -> BTreeSet<String> {
    let doc = include_str!("../../../SCRIPTING.md");
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .flat_map(|row| {
            let cell = format!("`{}", row.split(" | ").next().unwrap_or(""));
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(|quoted| {
                    let q = quoted.strip_prefix("e.").unwrap_or(quoted);
                    q.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn scripting_md_matches_the_engine() {
    let state = std::rc::Rc::new(std::cell::RefCell::new(api::ScriptState::new("x".into())));
    let engine = api::build_engine(&state, &guard::HookClock::new(0), &ScriptOptions::default());
    let registered: BTreeSet<String> = engine
        .gen_fn_signatures(false)
        .iter()
        .map(|s| {
            let name = s.split('(').next().unwrap_or("");
            name.trim_start_matches("get$").trim_start_matches("set$").to_string()
        })
        .collect();
    let doc = documented();
    let missing: Vec<_> = registered.difference(&doc).collect();
    let stale: Vec<_> = doc.difference(&registered).filter(|n| !["print", "debug"].contains(&n.as_str())).collect();
    assert!(missing.is_empty(), "registered but not in SCRIPTING.md: {missing:?}");
    assert!(stale.is_empty(), "in SCRIPTING.md but not registered: {stale:?}");
}

#[test]
fn example_scripts_run() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rhai"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 6);
    for p in paths {
        let mut h = ScriptHost::load(std::slice::from_ref(&p), ScriptOptions::default()).unwrap();
        h.on_start().unwrap();
        let msr = Exit {
            seq: 1,
            level: Level::L1,
            reason: 31,
            qualification: 0,
            rip: 0x2000,
            insn: vec![0x0f, 0x32],
            detail: ExitDetail::Msr { index: 0x48a, name: None, write: false, value: 0 },
            vmcs: None,
            guest_level: None,
        };
        let mut contexts = vec![io_exit(Level::L2, 0x80, true), io_exit(Level::L1, 0x3f8, false)];
        contexts.push(ExitContext::new(msr, Some(GuestRam::new(4).unwrap())));
        for mut c in contexts {
            c.vmcs = Some(Vmcs::new(1));
            h.on_exit(&mut c).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
        h.on_stop().unwrap();
    }
}

#[test]
fn every_registered_name_is_classified() {
    let state = std::rc::Rc::new(std::cell::RefCell::new(api::ScriptState::new("x".into())));
    let engine = api::build_engine(&state, &guard::HookClock::new(0), &ScriptOptions::default());
    for sig in engine.gen_fn_signatures(false) {
        let name = sig.split('(').next().unwrap_or("").trim_start_matches("get$").trim_start_matches("set$");
        assert!(analysis::classified(name), "the code analysis does not know what {name} touches");
    }
}

/// A script that checks it sees every exit, in order, and fails `on_stop` otherwise.
const ORDERED: &str = "let next = 1; let sum = 0;
    fn on_exit(e) { if e.seq != next { throw `exit ${e.seq} came when ${next} was due` } next += 1; sum += e.rax; }
    fn on_stop() { if sum != 4950 || next != 101 { throw `saw ${next - 1} exits, sum ${sum}` } }";

fn numbered(seq: u64) -> ExitContext {
    let mut c = io_exit(Level::L1, 0x80, true);
    c.record.exit.seq = seq;
    c.record.gprs[0] = seq - 1;
    c
}

#[test]
fn observing_scripts_run_pipelined_and_see_every_exit_in_order() {
    let mut h = ScriptHost::load(&[file("o.rhai", ORDERED)], pipelined()).unwrap();
    assert!(h.pipelined());
    assert!(h.needs().observe_only());
    for seq in 1..=100 {
        let mut c = numbered(seq);
        h.on_exit(&mut c).unwrap();
        // Nothing comes back from a copy.
        assert!(!c.regs_dirty && c.changes.is_empty() && c.action == Action::Default);
        if seq == 50 {
            h.flush().unwrap();
        }
    }
    h.on_stop().unwrap();
    assert!(h.on_stop().is_ok(), "on_stop runs once");

    // The same file inline, when asked.
    let mut h = ScriptHost::load(&[file("o.rhai", ORDERED)], inline()).unwrap();
    assert!(!h.pipelined());
    for seq in 1..=100 {
        h.on_exit(&mut numbered(seq)).unwrap();
    }
    h.on_stop().unwrap();
}

#[test]
fn scripts_that_change_or_read_live_state_run_inline() {
    for src in [
        "fn on_exit(e) { e.rax = 1; }",
        "fn on_exit(e) { e.vmcs_read(\"GUEST_RIP\"); }",
        "fn on_exit(e) { e.read_phys(0, 1); }",
        "fn on_exit(e) { if e.port == 0x80 { e.stop(\"port\") } }",
    ] {
        let h = ScriptHost::load(&[file("c.rhai", src)], ScriptOptions::default()).unwrap();
        assert!(!h.pipelined(), "{src}");
        // Asked for pipelined, such a script is refused rather than run inline unsaid.
        let refused = ScriptHost::load(&[file("c.rhai", src)], pipelined()).err().expect(src);
        assert!(refused.to_string().contains("must run inline"), "{refused}");
    }
    // One script that changes makes them all inline (their order is kept).
    let a = file("a.rhai", "fn on_exit(e) { }");
    let b = file("b.rhai", "fn on_exit(e) { e.skip(); }");
    assert!(!ScriptHost::load(&[a, b], ScriptOptions::default()).unwrap().pipelined());
}

#[test]
fn pipelined_error_stops_at_a_later_exit_and_names_its_exit() {
    let src = "fn on_exit(e) {\n  if e.seq == 3 { throw \"bad exit\" }\n}";
    let p = file("late.rhai", src);
    let mut h = ScriptHost::load(std::slice::from_ref(&p), pipelined()).unwrap();
    assert!(h.pipelined());
    for seq in 1..=3 {
        h.on_exit(&mut numbered(seq)).unwrap();
    }
    let m = script_err(h.flush());
    assert!(m.starts_with(&format!("{}:2:", p.display())), "{m}");
    assert!(m.contains("bad exit") && m.contains("on exit #3"), "{m}");
    assert!(script_err(h.on_exit(&mut numbered(4))).contains("stopped after an error"));
    h.on_stop().unwrap();

    // An error in the last exits is returned by on_stop; with `continue`, none is.
    let mut h = ScriptHost::load(std::slice::from_ref(&p), pipelined()).unwrap();
    for seq in 1..=3 {
        h.on_exit(&mut numbered(seq)).unwrap();
    }
    assert!(script_err(h.on_stop()).contains("on exit #3"));
    let opts = ScriptOptions { on_error: OnScriptError::Continue, ..pipelined() };
    let mut h = ScriptHost::load(&[p], opts).unwrap();
    for seq in 1..=5 {
        h.on_exit(&mut numbered(seq)).unwrap();
    }
    h.on_stop().unwrap();
}

#[test]
fn pipelined_start_errors_and_on_start_come_back() {
    let bad = ScriptHost::load(&[file("top.rhai", "let x = 1 / 0; fn on_exit(e) { }")], pipelined());
    assert!(matches!(bad, Err(Error::Script(m)) if m.contains("top-level code")));
    let src = "fn on_start() { cpuid_set(\"L1\", 0x40000000, 0, 1, 2, 3, 4); } fn on_exit(e) { }";
    let mut h = ScriptHost::load(&[file("s.rhai", src)], pipelined()).unwrap();
    assert!(h.pipelined());
    let ov = h.on_start().unwrap();
    assert_eq!((ov[0].0, ov[0].1.regs), (Level::L1, [1, 2, 3, 4]));
}

#[test]
fn a_copy_refuses_changes_and_live_reads() {
    let mut c = io_exit(Level::L1, 0x80, true);
    c.ram = None;
    c.vmcs = Some(Vmcs::new(1));
    let r = context::ExitRef::new(c);
    assert!(matches!(r.set_gpr(0, 1), Err(ApiError::Copy)));
    assert!(matches!(r.decide(Action::Skip), Err(ApiError::Copy)));
    assert!(matches!(r.read_u64(0), Err(ApiError::Copy)));
    assert!(matches!(r.vmcs_read("GUEST_RIP"), Err(ApiError::Copy)));
    assert_eq!(r.get(|c| c.record.gprs[0]).unwrap(), 0);
    let mut c = io_exit(Level::L1, 0x80, true);
    c.record.control = None;
    let r = context::ExitRef::new(c);
    assert!(matches!(r.with(|c| c.control().map(|x| x.cr3)), Err(ApiError::NotCaptured(_))));
}

#[test]
fn a_pipelined_queue_that_fills_wakes_the_worker_and_loses_nothing() {
    // Three times the queue: the vCPU side wakes the napping worker at half and waits when full.
    let src = "let next = 1; fn on_exit(e) { if e.seq != next { throw `got ${e.seq}, want ${next}` } next += 1; }
               fn on_stop() { if next != 12289 { throw `saw ${next - 1} exits` } }";
    let mut h = ScriptHost::load(&[file("fill.rhai", src)], pipelined()).unwrap();
    assert!(h.pipelined());
    for seq in 1..=12288 {
        h.on_exit(&mut numbered(seq)).unwrap();
    }
    h.on_stop().unwrap();
}

#[test]
fn function_names_in_strings_cannot_call() {
    let mut h = host(
        "fn twice(x) { x * 2 } let out = []; fn on_exit(e) {
        let n = \"tw\"; n += \"ice\";
        let a = [3, 1]; a.sort(Fn(\"cmp\"));
        out = [[1, 2].map(|x| x + 1), [\"L1\", \"L2\"].index_of(e.level), [\"a\"].index_of(\"b\"), a];
        [1].map(n);
    } fn cmp(a, b) { a - b }",
    );
    let mut c = io_exit(Level::L2, 0x80, true);
    let m = script_err(h.on_exit(&mut c));
    assert!(m.contains("map(\"twice\"): pass a function pointer"), "{m}");
    let out = scope(&h, 0).get_value::<rhai::Array>("out").unwrap();
    let shown: Vec<String> = out.iter().map(|d| d.to_string()).collect();
    assert_eq!(shown, ["[2, 3]", "1", "-1", "[1, 3]"]);
}

#[test]
fn storing_a_register_back_unchanged_is_no_change() {
    // Rhai stores `e.rax` back after `to_hex()`: neither a change inline nor an error on a copy.
    let src = "let s = \"\"; fn on_exit(e) { s = e.rax.to_hex() + e.rip.to_string(); }";
    let mut h = host(src);
    let mut c = io_exit(Level::L1, 0x80, true);
    h.on_exit(&mut c).unwrap();
    assert!(!c.regs_dirty && c.changes.is_empty(), "{:?}", c.changes);
    let mut h = ScriptHost::load(&[file("p.rhai", src)], pipelined()).unwrap();
    assert!(h.pipelined());
    h.on_exit(&mut io_exit(Level::L1, 0x80, true)).unwrap();
    h.on_stop().unwrap();
}

#[test]
fn state_not_captured_is_an_error_not_a_wrong_answer() {
    let mut c = io_exit(Level::L2, 0x80, true);
    c.memory_captured = false;
    c.vmcs_captured = false;
    c.vmcs = None;
    let r = context::ExitRef::new(c);
    assert!(matches!(r.read_u64(0x1000), Err(ApiError::NotCaptured("guest memory"))));
    assert!(matches!(r.write_u64(0x1000, 1), Err(ApiError::NotCaptured("guest memory"))));
    assert!(matches!(r.vmcs_read("GUEST_RIP"), Err(ApiError::NotCaptured("the VMCS"))));
    assert!(matches!(r.vmcs_write("GUEST_RIP", 1), Err(ApiError::NotCaptured("the VMCS"))));
}

#[test]
fn the_depth_check_sees_through_shared_closures_and_ends_on_cycles() {
    // A closure that captures itself is a cycle; two globals share one chain of closures.
    let src = "let f = 0; f = || f.call();\n\
               let chain = 0;\n\
               fn on_exit(e) { for i in 0..300 { let c = chain; chain = || c; } }\n\
               let g = [[|| chain]];";
    // Scripts run on a thread with nestbed's script stack.
    let run = move || {
        let mut h = host(src);
        // 33 * 300 + 3 levels: still within the limit.
        for _ in 0..33 {
            h.on_exit(&mut io_exit(Level::L1, 0x80, true)).unwrap();
        }
        script_err(h.on_exit(&mut io_exit(Level::L1, 0x80, true)))
    };
    let m = std::thread::Builder::new().stack_size(STACK).spawn(run).unwrap().join().unwrap();
    assert!(m.contains("after on_exit, a global nests arrays, maps or closures deeper than 10000 levels"), "{m}");
}
