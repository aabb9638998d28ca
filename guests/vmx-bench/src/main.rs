//! Benchmark guest for `just bench`. `vmread N`: L1 executes N VMREADs, each trapped and
//! emulated by nestbed. `l2exit N`: an L2 executes `out 0x80, al` N times; each exit is
//! reflected to L1, whose exit handler only VMRESUMEs (L2 re-executes the OUT): the floor of
//! a nested exit that L1 handles. Both loops are three instructions per operation, like the
//! raw KVM loop they are compared with (some hosts' KVM emulates every guest instruction).
//! `l2exit N timers`: the same with L2's VMX-preemption timer active but far from expiring
//! and L1's local APIC timer armed (masked, about a minute away): what idle timers add.
//! Exits 0, or 1 if a VMX instruction failed.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

use hv::{ctl, field, Caps, Config, Page, Stack};
use rt::vmx::{self, VmFail};

rt::entry!(main);

static VMXON_REGION: Page = Page::new();
static VMCS: Page = Page::new();
static L2_STACK: Stack = Stack::new();

extern "C" fn l2_main() -> ! {
    // SAFETY: port I/O only; every OUT exits to L1.
    unsafe { asm!("2: out 0x80, al", "jmp 2b", options(noreturn)) }
}

// rdi = number of L2 exits (at least 1). Returns 0 after that many, 1 if VMLAUNCH or
// VMRESUME failed. r12 counts: VM exits do not change the general registers and L2 does not
// touch r12 (SDM 28.1).
global_asm!(
    r#"
    .section .text.vmx_bench_l2exits, "ax"
    .global vmx_bench_l2exits
    vmx_bench_l2exits:
        push rbx
        push rbp
        push r12
        push r13
        push r14
        push r15
        mov r12, rdi
        mov rax, {host_rsp}
        vmwrite rax, rsp
        lea rdx, [rip + 3f]
        mov rax, {host_rip}
        vmwrite rax, rdx
        vmlaunch
        jmp 9f
    3:  dec r12
        jz 8f
        vmresume
        jmp 9f
    8:  xor eax, eax
        jmp 7f
    9:  mov eax, 1
    7:  pop r15
        pop r14
        pop r13
        pop r12
        pop rbp
        pop rbx
        ret
    "#,
    host_rsp = const field::HOST_RSP,
    host_rip = const field::HOST_RIP,
);

// rdi = number of VMREADs (at least 1) of field rsi.
global_asm!(
    r#"
    .section .text.vmx_bench_vmreads, "ax"
    .global vmx_bench_vmreads
    vmx_bench_vmreads:
    2:  vmread rax, rsi
        dec rdi
        jnz 2b
        ret
    "#
);

extern "C" {
    fn vmx_bench_l2exits(n: u64) -> u64;
    fn vmx_bench_vmreads(n: u64, field: u64);
}

fn main(info: &rt::BootInfo) -> u32 {
    let (what, rest) = rt::next_word(info.args);
    let n = rt::parse_u64(rt::next_word(rest).0).unwrap_or(10_000);
    let timers = rt::next_word(rt::next_word(rest).1).0 == "timers";
    let r = match what {
        "vmread" => vmreads(n),
        "l2exit" => l2_exits(n, timers),
        _ => {
            rt::println!("vmx-bench: usage: vmread N | l2exit N [timers]");
            return 2;
        }
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            rt::println!("vmx-bench: ", e);
            1
        }
    }
}

fn enter() -> Result<(), VmFail> {
    let caps = Caps::read();
    vmx::enable(VMXON_REGION.addr())?;
    hv::load_vmcs(&caps, &VMCS)?;
    hv::setup_vmcs(
        &caps,
        &Config {
            entry: l2_main,
            stack_top: L2_STACK.top(),
            proc: ctl::PROC_UNCOND_IO_EXITING,
            proc2: 0,
            io_bitmaps: None,
            msr_bitmap: None,
        },
    )
}

fn vmreads(n: u64) -> Result<(), VmFail> {
    enter()?;
    // One checked VMREAD first: the loop does not look at the outcome.
    vmx::vmread(field::GUEST_RIP)?;
    if n > 1 {
        // SAFETY: VMREAD of a valid field of the current VMCS into RAX, which the routine
        // clobbers as a scratch register of the C ABI.
        unsafe { vmx_bench_vmreads(n - 1, field::GUEST_RIP) };
    }
    Ok(())
}

/// The VMX-preemption timer's value field and the pin-based control that activates it (SDM
/// 25.4.2, 25.6.1).
const VMX_PREEMPTION_TIMER_VALUE: u64 = 0x482e;
const PIN_ACTIVATE_PREEMPTION_TIMER: u64 = 1 << 6;

fn l2_exits(n: u64, timers: bool) -> Result<(), VmFail> {
    enter()?;
    if timers {
        let pin = vmx::vmread(field::PIN_BASED_VM_EXEC_CONTROL)?;
        vmx::vmwrite(field::PIN_BASED_VM_EXEC_CONTROL, pin | PIN_ACTIVATE_PREEMPTION_TIMER)?;
        vmx::vmwrite(VMX_PREEMPTION_TIMER_VALUE, u64::from(u32::MAX))?;
        use rt::apic::*;
        write(SPIV, 0x1ff);
        write(LVT_TIMER, 1 << 16 | 0x40);
        write(DIVIDE_CONFIG, 0xa);
        write(INITIAL_COUNT, u32::MAX);
    }
    if n == 0 {
        return Ok(());
    }
    // SAFETY: the VMCS is current and complete; the routine returns on this stack after n
    // exits (HOST_RSP/HOST_RIP point back into it).
    match unsafe { vmx_bench_l2exits(n) } {
        0 => Ok(()),
        _ => Err(VmFail::Valid(vmx::vmread(field::VM_INSTRUCTION_ERROR)? as u32)),
    }
}
