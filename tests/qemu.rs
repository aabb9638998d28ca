//! The embedded guests are plain multiboot v1 kernels: the very same image boots under
//! `qemu-system-x86_64 -kernel`. Runs where QEMU is installed (CI installs it; under CI a
//! missing QEMU is a failure, not a skip).

use std::process::Command;

#[test]
fn hello_boots_under_qemu() {
    if Command::new("qemu-system-x86_64").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI must install qemu-system-x86 (see .ci/run)");
        eprintln!("qemu-system-x86_64 not installed: this check did not run");
        return;
    }
    let dir = std::env::temp_dir().join(format!("nestbed-qemu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("hello.elf");
    std::fs::write(&kernel, nestbed::guests::find("hello").unwrap()).unwrap();
    let out = Command::new("timeout")
        .args(["60", "qemu-system-x86_64", "-nographic", "-display", "none", "-no-reboot", "-m", "128"])
        .args(["-serial", "stdio", "-monitor", "none"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-kernel")
        .arg(&kernel)
        .args(["-append", "from qemu"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Hello from a nestbed guest!"), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("multiboot magic 0x2badb002"), "{stdout}");
    assert!(stdout.contains("args \"from qemu\""), "{stdout}");
    // isa-debug-exit turns `out 0xf4, 0` into exit status (0 << 1) | 1.
    assert_eq!(out.status.code(), Some(1), "{stdout}");
}
