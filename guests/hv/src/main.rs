//! Prints the VMX capability MSRs nestbed advertises and the controls the hv library derives
//! from them; exits 0 when CPUID says VMX is there and every derived control is permitted.
#![no_std]
#![no_main]

use hv::{ctl, Allowed, Caps};
use rt::Hex;

rt::entry!(main);

fn show(name: &str, a: Allowed, derived: u32) -> bool {
    let ok = a.permits(derived);
    rt::println!(
        "  ",
        name,
        ": allowed0 ",
        Hex(a.allowed0.into()),
        " allowed1 ",
        Hex(a.allowed1.into()),
        " -> hv uses ",
        Hex(derived.into()),
        if ok { "" } else { " (NOT PERMITTED)" }
    );
    ok
}

fn main(_: &rt::BootInfo) -> u32 {
    let mut failures = 0u32;
    let vmx = core::arch::x86_64::__cpuid(1).ecx & (1 << 5) != 0;
    rt::check!(failures, vmx, "CPUID.1:ECX.VMX[bit 5] is set");
    if !vmx {
        return rt::EXIT_CHECK_FAILED;
    }
    let caps = Caps::read();
    rt::println!("IA32_FEATURE_CONTROL ", Hex(rt::io::rdmsr(hv::msr::IA32_FEATURE_CONTROL)));
    rt::println!(
        "IA32_VMX_BASIC ",
        Hex(caps.basic),
        ": revision ",
        Hex(caps.revision().into()),
        ", TRUE controls ",
        caps.basic & (1 << 55) != 0
    );
    rt::println!("IA32_VMX_MISC ", Hex(caps.misc), ", IA32_VMX_EPT_VPID_CAP ", Hex(caps.ept_vpid));
    let ok = show("pin-based", caps.pin, caps.pin.adjust(0))
        & show(
            "primary  ",
            caps.proc,
            caps.proc.adjust(ctl::PROC_HLT_EXITING | ctl::PROC_USE_IO_BITMAPS | ctl::PROC_USE_MSR_BITMAPS),
        )
        & show("secondary", caps.proc2, caps.proc2.adjust(0))
        & show(
            "exit     ",
            caps.exit,
            caps.exit.adjust(ctl::EXIT_HOST_ADDR_SPACE_SIZE | ctl::EXIT_SAVE_IA32_EFER | ctl::EXIT_LOAD_IA32_EFER),
        )
        & show("entry    ", caps.entry, caps.entry.adjust(ctl::ENTRY_IA32E_MODE_GUEST | ctl::ENTRY_LOAD_IA32_EFER));
    rt::check!(failures, ok, "every derived control is permitted");
    let wanted = caps.entry.allowed1 & ctl::ENTRY_IA32E_MODE_GUEST != 0
        && caps.exit.allowed1 & ctl::EXIT_HOST_ADDR_SPACE_SIZE != 0;
    rt::check!(failures, wanted, "64-bit host and IA-32e mode guest are allowed");
    for (name, lo, hi) in [
        ("CR0", hv::msr::IA32_VMX_CR0_FIXED0, hv::msr::IA32_VMX_CR0_FIXED1),
        ("CR4", hv::msr::IA32_VMX_CR4_FIXED0, hv::msr::IA32_VMX_CR4_FIXED1),
    ] {
        rt::println!(name, " FIXED0 ", Hex(rt::io::rdmsr(lo)), " FIXED1 ", Hex(rt::io::rdmsr(hi)));
    }
    failures
}
