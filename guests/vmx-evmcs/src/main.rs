//! An L1 hypervisor on nestbed's enlightened VMCS (EVMCS.md).
//!
//! - Registering a page through the MSR is refused with #GP outside VMX operation, with
//!   reserved bits, for a page outside RAM, for the VMXON region and for a wrong revision
//!   identifier or a shadow VMCS; RDMSR gives the registered page.
//! - L1 sets the VMCS up and handles L2's exits with memory accesses only (the integration
//!   test counts L1's VMREAD and VMWRITE traps).
//! - A field written without its bit in the fields-changed mask is not taken: L2 executes its
//!   OUT again. Marked, it is.
//! - A VMREAD that traps sees what L1 marked changed in the page.
//! - VMfailValid leaves VM_INSTRUCTION_ERROR in the page, a VM-entry failure its exit reason.
//! - L2 writes HOST_RIP in the page, and marks it, while it runs: the running VM is not
//!   affected, and the VM exit writes the VMCS back over it.
//! - WRMSR 0, and VMPTRLD, end enlightened use; the page is then an ordinary VMCS region.
#![no_std]
#![no_main]

use core::arch::asm;

use hv::{ctl, field, reason, Caps, Config, Page, Stack, Vcpu};
use rt::vmx::{self, evmcs, VmFail};
use rt::Hex;

rt::entry!(main);

static VMXON_REGION: Page = Page::new();
static VMCS: Page = Page::new();
static OTHER: Page = Page::new();
static L2_STACK: Stack = Stack::new();

/// Exit status where nestbed does not offer the enlightened VMCS (`--no-evmcs`).
const NOT_OFFERED: u32 = 77;
const GP: u8 = 13;
/// What L2 writes into the page's HOST_RIP.
const BOGUS_HOST_RIP: u64 = 0xdead;

/// L2 (RBX: the VMCS page): OUT, then HOST_RIP := BOGUS_HOST_RIP in the page with its group
/// marked, OUT, HLT.
extern "C" fn l2_main() -> ! {
    // SAFETY: port I/O and HLT exit to L1; the store is to L1's VMCS page, which L2 shares.
    unsafe {
        asm!(
            "out 0x80, al",
            "mov qword ptr [rbx + {host_rip}], {bogus}",
            "or qword ptr [rbx + {changed}], {host_group}",
            "out 0x80, al",
            "2: hlt",
            "jmp 2b",
            host_rip = const evmcs::offset(field::HOST_RIP as u32),
            bogus = const BOGUS_HOST_RIP,
            changed = const evmcs::OFFSET_CHANGED,
            host_group = const 1u32 << evmcs::group(field::HOST_RIP as u32),
            options(noreturn)
        )
    }
}

/// WRMSR with a #GP fixup: the vector of the fault, if any.
fn try_wrmsr(msr: u32, v: u64) -> Option<u8> {
    let faulted: u64;
    // SAFETY: WRMSR of the protocol's MSR; a fault resumes at the fixup.
    unsafe {
        asm!(
            "xor {f:e}, {f:e}",
            "66: wrmsr",
            "jmp 68f",
            "67: mov {f:e}, 1",
            "68:",
            ".pushsection .ex_table, \"a\"",
            ".quad 66b, 67b",
            ".popsection",
            f = out(reg) faulted,
            in("ecx") msr,
            in("eax") v as u32,
            in("edx") (v >> 32) as u32,
        )
    }
    (faulted != 0).then(|| rt::idt::last_fault() as u8)
}

fn page_u64(offset: usize) -> u64 {
    VMCS.read_u64(offset)
}

fn main(_: &rt::BootInfo) -> u32 {
    if !evmcs::offered() {
        rt::println!("the enlightened VMCS is not offered (CPUID leaf 0x400000e0)");
        return NOT_OFFERED;
    }
    match run(&Caps::read()) {
        Ok(failures) => failures,
        Err(e) => {
            rt::println!("FAIL a VMX instruction failed: ", e);
            rt::EXIT_CHECK_FAILED
        }
    }
}

fn run(caps: &Caps) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    let rev = caps.revision();
    VMCS.init_region(rev);
    let r = try_wrmsr(evmcs::MSR, VMCS.addr() | 1);
    rt::check!(failures, r == Some(GP), "registration outside VMX operation: #GP");
    vmx::enable(VMXON_REGION.addr())?;
    rt::check!(failures, rt::io::rdmsr(evmcs::MSR) == 0, "RDMSR before registration: 0");
    vmx::vmclear(VMCS.addr())?;
    OTHER.init_region(0x1234);
    for (what, value) in [
        ("reserved bits 11:1", VMCS.addr() | 0x801),
        ("a page outside RAM", 0xf_0000_0000 | 1),
        ("the VMXON region", VMXON_REGION.addr() | 1),
        ("a wrong revision identifier", OTHER.addr() | 1),
    ] {
        let r = try_wrmsr(evmcs::MSR, value);
        rt::check!(failures, r == Some(GP), "registration of ", what, ": #GP");
    }
    OTHER.init_region(rev);
    OTHER.write_u32(0, rev | 1 << 31);
    rt::check!(failures, try_wrmsr(evmcs::MSR, OTHER.addr() | 1) == Some(GP), "registration of a shadow VMCS: #GP");
    rt::check!(failures, rt::io::rdmsr(evmcs::MSR) == 0, "nothing registered after the refusals");

    evmcs::register(VMCS.addr());
    let m = rt::io::rdmsr(evmcs::MSR);
    rt::check!(failures, m == VMCS.addr() | 1, "RDMSR gives the page | 1: ", Hex(m));
    let cur = vmx::vmptrst()?;
    rt::check!(failures, cur == VMCS.addr(), "VMPTRST gives the page: ", Hex(cur));
    hv::setup_vmcs(
        caps,
        &Config {
            entry: l2_main,
            stack_top: L2_STACK.top() - 64,
            proc: ctl::PROC_UNCOND_IO_EXITING | ctl::PROC_HLT_EXITING,
            proc2: 0,
            io_bitmaps: None,
            msr_bitmap: None,
        },
    )?;
    let mut vcpu = Vcpu { regs: Default::default(), launched: false };
    vcpu.regs.rbx = VMCS.addr();

    let Some(first) = vcpu.enter(&mut failures) else { return Ok(failures) };
    rt::check!(failures, first.reason == reason::IO_INSTRUCTION, "L2's OUT: ", hv::Seen(&first));
    let launched = VMCS.read_u32(8);
    rt::check!(failures, launched == 1, "the page's launch state is launched: ", launched);

    // GUEST_RIP written without its group marked: not taken.
    VMCS.write_u64(evmcs::offset(field::GUEST_RIP as u32), first.rip + first.instruction_len);
    let Some(again) = vcpu.enter(&mut failures) else { return Ok(failures) };
    rt::check!(
        failures,
        again.reason == reason::IO_INSTRUCTION && again.rip == first.rip,
        "GUEST_RIP without its mask bit is not taken: the OUT exits again at ",
        Hex(again.rip)
    );
    let rip_in_page = page_u64(evmcs::offset(field::GUEST_RIP as u32));
    rt::check!(failures, rip_in_page == first.rip, "the VM exit wrote GUEST_RIP back: ", Hex(rip_in_page));

    // A trapping VMREAD sees what the page says, once marked.
    evmcs::write(field::CR3_TARGET_VALUE0, 0x1234_5000);
    let v = vmx::vmread(field::CR3_TARGET_VALUE0)?;
    rt::check!(failures, v == 0x1234_5000, "VMREAD of a marked field: ", Hex(v));
    let mask = page_u64(evmcs::OFFSET_CHANGED);
    rt::check!(failures, mask == 0, "the mask is 0 after nestbed took it: ", Hex(mask));

    // VMfailValid: the error is in the page.
    hv::write(field::CR3_TARGET_COUNT, 5)?;
    let r = vcpu.run();
    let err = evmcs::read(vmx::field::VM_INSTRUCTION_ERROR);
    rt::check!(
        failures,
        matches!(r, Err(VmFail::Valid(7))) && err == 7,
        "VMRESUME with 5 CR3 targets: ",
        hv::Outcome(r.map(|_| ())),
        ", VM_INSTRUCTION_ERROR in the page ",
        err
    );
    hv::write(field::CR3_TARGET_COUNT, 0)?;
    // A VM-entry failure: its exit reason is in the page.
    hv::write(field::GUEST_ACTIVITY_STATE, 3)?;
    let r = vcpu.run()?;
    let in_page = evmcs::read(vmx::field::VM_EXIT_REASON);
    rt::check!(
        failures,
        r.reason == reason::ENTRY_FAILURE | reason::ENTRY_FAIL_GUEST_STATE && in_page == u64::from(r.reason),
        "VMRESUME with a wait-for-SIPI activity state: exit reason ",
        Hex(in_page)
    );
    hv::write(field::GUEST_ACTIVITY_STATE, 0)?;

    // Marked, GUEST_RIP is taken; L2 then writes HOST_RIP into the page.
    first.skip()?;
    let Some(second) = vcpu.enter(&mut failures) else { return Ok(failures) };
    rt::check!(
        failures,
        second.reason == reason::IO_INSTRUCTION && second.rip > first.rip,
        "with its mask bit GUEST_RIP is taken: the next OUT at ",
        Hex(second.rip)
    );
    let host_rip = page_u64(evmcs::offset(field::HOST_RIP as u32));
    let mask = page_u64(evmcs::OFFSET_CHANGED);
    rt::check!(
        failures,
        host_rip != BOGUS_HOST_RIP && mask == 0,
        "L2's write of HOST_RIP into the page is replaced at the VM exit: ",
        Hex(host_rip),
        ", mask ",
        Hex(mask)
    );
    second.skip()?;
    let Some(last) = vcpu.enter(&mut failures) else { return Ok(failures) };
    rt::check!(failures, last.reason == reason::HLT, "L2 halts: ", hv::Seen(&last));

    // WRMSR 0 ends enlightened use; the VMCS stays current and VMREAD reads it.
    rt::check!(failures, try_wrmsr(evmcs::MSR, 0).is_none(), "WRMSR 0 is accepted");
    evmcs::forget();
    rt::check!(failures, rt::io::rdmsr(evmcs::MSR) == 0, "RDMSR after WRMSR 0: 0");
    let rip = vmx::vmread(field::GUEST_RIP)?;
    rt::check!(failures, rip == last.rip, "VMREAD of GUEST_RIP after WRMSR 0: ", Hex(rip));
    // Registered again, then VMPTRLD of the same page as an ordinary VMCS.
    evmcs::register(VMCS.addr());
    vmx::vmptrld(OTHER.addr()).ok();
    vmx::vmptrld(VMCS.addr())?;
    rt::check!(failures, rt::io::rdmsr(evmcs::MSR) == 0, "after VMPTRLD the VMCS is not enlightened");
    let rip = vmx::vmread(field::GUEST_RIP)?;
    rt::check!(failures, rip == last.rip, "VMPTRLD of the page reads its GUEST_RIP: ", Hex(rip));

    let r = vmx::vmxoff();
    rt::check!(failures, r.is_ok(), "VMXOFF: ", hv::Outcome(r));
    rt::println!(if failures == 0 { "vmx-evmcs: all checks passed" } else { "vmx-evmcs: some checks FAILED" });
    Ok(failures)
}
