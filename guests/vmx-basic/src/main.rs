//! The smallest complete L1 hypervisor: enters VMX operation, makes a VMCS current, launches
//! an L2 that executes `out 0x80, al` five times and then HLT, and checks every exit. With
//! `plain-cr4` it first sets CR4.VMXE with a plain `mov cr4` (no #GP fixup), as hypervisors
//! written for hardware do.
#![no_std]
#![no_main]

use core::arch::asm;

use hv::{ctl, field, reason, Caps, Config, Io, Page, Stack, Vcpu};
use rt::vmx::{self, VmFail};
use rt::Hex;

rt::entry!(main);

const OUTS: u64 = 5;

static VMXON_REGION: Page = Page::new();
static VMCS: Page = Page::new();
static L2_STACK: Stack = Stack::new();

/// L2: `out 0x80, al` (bytes e6 80) with AL = 0, 1, ..., then HLT forever.
extern "C" fn l2_main() -> ! {
    // SAFETY: port I/O and HLT only; every one of them exits to L1.
    unsafe {
        asm!(
            "xor eax, eax",
            "2: out 0x80, al",
            "inc eax",
            "cmp eax, {n}",
            "jne 2b",
            "3: hlt",
            "jmp 3b",
            n = const OUTS,
            options(noreturn)
        )
    }
}

fn main(info: &rt::BootInfo) -> u32 {
    // `plain-cr4`: set CR4.VMXE as code written for hardware does, with no #GP fixup.
    if rt::next_word(info.args).0 == "plain-cr4" {
        let cr4 = vmx::set_cr4_vmxe_plain();
        if cr4 & vmx::CR4_VMXE == 0 {
            rt::println!("FAIL CR4 read back without VMXE: ", Hex(cr4));
            return rt::EXIT_CHECK_FAILED;
        }
        rt::println!("ok   plain MOV to CR4 set VMXE: CR4 reads ", Hex(cr4));
    }
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
    rt::println!("L1: VMCS revision ", Hex(caps.revision().into()));
    let r = vmx::enable(VMXON_REGION.addr());
    rt::check!(failures, r.is_ok(), "VMXON: ", hv::Outcome(r));
    r?;
    VMCS.init_region(caps.revision());
    let r = vmx::vmclear(VMCS.addr());
    rt::check!(failures, r.is_ok(), "VMCLEAR: ", hv::Outcome(r));
    let r = vmx::vmptrld(VMCS.addr());
    rt::check!(failures, r.is_ok(), "VMPTRLD: ", hv::Outcome(r));
    r?;
    let cur = vmx::vmptrst()?;
    rt::check!(failures, cur == VMCS.addr(), "VMPTRST = ", Hex(cur), ", the VMCS at ", Hex(VMCS.addr()));

    hv::setup_vmcs(
        &caps,
        &Config {
            entry: l2_main,
            stack_top: L2_STACK.top(),
            proc: ctl::PROC_HLT_EXITING | ctl::PROC_UNCOND_IO_EXITING,
            proc2: 0,
            io_bitmaps: None,
            msr_bitmap: None,
        },
    )?;

    let mut vcpu = Vcpu::default();
    let mut outs = 0u64;
    let mut halted = false;
    for _ in 0..2 * OUTS + 2 {
        let exit = vcpu.run()?;
        if exit.basic() == reason::HLT {
            halted = true;
            break;
        }
        let io = Io::decode(exit.qualification);
        rt::check!(
            failures,
            exit.reason == reason::IO_INSTRUCTION,
            "exit ",
            outs + 1,
            ": reason ",
            exit.reason,
            " (I/O instruction is 30)"
        );
        rt::check!(
            failures,
            io.port == 0x80 && io.size == 1 && !io.is_in && !io.string,
            "  OUT to port ",
            Hex(io.port.into()),
            ", ",
            io.size,
            " byte(s), in=",
            io.is_in
        );
        rt::check!(failures, vcpu.regs.rax & 0xff == outs, "  L2's AL = ", vcpu.regs.rax & 0xff, ", expected ", outs);
        // SAFETY: L2 runs on L1's identity map; GUEST_RIP is an address in this image.
        let bytes = unsafe { [*(exit.rip as *const u8), *((exit.rip + 1) as *const u8)] };
        rt::check!(
            failures,
            bytes == [0xe6, 0x80],
            "  GUEST_RIP ",
            Hex(exit.rip),
            " holds ",
            Hex(bytes[0].into()),
            " ",
            Hex(bytes[1].into()),
            " (out 0x80, al)"
        );
        rt::check!(failures, exit.instruction_len == 2, "  VM_EXIT_INSTRUCTION_LEN = ", exit.instruction_len);
        outs += 1;
        exit.skip()?;
    }
    rt::check!(failures, halted, "L2 ended with a HLT exit (reason 12)");
    rt::check!(failures, outs == OUTS, "L1 saw ", outs, " OUT exits, expected ", OUTS);
    let rip = vmx::vmread(field::GUEST_RIP)?;
    // SAFETY: as above.
    let op = unsafe { *(rip as *const u8) };
    rt::check!(failures, op == 0xf4, "GUEST_RIP at the HLT exit points at HLT (0xf4): ", Hex(op.into()));
    let r = vmx::vmxoff();
    rt::check!(failures, r.is_ok(), "VMXOFF: ", hv::Outcome(r));
    rt::println!(if failures == 0 { "vmx-basic: all checks passed" } else { "vmx-basic: some checks FAILED" });
    Ok(failures)
}
