//! L1's PC platform (issue: the platform): the `platform` guest checks fw_cfg, the local APIC
//! and its timer, the IOAPIC with lines raised through pc-testdev, and a flood of self-IPIs
//! (nestbed neither hangs nor loses one it must deliver); HLT with interrupts
//! disabled and nothing pending ends the run, HLT with interrupts enabled sleeps.

mod common;
use common::{nestbed, run_guest};
use nestbed::error::code;

#[test]
fn platform_guest_passes_every_check() {
    let r = run_guest("platform", &[]);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("FAIL"), "{}", r.stdout);
    assert!(r.stdout.contains("platform: all checks passed"), "{}", r.stdout);
    for want in [
        "fw_cfg signature",
        "one-shot:",
        "periodic:",
        "level: remote IRR clear after EOI",
        "edge pin 11: raise 2",
        "ok   PIT: third IRQ 0",
        "ok   PIT: counter 2's OUT rises in port 0x61 once its gate opens",
        "ok   RTC: update-in-progress seen set, then clear",
        "ok   RTC: update-ended interrupt with register C",
        "ok   self-IPI flood with IF=0: 2000 IPIs, one IRR bit, 1 interrupt(s)",
        "ok   self-IPI flood with IF=1: 2000 of 2000 interrupts taken",
    ] {
        assert!(r.stdout.contains(want), "{want} missing:\n{}", r.stdout);
    }
}

#[test]
fn hlt_with_interrupts_disabled_is_an_error() {
    let r = run_guest("platform", &["--cmdline", "cli-hlt"]);
    assert_eq!(r.code, code::GUEST_UNSUPPORTED, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("HLT with interrupts disabled"), "{}", r.stderr);
}

#[test]
fn hlt_with_interrupts_enabled_sleeps_until_the_timeout() {
    let r = nestbed(&["run", "--guest", "platform", "--cmdline", "sti-hlt", "--timeout", "1"]);
    assert_eq!(r.code, code::TIMEOUT, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("nothing to wake it"), "{}", r.stdout);
}
