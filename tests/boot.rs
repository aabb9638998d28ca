//! Boots nestbed's own guests and checks their console and exit codes (issue: the machine).

mod common;
use common::{nestbed, run_guest, tmpdir};

#[test]
fn hello_prints_and_exits_zero() {
    let r = run_guest("hello", &["--cmdline", "a b c"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("Hello from a nestbed guest!"), "{}", r.stdout);
    assert!(r.stdout.contains("multiboot magic 0x2badb002"), "{}", r.stdout);
    assert!(r.stdout.contains("args \"a b c\""), "{}", r.stdout);
    assert!(r.stdout.contains("130048 KiB above 1 MiB"), "128 MiB default RAM: {}", r.stdout);
}

#[test]
fn exit_code_passes_through() {
    for code in ["0", "42", "199"] {
        let r = run_guest("exit-code", &["--cmdline", code]);
        assert_eq!(r.code.to_string(), code, "{}", r.stderr);
        assert!(r.stdout.contains(&format!("exiting with code {code}")));
    }
}

#[test]
fn fault_reports_vector_and_rip() {
    let r = run_guest("fault", &[]);
    assert_eq!(r.code, 100, "{}", r.stderr);
    assert!(r.stdout.contains("unhandled exception #GP (vector 13), error code 0x0, at RIP 0x"), "{}", r.stdout);
}

#[test]
fn stats_table_has_io_exits() {
    let r = run_guest("hello", &["--stats"]);
    assert_eq!(r.code, 0);
    assert!(r.stderr.contains("IO_INSTRUCTION"), "{}", r.stderr);
    assert!(r.stderr.contains("total:"), "{}", r.stderr);
}

#[test]
fn serial_to_file() {
    let d = tmpdir("serial");
    let f = d.join("console.txt");
    let r = run_guest("hello", &["--serial", f.to_str().unwrap()]);
    assert_eq!(r.code, 0);
    assert!(!r.stdout.contains("Hello"));
    assert!(std::fs::read_to_string(&f).unwrap().contains("Hello from a nestbed guest!"));
}

#[test]
fn guests_lists_every_embedded_guest() {
    let r = nestbed(&["guests"]);
    assert_eq!(r.code, 0);
    for g in ["hello", "fault", "exit-code", "vmx-basic", "vmx-errors", "nested-demo", "sdm-l1"] {
        assert!(r.stdout.lines().any(|l| l.starts_with(g)), "{g} missing: {}", r.stdout);
    }
}

#[test]
fn elf64_images_boot_too() {
    // The embedded images are ELF32 containers; the build keeps the ELF64 originals.
    let dir = std::path::Path::new(nestbed::guests::SYMBOLS_DIR);
    let r = nestbed(&["run", "--guest", dir.join("hello").to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("Hello from a nestbed guest!"));
}

#[test]
fn a_guests_own_int3_is_delivered_to_it_as_bp() {
    let r = run_guest("fault", &["--cmdline", "int3"]);
    assert_eq!(r.code, 100, "{}", r.stderr);
    assert!(r.stdout.contains("unhandled exception #BP (vector 3)"), "{}", r.stdout);
}

#[test]
fn string_io_goes_through_the_devices() {
    let r = run_guest("string-io", &[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("written by rep outsb\n"), "{}", r.stdout);
    assert!(r.stdout.contains("string-io: all checks passed"), "{}", r.stdout);
}
