//! nestbed's demo: an L1 hypervisor launches an L2 that prints and computes. L2 writes every
//! byte to the UART data port 0x3f8, which L1 intercepts through its I/O bitmap and relays to
//! the real serial port; L2 hands its result to L1 on port 0x500 and halts. On the way L2 asks
//! CPUID for the hypervisor vendor (answered by nestbed's CPUID table for L2, which
//! `scripts/l2-cpuid.rhai` changes; where CPUID exits to L1, as with `--patch-sensitive auto`,
//! L1 answers with its own) and writes a POST code to port 0x80, which L1 does not
//! intercept, so nestbed handles it as the L0 (`scripts/stop-on-port.rhai` stops there).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use hv::{ctl, reason, Caps, Config, Io, Page, Stack, Vcpu};
use rt::io::outl;
use rt::vmx::{self, VmFail};

rt::entry!(main);

static VMXON_REGION: Page = Page::new();
static VMCS: Page = Page::new();
static IO_A: Page = Page::new();
static IO_B: Page = Page::new();
static L2_STACK: Stack = Stack::new();

const UART_DATA: u16 = 0x3f8;
const RESULT_PORT: u16 = 0x500;
const FIB_N: u32 = 30;
const POST_PORT: u16 = 0x80;

/// Where L2 keeps its result before handing it over: a known value in L2's memory for
/// debugger tests (`watch L2_RESULT`, `print L2_RESULT`).
static L2_RESULT: AtomicU32 = AtomicU32::new(0);
const POST_CODE: u8 = 0x42;

fn fib(n: u32) -> u32 {
    let (mut a, mut b) = (0u32, 1u32);
    for _ in 0..n {
        (a, b) = (b, a + b);
    }
    a
}

/// L2: the runtime's console code works unchanged; its status reads (port 0x3fd) are served
/// by nestbed's UART, its data writes exit to L1.
extern "C" fn l2_main() -> ! {
    rt::println!("Hello from L2!");
    rt::println!("I run in VMX non-root mode; each byte I print is an OUT that exits to L1.");
    rt::print!("Fibonacci:");
    for n in 0..=15 {
        rt::print!(" ", fib(n));
    }
    rt::println!();
    let id = core::arch::x86_64::__cpuid(0x4000_0000);
    let mut vendor = [0u8; 12];
    for (i, r) in [id.ebx, id.ecx, id.edx].iter().enumerate() {
        vendor[i * 4..i * 4 + 4].copy_from_slice(&r.to_le_bytes());
    }
    rt::print!("Hypervisor vendor at CPUID 0x40000000: '");
    for &b in vendor.iter().filter(|b| b.is_ascii_graphic()) {
        rt::serial::write_byte(b);
    }
    rt::println!("'");
    rt::println!("POST code 0x42 to port 0x80 (not intercepted by L1: nestbed handles it).");
    rt::io::outb(POST_PORT, POST_CODE);
    rt::println!("Handing fib(", FIB_N, ") to L1 on port 0x500, then HLT.");
    L2_RESULT.store(fib(FIB_N), Ordering::Relaxed);
    outl(RESULT_PORT, L2_RESULT.load(Ordering::Relaxed));
    loop {
        rt::io::hlt();
    }
}

fn main(_: &rt::BootInfo) -> u32 {
    rt::println!("L1: nestbed nested VMX demo. I am an L1 hypervisor on nestbed's virtual VMX.");
    match run() {
        Ok(failures) => failures,
        Err(e) => {
            rt::println!("L1: a VMX instruction failed: ", e);
            rt::EXIT_CHECK_FAILED
        }
    }
}

fn run() -> Result<u32, VmFail> {
    let caps = Caps::read();
    vmx::enable(VMXON_REGION.addr())?;
    rt::println!("L1: VMXON done (VMCS revision ", rt::Hex(caps.revision().into()), ")");
    hv::load_vmcs(&caps, &VMCS)?;
    hv::intercept_port(&IO_A, &IO_B, UART_DATA);
    hv::intercept_port(&IO_A, &IO_B, RESULT_PORT);
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
    rt::println!("L1: VMCS ready; intercepting ports 0x3f8 and 0x500 and HLT. Launching L2:");

    let mut vcpu = Vcpu::default();
    let (mut exits, mut io_exits, mut hlts, mut cpuids) = (0u32, 0u32, 0u32, 0u32);
    let mut result = None;
    let mut line_start = true;
    loop {
        let exit = vcpu.run()?;
        exits += 1;
        match exit.basic() {
            reason::IO_INSTRUCTION => {
                io_exits += 1;
                let io = Io::decode(exit.qualification);
                if io.port == UART_DATA && !io.is_in {
                    let b = vcpu.regs.rax as u8;
                    if line_start && b != b'\r' && b != b'\n' {
                        rt::print!("  L2 | ");
                    }
                    line_start = b == b'\n';
                    rt::serial::write_byte(b);
                } else if io.port == RESULT_PORT && !io.is_in && io.size == 4 {
                    result = Some(vcpu.regs.rax as u32);
                } else {
                    rt::println!("L1: unexpected I/O exit, port ", rt::Hex(io.port.into()));
                }
            }
            reason::HLT => {
                hlts += 1;
                break;
            }
            // CPUID always exits in VMX non-root operation (SDM 26.1.2); where the host shows it
            // (patched sites, `--patch-sensitive auto`), L1 answers with its own CPUID.
            reason::CPUID => {
                cpuids += 1;
                let r = core::arch::x86_64::__cpuid_count(vcpu.regs.rax as u32, vcpu.regs.rcx as u32);
                (vcpu.regs.rax, vcpu.regs.rbx) = (r.eax.into(), r.ebx.into());
                (vcpu.regs.rcx, vcpu.regs.rdx) = (r.ecx.into(), r.edx.into());
            }
            r => {
                rt::println!("L1: unexpected exit reason ", r, ", stopping L2");
                break;
            }
        }
        exit.skip()?;
    }
    vmx::vmxoff()?;
    rt::println!("L1: L2 halted; VMXOFF done.");
    let want = fib(FIB_N);
    let ok = result == Some(want) && hlts == 1;
    match result {
        Some(v) => {
            rt::println!("L1: L2 reported fib(", FIB_N, ") = ", v, if v == want { " (L1 agrees)" } else { " (WRONG)" })
        }
        None => rt::println!("L1: L2 reported no result"),
    }
    rt::print!("L1: handled ", exits, " exits from L2 (", io_exits, " I/O, ", hlts, " HLT");
    if cpuids > 0 {
        rt::print!(", ", cpuids, " CPUID");
    }
    rt::println!(")");
    Ok(u32::from(!ok))
}
