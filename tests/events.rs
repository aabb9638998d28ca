//! The VMX event features an L1 hypervisor uses to run its L2: VM-entry event injection and
//! IDT-vectoring information (`vmx-events`), external interrupts, interrupt windows and NMI
//! windows (`vmx-intr`), the VMX-preemption timer (`vmx-preemption-timer`) and the monitor
//! trap flag (`vmx-mtf`). Each guest checks the SDM's rules itself and exits with its number of
//! failures. A guest skips, with a `-- ` line, the checks of a control nestbed's capability
//! MSRs do not offer (and exits 77 when nothing was left to check); these tests require every
//! control to be offered. Each runs unpatched and with `--patch-sensitive on`.

mod common;
use common::{run_guest, Run};

const PATCHED: &[&str] = &["--patch-sensitive", "on"];

/// Runs `guest` and requires exit code 0, no failed check, no check skipped because a control
/// is not offered, the guest's closing line, and for each entry of `want` an `ok` line holding
/// all its fragments.
fn passes(guest: &str, extra: &[&str], want: &[&[&str]]) -> Run {
    passes_but_host_limits(guest, extra, want, &[])
}

/// The same, except that exactly the checks `host_limits` names fail (each entry a fragment of
/// one FAIL line, in order): checks the host makes impossible (README, "Events in the virtual
/// VMX"), which still run so that a host without the limit shows them passing.
fn passes_but_host_limits(guest: &str, extra: &[&str], want: &[&[&str]], host_limits: &[&str]) -> Run {
    let r = run_guest(guest, extra);
    let all = format!("stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, host_limits.len() as i32, "{guest} {extra:?} exited {}\n{all}", r.code);
    let fails: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fails.len(), host_limits.len(), "{all}");
    for (line, limit) in fails.iter().zip(host_limits) {
        assert!(line.contains(limit), "{line:?} is not the host limit {limit:?}\n{all}");
    }
    assert!(!r.stdout.lines().any(|l| l.starts_with("-- ")), "a control is not offered:\n{all}");
    if host_limits.is_empty() {
        assert!(r.stdout.contains(&format!("{guest}: all checks passed")), "{all}");
    }
    for fragments in want {
        let found = r.stdout.lines().any(|l| l.starts_with("ok ") && fragments.iter().all(|f| l.contains(f)));
        assert!(found, "no ok line with {fragments:?}\n{all}");
    }
    r
}

const EVENTS: &[&[&str]] = &[
    &["delivered vector 0x30 through L2's IDT"],
    &["VMRESUME delivered vector 0x2 through L2's IDT"],
    &["error code on the stack 0xa5c"],
    &["pushed RIP", "+ VM-entry instruction length 7"],
    &["pushed RIP", "(VM-entry instruction length ignored: 3)"],
    &["pushed RFLAGS 0x243 = GUEST_RFLAGS 0x243"],
    &["at an exit in the NMI handler: blocking by NMI"],
    &["after the VM exit: valid bit cleared (written 0x80000603)"],
];

/// Host limits: a fault during an injected event's delivery (a not-present gate, an IDT page
/// L1's EPT does not map) happens inside KVM, which delivers the #NP to L2 itself or shuts L2
/// down; nestbed never sees the fault, so it cannot turn it into the exit with IDT-vectoring
/// information.
const EVENTS_HOST_LIMITS: &[&str] = &[
    "VM exit for the #NP of the delivery",
    "VM exit for the #NP of the delivery",
    "EPT violation during the delivery",
    "EPT violation during the delivery",
];

#[test]
fn vm_entry_injects_every_event_type_except_faults_during_delivery_a_host_limit() {
    passes_but_host_limits("vmx-events", &[], EVENTS, EVENTS_HOST_LIMITS);
}

#[test]
fn vm_entry_injects_every_event_type_except_faults_during_delivery_a_host_limit_patched() {
    passes_but_host_limits("vmx-events", PATCHED, EVENTS, EVENTS_HOST_LIMITS);
}

const INTR: &[&[&str]] = &[
    &["VM-exit interruption information", ": valid, external interrupt, vector 0x40"],
    &["acknowledged: the vector is in service in L1's APIC"],
    &["not acknowledged: still requested in L1's APIC"],
    &["L1 took it through its own IDT once it set RFLAGS.IF (1 time(s))"],
    &["L2's handler got vector 0x40"],
    &["L2's EOI reached L1's APIC"],
    &["RFLAGS.IF = 1, no blocking: before L2's first instruction"],
    &["RFLAGS.IF = 0: after STI and the instruction after it"],
    &["blocking by MOV SS: after one instruction"],
    &["no virtual-NMI blocking: before L2's first instruction"],
    &["blocking by NMI: right after L2's IRET"],
    &["the NMI-window exit comes right after the handler's IRETQ"],
];

fn intr(extra: &[&str]) {
    let r = passes("vmx-intr", extra, INTR);
    assert!(r.stdout.contains("latency deadline to L1 at the VM exit: "), "{}", r.stdout);
}

#[test]
fn external_interrupts_and_interrupt_and_nmi_windows_follow_the_controls() {
    intr(&[]);
}

#[test]
fn external_interrupts_and_interrupt_and_nmi_windows_follow_the_controls_patched() {
    intr(PATCHED);
}

const PREEMPTION_TIMER: &[&[&str]] = &[
    &["VM exit (reason 52) before L2's first instruction"],
    &["timer exit: VMX-preemption timer exit from L2's spin loop"],
    &["the field keeps L1's value", "(nothing saved)"],
    &["counted", "(L2 spun"],
    &["VMRESUME continued from the saved value"],
    &["saved timer value 0 at the timer exit"],
    &["VMRESUME started again from L1's value"],
    &["late by"],
];

#[test]
fn vmx_preemption_timer_expires_on_time_and_saves_its_value() {
    passes("vmx-preemption-timer", &[], PREEMPTION_TIMER);
}

#[test]
fn vmx_preemption_timer_expires_on_time_and_saves_its_value_patched() {
    passes("vmx-preemption-timer", PATCHED, PREEMPTION_TIMER);
}

const MTF: &[&[&str]] = &[
    &["MTF exit after movabs rax, imm64 (10 bytes)"],
    &["MTF exit after jmp over a ud2 (2 bytes, taken)"],
    &["MTF exit after the delivery, before the handler's first instruction", "vector 0x30"],
    &["MTF exit after the delivery, before the handler's first instruction", "vector 0xd"],
    &["next MTF exit after the handler's first instruction"],
    &["MTF exit before L2's first instruction (inc rbx)"],
    &["then L2 runs to its OUT without another MTF exit"],
];

/// Host limits: the host's single step runs a whole REP STOSB at once, and a fault L2's own
/// instruction raises (UD2's #UD) is delivered inside KVM, so the step is reported after the
/// handler's first instruction.
const MTF_HOST_LIMITS: &[&str] = &[
    "MTF exit after rep stosb, iteration 1 of 3",
    "MTF exit after rep stosb, iteration 2 of 3",
    "MTF exit after rep stosb, iteration 3 of 3",
    "MTF exit after the delivery of #UD",
];

#[test]
fn monitor_trap_flag_steps_l2_one_instruction_at_a_time_except_rep_strings_and_faults_a_host_limit() {
    passes_but_host_limits("vmx-mtf", &[], MTF, MTF_HOST_LIMITS);
}

#[test]
fn monitor_trap_flag_steps_l2_one_instruction_at_a_time_except_rep_strings_and_faults_a_host_limit_patched() {
    passes_but_host_limits("vmx-mtf", PATCHED, MTF, MTF_HOST_LIMITS);
}

/// An NMI that arrives while L2 runs with NMI exiting set (a script injects it, as an NMI IPI
/// would arrive) is a VM exit to L1 (SDM 26.2), before the NMI window L1 also asked for.
#[test]
fn an_nmi_while_l2_runs_with_nmi_exiting_exits_to_l1() {
    let dir = std::env::temp_dir().join(format!("nestbed-nmi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("nmi.rhai");
    std::fs::write(
        &script,
        "let done = false;\nfn on_exit(e) {\n  if !done && e.level == \"L2\" && (e.vmcs_read(\"PIN_BASED_VM_EXEC_CONTROL\") & 8) != 0 {\n    done = true; e.inject(2);\n  }\n}\n",
    )
    .unwrap();
    let r = run_guest("vmx-intr", &["--script", script.to_str().unwrap(), "--stats"]);
    let nmi_exits = r.stderr.lines().find_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
        ["L2", "EXCEPTION_NMI", "L1", count, ..] => count.parse::<u64>().ok(),
        _ => None,
    });
    assert_eq!(nmi_exits, Some(1), "{}\n{}", r.stdout, r.stderr);
    // L1 expected the NMI-window exit there and got the NMI's exit (reason 0) instead.
    assert!(r.stdout.contains("exit reason 0 at GUEST_RIP"), "{}", r.stdout);
    let _ = std::fs::remove_dir_all(&dir);
}
