//! Property test of the VMX instruction model: seeded random streams of VMXON, VMCLEAR,
//! VMPTRLD, VMPTRST, VMREAD, VMWRITE, VMLAUNCH, VMRESUME, INVEPT, INVVPID and VMXOFF with
//! operands near the valid/invalid boundary (good and bad pointers, revisions, encodings,
//! CPL and modes). Each outcome must be one the SDM's pseudocode allows (SDM 31.2): VMsucceed,
//! VMfailInvalid only without a current VMCS, VMfailValid(n) with n in the current VMCS's
//! VM_INSTRUCTION_ERROR, #UD/#GP/#SS/#PF, or a VM entry from VMLAUNCH/VMRESUME with a current
//! VMCS, whose checks give VMfailValid(7 or 8) or an entry-failure exit.

use super::caps::VmxCaps;
use super::checks::check_vm_entry;
use super::checks::testing::test_vmcs_64bit;
use super::cpu::testing::FakeEnv;
use super::cpu::testing::Rng;
use super::cpu::{Outcome, VmxCpu};
use super::decode::decode;
use super::fields::{FIELDS, VM_INSTRUCTION_ERROR};

const VMXON_REGION: u64 = 0x1000;
const VMCS: [u64; 2] = [0x2000, 0x3000];
/// A page whose revision identifier is wrong.
const BAD_REVISION: u64 = 0x4000;
const OPERAND: u64 = 0x100;
const RAM: usize = 0x10000;

/// (bytes, whether it takes a pointer operand at [rbx]).
const INSNS: [(&[u8], bool); 11] = [
    (&[0xf3, 0x0f, 0xc7, 0x33], true),        // VMXON [rbx]
    (&[0x66, 0x0f, 0xc7, 0x33], true),        // VMCLEAR [rbx]
    (&[0x0f, 0xc7, 0x33], true),              // VMPTRLD [rbx]
    (&[0x0f, 0xc7, 0x3b], false),             // VMPTRST [rbx]
    (&[0x0f, 0x78, 0xc8], false),             // VMREAD rax, rcx
    (&[0x0f, 0x79, 0xc1], false),             // VMWRITE rax, rcx
    (&[0x0f, 0x01, 0xc2], false),             // VMLAUNCH
    (&[0x0f, 0x01, 0xc3], false),             // VMRESUME
    (&[0x0f, 0x01, 0xc4], false),             // VMXOFF
    (&[0x66, 0x0f, 0x38, 0x80, 0x03], false), // INVEPT rax, [rbx]
    (&[0x66, 0x0f, 0x38, 0x81, 0x03], false), // INVVPID rax, [rbx]
];

fn scale() -> u64 {
    std::env::var("NESTBED_FUZZ_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1).max(1)
}

fn pointer(rng: &mut Rng) -> u64 {
    match rng.below(8) {
        0 => VMXON_REGION,
        1 | 2 => VMCS[rng.below(2) as usize],
        3 => BAD_REVISION,
        4 => VMCS[0] + 8,
        5 => 1 << 40,
        6 => 0,
        _ => rng.next(),
    }
}

#[test]
fn random_instruction_streams_give_sdm_outcomes() {
    let steps = 100_000 * scale();
    let mut rng = Rng(0xc4a0_5eed);
    let caps = VmxCaps::default();
    let mut cpu = VmxCpu::new(caps.clone());
    let mut env = FakeEnv::new(RAM);
    let rev = caps.revision();
    for r in [VMXON_REGION, VMCS[0], VMCS[1]] {
        env.ram.put_u32(r, rev);
    }
    env.ram.put_u32(BAD_REVISION, rev ^ 0x55);
    let writable: Vec<u32> = FIELDS.iter().map(|f| f.encoding).collect();
    let mut seen = std::collections::BTreeMap::new();
    for step in 0..steps {
        // Now and then the processor's mode changes.
        if rng.below(64) == 0 {
            let odd = rng.below(4) == 0;
            env.cpl = if odd && rng.below(2) == 0 { 3 } else { 0 };
            env.lm64 = !(odd && rng.below(2) == 0);
            env.rflags = if odd && rng.below(2) == 0 { 0x2 | 1 << 17 } else { 0x2 };
        }
        // Outside VMX operation, VMXON half the time (everything else is #UD there).
        let vmxon = !cpu.vmxon && rng.below(2) == 0;
        let (bytes, takes_ptr) = if vmxon { INSNS[0] } else { INSNS[rng.below(INSNS.len() as u64) as usize] };
        env.gprs[3] = OPERAND;
        if vmxon {
            env.ram.put_u64(OPERAND, if rng.below(4) == 0 { pointer(&mut rng) } else { VMXON_REGION });
        } else if takes_ptr {
            env.ram.put_u64(OPERAND, pointer(&mut rng));
        } else {
            // VMPTRST's destination, INVEPT/INVVPID descriptors.
            env.ram.put_u64(OPERAND, rng.next());
            env.ram.put_u64(OPERAND + 8, if rng.below(2) == 0 { 0 } else { rng.next() });
            if rng.below(16) == 0 {
                env.gprs[3] = rng.next();
            }
        }
        // Encodings and values for VMREAD/VMWRITE, types for INVEPT/INVVPID.
        env.gprs[0] = match rng.below(4) {
            0 => rng.below(4),
            1 => writable[rng.below(writable.len() as u64) as usize].into(),
            _ => rng.next(),
        };
        env.gprs[1] = match rng.below(3) {
            0 => writable[rng.below(writable.len() as u64) as usize].into(),
            1 => rng.below(1 << 16),
            _ => rng.next(),
        };
        let insn = decode(bytes, 64, 0).unwrap();
        let outcome = cpu.execute(&insn, &mut env);
        *seen.entry(format!("{outcome:?}").split('(').next().unwrap().to_string()).or_insert(0u64) += 1;
        match outcome {
            // A VMCS just made current starts valid half the time (as a VMM would fill it),
            // so that entries pass and VMRESUME is reached.
            Outcome::Succeed if bytes == INSNS[2].0 && rng.below(2) == 0 => {
                let good = test_vmcs_64bit();
                if let Some(v) = cpu.current_vmcs_mut() {
                    for f in FIELDS {
                        v.set(f.encoding, good.get(f.encoding));
                    }
                }
            }
            Outcome::Succeed => {}
            Outcome::FailInvalid => {
                assert!(cpu.current_vmcs().is_none(), "step {step}: VMfailInvalid with a current VMCS")
            }
            Outcome::FailValid(e) => {
                let v = cpu.current_vmcs().expect("VMfailValid needs a current VMCS");
                assert_eq!(v.get(VM_INSTRUCTION_ERROR), u64::from(e.number()), "step {step}");
            }
            Outcome::Fault(f) => assert!(matches!(f.vector(), 6 | 12 | 13 | 14), "step {step}: {f:?}"),
            Outcome::Entry { launch } => {
                assert_eq!(launch, bytes == [0x0f, 0x01, 0xc2], "step {step}");
                let v = cpu.current_vmcs().cloned().expect("a VM entry needs a current VMCS");
                match check_vm_entry(&v, &caps, 36, &env.ram) {
                    Ok(()) if launch => cpu.mark_launched(),
                    Ok(()) => {}
                    Err(violation) => {
                        if let Some(o) = cpu.entry_check_failed(&violation) {
                            assert!(matches!(o, Outcome::FailValid(e) if matches!(e.number(), 7 | 8)), "{o:?}");
                        }
                    }
                }
            }
        }
    }
    println!("VMX instruction streams: {steps} instructions: {seen:?}");
    for kind in ["Succeed", "FailInvalid", "FailValid", "Fault", "Entry { launch: true }", "Entry { launch: false }"] {
        assert!(seen.contains_key(kind), "never {kind}: {seen:?}");
    }
}
