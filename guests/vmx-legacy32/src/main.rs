//! An L1 in legacy 32-bit protected mode (no IA-32e mode) executing the VMX instructions with
//! 32-bit operands (SDM Vol. 3C ch. 31, "VMX Instruction Reference"): VMXON, VMCLEAR, VMPTRLD
//! and VMPTRST take a 64-bit memory operand in every mode; VMREAD and VMWRITE use 32-bit
//! register and memory operands outside 64-bit mode.
//!
//! The whole guest is 32-bit code with its own multiboot header and entry (the runtime's entry
//! switches to long mode). Each check prints `ok` or `FAIL` on the serial port. Before paging:
//! VMREAD is #UD outside VMX operation.
//!
//! When IA32_VMX_CR0_FIXED0 requires CR0.PG (nestbed's default, SDM A.7): VMXON is #GP(0)
//! while CR0.PG = 0, then 32-bit paging with 4-MByte pages and the instructions in VMX
//! operation, among them a VMWRITE from an [m32] that ends right before an unmapped page.
//!
//! When it does not (e.g. `--vmx-msr 0x486=0x21`), paging stays off: VMXON succeeds with
//! CR0.PG = 0 and the same checks run without paging, the [m32] VMWRITE source ending exactly
//! at the end of guest RAM (from the multiboot information).
//!
//! Exit code: the number of failures; 77 when the host refuses CR0.PG outside IA-32e mode (a
//! KVM without legacy paging) and the checks before paging passed. An unexpected exception
//! prints its vector and exits with 100.
#![no_std]
#![no_main]

core::arch::global_asm!(
    r#"
    .section .multiboot, "a"
    .balign 4
    .long 0x1BADB002
    .long 0x00000003
    .long -(0x1BADB002 + 0x00000003)

    .section .bss
    .balign 4096
    l32_page_dir: .skip 4096
    l32_vmxon_region: .skip 4096
    l32_vmcs: .skip 4096
    l32_idt: .skip 32 * 8
    .balign 16
    l32_stack: .skip 16384
    l32_stack_top:

    .section .data
    .balign 8
    l32_gdt:
    .quad 0
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    l32_gdt_end:
    .balign 4
    .word 0
    l32_gdt_ptr:
    .word l32_gdt_end - l32_gdt - 1
    .long l32_gdt
    .balign 4
    .word 0
    l32_idt_ptr:
    .word 32 * 8 - 1
    .long l32_idt
    .balign 8
    l32_vmxon_ptr: .quad l32_vmxon_region
    l32_vmcs_ptr: .quad l32_vmcs
    l32_bit63_ptr: .long l32_vmcs, 0x80000000
    l32_stored: .quad 0
    l32_failures: .long 0
    l32_value: .long 0
    l32_got: .long 0
    l32_want: .long 0
    // Where an expected exception resumes (0: none expected), and what it was.
    l32_resume: .long 0
    // IA32_VMX_CR0_FIXED0 bits 31:0, and the end of guest RAM (0: unknown).
    l32_fixed0: .long 0
    l32_ram_end: .long 0
    l32_fault_vector: .long 0
    l32_fault_error: .long 0

    .section .rodata.l32, "a"
    l32_s_ok: .asciz "ok   "
    l32_s_fail: .asciz "FAIL "
    l32_s_colon: .asciz ": "
    l32_s_expected: .asciz " (expected "
    l32_s_rparen: .asciz ")"
    l32_s_succeed: .asciz "VMsucceed"
    l32_s_invalid: .asciz "VMfailInvalid"
    l32_s_valid: .asciz "VMfailValid("
    l32_s_no_exception: .asciz "no exception"
    l32_s_vector: .asciz "exception "
    l32_s_error_code: .asciz ", error code "
    l32_s_eip: .asciz ", EIP "
    l32_s_unexpected: .asciz "FAIL unexpected "
    l32_s_passed: .asciz "vmx-legacy32: all checks passed\n"
    l32_s_failed: .asciz "vmx-legacy32: checks FAILED: "
    l32_s_no_paging: .asciz "-- IA32_VMX_CR0_FIXED0 allows CR0.PG = 0: the checks in VMX operation run without paging\n"
    l32_s_refused: .asciz "-- the host refused CR0.PG outside IA-32e mode: the checks in VMX operation did not run\n"

    // Loads the address of a string constant into ESI (no flags change).
    .macro L32_MSG text
    .pushsection .rodata.l32, "a"
    .Lmsg\@: .asciz "\text"
    .popsection
    mov esi, offset .Lmsg\@
    .endm

    // Right after a VMX instruction: checks its outcome against `want` (0 VMsucceed,
    // -1 VMfailInvalid, n VMfailValid(n)).
    .macro L32_EXPECT want, text
    mov edx, \want
    L32_MSG "\text"
    call l32_expect_outcome
    .endm

    // VMREAD ebx, ecx of field `enc`, expecting VMsucceed and `want`.
    .macro L32_READ enc, want, text
    mov ecx, \enc
    mov ebx, 0xffffffff
    vmread ebx, ecx
    mov [l32_value], ebx
    mov edx, \want
    L32_MSG "\text"
    call l32_expect_read
    .endm

    // VMWRITE ecx, eax of `value` to field `enc`, expecting `want`.
    .macro L32_WRITE enc, value, want, text
    mov ecx, \enc
    mov eax, \value
    vmwrite ecx, eax
    L32_EXPECT \want, "\text"
    .endm

    // Runs `insn` expecting exception `vector` with error code `error` (-1: none pushed).
    .macro L32_FAULT vector, error, text, insn:vararg
    mov dword ptr [l32_fault_vector], -1
    mov dword ptr [l32_resume], offset .Lresume\@
    \insn
    .Lresume\@:
    mov dword ptr [l32_resume], 0
    mov edx, \vector
    mov ebx, \error
    L32_MSG "\text"
    call l32_expect_fault
    .endm

    .section .text.l32, "ax"
    .code32
    .global _start
    _start:
    cli
    cld
    mov esp, offset l32_stack_top
    lgdt [l32_gdt_ptr]
    push 0x10
    mov eax, offset .Lreloaded
    push eax
    retf
    .Lreloaded:
    mov ax, 0x18
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax

    // End of guest RAM from the multiboot information at EBX: mem_upper (offset 8) is the KiB
    // above 1 MiB, valid when flags bit 0 is set (Multiboot 0.6.96, 3.3). Only below 4 GiB.
    test dword ptr [ebx], 1
    jz .Lram_end_unknown
    mov eax, [ebx + 8]
    cmp eax, 0x3ffc00
    jae .Lram_end_unknown
    shl eax, 10
    add eax, 0x100000
    mov [l32_ram_end], eax
    .Lram_end_unknown:

    // 32-bit interrupt gates for the exceptions (SDM Vol. 3A 6.11).
    xor ecx, ecx
    .Lidt_entry:
    mov eax, ecx
    shl eax, 4
    add eax, offset l32_vectors
    mov edx, eax
    and eax, 0xffff
    or eax, 0x100000
    mov [l32_idt + ecx * 8], eax
    and edx, 0xffff0000
    or edx, 0x8e00
    mov [l32_idt + ecx * 8 + 4], edx
    inc ecx
    cmp ecx, 32
    jne .Lidt_entry
    lidt [l32_idt_ptr]

    // CR0.NE now, so that CR0.PG is the only bit IA32_VMX_CR0_FIXED0 (SDM A.7) can find missing.
    mov eax, cr0
    or eax, 0x20
    mov cr0, eax
    // Revision identifier: IA32_VMX_BASIC bits 30:0 (SDM A.1).
    mov ecx, 0x480
    rdmsr
    and eax, 0x7fffffff
    mov [l32_vmxon_region], eax
    mov [l32_vmcs], eax

    mov eax, cr0
    and eax, 0x80000001
    cmp eax, 1
    sete bl
    mov ecx, 0xc0000080
    rdmsr
    test eax, 0x500
    sete al
    and al, bl
    movzx eax, al
    L32_MSG "protected mode without paging: CR0.PE = 1, CR0.PG = 0, IA32_EFER.LME = LMA = 0"
    call l32_check

    mov ecx, 0x3a
    rdmsr
    and eax, 5
    cmp eax, 5
    sete al
    movzx eax, al
    L32_MSG "IA32_FEATURE_CONTROL: locked, VMXON outside SMX enabled"
    call l32_check

    mov ecx, 0x486
    rdmsr
    mov [l32_fixed0], eax
    test eax, 0x80000000
    jz .Lfixed0_without_pg
    and eax, 0x80000021
    cmp eax, 0x80000021
    sete al
    movzx eax, al
    L32_MSG "IA32_VMX_CR0_FIXED0 requires CR0.PE, CR0.NE and CR0.PG"
    call l32_check
    jmp .Lfixed0_checked
    .Lfixed0_without_pg:
    and eax, 0x21
    cmp eax, 0x21
    sete al
    movzx eax, al
    L32_MSG "IA32_VMX_CR0_FIXED0 requires CR0.PE and CR0.NE, not CR0.PG"
    call l32_check
    .Lfixed0_checked:

    // CR4.VMXE, which VMXON requires (SDM 24.7); a host where the bit is virtual refuses the
    // write with #GP, which is resumed from.
    mov dword ptr [l32_resume], offset .Lvmxe_written
    mov eax, cr4
    or eax, 0x2000
    mov cr4, eax
    .Lvmxe_written:
    mov dword ptr [l32_resume], 0

    mov ecx, 0x681e
    L32_FAULT 6, -1, "VMREAD outside VMX operation", vmread ebx, ecx
    // Paging only where VMX operation needs it (SDM 24.8, A.7).
    test dword ptr [l32_fixed0], 0x80000000
    jz .Lwithout_paging
    L32_FAULT 13, 0, "VMXON [m64] with CR0.PG = 0", vmxon qword ptr [l32_vmxon_ptr]

    // 32-bit paging with 4-MByte pages (SDM Vol. 3A 4.3): the first 64 MiB identity-mapped,
    // and linear 128 MiB mapping physical 4 MiB with nothing mapped after it.
    xor ecx, ecx
    .Lpde:
    mov eax, ecx
    shl eax, 22
    or eax, 0x83
    mov [l32_page_dir + ecx * 4], eax
    inc ecx
    cmp ecx, 16
    jne .Lpde
    mov dword ptr [l32_page_dir + 32 * 4], 0x00400083
    mov eax, cr4
    or eax, 0x10
    mov cr4, eax
    mov eax, offset l32_page_dir
    mov cr3, eax
    mov dword ptr [l32_resume], offset .Lpaging_refused
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    mov dword ptr [l32_resume], 0

    mov eax, cr0
    and eax, 0x80000001
    cmp eax, 0x80000001
    sete bl
    mov ecx, 0xc0000080
    rdmsr
    test eax, 0x500
    sete al
    and al, bl
    movzx eax, al
    L32_MSG "legacy protected mode with paging: CR0.PE = CR0.PG = 1, IA32_EFER.LME = LMA = 0"
    call l32_check
    call l32_check_cr0_fixed
    vmxon qword ptr [l32_vmxon_ptr]
    L32_EXPECT 0, "VMXON [m64]"
    jmp .Lvmx_root

    .Lwithout_paging:
    mov esi, offset l32_s_no_paging
    call l32_puts
    call l32_check_cr0_fixed
    vmxon qword ptr [l32_vmxon_ptr]
    L32_EXPECT 0, "VMXON [m64] with CR0.PG = 0"

    .Lvmx_root:
    // VMfail without a current VMCS is VMfailInvalid (SDM 31.2).
    vmxon qword ptr [l32_vmxon_ptr]
    L32_EXPECT -1, "VMXON in VMX root operation without a current VMCS"
    vmclear qword ptr [l32_vmcs_ptr]
    L32_EXPECT 0, "VMCLEAR [m64]"
    vmptrld qword ptr [l32_vmcs_ptr]
    L32_EXPECT 0, "VMPTRLD [m64]"

    mov dword ptr [l32_stored], 0xffffffff
    mov dword ptr [l32_stored + 4], 0xffffffff
    vmptrst qword ptr [l32_stored]
    L32_EXPECT 0, "VMPTRST [m64]"
    mov eax, [l32_stored]
    mov edx, offset l32_vmcs
    L32_MSG "VMPTRST stored bits 31:0 of the current-VMCS pointer"
    call l32_expect_eq
    mov eax, [l32_stored + 4]
    mov edx, 0
    L32_MSG "VMPTRST stored bits 63:32 of the current-VMCS pointer"
    call l32_expect_eq

    vmxon qword ptr [l32_vmxon_ptr]
    L32_EXPECT 15, "VMXON in VMX root operation with a current VMCS"
    // The pointer is 64 bits in 32-bit mode too: bit 63 is beyond the physical-address width.
    vmptrld qword ptr [l32_bit63_ptr]
    L32_EXPECT 9, "VMPTRLD [m64] of a pointer with bit 63 set"

    // Natural-width field with 32-bit operands.
    L32_WRITE 0x681e, 0x89abcdef, 0, "VMWRITE ecx, eax: GUEST_RIP := 0x89abcdef"
    L32_READ 0x681e, 0x89abcdef, "VMREAD ebx, ecx: GUEST_RIP"
    mov dword ptr [l32_stored], 0
    mov dword ptr [l32_stored + 4], 0xa5a5a5a5
    mov ecx, 0x681e
    vmread dword ptr [l32_stored], ecx
    L32_EXPECT 0, "VMREAD [m32], ecx: GUEST_RIP"
    mov eax, [l32_stored]
    mov edx, 0x89abcdef
    L32_MSG "VMREAD [m32] stored GUEST_RIP"
    call l32_expect_eq
    mov eax, [l32_stored + 4]
    mov edx, 0xa5a5a5a5
    L32_MSG "VMREAD [m32] left the next 4 bytes alone"
    call l32_expect_eq
    // A 32-bit source (SDM 31, VMWRITE) in the last 4 bytes before an unmapped page, or
    // without paging, of guest RAM.
    test dword ptr [l32_fixed0], 0x80000000
    jz .Lm32_at_ram_end
    mov dword ptr [0x083ffffc], 0x13579bdf
    mov ecx, 0x681c
    vmwrite ecx, dword ptr [0x083ffffc]
    L32_EXPECT 0, "VMWRITE ecx, [m32] ending at an unmapped page: GUEST_RSP := 0x13579bdf"
    jmp .Lm32_written
    .Lm32_at_ram_end:
    mov eax, [l32_ram_end]
    L32_MSG "the multiboot information gives the end of guest RAM (below 4 GiB)"
    call l32_report
    mov esi, offset l32_s_colon
    call l32_puts
    mov eax, [l32_ram_end]
    call l32_put_hex
    call l32_newline
    mov edi, [l32_ram_end]
    test edi, edi
    jz .Lm32_written
    mov dword ptr [edi - 4], 0x13579bdf
    mov ecx, 0x681c
    vmwrite ecx, dword ptr [edi - 4]
    L32_EXPECT 0, "VMWRITE ecx, [m32] ending at the end of guest RAM: GUEST_RSP := 0x13579bdf"
    .Lm32_written:
    L32_READ 0x681c, 0x13579bdf, "VMREAD ebx, ecx: GUEST_RSP"

    // 64-bit field: a VMWRITE with a 32-bit operand to the full encoding clears bits 63:32
    // (SDM 31, VMWRITE); the high-access encoding (bit 0 set) is bits 63:32 (SDM 25.11.2).
    L32_WRITE 0x2011, 0xdeadbeef, 0, "VMWRITE TSC_OFFSET high (0x2011) := 0xdeadbeef"
    L32_READ 0x2011, 0xdeadbeef, "VMREAD TSC_OFFSET high"
    L32_WRITE 0x2010, 0x12345678, 0, "VMWRITE TSC_OFFSET (0x2010) := 0x12345678"
    L32_READ 0x2010, 0x12345678, "VMREAD TSC_OFFSET: bits 31:0"
    L32_READ 0x2011, 0, "VMREAD TSC_OFFSET high: the 32-bit VMWRITE cleared bits 63:32"
    L32_WRITE 0x2011, 0xcafef00d, 0, "VMWRITE TSC_OFFSET high := 0xcafef00d"
    L32_READ 0x2011, 0xcafef00d, "VMREAD TSC_OFFSET high"
    L32_READ 0x2010, 0x12345678, "VMREAD TSC_OFFSET: bits 31:0 unchanged"

    mov ecx, 0x7777
    vmread ebx, ecx
    L32_EXPECT 12, "VMREAD of an unsupported encoding (0x7777)"
    // Only 64-bit fields have a high-access encoding (SDM 25.11.2).
    mov ecx, 0x681f
    vmread ebx, ecx
    L32_EXPECT 12, "VMREAD of GUEST_RIP's encoding with bit 0 set (0x681f)"
    L32_WRITE 0x4400, 1, 13, "VMWRITE of a read-only field (VM-instruction error)"
    L32_READ 0x4400, 13, "VMREAD VM-instruction error"

    vmxoff
    L32_EXPECT 0, "VMXOFF"
    mov ecx, 0x681e
    L32_FAULT 6, -1, "VMREAD after VMXOFF", vmread ebx, ecx

    mov eax, [l32_failures]
    test eax, eax
    jnz .Lsome_failed
    mov esi, offset l32_s_passed
    call l32_puts
    jmp .Lexit
    .Lsome_failed:
    mov esi, offset l32_s_failed
    call l32_puts
    mov eax, [l32_failures]
    call l32_put_dec
    call l32_newline
    .Lexit:
    mov eax, [l32_failures]
    out 0xf4, eax
    .Lhalt:
    hlt
    jmp .Lhalt

    .Lpaging_refused:
    mov esi, offset l32_s_refused
    call l32_puts
    mov eax, [l32_failures]
    test eax, eax
    jnz .Lsome_failed
    mov eax, 77
    out 0xf4, eax
    jmp .Lhalt

    // Checks CR0 against IA32_VMX_CR0_FIXED0 and IA32_VMX_CR0_FIXED1 (SDM A.7).
    l32_check_cr0_fixed:
    mov ecx, 0x486
    rdmsr
    mov ebx, cr0
    and ebx, eax
    cmp ebx, eax
    sete bl
    mov ecx, 0x487
    rdmsr
    not eax
    mov edx, cr0
    test edx, eax
    sete al
    and al, bl
    movzx eax, al
    L32_MSG "CR0 satisfies IA32_VMX_CR0_FIXED0 and IA32_VMX_CR0_FIXED1"
    jmp l32_check

    // The outcome the flags report (SDM 31.2) in EAX: 0 VMsucceed, -1 VMfailInvalid (CF),
    // else VMfailValid (ZF) with the VM-instruction error. Called right after the instruction.
    l32_outcome:
    pushfd
    pop eax
    test eax, 1
    jnz .Loutcome_invalid
    test eax, 0x40
    jz .Loutcome_succeed
    mov ecx, 0x4400
    vmread eax, ecx
    ret
    .Loutcome_invalid:
    mov eax, -1
    ret
    .Loutcome_succeed:
    xor eax, eax
    ret

    // Checks the outcome of the instruction just executed against EDX; ESI is the message.
    l32_expect_outcome:
    call l32_outcome
    // Compares the outcome EAX with EDX; ESI is the message.
    l32_compare_outcome:
    mov [l32_got], eax
    mov [l32_want], edx
    cmp eax, edx
    sete al
    movzx eax, al
    call l32_report
    mov esi, offset l32_s_colon
    call l32_puts
    mov eax, [l32_got]
    call l32_describe
    mov eax, [l32_got]
    cmp eax, [l32_want]
    je l32_newline
    mov esi, offset l32_s_expected
    call l32_puts
    mov eax, [l32_want]
    call l32_describe
    mov esi, offset l32_s_rparen
    call l32_puts
    jmp l32_newline

    // Checks a VMREAD just executed: VMsucceed and [l32_value] = EDX; ESI is the message.
    l32_expect_read:
    call l32_outcome
    test eax, eax
    jz .Lread_succeeded
    mov edx, 0
    jmp l32_compare_outcome
    .Lread_succeeded:
    mov eax, [l32_value]
    jmp l32_expect_eq

    // Checks EAX = EDX; ESI is the message.
    l32_expect_eq:
    mov [l32_got], eax
    mov [l32_want], edx
    cmp eax, edx
    sete al
    movzx eax, al
    call l32_report
    mov esi, offset l32_s_colon
    call l32_puts
    mov eax, [l32_got]
    call l32_put_hex
    mov eax, [l32_got]
    cmp eax, [l32_want]
    je l32_newline
    mov esi, offset l32_s_expected
    call l32_puts
    mov eax, [l32_want]
    call l32_put_hex
    mov esi, offset l32_s_rparen
    call l32_puts
    jmp l32_newline

    // Checks that the exception recorded is vector EDX with error code EBX; ESI is the message.
    l32_expect_fault:
    mov [l32_want], edx
    mov [l32_value], ebx
    mov eax, [l32_fault_vector]
    cmp eax, edx
    sete al
    mov edx, [l32_fault_error]
    cmp edx, ebx
    sete dl
    and al, dl
    movzx eax, al
    push eax
    call l32_report
    mov esi, offset l32_s_colon
    call l32_puts
    mov eax, [l32_fault_vector]
    mov ebx, [l32_fault_error]
    call l32_describe_fault
    pop eax
    test eax, eax
    jnz l32_newline
    mov esi, offset l32_s_expected
    call l32_puts
    mov eax, [l32_want]
    mov ebx, [l32_value]
    call l32_describe_fault
    mov esi, offset l32_s_rparen
    call l32_puts
    jmp l32_newline

    // Prints the check ESI with the verdict EAX (non-zero: passed).
    l32_check:
    call l32_report
    jmp l32_newline

    // Prints "ok   " or "FAIL " (counting the failure) for the verdict EAX, then ESI.
    l32_report:
    push esi
    mov esi, offset l32_s_ok
    test eax, eax
    jnz .Lreport_prefix
    inc dword ptr [l32_failures]
    mov esi, offset l32_s_fail
    .Lreport_prefix:
    call l32_puts
    pop esi
    jmp l32_puts

    // Prints the outcome code EAX as l32_outcome produces it.
    l32_describe:
    mov esi, offset l32_s_succeed
    test eax, eax
    jz l32_puts
    mov esi, offset l32_s_invalid
    cmp eax, -1
    je l32_puts
    push eax
    mov esi, offset l32_s_valid
    call l32_puts
    pop eax
    call l32_put_dec
    mov esi, offset l32_s_rparen
    jmp l32_puts

    // Prints exception vector EAX (-1: none) with error code EBX (-1: none).
    l32_describe_fault:
    mov esi, offset l32_s_no_exception
    cmp eax, -1
    je l32_puts
    push ebx
    push eax
    mov esi, offset l32_s_vector
    call l32_puts
    pop eax
    call l32_put_dec
    pop eax
    cmp eax, -1
    je .Ldescribe_fault_done
    push eax
    mov esi, offset l32_s_error_code
    call l32_puts
    pop eax
    call l32_put_hex
    .Ldescribe_fault_done:
    ret

    // Serial output (nestbed's UART is always ready to transmit).
    l32_puts:
    mov dx, 0x3f8
    .Lputs_next:
    lodsb
    test al, al
    jz .Lputs_done
    out dx, al
    jmp .Lputs_next
    .Lputs_done:
    ret

    l32_newline:
    mov dx, 0x3f8
    mov al, 0x0a
    out dx, al
    ret

    l32_put_hex:
    mov ebx, eax
    mov dx, 0x3f8
    mov al, 0x30
    out dx, al
    mov al, 0x78
    out dx, al
    mov ecx, 8
    .Lhex_next:
    rol ebx, 4
    mov al, bl
    and al, 0xf
    add al, 0x30
    cmp al, 0x39
    jbe .Lhex_digit
    add al, 0x27
    .Lhex_digit:
    out dx, al
    dec ecx
    jnz .Lhex_next
    ret

    l32_put_dec:
    mov ecx, 10
    xor ebx, ebx
    .Ldec_divide:
    xor edx, edx
    div ecx
    push edx
    inc ebx
    test eax, eax
    jnz .Ldec_divide
    mov dx, 0x3f8
    .Ldec_next:
    pop eax
    add al, 0x30
    out dx, al
    dec ebx
    jnz .Ldec_next
    ret

    // One 16-byte stub per exception vector. Those without an error code push -1 in its
    // place (SDM Vol. 3A 6.13), so every frame is vector, error code, EIP, CS, EFLAGS.
    .balign 16
    l32_vectors:
    .irp vector, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .balign 16
    .if (\vector == 8) | ((\vector >= 10) & (\vector <= 14)) | (\vector == 17)
    .else
    push -1
    .endif
    push \vector
    jmp l32_exception
    .endr

    // An expected exception (l32_resume set) is recorded and resumes there; any other one
    // ends the run.
    l32_exception:
    cmp dword ptr [l32_resume], 0
    je .Lunexpected
    pop dword ptr [l32_fault_vector]
    pop dword ptr [l32_fault_error]
    // Same privilege level and code segment, IF already 0: drop EIP, CS and EFLAGS and jump
    // rather than IRET.
    add esp, 12
    push dword ptr [l32_resume]
    mov dword ptr [l32_resume], 0
    ret
    .Lunexpected:
    mov esi, offset l32_s_unexpected
    call l32_puts
    pop eax
    pop ebx
    call l32_describe_fault
    mov esi, offset l32_s_eip
    call l32_puts
    mov eax, [esp]
    call l32_put_hex
    call l32_newline
    mov eax, 100
    out 0xf4, eax
    jmp .Lhalt

    .code64
    .text
    "#
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
