//! I/O bitmaps (SDM 25.6.4, 26.1.3): with "use I/O bitmaps" and without unconditional I/O
//! exiting, an IN/OUT exits exactly when a bitmap bit of one of the ports it touches is set.
//! Bitmap A intercepts ports 0x80 and 0x3f9, bitmap B port 0x9000; ports 0x7f and 0x81 pass
//! through to nestbed's device model.
#![no_std]
#![no_main]

use core::arch::asm;

use hv::{ctl, reason, Caps, Config, Io, Page, Stack, Vcpu};
use rt::vmx::{self, VmFail};
use rt::Hex;

rt::entry!(main);

static VMXON_REGION: Page = Page::new();
static VMCS: Page = Page::new();
static IO_A: Page = Page::new();
static IO_B: Page = Page::new();
static L2_STACK: Stack = Stack::new();

/// What L1 answers to L2's `in al, dx` from port 0x9000.
const EMULATED_IN: u64 = 0x5a;

/// Each expected exit: port, size in bytes, direction in.
const EXPECTED: [(u16, u8, bool); 5] =
    [(0x80, 1, false), (0x3f9, 1, false), (0x3f9, 1, false), (0x7f, 2, false), (0x9000, 1, true)];

extern "C" fn l2_main() -> ! {
    // SAFETY: port I/O and HLT; writing 0 to the UART's IER (0x3f9) only masks its interrupts.
    unsafe {
        asm!(
            "xor eax, eax",
            "out 0x80, al", // A bit 0x80: exits
            "out 0x81, al", // not intercepted
            "mov dx, 0x3f9",
            "out dx, al",  // A bit 0x3f9: exits
            "out dx, al",  // the same instruction right after it: exits too, at its own RIP
            "in al, 0x81", // not intercepted
            "mov dx, 0x7f",
            "xor eax, eax",
            "out dx, ax", // ports 0x7f and 0x80: exits because of 0x80
            "mov dx, 0x9000",
            "in al, dx", // B bit 0x1000: exits, L1 supplies AL
            "mov ebx, eax",
            "2: hlt",
            "jmp 2b",
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
    for port in [0x80, 0x3f9, 0x9000] {
        hv::intercept_port(&IO_A, &IO_B, port);
    }
    hv::setup_vmcs(
        &caps,
        &Config {
            entry: l2_main,
            stack_top: L2_STACK.top(),
            proc: ctl::PROC_HLT_EXITING,
            proc2: 0,
            io_bitmaps: Some((&IO_A, &IO_B)),
            msr_bitmap: None,
        },
    )?;
    let proc = vmx::vmread(hv::field::CPU_BASED_VM_EXEC_CONTROL)? as u32;
    rt::check!(
        failures,
        proc & ctl::PROC_USE_IO_BITMAPS != 0 && proc & ctl::PROC_UNCOND_IO_EXITING == 0,
        "controls: use I/O bitmaps, no unconditional I/O exiting: ",
        Hex(proc.into())
    );

    let mut vcpu = Vcpu::default();
    let mut n = 0;
    loop {
        let exit = vcpu.run()?;
        if exit.reason != reason::IO_INSTRUCTION {
            rt::check!(failures, exit.reason == reason::HLT, "L2 ended with HLT (exit reason ", exit.reason, ")");
            break;
        }
        let io = Io::decode(exit.qualification);
        let ok = n < EXPECTED.len() && (io.port, io.size, io.is_in) == EXPECTED[n];
        rt::check!(
            failures,
            ok,
            "I/O exit ",
            n + 1,
            ": port ",
            Hex(io.port.into()),
            ", ",
            io.size,
            " byte(s), ",
            if io.is_in { "IN" } else { "OUT" }
        );
        if io.is_in {
            vcpu.regs.rax = (vcpu.regs.rax & !0xff) | EMULATED_IN;
        }
        n += 1;
        if n > 8 {
            rt::println!("FAIL too many I/O exits");
            return Ok(failures + 1);
        }
        exit.skip()?;
    }
    rt::check!(
        failures,
        n == EXPECTED.len(),
        "exactly ",
        EXPECTED.len(),
        " I/O exits (0x81 reads and writes did not exit): ",
        n
    );
    rt::check!(
        failures,
        vcpu.regs.rbx & 0xff == EMULATED_IN,
        "L2 received L1's emulated IN value: ",
        Hex(vcpu.regs.rbx & 0xff)
    );
    vmx::vmxoff()?;
    rt::println!(if failures == 0 { "vmx-io-bitmap: all checks passed" } else { "vmx-io-bitmap: some checks FAILED" });
    Ok(failures)
}
