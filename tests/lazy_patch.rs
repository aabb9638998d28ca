//! VMX instructions L1 writes at run time on a host that raises #UD for them
//! (`NESTBED_SIMULATE_HOST=vmx-ud`): nestbed catches the #UD at L1's handler, patches the
//! instruction and runs it again.

mod common;

use common::{nestbed_with_env, tmpdir, Run};

const STOCK_HOST: (&str, &str) = ("NESTBED_SIMULATE_HOST", "vmx-ud");

/// At the first L1 VMREAD exit, the script puts the instruction's original bytes back over
/// its site, as code the guest writes at run time.
const WRITE_BACK: &str = r#"let done = false;
fn on_exit(e) {
  if !done && e.level == "L1" && e.reason == "VMREAD" { done = true; e.write_virt(e.rip, e.insn); }
}
"#;

fn run_on_stock_host(name: &str, extra: &[&str]) -> Run {
    let script = tmpdir(name).join("s.rhai");
    std::fs::write(&script, WRITE_BACK).expect("writing a script");
    let script = script.display().to_string();
    let mut args = vec!["run", "--guest", "vmx-basic", "--timeout", "60", "--script", &script, "--stats"];
    args.extend_from_slice(extra);
    nestbed_with_env(&args, &[STOCK_HOST])
}

#[test]
fn a_vmx_instruction_written_at_run_time_takes_ud_is_patched_and_runs_again() {
    let r = run_on_stock_host("lazy", &["--patch-sensitive", "auto"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("L1 VMREAD at 0x") && r.stderr.contains("took #UD"), "{}", r.stderr);
    assert!(r.stderr.contains("patched now and re-executed"), "{}", r.stderr);
    assert!(r.stderr.contains("1 patched at run time after #UD"), "{}", r.stderr);
    assert!(!r.stderr.contains("was not patched"), "the simulated host traps nothing by itself: {}", r.stderr);
}

#[test]
fn on_the_stock_host_without_patching_a_vmx_instruction_takes_ud_in_the_guest() {
    // Nothing patched: the guest's first VMX instruction takes #UD, which its fixup reports.
    let r = run_on_stock_host("stock", &["--patch-sensitive", "off"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("FAIL VMXON: fault #UD"), "{}\n{}", r.stdout, r.stderr);
}

#[test]
fn an_unknown_simulated_host_is_refused() {
    let r = nestbed_with_env(&["run", "--guest", "hello"], &[("NESTBED_SIMULATE_HOST", "nope")]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("NESTBED_SIMULATE_HOST=nope"), "{}", r.stderr);
}

#[test]
fn the_guests_own_ud_still_reaches_its_handler_past_the_catch() {
    // vmx-errors checks that VMX instructions raise #UD outside VMX operation: those #UDs pass
    // the breakpoint at the handler (a patched site, not an unpatched instruction) untouched.
    let args = ["run", "--guest", "vmx-errors", "--timeout", "60", "--patch-sensitive", "auto", "--stats"];
    let r = nestbed_with_env(&args, &[STOCK_HOST]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("0 patched at run time after #UD"), "{}", r.stderr);
}
