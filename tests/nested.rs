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
    // The page L1 mapped without INVEPT: found in its tables and done by nestbed.
    assert!(r.stderr.contains("L2    EPT_VIOLATION              L0"), "{}", r.stderr);
}

/// vmx-legacy32's exit code when the host's KVM refuses CR0.PG outside IA-32e mode after the
/// checks before paging passed.
const LEGACY_PAGING_REFUSED: i32 = 77;

#[test]
fn vmx_legacy32() {
    let r = run_guest("vmx-legacy32", &["--stats"]);
    assert!(!r.stdout.contains("FAIL"), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("ok   VMXON [m64] with CR0.PG = 0: exception 13, error code 0x00000000"), "{}", r.stdout);
    if r.code == LEGACY_PAGING_REFUSED {
        eprintln!("this host's KVM refuses CR0.PG outside IA-32e mode: vmx-legacy32 ran its checks before paging only");
        return;
    }
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("vmx-legacy32: all checks passed"), "{}", r.stdout);
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

/// The count column of the statistics row for `level reason handler`.
fn stat_count(stderr: &str, level: &str, reason: &str, handler: &str) -> Option<u64> {
    stderr.lines().find_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
        [lv, r, h, count, ..] if (lv, r, h) == (level, reason, handler) => count.parse().ok(),
        _ => None,
    })
}

#[test]
fn vmx_bench_modes() {
    let r = run_guest("vmx-bench", &["--stats", "--cmdline", "vmread 50"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(stat_count(&r.stderr, "L1", "VMREAD", "L0"), Some(50), "{}", r.stderr);
    let r = run_guest("vmx-bench", &["--stats", "--cmdline", "l2exit 40"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(stat_count(&r.stderr, "L2", "IO_INSTRUCTION", "L1"), Some(40), "{}", r.stderr);
    assert_eq!(stat_count(&r.stderr, "L1", "VMRESUME", "L0"), Some(39), "{}", r.stderr);
    assert_eq!(run_guest("vmx-bench", &["--cmdline", "nothing"]).code, 2);
}
