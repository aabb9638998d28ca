//! The L1 hypervisor guests: each asserts its own expectations and exits 0 only when all hold.

mod common;
use common::run_guest;

fn passes(guest: &str) -> common::Run {
    let r = run_guest(guest, &["--stats"]);
    assert_eq!(r.code, 0, "{guest} failed:\n{}\n{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("FAIL"), "{}", r.stdout);
    r
}

#[test]
fn vmx_basic() {
    let r = passes("vmx-basic");
    assert!(r.stderr.contains("L2    IO_INSTRUCTION             L1"), "{}", r.stderr);
}

#[test]
fn vmx_errors() {
    passes("vmx-errors");
}

#[test]
fn vmx_io_bitmap() {
    passes("vmx-io-bitmap");
}

#[test]
fn vmx_msr_bitmap() {
    let r = passes("vmx-msr-bitmap");
    assert!(r.stderr.contains("L2    RDMSR"), "{}", r.stderr);
}

#[test]
fn vmx_ept() {
    let r = passes("vmx-ept");
    assert!(r.stdout.contains("vmx-ept: all checks passed"), "{}", r.stdout);
    assert!(r.stderr.contains("L2    EPT_VIOLATION              L1"), "{}", r.stderr);
    assert!(r.stderr.contains("L2    EPT_MISCONFIG              L1"), "{}", r.stderr);
}

#[test]
fn sdm_l1() {
    passes("sdm-l1");
}

#[test]
fn nested_demo_is_the_default() {
    let r = common::nestbed(&["run", "--timeout", "60"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("L2 | Hello from L2!"), "{}", r.stdout);
    assert!(r.stdout.contains("fib(30) = 832040"), "{}", r.stdout);
}
