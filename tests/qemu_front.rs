//! The QEMU-compatible front (`nestbed qemu`, or nestbed started as qemu-system-x86_64) with
//! the flags kvm-unit-tests' runner passes, and QEMU's exit conventions under `nestbed run`.

mod common;
use common::{nestbed, run_guest, tmpdir, Run};
use nestbed::error::code;
use std::path::{Path, PathBuf};
use std::process::Command;

fn guest_file(dir: &Path, name: &str) -> String {
    let p = dir.join(format!("{name}.elf"));
    std::fs::write(&p, nestbed::guests::find(name).unwrap()).unwrap();
    p.to_str().unwrap().to_string()
}

fn run_program(program: &Path, args: &[&str]) -> Run {
    let out = Command::new(program).args(args).env("RUST_LOG", "warn").output().expect("running the front");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

const FLAGS: &[&str] = &[
    "-append",
    "from qemu",
    "-device",
    "isa-debug-exit,iobase=0xf4,iosize=0x4",
    "-serial",
    "stdio",
    "-display",
    "none",
    "-nodefaults",
    "-no-reboot",
];

#[test]
fn hello_boots_under_the_front_with_qemus_status() {
    let kernel = guest_file(&tmpdir("front"), "hello");
    let mut args = vec!["qemu", "-kernel", &kernel];
    args.extend_from_slice(FLAGS);
    let r = nestbed(&args);
    assert!(r.stdout.contains("Hello from a nestbed guest!"), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("args \"from qemu\""), "{}", r.stdout);
    // isa-debug-exit: `out 0xf4, 0` is status (0 << 1) | 1; the runner fails a run with stderr.
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stderr, "");
}

#[test]
fn the_runners_flags_with_an_environment_file() {
    let dir = tmpdir("front-env");
    let kernel = guest_file(&dir, "hello");
    let env = dir.join("env");
    std::fs::write(&env, "NR_CPUS=1\n").unwrap();
    let r = nestbed(&[
        "qemu",
        "--no-reboot",
        "-nodefaults",
        "-global",
        "kvm-pit.lost_tick_policy=discard",
        "-device",
        "pc-testdev",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x4",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-machine",
        "accel=kvm",
        "-kernel",
        &kernel,
        "-smp",
        "1",
        "-cpu",
        "max,+vmx",
        "-m",
        "256",
        "-initrd",
        env.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stdout.contains("261120 KiB above 1 MiB"), "{}", r.stdout);
    assert_eq!(r.stderr, "");
}

#[test]
fn what_nestbed_cannot_be_is_a_warning_or_an_error() {
    let kernel = guest_file(&tmpdir("front-warn"), "hello");
    let r = nestbed(&["qemu", "-kernel", &kernel, "-cpu", "qemu64,+x2apic", "-device", "pci-testdev"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    // Every stderr line says "warning", so the runner still counts the run as passed.
    assert!(r.stderr.lines().count() >= 3 && r.stderr.lines().all(|l| l.contains("warning")), "{}", r.stderr);
    assert!(r.stderr.contains("qemu64") && r.stderr.contains("pci-testdev"), "{}", r.stderr);
    let r = nestbed(&["qemu", "-kernel", &kernel, "-smp", "2"]);
    assert_eq!(r.code, code::CONFIG);
    assert!(r.stderr.contains("Invalid SMP CPUs 2"), "{}", r.stderr);
}

#[test]
fn unknown_flags_are_refused_by_name() {
    let r = nestbed(&["qemu", "-kernel", "k", "-frobnicate", "x"]);
    assert_eq!(r.code, code::CONFIG);
    assert!(r.stderr.contains("-frobnicate"), "{}", r.stderr);
    let r = nestbed(&["qemu", "-kernel", "/nonexistent/_NO_FILE_4Uhere_"]);
    assert_eq!(r.code, code::CONFIG);
    assert!(r.stderr.contains("could not load kernel '/nonexistent/_NO_FILE_4Uhere_'"), "{}", r.stderr);
}

#[test]
fn help_and_version_look_like_qemus() {
    let r = nestbed(&["qemu", "--help"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("QEMU"), "{}", r.stdout);
    for flag in ["-h", "--version"] {
        let r = nestbed(&["qemu", flag]);
        assert_eq!(r.code, 0);
        let first = r.stdout.lines().next().unwrap_or("");
        assert!(first.starts_with("QEMU emulator version 7.2.0 (nestbed "), "{first}");
    }
    let r = nestbed(&["qemu", "-device", "?"]);
    assert!(r.stdout.contains("\"pc-testdev\""), "{}", r.stdout);
}

#[test]
fn a_symlink_named_qemu_system_x86_64_is_the_front() {
    let dir = tmpdir("front-link");
    let link: PathBuf = dir.join("qemu-system-x86_64");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_nestbed"), &link).unwrap();
    let r = run_program(&link, &["--help"]);
    assert!(r.stdout.contains("QEMU"), "{}", r.stdout);
    let kernel = guest_file(&dir, "hello");
    let mut args = vec!["-kernel", kernel.as_str()];
    args.extend_from_slice(FLAGS);
    let r = run_program(&link, &args);
    assert!(r.stdout.contains("args \"from qemu\""), "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let r = run_program(&link, &["-nosuchflag"]);
    assert_eq!(r.code, code::CONFIG);
    assert!(r.stderr.contains("-nosuchflag"), "{}", r.stderr);
}

#[test]
fn exit_conventions_under_run() {
    let r = run_guest("exit-code", &["--cmdline", "3"]);
    assert_eq!(r.code, 3);
    let r = run_guest("exit-code", &["--cmdline", "3", "--exit-convention", "qemu"]);
    assert_eq!(r.code, 7);
    let r = run_guest("exit-code", &["--cmdline", "200", "--exit-convention", "qemu"]);
    assert_eq!(r.code, (200 << 1 | 1) & 0xff);
}

#[test]
fn modules_under_run() {
    let dir = tmpdir("modules");
    let m = dir.join("mod.bin");
    std::fs::write(&m, [0u8; 64]).unwrap();
    let spec = format!("{},a b", m.display());
    let r = run_guest("hello", &["--initrd", m.to_str().unwrap(), "--module", &spec]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run_guest("hello", &["--module", "/nonexistent/mod.bin"]);
    assert_eq!(r.code, code::CONFIG);
    assert!(r.stderr.contains("/nonexistent/mod.bin"), "{}", r.stderr);
    let big = dir.join("big.bin");
    std::fs::write(&big, vec![0u8; 3 << 20]).unwrap();
    let r = run_guest("hello", &["--mem", "2", "--module", big.to_str().unwrap()]);
    assert_eq!(r.code, code::BAD_IMAGE, "{}", r.stderr);
    assert!(r.stderr.contains("big.bin") && r.stderr.contains("--mem"), "{}", r.stderr);
}
