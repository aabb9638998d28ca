//! VMX instruction wrappers that return `Result` (SDM Vol. 3C, 31.2 conventions: VMsucceed,
//! VMfailInvalid = CF, VMfailValid = ZF with the error in VM_INSTRUCTION_ERROR), each with an
//! exception fixup so a #UD/#GP comes back as [`VmFail::Fault`] instead of killing the guest.

use core::arch::{asm, global_asm};

use crate::idt::last_fault;

/// Field encodings used by the runtime (SDM Appendix B); guests define the rest they need.
pub mod field {
    pub const VM_INSTRUCTION_ERROR: u64 = 0x4400;
    pub const VM_EXIT_REASON: u64 = 0x4402;
    pub const EXIT_QUALIFICATION: u64 = 0x6400;
    pub const VM_EXIT_INSTRUCTION_LEN: u64 = 0x440c;
    pub const VMX_INSTRUCTION_INFO: u64 = 0x440e;
    pub const GUEST_RIP: u64 = 0x681e;
    pub const GUEST_RSP: u64 = 0x681c;
    pub const HOST_RSP: u64 = 0x6c14;
    pub const HOST_RIP: u64 = 0x6c16;
}

pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
pub const IA32_VMX_BASIC: u32 = 0x480;
pub const CR4_VMXE: u64 = 1 << 13;
const RFLAGS_CF: u64 = 1 << 0;
const RFLAGS_ZF: u64 = 1 << 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmFail {
    /// VMfailInvalid: CF set.
    Invalid,
    /// VMfailValid: ZF set, with the VM-instruction error number.
    Valid(u32),
    /// The instruction faulted with this vector (e.g. 6 for #UD, 13 for #GP).
    Fault(u8),
}

impl crate::serial::Show for VmFail {
    fn show(&self) {
        match *self {
            VmFail::Invalid => crate::print!("VMfailInvalid"),
            VmFail::Valid(n) => crate::print!("VMfailValid(", n, ")"),
            VmFail::Fault(v) => crate::print!("fault ", crate::idt::vector_name(u64::from(v))),
        }
    }
}

fn result(rflags: u64, faulted: u64) -> Result<(), VmFail> {
    if faulted != 0 {
        Err(VmFail::Fault(last_fault() as u8))
    } else if rflags & RFLAGS_CF != 0 {
        Err(VmFail::Invalid)
    } else if rflags & RFLAGS_ZF != 0 {
        Err(VmFail::Valid(vmread(field::VM_INSTRUCTION_ERROR).unwrap_or(0) as u32))
    } else {
        Ok(())
    }
}

macro_rules! vmx_mem_operand {
    ($(#[$m:meta])* $name:ident, $insn:literal) => {
        $(#[$m])*
        #[inline(never)]
        pub fn $name(addr: u64) -> Result<(), VmFail> {
            // The current VMCS may change: until told again, it is not an enlightened one.
            evmcs::forget();
            let (rflags, faulted): (u64, u64);
            // SAFETY: the instruction reads the 64-bit physical address at `&addr`; a fault
            // resumes at the fixup.
            unsafe {
                asm!(
                    "xor {f:e}, {f:e}",
                    concat!("66: ", $insn, " qword ptr [{p}]"),
                    "pushfq",
                    "pop {r}",
                    "jmp 68f",
                    "67: mov {f:e}, 1",
                    "xor {r:e}, {r:e}",
                    "68:",
                    ".pushsection .ex_table, \"a\"",
                    ".quad 66b, 67b",
                    ".popsection",
                    p = in(reg) &addr,
                    r = out(reg) rflags,
                    f = out(reg) faulted,
                )
            }
            result(rflags, faulted)
        }
    };
}

vmx_mem_operand!(
    /// VMXON with the physical address of the VMXON region.
    vmxon, "vmxon");
vmx_mem_operand!(
    /// VMCLEAR of the VMCS at this physical address.
    vmclear, "vmclear");
vmx_mem_operand!(
    /// VMPTRLD: make the VMCS at this physical address current.
    vmptrld, "vmptrld");

macro_rules! vmx_no_operand {
    ($(#[$m:meta])* $name:ident, $insn:literal) => {
        $(#[$m])*
        #[inline(never)]
        pub fn $name() -> Result<(), VmFail> {
            let (rflags, faulted): (u64, u64);
            // SAFETY: no memory operand; a fault resumes at the fixup.
            unsafe {
                asm!(
                    "xor {f:e}, {f:e}",
                    concat!("66: ", $insn),
                    "pushfq",
                    "pop {r}",
                    "jmp 68f",
                    "67: mov {f:e}, 1",
                    "xor {r:e}, {r:e}",
                    "68:",
                    ".pushsection .ex_table, \"a\"",
                    ".quad 66b, 67b",
                    ".popsection",
                    r = out(reg) rflags,
                    f = out(reg) faulted,
                )
            }
            result(rflags, faulted)
        }
    };
}

vmx_no_operand!(
    /// VMXOFF without forgetting an enlightened VMCS; [`vmxoff`] is the one to use.
    vmxoff_raw, "vmxoff");

/// VMXOFF.
pub fn vmxoff() -> Result<(), VmFail> {
    evmcs::forget();
    vmxoff_raw()
}
vmx_no_operand!(
    /// A bare VMLAUNCH, for error tests only: on success control goes to the guest and never
    /// returns here. Use [`vm_run`] to run a guest.
    vmlaunch_bare, "vmlaunch");
vmx_no_operand!(
    /// A bare VMRESUME, for error tests only (see [`vmlaunch_bare`]).
    vmresume_bare, "vmresume");

/// VMPTRST: the current-VMCS pointer.
#[inline(never)]
pub fn vmptrst() -> Result<u64, VmFail> {
    let mut out = 0u64;
    let (rflags, faulted): (u64, u64);
    // SAFETY: stores 8 bytes into `out`; a fault resumes at the fixup.
    unsafe {
        asm!(
            "xor {f:e}, {f:e}",
            "66: vmptrst qword ptr [{p}]",
            "pushfq",
            "pop {r}",
            "jmp 68f",
            "67: mov {f:e}, 1",
            "xor {r:e}, {r:e}",
            "68:",
            ".pushsection .ex_table, \"a\"",
            ".quad 66b, 67b",
            ".popsection",
            p = in(reg) &mut out,
            r = out(reg) rflags,
            f = out(reg) faulted,
        )
    }
    result(rflags, faulted).map(|()| out)
}

/// How many VMREADs and VMWRITEs [`vmread`] and [`vmwrite`] executed (code that runs at more
/// than one level, such as a guest hypervisor sharing the image, tells them apart by when it
/// reads the count).
pub static VMREAD_VMWRITE_COUNT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// VMREAD with register operands.
#[inline(never)]
pub fn vmread(field: u64) -> Result<u64, VmFail> {
    VMREAD_VMWRITE_COUNT.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    let (value, rflags, faulted): (u64, u64, u64);
    // SAFETY: register operands only; a fault resumes at the fixup.
    unsafe {
        asm!(
            "xor {f:e}, {f:e}",
            "xor {v:e}, {v:e}",
            "66: vmread {v}, {e}",
            "pushfq",
            "pop {r}",
            "jmp 68f",
            "67: mov {f:e}, 1",
            "xor {r:e}, {r:e}",
            "68:",
            ".pushsection .ex_table, \"a\"",
            ".quad 66b, 67b",
            ".popsection",
            e = in(reg) field,
            v = out(reg) value,
            r = out(reg) rflags,
            f = out(reg) faulted,
        )
    }
    if faulted != 0 {
        return Err(VmFail::Fault(last_fault() as u8));
    }
    if rflags & RFLAGS_CF != 0 {
        return Err(VmFail::Invalid);
    }
    if rflags & RFLAGS_ZF != 0 {
        // Reading the error itself cannot recurse: VM_INSTRUCTION_ERROR always exists.
        return Err(VmFail::Valid(if field == field::VM_INSTRUCTION_ERROR {
            0
        } else {
            vmread(field::VM_INSTRUCTION_ERROR).unwrap_or(0) as u32
        }));
    }
    Ok(value)
}

/// VMWRITE with register operands.
#[inline(never)]
pub fn vmwrite(field: u64, value: u64) -> Result<(), VmFail> {
    VMREAD_VMWRITE_COUNT.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    let (rflags, faulted): (u64, u64);
    // SAFETY: register operands only; a fault resumes at the fixup.
    unsafe {
        asm!(
            "xor {f:e}, {f:e}",
            "66: vmwrite {e}, {v}",
            "pushfq",
            "pop {r}",
            "jmp 68f",
            "67: mov {f:e}, 1",
            "xor {r:e}, {r:e}",
            "68:",
            ".pushsection .ex_table, \"a\"",
            ".quad 66b, 67b",
            ".popsection",
            e = in(reg) field,
            v = in(reg) value,
            r = out(reg) rflags,
            f = out(reg) faulted,
        )
    }
    result(rflags, faulted)
}

/// VMREAD with a memory destination operand.
#[inline(never)]
pub fn vmread_mem(field: u64, dst: &mut u64) -> Result<(), VmFail> {
    let (rflags, faulted): (u64, u64);
    // SAFETY: stores 8 bytes into `dst`; a fault resumes at the fixup.
    unsafe {
        asm!(
            "xor {f:e}, {f:e}",
            "66: vmread qword ptr [{p}], {e}",
            "pushfq",
            "pop {r}",
            "jmp 68f",
            "67: mov {f:e}, 1",
            "xor {r:e}, {r:e}",
            "68:",
            ".pushsection .ex_table, \"a\"",
            ".quad 66b, 67b",
            ".popsection",
            e = in(reg) field,
            p = in(reg) dst,
            r = out(reg) rflags,
            f = out(reg) faulted,
        )
    }
    result(rflags, faulted)
}

/// VMWRITE with a memory source operand.
#[inline(never)]
pub fn vmwrite_mem(field: u64, src: &u64) -> Result<(), VmFail> {
    let (rflags, faulted): (u64, u64);
    // SAFETY: reads 8 bytes from `src`; a fault resumes at the fixup.
    unsafe {
        asm!(
            "xor {f:e}, {f:e}",
            "66: vmwrite {e}, qword ptr [{p}]",
            "pushfq",
            "pop {r}",
            "jmp 68f",
            "67: mov {f:e}, 1",
            "xor {r:e}, {r:e}",
            "68:",
            ".pushsection .ex_table, \"a\"",
            ".quad 66b, 67b",
            ".popsection",
            e = in(reg) field,
            p = in(reg) src,
            r = out(reg) rflags,
            f = out(reg) faulted,
        )
    }
    result(rflags, faulted)
}

macro_rules! vmx_invalidate {
    ($(#[$m:meta])* $name:ident, $insn:literal) => {
        $(#[$m])*
        #[inline(never)]
        pub fn $name(kind: u64, descriptor: &[u64; 2]) -> Result<(), VmFail> {
            let (rflags, faulted): (u64, u64);
            // SAFETY: reads the 16-byte descriptor; a fault resumes at the fixup.
            unsafe {
                asm!(
                    "xor {f:e}, {f:e}",
                    concat!("66: ", $insn, " {t}, xmmword ptr [{p}]"),
                    "pushfq",
                    "pop {r}",
                    "jmp 68f",
                    "67: mov {f:e}, 1",
                    "xor {r:e}, {r:e}",
                    "68:",
                    ".pushsection .ex_table, \"a\"",
                    ".quad 66b, 67b",
                    ".popsection",
                    t = in(reg) kind,
                    p = in(reg) descriptor,
                    r = out(reg) rflags,
                    f = out(reg) faulted,
                )
            }
            result(rflags, faulted)
        }
    };
}

vmx_invalidate!(
    /// INVEPT type (1 single-context, 2 all-context) with descriptor [EPTP, 0].
    invept, "invept");
vmx_invalidate!(
    /// INVVPID type (0 individual address, 1 single context, 2 all contexts, 3 single context
    /// retaining globals) with descriptor [VPID, linear address].
    invvpid, "invvpid");

/// Sets CR4.VMXE; on hosts that refuse it (#GP, as under nestbed on a host without VMX, whose
/// VMX-enabled state is virtual) returns false and leaves CR4 as it was.
#[inline(never)]
pub fn try_set_cr4_vmxe() -> bool {
    let faulted: u64;
    // SAFETY: writes CR4 with one more bit; a #GP resumes at the fixup.
    unsafe {
        asm!(
            "xor {f:e}, {f:e}",
            "mov {t}, cr4",
            "or {t}, {bit}",
            "66: mov cr4, {t}",
            "jmp 68f",
            "67: mov {f:e}, 1",
            "68:",
            ".pushsection .ex_table, \"a\"",
            ".quad 66b, 67b",
            ".popsection",
            t = out(reg) _,
            bit = in(reg) CR4_VMXE,
            f = out(reg) faulted,
            options(nostack),
        )
    }
    faulted == 0
}

/// Sets CR4.VMXE with a plain `mov cr4`, as code written for hardware does: no fixup, so a
/// host that refuses the bit raises an unhandled #GP. Returns CR4 as read back afterwards.
#[inline(never)]
pub fn set_cr4_vmxe_plain() -> u64 {
    let cr4: u64;
    // SAFETY: writes CR4 with one more bit (VMXE, valid on a CPU that has VMX) and reads it
    // back; no memory is touched.
    unsafe {
        asm!(
            "mov {t}, cr4",
            "or {t}, {bit}",
            "mov cr4, {t}",
            "mov {t}, cr4",
            t = out(reg) cr4,
            bit = in(reg) CR4_VMXE,
            options(nostack, nomem),
        )
    }
    cr4
}

/// Enters VMX operation the way the SDM says (31.5, 24.7): check CPUID.1:ECX.VMX, check or set
/// IA32_FEATURE_CONTROL, set CR4.VMXE (tolerating the #GP of hosts where it is virtual), write
/// the revision identifier into the VMXON region at `region` (identity-mapped) and VMXON.
pub fn enable(region: u64) -> Result<(), VmFail> {
    let ecx = core::arch::x86_64::__cpuid(1).ecx;
    if ecx & (1 << 5) == 0 {
        return Err(VmFail::Fault(6));
    }
    let fc = crate::io::rdmsr(IA32_FEATURE_CONTROL);
    if fc & 1 == 0 {
        crate::io::wrmsr(IA32_FEATURE_CONTROL, fc | 1 | 4);
    }
    try_set_cr4_vmxe();
    let revision = crate::io::rdmsr(IA32_VMX_BASIC) as u32 & 0x7fff_ffff;
    // SAFETY: the caller owns the 4 KiB region at `region`.
    unsafe { core::ptr::write_volatile(region as *mut u32, revision) };
    vmxon(region)
}

/// General registers of the L2 guest that VM entry and exit do not switch (RSP and RIP live in
/// the VMCS).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct GuestRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

global_asm!(
    r#"
    .section .text
    .global rt_vm_run
    // rdi = &mut GuestRegs, esi = 0 for VMLAUNCH, 1 for VMRESUME, rdx = the page of an
    // enlightened current VMCS or 0.
    // Returns 0 after a VM exit, (1 << 63) | RFLAGS after VMfail, 1 << 62 after a fault.
    rt_vm_run:
        push rbp
        push rbx
        push r12
        push r13
        push r14
        push r15
        push rdi
        test rdx, rdx
        jz 5f
        // HOST_RSP and HOST_RIP as plain stores, and their group marked changed.
        mov [rdx + {host_rsp}], rsp
        lea rax, [rip + rt_vm_exit]
        mov [rdx + {host_rip}], rax
        or qword ptr [rdx + {changed}], {host_group}
        jmp 6f
    5:
        mov rax, 0x6c14
        vmwrite rax, rsp
        lea rdx, [rip + rt_vm_exit]
        mov rax, 0x6c16
        vmwrite rax, rdx
    6:
        test esi, esi
        mov rax, [rdi + 0]
        mov rbx, [rdi + 8]
        mov rcx, [rdi + 16]
        mov rdx, [rdi + 24]
        mov rsi, [rdi + 32]
        mov rbp, [rdi + 48]
        mov r8, [rdi + 56]
        mov r9, [rdi + 64]
        mov r10, [rdi + 72]
        mov r11, [rdi + 80]
        mov r12, [rdi + 88]
        mov r13, [rdi + 96]
        mov r14, [rdi + 104]
        mov r15, [rdi + 112]
        mov rdi, [rdi + 40]
        jnz 2f
    71: vmlaunch
        jmp 3f
    2:
    72: vmresume
    3:
        pushfq
        pop rax
        mov rdx, 1
        shl rdx, 63
        or rax, rdx
        jmp 4f
    73:
        mov rax, 1
        shl rax, 62
    4:
        pop rdi
        pop r15
        pop r14
        pop r13
        pop r12
        pop rbx
        pop rbp
        ret
    .pushsection .ex_table, "a"
    .quad 71b, 73b
    .quad 72b, 73b
    .popsection

    rt_vm_exit:
        push rdi
        mov rdi, [rsp + 8]
        mov [rdi + 0], rax
        mov [rdi + 8], rbx
        mov [rdi + 16], rcx
        mov [rdi + 24], rdx
        mov [rdi + 32], rsi
        pop rax
        mov [rdi + 40], rax
        mov [rdi + 48], rbp
        mov [rdi + 56], r8
        mov [rdi + 64], r9
        mov [rdi + 72], r10
        mov [rdi + 80], r11
        mov [rdi + 88], r12
        mov [rdi + 96], r13
        mov [rdi + 104], r14
        mov [rdi + 112], r15
        pop rdi
        pop r15
        pop r14
        pop r13
        pop r12
        pop rbx
        pop rbp
        xor eax, eax
        ret
    "#,
    host_rsp = const evmcs::offset(field::HOST_RSP as u32),
    host_rip = const evmcs::offset(field::HOST_RIP as u32),
    changed = const evmcs::OFFSET_CHANGED,
    host_group = const 1u32 << evmcs::group(field::HOST_RSP as u32),
);

extern "C" {
    fn rt_vm_run(regs: *mut GuestRegs, resume: u32, evmcs_page: u64) -> u64;
}

/// Enters the guest of the current VMCS (VMLAUNCH, or VMRESUME when `resume`) after writing
/// HOST_RSP and HOST_RIP (into the page of an enlightened VMCS, without VMWRITE); returns at
/// its next VM exit, with its registers in `regs`.
pub fn vm_run(regs: &mut GuestRegs, resume: bool) -> Result<(), VmFail> {
    // SAFETY: rt_vm_run saves and restores the callee-saved registers and returns on this stack
    // at VM exit (HOST_RSP/HOST_RIP point back into it).
    let r = unsafe { rt_vm_run(regs, u32::from(resume), evmcs::current()) };
    if r == 0 {
        Ok(())
    } else if r & (1 << 63) != 0 {
        result(r & !(1 << 63), 0)
    } else {
        Err(VmFail::Fault(last_fault() as u8))
    }
}

/// nestbed's enlightened VMCS (EVMCS.md in the nestbed repository): offered through a CPUID
/// leaf, a page registered through an MSR becomes the current VMCS, and its fields are read
/// and written as memory; VMLAUNCH and VMRESUME still go to the hypervisor.
pub mod evmcs {
    use core::sync::atomic::{AtomicU64, Ordering};

    pub const CPUID_LEAF: u32 = 0x4000_00e0;
    pub const SIGNATURE: &[u8; 12] = b"nestbedEVMCS";
    pub const MSR: u32 = 0x4e42_4500;
    /// The fields-changed mask: bit g for a change in group g.
    pub const OFFSET_CHANGED: usize = 4088;

    /// The page of the current enlightened VMCS, 0 when there is none.
    static CURRENT: AtomicU64 = AtomicU64::new(0);
    /// Off: the VMX wrappers never register a page ([`set_allowed`]).
    static ALLOWED: AtomicU64 = AtomicU64::new(1);

    /// The group of a field: 4 * width + type (encoding bits 14:13, 11:10).
    pub const fn group(enc: u32) -> u32 {
        4 * (enc >> 13 & 3) + (enc >> 10 & 3)
    }

    /// Where a field's 8 bytes are in the page.
    pub const fn offset(enc: u32) -> usize {
        let g = group(enc);
        let slot = 24 * g + if g > 4 { 16 } else { 0 } + (enc >> 1 & 0x1ff);
        16 + 8 * slot as usize
    }

    /// Whether the hypervisor offers the protocol (CPUID leaf 0x400000E0: version 1 and the
    /// signature).
    pub fn offered() -> bool {
        let [eax, ebx, ecx, edx] = crate::io::cpuid(CPUID_LEAF, 0);
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&ebx.to_le_bytes());
        sig[4..8].copy_from_slice(&ecx.to_le_bytes());
        sig[8..].copy_from_slice(&edx.to_le_bytes());
        eax == 1 && &sig == SIGNATURE
    }

    /// Lets [`register`] be used or not (a guest that measures both ways).
    pub fn set_allowed(on: bool) {
        ALLOWED.store(u64::from(on), Ordering::Relaxed);
    }

    pub fn allowed() -> bool {
        ALLOWED.load(Ordering::Relaxed) != 0
    }

    pub fn current() -> u64 {
        CURRENT.load(Ordering::Relaxed)
    }

    /// Makes the VMCS region at `page` (initialized and cleared as for VMPTRLD) the current,
    /// enlightened VMCS. Only where [`offered`]: the MSR takes #GP elsewhere.
    pub fn register(page: u64) {
        crate::io::wrmsr(MSR, page | 1);
        CURRENT.store(page, Ordering::Relaxed);
    }

    /// The current VMCS may have changed (VMPTRLD, VMCLEAR, VMXOFF): use VMREAD/VMWRITE until a
    /// page is registered again.
    pub fn forget() {
        CURRENT.store(0, Ordering::Relaxed);
    }

    fn slot(enc: u64) -> *mut u64 {
        (current() + offset(enc as u32) as u64) as *mut u64
    }

    /// A field of the current enlightened VMCS, as VMREAD returns it (bits 63:32 for a
    /// high-access encoding).
    pub fn read(enc: u64) -> u64 {
        // SAFETY: the registered page is identity-mapped and 4 KiB; offset() stays inside it.
        let v = unsafe { core::ptr::read_volatile(slot(enc)) };
        if enc >> 13 & 3 == 1 && enc & 1 == 1 {
            v >> 32
        } else {
            v
        }
    }

    /// Writes a field of the current enlightened VMCS and marks its group changed.
    pub fn write(enc: u64, value: u64) {
        let p = slot(enc);
        // SAFETY: as for read; the mask is the page's last 8 bytes.
        unsafe {
            let v = if enc >> 13 & 3 == 1 && enc & 1 == 1 {
                core::ptr::read_volatile(p) & 0xffff_ffff | value << 32
            } else {
                value
            };
            core::ptr::write_volatile(p, v);
            let m = (current() + OFFSET_CHANGED as u64) as *mut u64;
            core::ptr::write_volatile(m, core::ptr::read_volatile(m) | 1 << group(enc as u32));
        }
    }
}
