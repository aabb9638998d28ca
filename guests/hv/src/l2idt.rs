//! An IDT for an L2 (256 interrupt gates, SDM Vol. 3A 6.14.1) whose handlers tell L1 how they
//! were entered: each records its vector, the error code (if the event pushed one), the
//! hardware frame (RIP, CS, RFLAGS, RSP, SS), RFLAGS inside the handler and the TSC, counts
//! the delivery, optionally writes the local APIC's EOI register, then executes
//! `out REPORT_PORT, al`, which L1 intercepts. When L1 resumes L2, the handler returns with
//! IRETQ to the pushed RIP.
//!
//! The L2 shares L1's GDT (code selector 0x08) and identity-mapped memory, so the record is
//! plain memory L1 reads after the exit. Gates have DPL 0 and no IST: the frame lands on
//! L2's stack, 16-byte aligned below GUEST_RSP (SDM Vol. 3A 6.14.2).

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::{Page, CODE_SELECTOR};

/// The port of the handlers' `out REPORT_PORT, al`.
pub const REPORT_PORT: u16 = 0xe0;

/// Word offsets in the record.
const COUNT: usize = 0;
const EOI: usize = 11;
const WORDS: usize = 12;

/// What the handlers write (word index: count 0, vector 1, error code 2, RIP 3, CS 4,
/// RFLAGS 5, RSP 6, SS 7, RFLAGS in the handler 8, TSC 9, RSP in the handler 10) and read
/// (EOI request 11).
#[no_mangle]
static HV_L2IDT_RECORD: [AtomicU64; WORDS] = [const { AtomicU64::new(0) }; WORDS];

static IDT: Page = Page::new();

// Stub n (16 bytes apart from hv_l2idt_stubs): push 0 unless the CPU pushed an error code,
// push n, go to the common part. Vectors 8, 10-14, 17, 21, 29 and 30 are the exceptions with
// an error code (SDM Vol. 3A Table 6-1); an injected event pushes one exactly when L1 asks
// for it (deliver-error-code), which it does for those vectors only.
global_asm!(
    r#"
    .section .text.hv_l2idt, "ax"
    .macro hv_l2idt_stub v
        .balign 16
        .if (\v == 8) || (\v == 10) || (\v == 11) || (\v == 12) || (\v == 13) || (\v == 14) || (\v == 17) || (\v == 21) || (\v == 29) || (\v == 30)
        .else
        push 0
        .endif
        push \v
        jmp hv_l2idt_common
    .endm

    .balign 16
    .global hv_l2idt_stubs
    hv_l2idt_stubs:
    .irp hi, 0,1,2,3,4,5,6,7,8,9,a,b,c,d,e,f
    .irp lo, 0,1,2,3,4,5,6,7,8,9,a,b,c,d,e,f
        hv_l2idt_stub 0x\hi\()\lo
    .endr
    .endr

    // [rsp] rcx, +8 rdx, +16 rax, +24 vector, +32 error code, +40 RIP, +48 CS, +56 RFLAGS,
    // +64 RSP, +72 SS.
    hv_l2idt_common:
        push rax
        push rdx
        push rcx
        lea rcx, [rip + HV_L2IDT_RECORD]
        pushfq
        pop rax
        mov [rcx + 64], rax
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov [rcx + 72], rax
        lea rax, [rsp + 40]
        mov [rcx + 80], rax
        mov rax, [rsp + 24]
        mov [rcx + 8], rax
        mov rax, [rsp + 32]
        mov [rcx + 16], rax
        mov rax, [rsp + 40]
        mov [rcx + 24], rax
        mov rax, [rsp + 48]
        mov [rcx + 32], rax
        mov rax, [rsp + 56]
        mov [rcx + 40], rax
        mov rax, [rsp + 64]
        mov [rcx + 48], rax
        mov rax, [rsp + 72]
        mov [rcx + 56], rax
        cmp qword ptr [rcx + 88], 0
        je 2f
        mov eax, 0xfee000b0
        mov dword ptr [rax], 0
    2:
        lock inc qword ptr [rcx]
        out {port}, al
        pop rcx
        pop rdx
        pop rax
        add rsp, 16
        iretq
    "#,
    port = const REPORT_PORT,
);

extern "C" {
    static hv_l2idt_stubs: u8;
}

/// One delivery as the handler recorded it.
#[derive(Clone, Copy, Default)]
pub struct Delivery {
    /// Deliveries since [`reset`].
    pub count: u64,
    pub vector: u64,
    /// The error code on the stack (0 when the event pushed none).
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
    /// RFLAGS as the handler runs (an interrupt gate clears IF, TF, RF, NT, VM).
    pub handler_rflags: u64,
    /// The TSC the handler read (RDTSC in L2: L1's TSC unless L1 offsets it).
    pub tsc: u64,
    /// Where the hardware frame starts (after an error code, if pushed, at this minus 8).
    pub frame: u64,
}

/// The address of vector `vector`'s handler: its first instruction.
pub fn handler(vector: u8) -> u64 {
    core::ptr::addr_of!(hv_l2idt_stubs) as u64 + u64::from(vector) * 16
}

/// A 64-bit interrupt gate (type 0xE, DPL 0, present unless `present` is false, no IST).
fn gate(vector: u8, present: bool) -> [u64; 2] {
    let h = handler(vector);
    let p = if present { 0x80 } else { 0 };
    [(h & 0xffff) | u64::from(CODE_SELECTOR) << 16 | (0x0e | p) << 40 | ((h >> 16) & 0xffff) << 48, h >> 32]
}

/// Fills the IDT (every gate present) and returns (base, limit) for GUEST_IDTR.
pub fn init() -> (u64, u64) {
    for v in 0..=255u8 {
        set_present(v, true);
    }
    (IDT.addr(), 256 * 16 - 1)
}

/// Makes vector `vector`'s gate present or not present (P = 0: its delivery is #NP with
/// error code vector * 8 + 2 + EXT, SDM Vol. 3A 6.13).
pub fn set_present(vector: u8, present: bool) {
    let [lo, hi] = gate(vector, present);
    IDT.write_u64(usize::from(vector) * 16, lo);
    IDT.write_u64(usize::from(vector) * 16 + 8, hi);
}

/// Copies the IDT to `page` (for an L2 that uses a second IDT at another address).
pub fn copy_to(page: &Page) {
    for i in 0..512 {
        page.write_u64(i * 8, IDT.read_u64(i * 8));
    }
}

/// Forgets earlier deliveries and sets whether the handlers EOI the local APIC (for external
/// interrupts from L1's APIC, which this L2 shares).
pub fn reset(eoi: bool) {
    for w in &HV_L2IDT_RECORD[..EOI] {
        w.store(0, Ordering::SeqCst);
    }
    HV_L2IDT_RECORD[EOI].store(u64::from(eoi), Ordering::SeqCst);
}

/// The last delivery and how many there were since [`reset`].
pub fn last() -> Delivery {
    let r = |i: usize| HV_L2IDT_RECORD[i].load(Ordering::SeqCst);
    Delivery {
        count: r(COUNT),
        vector: r(1),
        error_code: r(2),
        rip: r(3),
        cs: r(4),
        rflags: r(5),
        rsp: r(6),
        ss: r(7),
        handler_rflags: r(8),
        tsc: r(9),
        frame: r(10),
    }
}
