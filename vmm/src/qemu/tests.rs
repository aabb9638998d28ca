use super::*;

fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(String::from).collect()
}

fn run(line: &str) -> QemuRun {
    match parse(&args(line)) {
        Ok(Invocation::Run(r)) => *r,
        other => panic!("{line}: {other:?}"),
    }
}

fn error(line: &str) -> String {
    match parse(&args(line)) {
        Err(e) => {
            assert_eq!(e.exit_code(), crate::error::code::CONFIG, "{e}");
            e.to_string()
        }
        Ok(other) => panic!("{line}: accepted as {other:?}"),
    }
}

/// The command x86/run builds for a one-vCPU test, with the environment file.
const RUNNER: &str = "--no-reboot -nodefaults -global kvm-pit.lost_tick_policy=discard -device pc-testdev \
    -device isa-debug-exit,iobase=0xf4,iosize=0x4 -display none -serial stdio -machine accel=kvm \
    -kernel x86/msr.flat -smp 1 -append a,b -initrd env.txt";

#[test]
fn the_runners_command_line() {
    let r = run(RUNNER);
    assert_eq!(r.kernel.as_deref(), Some("x86/msr.flat"));
    assert_eq!(r.append, "a,b");
    assert_eq!(r.modules, ["env.txt"]);
    assert_eq!(r.mem_mib, 128);
    assert_eq!(r.serial, Serial::Stdio);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn unittests_cfg_params() {
    for (extra, warnings) in [
        ("-cpu max,+vmx -m 2048", 0),
        ("-enable-kvm -m 2048 -cpu host", 0),
        ("-cpu qemu64,+x2apic,+tsc-deadline", 2),
        ("-cpu max,host-phys-bits,+vmx,-vmx-mbec -m 2560", 1),
        ("-machine vmport=on -cpu max", 1),
        ("-machine pit=off", 1),
        ("-accel kvm -vnc none -name t1 -nographic", 0),
        ("-device pci-testdev", 1),
        ("-machine pc,accel=kvm:tcg", 0),
    ] {
        let r = run(&format!("{RUNNER} {extra}"));
        assert_eq!(r.warnings.len(), warnings, "{extra}: {:?}", r.warnings);
    }
    assert_eq!(run("-kernel k -m 2048").mem_mib, 2048);
    assert_eq!(run("-kernel k -m 1G").mem_mib, 1024);
    assert_eq!(run("-kernel k -m 256M").mem_mib, 256);
    assert_eq!(run("-kernel k -m size=512m,slots=2").mem_mib, 512);
    assert!(run("-kernel k -cpu qemu64").warnings[0].contains("qemu64"));
}

#[test]
fn help_version_and_lists() {
    for h in ["-h", "--help", "-help"] {
        assert_eq!(parse(&args(h)).unwrap(), Invocation::Help);
    }
    assert_eq!(parse(&args("--version")).unwrap(), Invocation::Version);
    assert_eq!(parse(&args("-device ?")).unwrap(), Invocation::DeviceList);
    assert_eq!(parse(&args("-device help")).unwrap(), Invocation::DeviceList);
    assert_eq!(parse(&args("-cpu help")).unwrap(), Invocation::CpuList);
    assert!(help().contains("QEMU"));
    // arch-run.bash: IFS='[ .]' read -r _ _ _ QEMU_MAJOR QEMU_MINOR QEMU_MICRO rest
    let help = help();
    let words: Vec<&str> = help.lines().next().unwrap().split([' ', '.']).collect();
    assert_eq!(&words[..6], ["QEMU", "emulator", "version", "7", "2", "0"]);
    // x86/run: grep -F -e \"testdev\" -e \"pc-testdev\"; pci-testdev only when nestbed has it.
    assert!(device_list().contains("\"pc-testdev\""));
    assert!(!device_list().contains("pci-testdev"));
}

#[test]
fn refused_flags_are_named() {
    assert!(error("-kernel k -frobnicate").contains("-frobnicate"));
    assert!(error("--overcommit cpu-pm=on").contains("-overcommit"));
    assert!(error("-chardev socket,id=mon").contains("-chardev"));
    assert!(error("disk.img").contains("disk.img"));
    assert!(error("-kernel").contains("-kernel: requires an argument"));
    assert!(error("-device edu").contains("edu"));
    assert!(error("-device hyperv-testdev").contains("hyperv-testdev"));
    assert!(error("-device isa-debug-exit").contains("iobase=0xf4"));
    assert!(error("-device isa-debug-exit,iobase=0x501").contains("iobase=0xf4"));
    assert!(error("-machine accel=tcg").contains("KVM"));
    assert!(error("-accel tcg").contains("KVM"));
    assert!(error("-serial pty").contains("-serial pty"));
    assert!(error("-monitor stdio").contains("monitor"));
    for m in ["-m x", "-m 1", "-m 4g", "-m 1536k", "-m 10Q"] {
        assert!(error(m).starts_with(m), "{m}");
    }
}

#[test]
fn smp_beyond_one_is_an_error_ending_with_the_maximum() {
    assert!(run("-smp 1").warnings.is_empty());
    assert!(run("-smp cpus=1,sockets=1,cores=1,threads=1").warnings.is_empty());
    for smp in ["2", "cpus=4", "sockets=2", "1,cpus=3"] {
        let e = error(&format!("-kernel k -smp {smp}"));
        assert!(e.starts_with("Invalid SMP CPUs"), "{e}");
        // runtime.bash's probe: smp=${smp##* }
        assert_eq!(e.rsplit(' ').next(), Some("1"));
    }
}

#[test]
fn initrd_lists_split_on_single_commas() {
    assert_eq!(split_modules("a x=1,b,,c,"), ["a x=1", "b,c"]);
    assert_eq!(split_modules(""), Vec::<String>::new());
}

#[test]
fn a_missing_kernel_is_reported_in_qemus_words() {
    // runtime.bash's premature-failure check greps for "could not load kernel" with the path.
    let r = run("-kernel _NO_FILE_4Uhere_ -smp 1");
    let e = r.into_run_config().err().unwrap();
    assert_eq!(e.to_string(), "could not load kernel '_NO_FILE_4Uhere_': No such file or directory");
    assert_eq!(e.exit_code(), crate::error::code::CONFIG);
    assert!(run("-m 64").into_run_config().err().unwrap().to_string().contains("-kernel"));
}
