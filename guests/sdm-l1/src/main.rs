//! An L1 hypervisor that follows the SDM step by step (Vol. 3C 24.6-24.8, 25, 26.2-26.3, 31.5)
//! instead of hv's shortcuts: it discovers VMX, checks IA32_FEATURE_CONTROL, takes the
//! revision, control capabilities and CR0/CR4 fixed bits from the capability MSRs, derives
//! host and guest state from the live registers and GDT, writes host fields with VMWRITE's
//! register form and guest fields with its memory form, and runs an L2 of I/O and HLT.
#![no_std]
#![no_main]

use core::arch::asm;

use hv::{ctl, field::*, msr, reason, Allowed, Io, Page, Stack};
use rt::io::{rdmsr, read_selector, Sel};
use rt::vmx::{self, GuestRegs, VmFail, CR4_VMXE};
use rt::Hex;

rt::entry!(main);

static VMXON_REGION: Page = Page::new();
static VMCS: Page = Page::new();
static L2_STACK: Stack = Stack::new();

const CPUID_1_ECX_VMX: u32 = 1 << 5;
const FC_LOCK: u64 = 1 << 0;
const FC_VMXON_OUTSIDE_SMX: u64 = 1 << 2;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const IN_VALUE: u64 = 0x42;

/// The exits L2 produces, in order: (basic reason, port, IN, AL for an OUT).
const EXPECTED: [(u32, u16, bool, u8); 6] = [
    (reason::IO_INSTRUCTION, 0x80, false, 1),
    (reason::IO_INSTRUCTION, 0x71, true, 0),
    (reason::IO_INSTRUCTION, 0x80, false, IN_VALUE as u8),
    (reason::HLT, 0, false, 0),
    (reason::IO_INSTRUCTION, 0x80, false, 3),
    (reason::HLT, 0, false, 0),
];

extern "C" fn l2_main() -> ! {
    // SAFETY: port I/O and HLT, all intercepted by L1.
    unsafe {
        asm!(
            "mov al, 1",
            "out 0x80, al",
            "in al, 0x71",
            "out 0x80, al",
            "hlt",
            "mov al, 3",
            "out 0x80, al",
            "2: hlt",
            "jmp 2b",
            options(noreturn)
        )
    }
}

fn selectors() -> [u16; 3] {
    let (es, fs, gs): (u16, u16, u16);
    // SAFETY: reading segment selectors has no side effects.
    unsafe {
        asm!("mov {0:x}, es", "mov {1:x}, fs", "mov {2:x}, gs", out(reg) es, out(reg) fs, out(reg) gs, options(nomem, nostack))
    };
    [es, fs, gs]
}

/// A segment as the VMCS describes it (SDM 25.4.1), from its GDT descriptor.
struct Segment {
    selector: u16,
    base: u64,
    limit: u32,
    ar: u32,
}

fn segment(gdt_base: u64, selector: u16) -> Segment {
    let p = (gdt_base + u64::from(selector & !7)) as *const u64;
    // SAFETY: the GDT is identity-mapped; system descriptors take two entries.
    let d = unsafe { core::ptr::read_volatile(p) };
    let system = d & (1 << 44) == 0;
    let mut base = ((d >> 16) & 0xff_ffff) | (((d >> 56) & 0xff) << 24);
    if system {
        // SAFETY: as above.
        base |= unsafe { core::ptr::read_volatile(p.add(1)) } << 32;
    }
    let mut limit = ((d & 0xffff) | (((d >> 48) & 0xf) << 16)) as u32;
    if d & (1 << 55) != 0 {
        limit = (limit << 12) | 0xfff;
    }
    // AR: type, S, DPL, P in bits 7:0, AVL, L, D/B, G in bits 15:12. A loaded code or data
    // segment is accessed, and a loaded TR is busy (SDM 26.3.1.2).
    let mut ar = ((d >> 40) & 0xf0ff) as u32;
    ar |= if system { 2 } else { 1 };
    Segment { selector, base, limit, ar }
}

fn main(_: &rt::BootInfo) -> u32 {
    let mut failures = 0u32;
    if let Err(e) = steps(&mut failures) {
        rt::println!("FAIL a VMX instruction failed: ", e);
        failures += 1;
    }
    rt::println!(if failures == 0 { "sdm-l1: all checks passed" } else { "sdm-l1: some checks FAILED" });
    failures
}

/// Writes a guest-state field with VMWRITE's memory-operand form.
fn wg(field: u64, value: u64) -> Result<(), VmFail> {
    vmx::vmwrite_mem(field, &value).inspect_err(|e| rt::println!("VMWRITE (memory) ", Hex(field), " failed: ", *e))
}

/// Reads a field with VMREAD's memory-operand form.
fn rm(field: u64) -> Result<u64, VmFail> {
    let mut v = 0;
    vmx::vmread_mem(field, &mut v)?;
    Ok(v)
}

/// Every step, counting failed checks into `failures` even when a VMX instruction fails.
fn steps(failures: &mut u32) -> Result<(), VmFail> {
    let mut f = 0u32;
    let r = (|| {
        // 24.6: discovering support for VMX.
        let ecx = core::arch::x86_64::__cpuid(1).ecx;
        rt::check!(f, ecx & CPUID_1_ECX_VMX != 0, "CPUID.1:ECX.VMX[bit 5] = 1");

        // 24.7: enabling and entering VMX operation.
        let mut fc = rdmsr(msr::IA32_FEATURE_CONTROL);
        if fc & FC_LOCK == 0 {
            rt::println!("IA32_FEATURE_CONTROL unlocked: enabling VMXON outside SMX and locking it");
            rt::io::wrmsr(msr::IA32_FEATURE_CONTROL, fc | FC_LOCK | FC_VMXON_OUTSIDE_SMX);
            fc = rdmsr(msr::IA32_FEATURE_CONTROL);
        }
        rt::check!(
            f,
            fc & (FC_LOCK | FC_VMXON_OUTSIDE_SMX) == FC_LOCK | FC_VMXON_OUTSIDE_SMX,
            "IA32_FEATURE_CONTROL ",
            Hex(fc),
            " has lock (bit 0) and VMXON outside SMX (bit 2)"
        );

        // A.1: basic VMX information.
        let basic = rdmsr(msr::IA32_VMX_BASIC);
        let revision = basic as u32 & 0x7fff_ffff;
        let region_size = (basic >> 32) & 0x1fff;
        let true_ctls = basic & (1 << 55) != 0;
        rt::println!(
            "IA32_VMX_BASIC ",
            Hex(basic),
            ": revision ",
            Hex(revision.into()),
            ", region size ",
            region_size,
            ", memory type ",
            (basic >> 50) & 0xf,
            ", TRUE controls ",
            true_ctls
        );
        rt::check!(f, basic & (1 << 31) == 0, "IA32_VMX_BASIC bit 31 is 0");
        rt::check!(f, region_size > 0 && region_size <= 4096, "VMXON region and VMCS fit in 4 KiB: ", region_size);
        rt::check!(
            f,
            basic & (1 << 48) == 0 || VMCS.addr() < (1 << 32),
            "our regions satisfy the 32-bit address limit of bit 48"
        );

        // 24.8 and A.7, A.8: CR0 and CR4 in VMX operation.
        let fixed = |cr: u64, f0: u32, f1: u32| (cr | rdmsr(f0)) & rdmsr(f1);
        let cr0 = fixed(rt::io::cr0(), msr::IA32_VMX_CR0_FIXED0, msr::IA32_VMX_CR0_FIXED1);
        let cr4 = fixed(rt::io::cr4(), msr::IA32_VMX_CR4_FIXED0, msr::IA32_VMX_CR4_FIXED1);
        rt::check!(f, cr0 == rt::io::cr0(), "CR0 ", Hex(rt::io::cr0()), " already satisfies IA32_VMX_CR0_FIXED0/1");
        rt::check!(
            f,
            cr4 == rt::io::cr4() | CR4_VMXE,
            "CR4 adjusted by IA32_VMX_CR4_FIXED0/1 adds only VMXE: ",
            Hex(cr4)
        );
        let vmxe = vmx::try_set_cr4_vmxe();
        rt::println!(
            "MOV to CR4.VMXE ",
            if vmxe { "took effect" } else { "#GP: VMX-enabled state is virtual on this host" }
        );

        VMXON_REGION.init_region(revision);
        let r = vmx::vmxon(VMXON_REGION.addr());
        rt::check!(f, r.is_ok(), "VMXON ", Hex(VMXON_REGION.addr()), ": ", hv::Outcome(r));
        r?;

        // 25.11.3: initializing a VMCS.
        VMCS.init_region(revision);
        vmx::vmclear(VMCS.addr())?;
        vmx::vmptrld(VMCS.addr())?;
        let cur = vmx::vmptrst()?;
        rt::check!(f, cur == VMCS.addr(), "VMPTRST after VMCLEAR and VMPTRLD: ", Hex(cur));

        // A.3-A.5 and 31.5.1: controls from the TRUE capability MSRs when they exist.
        let cap = |t: u32, n: u32| Allowed::from_msr(rdmsr(if true_ctls { t } else { n }));
        let pin_cap = cap(msr::IA32_VMX_TRUE_PINBASED_CTLS, msr::IA32_VMX_PINBASED_CTLS);
        let proc_cap = cap(msr::IA32_VMX_TRUE_PROCBASED_CTLS, msr::IA32_VMX_PROCBASED_CTLS);
        let exit_cap = cap(msr::IA32_VMX_TRUE_EXIT_CTLS, msr::IA32_VMX_EXIT_CTLS);
        let entry_cap = cap(msr::IA32_VMX_TRUE_ENTRY_CTLS, msr::IA32_VMX_ENTRY_CTLS);
        let pin = pin_cap.adjust(0);
        let proc = proc_cap.adjust(ctl::PROC_HLT_EXITING | ctl::PROC_UNCOND_IO_EXITING);
        let exit =
            exit_cap.adjust(ctl::EXIT_HOST_ADDR_SPACE_SIZE | ctl::EXIT_SAVE_IA32_EFER | ctl::EXIT_LOAD_IA32_EFER);
        let entry = entry_cap.adjust(ctl::ENTRY_IA32E_MODE_GUEST | ctl::ENTRY_LOAD_IA32_EFER);
        rt::check!(
            f,
            proc & (ctl::PROC_HLT_EXITING | ctl::PROC_UNCOND_IO_EXITING) != 0
                && proc & ctl::PROC_ACTIVATE_SECONDARY == 0,
            "primary controls ",
            Hex(proc.into()),
            ": HLT and unconditional I/O exiting, no secondary controls"
        );
        rt::check!(
            f,
            exit & ctl::EXIT_HOST_ADDR_SPACE_SIZE != 0 && entry & ctl::ENTRY_IA32E_MODE_GUEST != 0,
            "exit controls ",
            Hex(exit.into()),
            ", entry controls ",
            Hex(entry.into()),
            ": 64-bit host and guest"
        );
        for (fld, v) in [
            (PIN_BASED_VM_EXEC_CONTROL, pin),
            (CPU_BASED_VM_EXEC_CONTROL, proc),
            (VM_EXIT_CONTROLS, exit),
            (VM_ENTRY_CONTROLS, entry),
        ] {
            vmx::vmwrite(fld, v.into())?;
        }
        for fld in [
            EXCEPTION_BITMAP,
            PAGE_FAULT_ERROR_CODE_MASK,
            PAGE_FAULT_ERROR_CODE_MATCH,
            CR3_TARGET_COUNT,
            VM_EXIT_MSR_STORE_COUNT,
            VM_EXIT_MSR_LOAD_COUNT,
            VM_ENTRY_MSR_LOAD_COUNT,
            VM_ENTRY_INTR_INFO_FIELD,
            CR0_GUEST_HOST_MASK,
            CR4_GUEST_HOST_MASK,
            CR0_READ_SHADOW,
            CR4_READ_SHADOW,
        ] {
            vmx::vmwrite(fld, 0)?;
        }

        // 25.5 and 26.2.3: host state from the live registers (selectors with RPL and TI 0).
        let gdt = rt::io::sgdt();
        let idt = rt::io::sidt();
        let (gdt_base, idt_base) = (gdt.base, idt.base);
        let tr = read_selector(Sel::Tr);
        rt::check!(f, tr & !7 != 0, "TR is loaded (non-null host TR selector): ", Hex(tr.into()));
        let efer = rdmsr(msr::IA32_EFER);
        rt::check!(
            f,
            efer & (EFER_LME | EFER_LMA) == EFER_LME | EFER_LMA,
            "IA32_EFER ",
            Hex(efer),
            " has LME and LMA, as a 64-bit host needs (26.2.4)"
        );
        let [es, fs, gs] = selectors();
        let tss = segment(gdt_base, tr);
        let host: [(u64, u64); 20] = [
            (HOST_CR0, cr0),
            (HOST_CR3, rt::io::cr3()),
            (HOST_CR4, cr4),
            (HOST_CS_SELECTOR, u64::from(read_selector(Sel::Cs) & !7)),
            (HOST_SS_SELECTOR, u64::from(read_selector(Sel::Ss) & !7)),
            (HOST_DS_SELECTOR, u64::from(read_selector(Sel::Ds) & !7)),
            (HOST_ES_SELECTOR, u64::from(es & !7)),
            (HOST_FS_SELECTOR, u64::from(fs & !7)),
            (HOST_GS_SELECTOR, u64::from(gs & !7)),
            (HOST_TR_SELECTOR, u64::from(tr & !7)),
            (HOST_FS_BASE, rdmsr(msr::IA32_FS_BASE)),
            (HOST_GS_BASE, rdmsr(msr::IA32_GS_BASE)),
            (HOST_TR_BASE, tss.base),
            (HOST_GDTR_BASE, gdt_base),
            (HOST_IDTR_BASE, idt_base),
            (HOST_IA32_SYSENTER_CS, rdmsr(msr::IA32_SYSENTER_CS)),
            (HOST_IA32_SYSENTER_ESP, rdmsr(msr::IA32_SYSENTER_ESP)),
            (HOST_IA32_SYSENTER_EIP, rdmsr(msr::IA32_SYSENTER_EIP)),
            (HOST_IA32_EFER, efer),
            (VMCS_LINK_POINTER, u64::MAX),
        ];
        for (fld, v) in host {
            vmx::vmwrite(fld, v)?;
        }

        // 25.4 and 26.3.1: a guest that is a copy of L1 at l2_main, written with memory operands.
        let segs = [
            segment(gdt_base, es),
            segment(gdt_base, read_selector(Sel::Cs)),
            segment(gdt_base, read_selector(Sel::Ss)),
            segment(gdt_base, read_selector(Sel::Ds)),
            segment(gdt_base, fs),
            segment(gdt_base, gs),
        ];
        for (i, s) in segs.iter().enumerate() {
            let i = i as u64 * 2;
            wg(GUEST_ES_SELECTOR + i, s.selector.into())?;
            wg(GUEST_ES_BASE + i, s.base)?;
            wg(GUEST_ES_LIMIT + i, s.limit.into())?;
            wg(GUEST_ES_AR_BYTES + i, s.ar.into())?;
        }
        rt::check!(
            f,
            segs[1].ar == 0xa09b,
            "guest CS access rights from the GDT: ",
            Hex(segs[1].ar.into()),
            " (64-bit code)"
        );
        rt::check!(
            f,
            tss.ar == 0x8b && tss.limit >= 0x67,
            "guest TR: busy 64-bit TSS at ",
            Hex(tss.base),
            ", limit ",
            Hex(tss.limit.into())
        );
        let guest: [(u64, u64); 25] = [
            (GUEST_TR_SELECTOR, tr.into()),
            (GUEST_TR_BASE, tss.base),
            (GUEST_TR_LIMIT, tss.limit.into()),
            (GUEST_TR_AR_BYTES, tss.ar.into()),
            (GUEST_LDTR_SELECTOR, 0),
            (GUEST_LDTR_AR_BYTES, 1 << 16),
            (GUEST_GDTR_BASE, gdt_base),
            (GUEST_GDTR_LIMIT, u64::from(gdt.limit)),
            (GUEST_IDTR_BASE, idt_base),
            (GUEST_IDTR_LIMIT, u64::from(idt.limit)),
            (GUEST_CR0, cr0),
            (GUEST_CR3, rt::io::cr3()),
            (GUEST_CR4, cr4),
            (GUEST_DR7, 0x400),
            (GUEST_IA32_DEBUGCTL, 0),
            (GUEST_IA32_EFER, efer),
            (GUEST_SYSENTER_CS, rdmsr(msr::IA32_SYSENTER_CS)),
            (GUEST_SYSENTER_ESP, rdmsr(msr::IA32_SYSENTER_ESP)),
            (GUEST_SYSENTER_EIP, rdmsr(msr::IA32_SYSENTER_EIP)),
            (GUEST_RSP, L2_STACK.top()),
            (GUEST_RIP, l2_main as *const () as u64),
            (GUEST_RFLAGS, 0x2),
            (GUEST_ACTIVITY_STATE, 0),
            (GUEST_INTERRUPTIBILITY_INFO, 0),
            (GUEST_PENDING_DBG_EXCEPTIONS, 0),
        ];
        for (fld, v) in guest {
            wg(fld, v)?;
        }

        // Both VMREAD forms agree with what both VMWRITE forms stored.
        for (fld, v) in [
            (HOST_CR4, cr4),
            (HOST_TR_BASE, tss.base),
            (GUEST_CR4, cr4),
            (GUEST_RIP, l2_main as *const () as u64),
            (CPU_BASED_VM_EXEC_CONTROL, proc.into()),
            (GUEST_CS_AR_BYTES, segs[1].ar.into()),
        ] {
            let (reg, mem) = (vmx::vmread(fld)?, rm(fld)?);
            rt::check!(
                f,
                reg == v && mem == v,
                "VMREAD ",
                Hex(fld),
                ": register form ",
                Hex(reg),
                ", memory form ",
                Hex(mem)
            );
        }

        // 31.6: launching, then handling exits.
        let mut regs = GuestRegs::default();
        let mut launched = false;
        for (n, &(want_reason, want_port, want_in, want_al)) in EXPECTED.iter().enumerate() {
            vmx::vm_run(&mut regs, launched)?;
            launched = true;
            let why = rm(VM_EXIT_REASON)?;
            let (qual, len, rip) = (rm(EXIT_QUALIFICATION)?, rm(VM_EXIT_INSTRUCTION_LEN)?, rm(GUEST_RIP)?);
            rt::check!(
                f,
                why as u32 & reason::ENTRY_FAILURE == 0 && why as u32 & 0xffff == want_reason,
                "exit ",
                n + 1,
                ": reason ",
                why,
                ", expected ",
                want_reason
            );
            if want_reason == reason::IO_INSTRUCTION {
                let io = Io::decode(qual);
                rt::check!(
                    f,
                    io.port == want_port && io.is_in == want_in && io.size == 1,
                    "  port ",
                    Hex(io.port.into()),
                    if io.is_in { " IN" } else { " OUT" },
                    ", qualification ",
                    Hex(qual)
                );
                if io.is_in {
                    regs.rax = (regs.rax & !0xff) | IN_VALUE;
                } else {
                    rt::check!(f, regs.rax as u8 == want_al, "  AL = ", Hex(regs.rax & 0xff));
                }
            }
            wg(GUEST_RIP, rip + len)?;
        }

        let r = vmx::vmxoff();
        rt::check!(f, r.is_ok(), "VMXOFF: ", hv::Outcome(r));
        r
    })();
    *failures += f;
    r
}
