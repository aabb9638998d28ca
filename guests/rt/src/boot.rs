//! Multiboot v1 header and the 32-bit entry that switches to long mode.
//!
//! The loader (nestbed, QEMU or GRUB) enters `_start` in 32-bit protected mode with paging
//! off, EAX = 0x2BADB002 and EBX = the multiboot information. We identity-map the first
//! 4 GiB with 2 MiB pages, enable PAE, LME and paging, and jump to 64-bit code. The host
//! target's precompiled `core` uses SSE, so CR0.MP/CR4.OSFXSR/OSXMMEXCPT are set and CR0.EM
//! cleared before any Rust runs.

core::arch::global_asm!(
    r#"
    .section .multiboot, "a"
    .balign 4
    .long 0x1BADB002
    .long 0x00000003
    .long -(0x1BADB002 + 0x00000003)

    .section .bss
    .balign 4096
    rt_pml4: .skip 4096
    rt_pdpt: .skip 4096
    rt_pd:   .skip 4096 * 4
    .balign 16
    rt_boot_stack: .skip 65536
    .global rt_boot_stack_top
    rt_boot_stack_top:
    .balign 16
    rt_ist_stack: .skip 16384
    .global rt_ist_stack_top
    rt_ist_stack_top:
    .balign 16
    rt_irq_stack: .skip 16384
    .global rt_irq_stack_top
    rt_irq_stack_top:
    rt_mb_magic: .skip 4
    rt_mb_info: .skip 4

    .section .data
    .balign 16
    .global rt_gdt
    rt_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0
    .quad 0
    rt_gdt_end:
    .balign 4
    .word 0
    rt_gdt_ptr:
    .word rt_gdt_end - rt_gdt - 1
    .quad rt_gdt

    .section .text.boot, "ax"
    .code32
    .global _start
    _start:
    cli
    mov [rt_mb_magic], eax
    mov [rt_mb_info], ebx
    mov esp, offset rt_boot_stack_top

    mov eax, offset rt_pdpt
    or eax, 3
    mov [rt_pml4], eax
    xor ecx, ecx
    2:
    mov eax, ecx
    shl eax, 12
    add eax, offset rt_pd
    or eax, 3
    mov [rt_pdpt + ecx * 8], eax
    inc ecx
    cmp ecx, 4
    jne 2b

    xor ecx, ecx
    3:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov [rt_pd + ecx * 8], eax
    mov eax, ecx
    shr eax, 11
    mov [rt_pd + ecx * 8 + 4], eax
    inc ecx
    cmp ecx, 2048
    jne 3b

    mov eax, cr4
    or eax, 0x620
    mov cr4, eax
    mov eax, offset rt_pml4
    mov cr3, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr0
    and eax, 0xfffffffb
    or eax, 0x80000022
    mov cr0, eax
    lgdt [rt_gdt_ptr]
    push 0x08
    mov eax, offset rt_long_mode
    push eax
    retf

    .code64
    rt_long_mode:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    mov rsp, offset rt_boot_stack_top
    mov eax, 1
    cpuid
    bt ecx, 26
    jnc 6f
    mov rax, cr4
    or rax, 0x40000
    mov cr4, rax
    xor ecx, ecx
    mov eax, 3
    xor edx, edx
    xsetbv
    6:
    mov edi, [rip + rt_mb_magic]
    mov esi, [rip + rt_mb_info]
    call rt_start64
    5:
    hlt
    jmp 5b
    "#
);
