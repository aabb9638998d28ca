//! MSR bitmaps (SDM 25.6.9, 26.1.3): with "use MSR bitmaps", RDMSR/WRMSR of an MSR in the low
//! (0-0x1fff) or high (0xc0000000-0xc0001fff) range exits exactly when its read or write bit is
//! set. L1 intercepts reads of IA32_SYSENTER_CS and writes of IA32_KERNEL_GS_BASE only, and
//! emulates them.
#![no_std]
#![no_main]

use core::arch::asm;

use hv::{ctl, field, msr, reason, Caps, Config, Page, Stack, Vcpu};
use rt::vmx::{self, VmFail};
use rt::Hex;

rt::entry!(main);

static VMXON_REGION: Page = Page::new();
static VMCS: Page = Page::new();
static MSR_BITMAP: Page = Page::new();
static L2_STACK: Stack = Stack::new();

/// What L1 answers to L2's RDMSR of IA32_SYSENTER_CS (EDX:EAX).
const EMULATED_SYSENTER_CS: u64 = 0x0000_0001_0000_0023;
/// What L2 writes to IA32_SYSENTER_CS (passes through) and IA32_KERNEL_GS_BASE (exits).
const L2_SYSENTER_CS: u64 = 0x10;
const L2_KERNEL_GS_BASE: u64 = 0x1234_5678_9abc_def0;

extern "C" fn l2_main() -> ! {
    // SAFETY: MSR accesses L1 controls, then HLT.
    unsafe {
        asm!(
            "mov ecx, 0x174",
            "rdmsr",                  // read bit set: exits, L1 supplies EDX:EAX
            "mov r8, rax",
            "mov r9, rdx",
            "mov ecx, 0x174",
            "mov eax, {cs}",
            "xor edx, edx",
            "wrmsr",                  // write bit clear: no exit
            "mov ecx, 0xc0000102",
            "rdmsr",                  // read bit clear: no exit
            "mov ecx, 0xc0000102",
            "mov rax, {gs}",
            "mov rdx, rax",
            "shr rdx, 32",
            "wrmsr",                  // write bit set: exits
            "2: hlt",
            "jmp 2b",
            cs = const L2_SYSENTER_CS,
            gs = const L2_KERNEL_GS_BASE,
            options(noreturn)
        )
    }
}

fn main(_: &rt::BootInfo) -> u32 {
    match run() {
        Ok(failures) => failures,
        Err(e) => {
            rt::println!("FAIL a VMX instruction failed: ", e);
            rt::EXIT_CHECK_FAILED
        }
    }
}

fn run() -> Result<u32, VmFail> {
    let mut failures = 0u32;
    let caps = Caps::read();
    vmx::enable(VMXON_REGION.addr())?;
    hv::load_vmcs(&caps, &VMCS)?;
    hv::intercept_msr(&MSR_BITMAP, msr::IA32_SYSENTER_CS, true, false);
    hv::intercept_msr(&MSR_BITMAP, msr::IA32_KERNEL_GS_BASE, false, true);
    hv::setup_vmcs(
        &caps,
        &Config {
            entry: l2_main,
            stack_top: L2_STACK.top(),
            proc: ctl::PROC_HLT_EXITING,
            proc2: 0,
            io_bitmaps: None,
            msr_bitmap: Some(&MSR_BITMAP),
        },
    )?;

    let mut vcpu = Vcpu::default();
    let (mut rdmsr, mut wrmsr, mut others) = (0u32, 0u32, 0u32);
    let mut written = 0u64;
    loop {
        let exit = vcpu.run()?;
        let ecx = vcpu.regs.rcx as u32;
        let edx_eax = (vcpu.regs.rdx << 32) | (vcpu.regs.rax & 0xffff_ffff);
        match exit.reason {
            reason::HLT => break,
            reason::RDMSR => {
                rdmsr += 1;
                rt::check!(
                    failures,
                    ecx == msr::IA32_SYSENTER_CS,
                    "RDMSR exit for ECX = ",
                    Hex(ecx.into()),
                    " (IA32_SYSENTER_CS)"
                );
                vcpu.regs.rax = EMULATED_SYSENTER_CS & 0xffff_ffff;
                vcpu.regs.rdx = EMULATED_SYSENTER_CS >> 32;
            }
            reason::WRMSR => {
                wrmsr += 1;
                rt::check!(
                    failures,
                    ecx == msr::IA32_KERNEL_GS_BASE,
                    "WRMSR exit for ECX = ",
                    Hex(ecx.into()),
                    " (IA32_KERNEL_GS_BASE)"
                );
                rt::check!(failures, edx_eax == L2_KERNEL_GS_BASE, "  EDX:EAX = ", Hex(edx_eax));
                written = edx_eax;
            }
            r => {
                others += 1;
                rt::println!("FAIL unexpected exit reason ", r);
                if others > 4 {
                    break;
                }
            }
        }
        exit.skip()?;
    }
    rt::check!(
        failures,
        rdmsr == 1 && wrmsr == 1 && others == 0,
        "exits: ",
        rdmsr,
        " RDMSR, ",
        wrmsr,
        " WRMSR, ",
        others,
        " other (expected 1, 1, 0)"
    );
    let l2_read = (vcpu.regs.r9 << 32) | (vcpu.regs.r8 & 0xffff_ffff);
    rt::check!(failures, l2_read == EMULATED_SYSENTER_CS, "L2's RDMSR returned L1's emulated value ", Hex(l2_read));
    rt::check!(failures, written == L2_KERNEL_GS_BASE, "L1 recorded L2's KERNEL_GS_BASE write ", Hex(written));
    let cs = vmx::vmread(field::GUEST_SYSENTER_CS)?;
    rt::check!(
        failures,
        cs == L2_SYSENTER_CS,
        "L2's unintercepted WRMSR reached its IA32_SYSENTER_CS, saved at exit (SDM 28.3.1): ",
        Hex(cs)
    );
    vmx::vmxoff()?;
    rt::println!(if failures == 0 {
        "vmx-msr-bitmap: all checks passed"
    } else {
        "vmx-msr-bitmap: some checks FAILED"
    });
    Ok(failures)
}
