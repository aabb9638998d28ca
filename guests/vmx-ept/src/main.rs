//! EPT (SDM 29.3): L1 builds 4-level EPT paging structures with 2-MByte pages (identity for
//! low memory), a 1-GByte page (L2-physical 1 GiB onto L1-physical 0) and a table of 4-KByte
//! pages (a window at L2-physical 0x3000_0000 onto pages elsewhere in L1), then runs an L2
//! that reads through the remapped pages and provokes EPT violations on a read, a write and
//! an instruction fetch, and an EPT misconfiguration. First, L2 starts with its page tables
//! unmapped: an EPT violation on the paging-structure read (bit 8 clear). L1 checks each exit (reason, exit
//! qualification per SDM 28.2.1 Table 28-7, guest-physical and guest-linear address, GUEST_RIP
//! at the faulting instruction), fixes the entry, executes INVEPT and resumes L2, which then
//! completes the access. Then L1 maps a page without INVEPT (allowed: not-present entries are
//! not cached, SDM 29.4.3.1), and switches EPT_POINTER to a second hierarchy and back.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

use hv::{ctl, field, reason, Caps, Config, Io, Page, Stack, Vcpu};
use rt::vmx::{self, VmFail};
use rt::Hex;

rt::entry!(main);

/// L2-physical base of the 4-KByte-page window (PD entry 384 of the first GiB).
const WINDOW: u64 = 0x3000_0000;
const WINDOW_PDE: usize = (WINDOW >> 21) as usize;
/// L2-physical base of the 1-GByte page onto L1-physical 0.
const ALIAS_1G: u64 = 0x4000_0000;

const MAGIC_REMAP: u64 = 0x4d41_4749_4321_0001;
const MAGIC_1G: u64 = 0x4d41_4749_4321_0002;
const MAGIC_LATE: u64 = 0x4d41_4749_4321_0003;
const MAGIC_WRITE: u64 = 0x4d41_4749_4321_0004;
const FAR_RESULT: u64 = 0x600d;

/// EPT entry bits (SDM 29.3.2): read, write, execute, memory type WB, page (leaf) size.
const R: u64 = 1;
const W: u64 = 2;
const X: u64 = 4;
const WB: u64 = 6 << 3;
const PAGE: u64 = 1 << 7;
/// EPTP: memory type WB, page-walk length 4 (SDM 25.6.11).
const EPTP_FLAGS: u64 = 6 | 3 << 3;

static VMXON_REGION: Page = Page::new();
static VMCS: Page = Page::new();
static L2_STACK: Stack = Stack::new();
static EPT_PML4: Page = Page::new();
static EPT_PDPT: Page = Page::new();
static EPT_PD: Page = Page::new();
static EPT_PT: Page = Page::new();
static EPT_PML4_B: Page = Page::new();
static EPT_PDPT_B: Page = Page::new();
static REMAP_PAGE: Page = Page::new();
static BIG_PAGE: Page = Page::new();
static LATE_PAGE: Page = Page::new();
static WRITE_PAGE: Page = Page::new();

// L2's code. r12 holds the 1-GByte alias of BIG_PAGE, r13 the L2-physical (= linear) address
// of the code page only mapped later. Each step reports its value in RSI with `out 0x80, al`
// and AL = step number.
global_asm!(
    r#"
    .section .text.vmx_ept_l2, "ax"
    .global vmx_ept_l2
    vmx_ept_l2:
        mov rsi, qword ptr [{window}]
        mov al, 1
        out 0x80, al
        mov rsi, qword ptr [r12]
        mov al, 2
        out 0x80, al
    .global vmx_ept_l2_read
    vmx_ept_l2_read:
        mov rsi, qword ptr [{window} + 0x2000]
        mov al, 3
        out 0x80, al
        mov rsi, {write_value}
    .global vmx_ept_l2_write
    vmx_ept_l2_write:
        mov qword ptr [{window} + 0x1000], rsi
        mov al, 4
        out 0x80, al
    .global vmx_ept_l2_misconfig
    vmx_ept_l2_misconfig:
        mov rsi, qword ptr [{window} + 0x3000]
        mov al, 5
        out 0x80, al
        call r13
        mov rsi, rax
        mov al, 6
        out 0x80, al
        mov rsi, qword ptr [{window} + 0x5000]
        mov al, 7
        out 0x80, al
    .global vmx_ept_l2_switch
    vmx_ept_l2_switch:
        mov rsi, qword ptr [r12]
        mov al, 8
        out 0x80, al
    2:  hlt
        jmp 2b

    .section .text.vmx_ept_far, "ax"
    .balign 4096
    .global vmx_ept_far
    vmx_ept_far:
        mov eax, {far}
        ret
    .balign 4096
    "#,
    window = const WINDOW,
    write_value = const MAGIC_WRITE,
    far = const FAR_RESULT,
);

extern "C" {
    static vmx_ept_l2_read: u8;
    static vmx_ept_l2_write: u8;
    static vmx_ept_l2_misconfig: u8;
    static vmx_ept_l2_switch: u8;
    static vmx_ept_far: u8;
    fn vmx_ept_l2() -> !;
}

extern "C" fn l2_main() -> ! {
    // SAFETY: jumps to L2's code above, which never returns.
    unsafe { asm!("jmp {}", sym vmx_ept_l2, options(noreturn)) }
}

fn label(p: *const u8) -> u64 {
    p as u64
}

/// 2-MByte identity pages for the first GiB except the window's, which points to the PT;
/// PDPT[1] is the 1-GByte page.
fn build_ept() -> u64 {
    for p in [&EPT_PML4, &EPT_PDPT, &EPT_PD, &EPT_PT] {
        p.clear();
    }
    EPT_PML4.write_u64(0, EPT_PDPT.addr() | R | W | X);
    EPT_PDPT.write_u64(0, EPT_PD.addr() | R | W | X);
    EPT_PDPT.write_u64(8, WB | PAGE | R | W);
    for i in 0..512usize {
        let e = if i == WINDOW_PDE { EPT_PT.addr() | R | W | X } else { ((i as u64) << 21) | WB | PAGE | R | W | X };
        EPT_PD.write_u64(8 * i, e);
    }
    EPT_PT.write_u64(0, REMAP_PAGE.addr() | WB | R);
    EPT_PT.write_u64(8, WRITE_PAGE.addr() | WB | R | X);
    // PT[2] and PT[4] not present; PT[3] write-only, a misconfiguration (SDM 29.3.3.1).
    EPT_PT.write_u64(24, REMAP_PAGE.addr() | WB | W);
    EPT_PML4.addr() | EPTP_FLAGS
}

/// A second hierarchy: the same first GiB, no 1-GByte page.
fn build_ept_b() -> u64 {
    EPT_PML4_B.clear();
    EPT_PDPT_B.clear();
    EPT_PML4_B.write_u64(0, EPT_PDPT_B.addr() | R | W | X);
    EPT_PDPT_B.write_u64(0, EPT_PD.addr() | R | W | X);
    EPT_PML4_B.addr() | EPTP_FLAGS
}

fn main(_: &rt::BootInfo) -> u32 {
    match run() {
        Ok(failures) => failures,
        Err(e) => {
            rt::println!("FAIL a VMX instruction failed: ", e);
            rt::EXIT_CHECK_FAILED
        }
    }
}

/// An I/O exit of step `step` reporting `value` in RSI.
fn expect_io(failures: &mut u32, exit: &hv::Exit, vcpu: &Vcpu, step: u64, value: u64, what: &str) -> bool {
    let mut f = 0u32;
    let io = Io::decode(exit.qualification);
    rt::check!(
        f,
        exit.reason == reason::IO_INSTRUCTION && io.port == 0x80 && vcpu.regs.rax & 0xff == step,
        "step ",
        step,
        ": OUT exit (reason ",
        exit.reason,
        ", AL ",
        vcpu.regs.rax & 0xff,
        ")"
    );
    rt::check!(f, vcpu.regs.rsi == value, "  ", what, ": L2 read ", Hex(vcpu.regs.rsi), ", expected ", Hex(value));
    *failures += f;
    f == 0 && exit.skip().is_ok()
}

/// An EPT violation or misconfiguration at `gpa` by the instruction at `rip`.
fn expect_ept(
    failures: &mut u32,
    exit: &hv::Exit,
    want_reason: u32,
    gpa: u64,
    rip: u64,
    qual: Option<u64>,
) -> Result<bool, VmFail> {
    let mut f = 0u32;
    rt::check!(f, exit.reason == want_reason, "exit reason ", exit.reason, " (expected ", want_reason, ")");
    let got_gpa = hv::read(field::GUEST_PHYSICAL_ADDRESS)?;
    rt::check!(f, got_gpa == gpa, "  GUEST_PHYSICAL_ADDRESS ", Hex(got_gpa), " (expected ", Hex(gpa), ")");
    rt::check!(f, exit.rip == rip, "  GUEST_RIP ", Hex(exit.rip), " at the faulting instruction ", Hex(rip));
    if let Some(q) = qual {
        // Bits 0-5 access and permissions, 7 guest-linear address valid, 8 access to the
        // translation (SDM 28.2.1, Table 28-7).
        rt::check!(
            f,
            exit.qualification & 0x1bf == q,
            "  exit qualification ",
            Hex(exit.qualification),
            " (expected ",
            Hex(q),
            " in bits 0-5, 7, 8)"
        );
        let gla = hv::read(field::GUEST_LINEAR_ADDRESS)?;
        rt::check!(f, gla == gpa, "  GUEST_LINEAR_ADDRESS ", Hex(gla), " (L2's paging is the identity there)");
    }
    *failures += f;
    Ok(f == 0)
}

fn invept(single: bool, eptp: u64) -> Result<(), VmFail> {
    let kind = if single { 1 } else { 2 };
    let r = vmx::invept(kind, &[eptp, 0]);
    if let Err(e) = r {
        rt::println!("FAIL INVEPT type ", kind, ": ", e);
    }
    r
}

fn run() -> Result<u32, VmFail> {
    let mut failures = 0u32;
    let caps = Caps::read();
    let ept_ok = caps.proc2.allowed1 & ctl::PROC2_ENABLE_EPT != 0;
    rt::check!(failures, ept_ok, "IA32_VMX_PROCBASED_CTLS2 allows enable EPT");
    // Page-walk length 4, WB, 2-MByte and 1-GByte pages, INVEPT single-context and
    // all-context (SDM A.10).
    let need = 1 << 6 | 1 << 14 | 1 << 16 | 1 << 17 | 1 << 20 | 1 << 25 | 1 << 26;
    rt::check!(
        failures,
        caps.ept_vpid & need == need,
        "IA32_VMX_EPT_VPID_CAP ",
        Hex(caps.ept_vpid),
        " has ",
        Hex(need)
    );
    if failures != 0 {
        return Ok(failures);
    }
    REMAP_PAGE.write_u64(0, MAGIC_REMAP);
    BIG_PAGE.write_u64(0, MAGIC_1G);
    LATE_PAGE.write_u64(0, MAGIC_LATE);
    WRITE_PAGE.write_u64(0, 0);
    let eptp = build_ept();

    vmx::enable(VMXON_REGION.addr())?;
    hv::load_vmcs(&caps, &VMCS)?;
    hv::setup_vmcs(
        &caps,
        &Config {
            entry: l2_main,
            stack_top: L2_STACK.top(),
            proc: ctl::PROC_HLT_EXITING | ctl::PROC_UNCOND_IO_EXITING,
            proc2: ctl::PROC2_ENABLE_EPT,
            io_bitmaps: None,
            msr_bitmap: None,
        },
    )?;
    hv::write(field::EPT_POINTER, eptp)?;

    // Addresses of labels in L2's code (taking a raw pointer to an extern static is safe).
    let (read_at, write_at, misconfig_at, switch_at, far) = (
        label(&raw const vmx_ept_l2_read),
        label(&raw const vmx_ept_l2_write),
        label(&raw const vmx_ept_l2_misconfig),
        label(&raw const vmx_ept_l2_switch),
        label(&raw const vmx_ept_far),
    );
    let mut vcpu = Vcpu::default();
    vcpu.regs.r12 = ALIAS_1G + BIG_PAGE.addr();
    vcpu.regs.r13 = WINDOW + 0x4000;

    rt::println!("L2 starts with the first 2 MiB (its code and page tables) not mapped:");
    EPT_PD.write_u64(0, 0);
    let e = vcpu.run()?;
    // Data read of a paging-structure entry (the PML4E at CR3) while translating GUEST_RIP:
    // guest-linear address valid, bit 8 clear.
    let pml4e = rt::io::cr3() & !0xfff;
    if !expect_ept(&mut failures, &e, reason::EPT_VIOLATION, pml4e, l2_main as *const () as u64, None)? {
        return Ok(failures);
    }
    let gla = hv::read(field::GUEST_LINEAR_ADDRESS)?;
    rt::check!(
        failures,
        e.qualification & 0x1bf == 0x81,
        "  exit qualification ",
        Hex(e.qualification),
        " (expected 0x81 in bits 0-5, 7, 8)"
    );
    rt::check!(failures, gla == e.rip, "  GUEST_LINEAR_ADDRESS ", Hex(gla), " is the address being translated");
    EPT_PD.write_u64(0, WB | PAGE | R | W | X);
    invept(true, eptp)?;

    let e = vcpu.run()?;
    if !expect_io(
        &mut failures,
        &e,
        &vcpu,
        1,
        MAGIC_REMAP,
        "L2-physical 0x30000000 through a 4-KByte page onto another L1 page",
    ) {
        return Ok(failures.max(1));
    }
    let e = vcpu.run()?;
    if !expect_io(&mut failures, &e, &vcpu, 2, MAGIC_1G, "through the 1-GByte page at L2-physical 1 GiB") {
        return Ok(failures.max(1));
    }

    rt::println!("read of a not-present page:");
    let e = vcpu.run()?;
    // Data read, no permissions, guest-linear address valid.
    if !expect_ept(&mut failures, &e, reason::EPT_VIOLATION, WINDOW + 0x2000, read_at, Some(0x181))? {
        return Ok(failures);
    }
    EPT_PT.write_u64(16, LATE_PAGE.addr() | WB | R | W);
    invept(true, eptp)?;
    let e = vcpu.run()?;
    if !expect_io(&mut failures, &e, &vcpu, 3, MAGIC_LATE, "after mapping it and INVEPT (single-context)") {
        return Ok(failures.max(1));
    }

    rt::println!("write to a read/execute page:");
    let e = vcpu.run()?;
    // Data write; the translation allows read and execute.
    if !expect_ept(&mut failures, &e, reason::EPT_VIOLATION, WINDOW + 0x1000, write_at, Some(0x1aa))? {
        return Ok(failures);
    }
    rt::check!(failures, WRITE_PAGE.read_u64(0) == 0, "  the page is unchanged: ", Hex(WRITE_PAGE.read_u64(0)));
    EPT_PT.write_u64(8, WRITE_PAGE.addr() | WB | R | W | X);
    invept(false, eptp)?;
    let e = vcpu.run()?;
    if !expect_io(
        &mut failures,
        &e,
        &vcpu,
        4,
        MAGIC_WRITE,
        "after making it writable and INVEPT (all-context), the value written",
    ) {
        return Ok(failures.max(1));
    }
    rt::check!(
        failures,
        WRITE_PAGE.read_u64(0) == MAGIC_WRITE,
        "  L1 sees L2's write in its page: ",
        Hex(WRITE_PAGE.read_u64(0))
    );

    rt::println!("read through a write-only entry:");
    let e = vcpu.run()?;
    if !expect_ept(&mut failures, &e, reason::EPT_MISCONFIG, WINDOW + 0x3000, misconfig_at, None)? {
        return Ok(failures);
    }
    EPT_PT.write_u64(24, REMAP_PAGE.addr() | WB | R);
    invept(true, eptp)?;
    let e = vcpu.run()?;
    if !expect_io(&mut failures, &e, &vcpu, 5, MAGIC_REMAP, "after fixing the entry") {
        return Ok(failures.max(1));
    }

    rt::println!("call into a not-present page:");
    let e = vcpu.run()?;
    // Instruction fetch, no permissions, guest-linear address valid; GUEST_RIP is the target.
    if !expect_ept(&mut failures, &e, reason::EPT_VIOLATION, WINDOW + 0x4000, WINDOW + 0x4000, Some(0x184))? {
        return Ok(failures);
    }
    EPT_PT.write_u64(32, far | WB | R | X);
    invept(true, eptp)?;
    let e = vcpu.run()?;
    if !expect_io(&mut failures, &e, &vcpu, 6, FAR_RESULT, "L2 ran the code page mapped at 0x30004000") {
        return Ok(failures.max(1));
    }

    rt::println!("a page mapped without INVEPT:");
    EPT_PT.write_u64(40, LATE_PAGE.addr() | WB | R);
    let e = vcpu.run()?;
    if !expect_io(&mut failures, &e, &vcpu, 7, MAGIC_LATE, "L2 read it at once") {
        return Ok(failures.max(1));
    }

    rt::println!("EPT_POINTER switched to tables without the 1-GByte page:");
    hv::write(field::EPT_POINTER, build_ept_b())?;
    let e = vcpu.run()?;
    if !expect_ept(&mut failures, &e, reason::EPT_VIOLATION, vcpu.regs.r12, switch_at, Some(0x181))? {
        return Ok(failures);
    }
    hv::write(field::EPT_POINTER, eptp)?;
    let e = vcpu.run()?;
    if !expect_io(&mut failures, &e, &vcpu, 8, MAGIC_1G, "back on the first tables, through the 1-GByte page") {
        return Ok(failures.max(1));
    }

    let e = vcpu.run()?;
    rt::check!(failures, e.reason == reason::HLT, "L2 ended with HLT (exit reason ", e.reason, ")");
    vmx::vmxoff()?;
    rt::println!(if failures == 0 { "vmx-ept: all checks passed" } else { "vmx-ept: some checks FAILED" });
    Ok(failures)
}
