//! Benchmark guest for `just bench`. `vmread N`: L1 executes N VMREADs, each trapped and
//! emulated by nestbed. `l2exit N`: an L2 executes `out 0x80, al` N times; each exit is
//! reflected to L1, whose exit handler only VMRESUMEs (L2 re-executes the OUT): the floor of
//! a nested exit that L1 handles. Both loops are three instructions per operation, like the
//! raw KVM loop they are compared with (some hosts' KVM emulates every guest instruction).
//! `l2exit N timers`: the same with L2's VMX-preemption timer active but far from expiring
//! and L1's local APIC timer armed (masked, about a minute away): what idle timers add.
//! `l2handle N`: each exit is handled as a hypervisor does: L1 reads the exit reason,
//! qualification, instruction length and GUEST_RIP and writes GUEST_RIP past the OUT: with
//! VMREAD and VMWRITE, or as memory accesses in nestbed's enlightened VMCS where it is offered
//! (EVMCS.md). `l2vmread N shadow|exit`: L2, a nested hypervisor, executes N VMREADs with VMCS
//! shadowing on: served from the shadow VMCS (`shadow`), or each exiting to L1, which skips it
//! through the enlightened VMCS (`exit`).
//! Exits 0, or 1 if a VMX instruction failed.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

use hv::{ctl, field, Caps, Config, Page, Stack};
use rt::vmx::{self, evmcs, VmFail};

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

// rdi = number of L2 exits (at least 1). Each exit: VMREAD of VM_EXIT_REASON,
// EXIT_QUALIFICATION, GUEST_RIP and VM_EXIT_INSTRUCTION_LEN, VMWRITE of GUEST_RIP past the
// instruction, VMRESUME. Returns as vmx_bench_l2exits.
global_asm!(
    r#"
    .section .text.vmx_bench_l2handle_vmx, "ax"
    .global vmx_bench_l2handle_vmx
    vmx_bench_l2handle_vmx:
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
    3:  mov rsi, {reason}
        vmread rax, rsi
        mov rsi, {qualification}
        vmread rcx, rsi
        mov rsi, {guest_rip}
        vmread rdx, rsi
        mov rsi, {len}
        vmread r8, rsi
        add rdx, r8
        mov rsi, {guest_rip}
        vmwrite rsi, rdx
        dec r12
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
    reason = const field::VM_EXIT_REASON,
    qualification = const field::EXIT_QUALIFICATION,
    guest_rip = const field::GUEST_RIP,
    len = const field::VM_EXIT_INSTRUCTION_LEN,
);

// The same handler on an enlightened VMCS: rdi = number of exits, rsi = the VMCS page; the
// fields are loads and stores, GUEST_RIP's group is marked changed.
global_asm!(
    r#"
    .section .text.vmx_bench_l2handle_evmcs, "ax"
    .global vmx_bench_l2handle_evmcs
    vmx_bench_l2handle_evmcs:
        push rbx
        push rbp
        push r12
        push r13
        push r14
        push r15
        mov r12, rdi
        mov rbx, rsi
        mov [rbx + {host_rsp}], rsp
        lea rdx, [rip + 3f]
        mov [rbx + {host_rip}], rdx
        or qword ptr [rbx + {changed}], {host_group}
        vmlaunch
        jmp 9f
    3:  mov eax, [rbx + {reason}]
        mov rcx, [rbx + {qualification}]
        mov rdx, [rbx + {guest_rip}]
        add rdx, [rbx + {len}]
        mov [rbx + {guest_rip}], rdx
        or qword ptr [rbx + {changed}], {guest_group}
        dec r12
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

    // rdi = the VMCS page, rsi = number of L2 VMREADs, rdx = their field. L2 (l2_vmreads)
    // counts in RCX; an exit other than I/O is a VMREAD L1 skips.
    .section .text.vmx_bench_l2vmreads, "ax"
    .global vmx_bench_l2vmreads
    vmx_bench_l2vmreads:
        push rbx
        push rbp
        push r12
        push r13
        push r14
        push r15
        mov rbx, rdi
        mov rcx, rsi
        mov rsi, rdx
        mov [rbx + {host_rsp}], rsp
        lea rdx, [rip + 3f]
        mov [rbx + {host_rip}], rdx
        or qword ptr [rbx + {changed}], {host_group}
        vmlaunch
        jmp 9f
    3:  cmp dword ptr [rbx + {reason}], 30
        je 8f
        mov rdx, [rbx + {guest_rip}]
        add rdx, [rbx + {len}]
        mov [rbx + {guest_rip}], rdx
        or qword ptr [rbx + {changed}], {guest_group}
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
    host_rsp = const evmcs::offset(field::HOST_RSP as u32),
    host_rip = const evmcs::offset(field::HOST_RIP as u32),
    changed = const evmcs::OFFSET_CHANGED,
    host_group = const 1u32 << evmcs::group(field::HOST_RSP as u32),
    guest_group = const 1u32 << evmcs::group(field::GUEST_RIP as u32),
    reason = const evmcs::offset(field::VM_EXIT_REASON as u32),
    qualification = const evmcs::offset(field::EXIT_QUALIFICATION as u32),
    guest_rip = const evmcs::offset(field::GUEST_RIP as u32),
    len = const evmcs::offset(field::VM_EXIT_INSTRUCTION_LEN as u32),
);

/// L2 of `l2vmread`: RCX VMREADs of the field in RSI, then OUT (the end), HLT.
extern "C" fn l2_vmread_loop() -> ! {
    // SAFETY: VMREAD into RAX and port I/O; RCX and RSI are what L1 left at VMLAUNCH.
    unsafe { asm!("2: vmread rax, rsi", "dec rcx", "jnz 2b", "out 0x80, al", "3: hlt", "jmp 3b", options(noreturn)) }
}

extern "C" {
    fn vmx_bench_l2handle_vmx(n: u64) -> u64;
    fn vmx_bench_l2handle_evmcs(n: u64, page: u64) -> u64;
    fn vmx_bench_l2vmreads(page: u64, n: u64, field: u64) -> u64;
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
        "l2handle" => l2_handle(n),
        "l2vmread" => l2_vmreads(n, rt::next_word(rt::next_word(rest).1).0 == "exit"),
        _ => {
            rt::println!("vmx-bench: usage: vmread N | l2exit N [timers] | l2handle N | l2vmread N shadow|exit");
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
    enter_with(l2_main, 0)
}

fn enter_with(entry: extern "C" fn() -> !, proc2: u32) -> Result<(), VmFail> {
    let caps = Caps::read();
    vmx::enable(VMXON_REGION.addr())?;
    hv::load_vmcs(&caps, &VMCS)?;
    hv::setup_vmcs(
        &caps,
        &Config {
            entry,
            stack_top: L2_STACK.top(),
            proc: ctl::PROC_UNCOND_IO_EXITING,
            proc2,
            io_bitmaps: None,
            msr_bitmap: None,
        },
    )
}

fn ended(r: u64) -> Result<(), VmFail> {
    match r {
        0 => Ok(()),
        _ => Err(VmFail::Valid(vmx::vmread(field::VM_INSTRUCTION_ERROR)? as u32)),
    }
}

/// L2 exits handled as a hypervisor handles them, with VMREAD/VMWRITE or the enlightened VMCS.
fn l2_handle(n: u64) -> Result<(), VmFail> {
    enter()?;
    if n == 0 {
        return Ok(());
    }
    let page = evmcs::current();
    // SAFETY: as for vmx_bench_l2exits; with an enlightened VMCS, `page` is its registered page.
    ended(unsafe {
        if page != 0 {
            vmx_bench_l2handle_evmcs(n, page)
        } else {
            vmx_bench_l2handle_vmx(n)
        }
    })
}

static SHADOW: Page = Page::new();
static READ_BITMAP: Page = Page::new();
static WRITE_BITMAP: Page = Page::new();
const PROC2_VMCS_SHADOWING: u32 = 1 << 14;
const VMREAD_BITMAP: u64 = 0x2026;
const VMWRITE_BITMAP: u64 = 0x2028;

/// L2 executes n VMREADs of GUEST_RIP with VMCS shadowing: served from the shadow VMCS, or
/// (`exit`) each exiting to L1, which skips it. Needs the enlightened VMCS for L1's side.
fn l2_vmreads(n: u64, exit: bool) -> Result<(), VmFail> {
    let caps = Caps::read();
    SHADOW.init_region(caps.revision());
    SHADOW.write_u32(0, caps.revision() | 1 << 31);
    enter_with(l2_vmread_loop, PROC2_VMCS_SHADOWING)?;
    READ_BITMAP.clear();
    WRITE_BITMAP.clear();
    if exit {
        READ_BITMAP.set_bit(field::GUEST_RIP as usize & 0x7fff);
    }
    hv::write(VMREAD_BITMAP, READ_BITMAP.addr())?;
    hv::write(VMWRITE_BITMAP, WRITE_BITMAP.addr())?;
    hv::write(field::VMCS_LINK_POINTER, SHADOW.addr())?;
    let page = evmcs::current();
    if page == 0 {
        rt::println!("vmx-bench: l2vmread needs the enlightened VMCS");
        return Err(VmFail::Invalid);
    }
    // SAFETY: as for vmx_bench_l2exits, on the registered page.
    ended(unsafe { vmx_bench_l2vmreads(page, n.max(1), field::GUEST_RIP) })
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
