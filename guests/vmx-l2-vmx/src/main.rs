//! An L1 hypervisor whose L2 executes each VMX instruction once, in register and memory
//! forms, then HLT. In VMX non-root operation every one of them causes a VM exit (SDM 26.1.2);
//! L1 checks each exit's basic reason (Appendix C), VM-exit instruction length (28.2.4),
//! exit qualification (28.2.1: the displacement) and VM-exit instruction information (28.2.5),
//! skips the instruction and resumes L2.
//!
//! L2 starts after its VMCALL unless the command line is `vmcall`: a VMCALL in the L2 VM is
//! taken by the host's KVM as a hypercall instruction and, as measured, emulated again and
//! again without an exit to nestbed, so L2 never gets past it.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

use hv::{ctl, field, reason, Caps, Config, Page, Stack, Vcpu};
use rt::vmx::{self, VmFail};
use rt::Hex;

rt::entry!(main);

static VMXON_REGION: Page = Page::new();
static VMCS: Page = Page::new();
static L2_STACK: Stack = Stack::new();
/// What L2's memory operands point into; none of them may be accessed.
static SCRATCH: Page = Page::new();

/// L2's registers at VMLAUNCH (RBX: SCRATCH, RSP: near the top of L2_STACK).
const L2_RAX: u64 = 0x5a5a_0000_1234_5678;
const L2_RCX: u64 = 2;
const L2_RDX: u64 = field::GUEST_RIP;

// L2's code; the table gives each instruction's offset from l2_vmx_code, and the end.
global_asm!(
    r#"
    .section .text.l2_vmx_code, "ax"
    .global l2_vmx_code
    l2_vmx_code:
    l2vmx_0:  vmcall
    l2vmx_1:  vmclear [rbx + 0x10]
    l2vmx_2:  vmlaunch
    l2vmx_3:  vmptrld [rsp + 8]
    l2vmx_4:  vmptrst [rbx + rcx * 4 + 0x20]
    l2vmx_5:  vmread rax, rcx
    l2vmx_6:  vmread [rbx + 0x18], rcx
    l2vmx_7:  vmresume
    l2vmx_8:  vmwrite rdx, rax
    l2vmx_9:  vmwrite rdx, [rbx]
    l2vmx_10: vmxoff
    l2vmx_11: vmxon [rbx + 0x40]
    l2vmx_12: invept rax, [rbx + 0x50]
    l2vmx_13: invvpid rcx, [rbx + 0x60]
    l2vmx_14: hlt
    l2vmx_15: jmp l2vmx_14

    .section .rodata.l2_vmx_offsets, "a"
    .global l2_vmx_offsets
    l2_vmx_offsets:
    .byte l2vmx_0 - l2_vmx_code, l2vmx_1 - l2_vmx_code, l2vmx_2 - l2_vmx_code, l2vmx_3 - l2_vmx_code
    .byte l2vmx_4 - l2_vmx_code, l2vmx_5 - l2_vmx_code, l2vmx_6 - l2_vmx_code, l2vmx_7 - l2_vmx_code
    .byte l2vmx_8 - l2_vmx_code, l2vmx_9 - l2_vmx_code, l2vmx_10 - l2_vmx_code, l2vmx_11 - l2_vmx_code
    .byte l2vmx_12 - l2_vmx_code, l2vmx_13 - l2_vmx_code, l2vmx_14 - l2_vmx_code, l2vmx_15 - l2_vmx_code
    "#
);

extern "C" {
    fn l2_vmx_code() -> !;
    static l2_vmx_offsets: [u8; INSNS + 2];
}

extern "C" fn l2_main() -> ! {
    // SAFETY: L2's code takes no arguments and never returns.
    unsafe { asm!("jmp {}", sym l2_vmx_code, options(noreturn)) }
}

// General-purpose register numbers (SDM Table 28-12) and segment numbers.
const RAX: u32 = 0;
const RCX: u32 = 1;
const RDX: u32 = 2;
const RBX: u32 = 3;
const RSP: u32 = 4;
const SS: u32 = 2;
const DS: u32 = 3;

/// VM-exit instruction information of a VMX instruction (SDM 28.2.5, Tables 28-12, 28-13).
#[derive(Clone, Copy)]
enum Info {
    /// VMCALL, VMLAUNCH, VMRESUME, VMXOFF: the field is undefined.
    Undefined,
    /// A memory operand in 64-bit address size. Bits 31:28 are Reg2 for VMREAD, VMWRITE,
    /// INVEPT and INVVPID, undefined for the others.
    Mem { seg: u32, base: u32, index: Option<(u32, u32)>, reg2: Option<u32> },
    /// VMREAD/VMWRITE with a register r/m operand (Reg1) and Reg2.
    Reg { reg1: u32, reg2: u32 },
}

impl Info {
    /// (mask of the defined bits, their expected value).
    fn expected(self) -> (u32, u32) {
        match self {
            Info::Undefined => (0, 0),
            Info::Mem { seg, base, index, reg2 } => {
                // Address size (9:7) = 2 (64-bit), bit 10 = 0 (memory), segment (17:15), base
                // (26:23) valid (27 = 0). Scaling (1:0) and index (21:18) are undefined when
                // the index-invalid bit 22 is set.
                let mut mask = 7 << 7 | 1 << 10 | 7 << 15 | 1 << 22 | 0x1f << 23;
                let mut v = 2 << 7 | seg << 15 | base << 23;
                match index {
                    Some((reg, scaling)) => {
                        mask |= 3 | 0xf << 18;
                        v |= scaling | reg << 18;
                    }
                    None => v |= 1 << 22,
                }
                if let Some(r) = reg2 {
                    mask |= 0xf << 28;
                    v |= r << 28;
                }
                (mask, v)
            }
            Info::Reg { reg1, reg2 } => (0xf << 3 | 1 << 10 | 0xf << 28, reg1 << 3 | 1 << 10 | reg2 << 28),
        }
    }
}

struct Expect {
    what: &'static str,
    reason: u32,
    /// Exit qualification: the displacement, 0 without one (SDM 28.2.1).
    qualification: u64,
    info: Info,
}

const fn mem(seg: u32, base: u32, reg2: Option<u32>) -> Info {
    Info::Mem { seg, base, index: None, reg2 }
}

const INSNS: usize = 14;

const EXPECT: [Expect; INSNS] = [
    Expect { what: "vmcall", reason: reason::VMCALL, qualification: 0, info: Info::Undefined },
    Expect { what: "vmclear [rbx+0x10]", reason: reason::VMCLEAR, qualification: 0x10, info: mem(DS, RBX, None) },
    Expect { what: "vmlaunch", reason: reason::VMLAUNCH, qualification: 0, info: Info::Undefined },
    Expect { what: "vmptrld [rsp+8]", reason: reason::VMPTRLD, qualification: 8, info: mem(SS, RSP, None) },
    Expect {
        what: "vmptrst [rbx+rcx*4+0x20]",
        reason: reason::VMPTRST,
        qualification: 0x20,
        info: Info::Mem { seg: DS, base: RBX, index: Some((RCX, 2)), reg2: None },
    },
    Expect {
        what: "vmread rax, rcx",
        reason: reason::VMREAD,
        qualification: 0,
        info: Info::Reg { reg1: RAX, reg2: RCX },
    },
    Expect {
        what: "vmread [rbx+0x18], rcx",
        reason: reason::VMREAD,
        qualification: 0x18,
        info: mem(DS, RBX, Some(RCX)),
    },
    Expect { what: "vmresume", reason: reason::VMRESUME, qualification: 0, info: Info::Undefined },
    Expect {
        what: "vmwrite rdx, rax",
        reason: reason::VMWRITE,
        qualification: 0,
        info: Info::Reg { reg1: RAX, reg2: RDX },
    },
    Expect { what: "vmwrite rdx, [rbx]", reason: reason::VMWRITE, qualification: 0, info: mem(DS, RBX, Some(RDX)) },
    Expect { what: "vmxoff", reason: reason::VMXOFF, qualification: 0, info: Info::Undefined },
    Expect { what: "vmxon [rbx+0x40]", reason: reason::VMXON, qualification: 0x40, info: mem(DS, RBX, None) },
    Expect {
        what: "invept rax, [rbx+0x50]",
        reason: reason::INVEPT,
        qualification: 0x50,
        info: mem(DS, RBX, Some(RAX)),
    },
    Expect {
        what: "invvpid rcx, [rbx+0x60]",
        reason: reason::INVVPID,
        qualification: 0x60,
        info: mem(DS, RBX, Some(RCX)),
    },
];

fn main(info: &rt::BootInfo) -> u32 {
    match run(rt::next_word(info.args).0 == "vmcall") {
        Ok(failures) => failures,
        Err(e) => {
            rt::println!("FAIL a VMX instruction failed: ", e);
            rt::EXIT_CHECK_FAILED
        }
    }
}

fn run(vmcall: bool) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    let caps = Caps::read();
    vmx::enable(VMXON_REGION.addr())?;
    hv::load_vmcs(&caps, &VMCS)?;
    hv::setup_vmcs(
        &caps,
        &Config {
            entry: l2_main,
            stack_top: L2_STACK.top() - 64,
            proc: ctl::PROC_HLT_EXITING,
            proc2: 0,
            io_bitmaps: None,
            msr_bitmap: None,
        },
    )?;
    for i in 0..512 {
        SCRATCH.write_u64(i * 8, 0x5c5c_5c5c_0000_0000 | i as u64);
    }

    let code = l2_vmx_code as *const () as u64;
    // SAFETY: a table of INSNS + 2 bytes defined by the global_asm above.
    let offsets = unsafe { &l2_vmx_offsets };
    let at = |i: usize| code + u64::from(offsets[i]);
    let mut vcpu = Vcpu::default();
    vcpu.regs.rax = L2_RAX;
    vcpu.regs.rbx = SCRATCH.addr();
    vcpu.regs.rcx = L2_RCX;
    vcpu.regs.rdx = L2_RDX;

    let mut next = 0;
    if vmcall {
        rt::println!("L2 starts with its VMCALL");
    } else {
        rt::println!(
            "-- vmcall: not executed; KVM does not let an L2 VMCALL reach nestbed (`vmx-l2-vmx vmcall` runs it)"
        );
        hv::write(field::GUEST_RIP, at(1))?;
        next = 1;
    }
    let mut halted = false;
    for _ in 0..INSNS + 2 {
        let exit = vcpu.run()?;
        let Some(i) = (next..=INSNS).find(|&i| at(i) == exit.rip) else {
            rt::check!(
                failures,
                false,
                "exit ",
                exit.reason,
                " at GUEST_RIP ",
                Hex(exit.rip),
                ", not at one of L2's instructions"
            );
            break;
        };
        for skipped in &EXPECT[next..i] {
            rt::check!(failures, false, skipped.what, ": no VM exit");
        }
        if i == INSNS {
            rt::check!(failures, exit.reason == reason::HLT, "hlt: exit reason ", exit.reason, " (HLT is 12)");
            halted = true;
            break;
        }
        let e = &EXPECT[i];
        let len = u64::from(offsets[i + 1] - offsets[i]);
        rt::check!(failures, exit.reason == e.reason, e.what, ": exit reason ", exit.reason, ", expected ", e.reason);
        rt::check!(
            failures,
            exit.instruction_len == len,
            e.what,
            ": VM_EXIT_INSTRUCTION_LEN ",
            exit.instruction_len,
            ", expected ",
            len
        );
        rt::check!(
            failures,
            exit.qualification == e.qualification,
            e.what,
            ": EXIT_QUALIFICATION ",
            Hex(exit.qualification),
            ", expected ",
            Hex(e.qualification)
        );
        let info = hv::read(field::VMX_INSTRUCTION_INFO)? as u32;
        let (mask, want) = e.info.expected();
        if mask != 0 {
            rt::check!(
                failures,
                info & mask == want,
                e.what,
                ": VMX_INSTRUCTION_INFO ",
                Hex(info.into()),
                ", bits ",
                Hex(mask.into()),
                " expected ",
                Hex(want.into())
            );
        }
        hv::write(field::GUEST_RIP, at(i + 1))?;
        next = i + 1;
    }
    rt::check!(failures, halted, "L2 reached its HLT");
    let cur = vmx::vmptrst()?;
    rt::check!(failures, cur == VMCS.addr(), "L1's current VMCS is still ", Hex(VMCS.addr()), ": ", Hex(cur));
    let untouched = (0..512).all(|i| SCRATCH.read_u64(i * 8) == 0x5c5c_5c5c_0000_0000 | i as u64);
    rt::check!(failures, untouched, "no memory operand of L2 was accessed");
    let r = vmx::vmxoff();
    rt::check!(failures, r.is_ok(), "VMXOFF: ", hv::Outcome(r));
    rt::println!(if failures == 0 { "vmx-l2-vmx: all checks passed" } else { "vmx-l2-vmx: some checks FAILED" });
    Ok(failures)
}
