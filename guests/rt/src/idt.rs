//! IDT for the 32 architectural exceptions, a TSS whose IST1 stack every exception gate uses
//! (so a fault inside `core`, which uses the red zone, cannot be overwritten), and an exception
//! table of fixups: an instruction listed in `.ex_table` that faults resumes at its fixup
//! address, and the vector is kept in [`last_fault`].
//!
//! Vectors 32-255 (external interrupts) have gates on a stack of their own (IST2), so an
//! exception inside an interrupt handler does not overwrite the interrupt's frame. A guest
//! registers a handler with [`set_handler`]; an interrupt on a vector without one is reported
//! like an unhandled exception.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

global_asm!(
    r#"
    .section .text
    .irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
    rt_isr_\v:
        push 0
        push \v
        jmp rt_isr_common
    .endr
    .irp v, 8,10,11,12,13,14,17,21,29,30
    rt_isr_\v:
        push \v
        jmp rt_isr_common
    .endr
    rt_isr_common:
        push rax
        push rcx
        push rdx
        push rbx
        push rbp
        push rsi
        push rdi
        push r8
        push r9
        push r10
        push r11
        push r12
        push r13
        push r14
        push r15
        mov rdi, rsp
        cld
        call rt_exception
        pop r15
        pop r14
        pop r13
        pop r12
        pop r11
        pop r10
        pop r9
        pop r8
        pop rdi
        pop rsi
        pop rbp
        pop rbx
        pop rdx
        pop rcx
        pop rax
        add rsp, 16
        iretq

    // Vectors 32-255: one 16-byte stub each (push 0, push vector, jmp), at
    // rt_irq_stubs + (vector - 32) * 16.
    .balign 16
    .global rt_irq_stubs
    rt_irq_stubs:
    .irp hi, 2,3,4,5,6,7,8,9,a,b,c,d,e,f
    .irp lo, 0,1,2,3,4,5,6,7,8,9,a,b,c,d,e,f
        .balign 16
        push 0
        push 0x\hi\()\lo
        jmp rt_isr_common
    .endr
    .endr

    .section .rodata
    .balign 8
    .global rt_isr_table
    rt_isr_table:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .quad rt_isr_\v
    .endr
    "#
);

/// Registers saved by the exception entry, then the hardware frame.
#[repr(C)]
pub struct Frame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

#[repr(C, align(16))]
struct Idt([u64; 512]);

#[repr(C, packed)]
struct Tss {
    _r0: u32,
    rsp: [u64; 3],
    _r1: u64,
    ist: [u64; 7],
    _r2: u64,
    _r3: u16,
    iomap_base: u16,
}

static mut IDT: Idt = Idt([0; 512]);
static mut TSS: Tss = Tss { _r0: 0, rsp: [0; 3], _r1: 0, ist: [0; 7], _r2: 0, _r3: 0, iomap_base: 104 };
static LAST_FAULT: AtomicU64 = AtomicU64::new(u64::MAX);

/// An interrupt handler: runs with interrupts disabled on the IST2 stack; the frame's
/// `vector` says which vector. Acknowledging the interrupt controller (EOI) is its job.
pub type Handler = fn(&mut Frame);

/// First vector that is not an exception.
pub const FIRST_IRQ_VECTOR: u8 = 32;

/// The registered handlers of vectors 32-255 as `Handler` addresses; 0 is none.
static HANDLERS: [AtomicUsize; 224] = [const { AtomicUsize::new(0) }; 224];

extern "C" {
    static rt_isr_table: [u64; 32];
    static rt_ist_stack_top: u8;
    static rt_irq_stack_top: u8;
    static rt_irq_stubs: u8;
    static mut rt_gdt: [u64; 5];
    static __ex_table_start: [u64; 0];
    static __ex_table_end: [u64; 0];
}

pub const TSS_SELECTOR: u16 = 0x18;

/// Vector of the last exception recovered through a fixup (u64::MAX if none).
pub fn last_fault() -> u64 {
    LAST_FAULT.load(Ordering::Relaxed)
}

/// Registers `handler` for external-interrupt vector `vector` (32-255; lower ones are
/// ignored and return false). Replaces any earlier handler.
pub fn set_handler(vector: u8, handler: Handler) -> bool {
    if vector < FIRST_IRQ_VECTOR {
        return false;
    }
    HANDLERS[usize::from(vector - FIRST_IRQ_VECTOR)].store(handler as usize, Ordering::SeqCst);
    true
}

/// Removes the handler of `vector`: the vector is unexpected again.
pub fn clear_handler(vector: u8) {
    if vector >= FIRST_IRQ_VECTOR {
        HANDLERS[usize::from(vector - FIRST_IRQ_VECTOR)].store(0, Ordering::SeqCst);
    }
}

/// A 64-bit interrupt gate (type 0xE, present, DPL 0) to `handler` in the code segment,
/// on IST stack `ist`.
fn gate(handler: u64, ist: u64) -> [u64; 2] {
    [(handler & 0xffff) | (0x08 << 16) | (ist << 32) | (0x8e << 40) | (((handler >> 16) & 0xffff) << 48), handler >> 32]
}

pub fn init() {
    // SAFETY: runs once on the boot CPU before interrupts or other users of these statics;
    // the addresses come from the linker.
    unsafe {
        let ist = core::ptr::addr_of!(rt_ist_stack_top) as u64;
        let tss = core::ptr::addr_of_mut!(TSS);
        (*tss).ist[0] = ist;
        (*tss).ist[1] = core::ptr::addr_of!(rt_irq_stack_top) as u64;
        (*tss).rsp[0] = ist;
        let base = tss as u64;
        let limit = (core::mem::size_of::<Tss>() - 1) as u64;
        let gdt = core::ptr::addr_of_mut!(rt_gdt);
        (*gdt)[3] = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        (*gdt)[4] = base >> 32;
        asm!("ltr {0:x}", in(reg) TSS_SELECTOR, options(nostack, preserves_flags));

        let idt = core::ptr::addr_of_mut!(IDT);
        let table = core::ptr::addr_of!(rt_isr_table);
        for v in 0..32 {
            let [lo, hi] = gate((*table)[v], 1);
            (*idt).0[v * 2] = lo;
            (*idt).0[v * 2 + 1] = hi;
        }
        let stubs = core::ptr::addr_of!(rt_irq_stubs) as u64;
        for v in 32..256 {
            let [lo, hi] = gate(stubs + (v as u64 - 32) * 16, 2);
            (*idt).0[v * 2] = lo;
            (*idt).0[v * 2 + 1] = hi;
        }
        let ptr = crate::io::DescPtr { limit: (256 * 16 - 1) as u16, base: idt as u64 };
        asm!("lidt [{}]", in(reg) &ptr, options(nostack, preserves_flags));
    }
}

fn fixup_for(rip: u64) -> Option<u64> {
    // The linker script brackets `.ex_table`, an array of (fault RIP, fixup RIP) pairs, in .rodata.
    let start = core::ptr::addr_of!(__ex_table_start).cast::<u64>();
    let end = core::ptr::addr_of!(__ex_table_end).cast::<u64>();
    let n = (end as usize - start as usize) / 16;
    // SAFETY: `n` 16-byte pairs lie between the two linker symbols, in the loaded, read-only
    // .rodata of this image.
    let table = unsafe { core::slice::from_raw_parts(start, n * 2) };
    table.chunks_exact(2).find(|e| e[0] == rip).map(|e| e[1])
}

pub fn vector_name(v: u64) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS", "#GP", "#PF", "15",
        "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "22", "23", "24", "25", "26", "27", "#HV", "#VC", "#SX", "31",
    ];
    NAMES.get(v as usize).copied().unwrap_or("?")
}

#[no_mangle]
extern "C" fn rt_exception(f: &mut Frame) {
    if f.vector >= u64::from(FIRST_IRQ_VECTOR) {
        let raw = HANDLERS[(f.vector - u64::from(FIRST_IRQ_VECTOR)) as usize].load(Ordering::SeqCst);
        if raw != 0 {
            // SAFETY: a non-zero entry was stored by `set_handler` from a `Handler`.
            let handler = unsafe { core::mem::transmute::<usize, Handler>(raw) };
            handler(f);
            return;
        }
        crate::println!("nestbed-rt: unexpected interrupt, vector ", f.vector, ", at RIP ", crate::Hex(f.rip));
        crate::exit(crate::EXIT_EXCEPTION);
    }
    if let Some(fix) = fixup_for(f.rip) {
        LAST_FAULT.store(f.vector, Ordering::Relaxed);
        f.rip = fix;
        return;
    }
    use crate::Hex;
    crate::println!(
        "nestbed-rt: unhandled exception ",
        vector_name(f.vector),
        " (vector ",
        f.vector,
        "), error code ",
        Hex(f.error_code),
        ", at RIP ",
        Hex(f.rip)
    );
    // One line, printed in parts to keep each call short.
    crate::print!("  rax=", Hex(f.rax), " rbx=", Hex(f.rbx), " rcx=", Hex(f.rcx), " rdx=", Hex(f.rdx));
    crate::print!(" rsi=", Hex(f.rsi), " rdi=", Hex(f.rdi), " rsp=", Hex(f.rsp));
    crate::println!(" rflags=", Hex(f.rflags), " cr2=", Hex(cr2()));
    crate::exit(crate::EXIT_EXCEPTION);
}

fn cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}
