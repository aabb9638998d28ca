//! Property test of the VM-entry checks: a seeded random walk from a known-good VMCS that
//! changes one field at a time (often to a boundary value or by one bit), keeping changes
//! that still pass some of the time so the walk stays near the valid/invalid boundary. Every
//! result must be an SDM outcome: entry allowed, VMfailValid(7) for a control field,
//! VMfailValid(8) for a host-state field, or a VM-entry failure exit with a guest-state
//! qualification (SDM 27.2, 27.3, 27.8), the rule named with its SDM section.

use super::testing::test_vmcs_64bit;
use super::*;
use crate::vmx::caps::VmxCaps;
use crate::vmx::cpu::testing::{Ram, Rng};
use crate::vmx::fields::FIELDS;

/// How many times the CI budget to run (`NESTBED_FUZZ_SCALE`, set by `just fuzz`).
fn scale() -> u64 {
    std::env::var("NESTBED_FUZZ_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1).max(1)
}

/// A new value for `old`: one bit flipped, a boundary value, or random bits.
fn mutate(rng: &mut Rng, old: u64) -> u64 {
    match rng.below(4) {
        0 | 1 => old ^ 1 << rng.below(64),
        2 => [
            0,
            1,
            0xffff,
            0xffff_ffff,
            u64::MAX,
            1 << 31,
            1 << 32,
            0x1000,
            0xfff,
            old.wrapping_add(1),
            old.wrapping_sub(1),
        ][rng.below(11) as usize],
        _ => rng.next(),
    }
}

#[test]
fn random_walks_near_the_entry_boundary_give_sdm_outcomes() {
    let steps = 100_000 * scale();
    let mut rng = Rng(0x5d3_c4a0);
    let caps = VmxCaps::default();
    let writable: Vec<u32> = FIELDS.iter().filter(|f| !f.read_only()).map(|f| f.encoding).collect();
    let mut v = test_vmcs_64bit();
    let mut counts = [0u64; 4];
    for step in 0..steps {
        if step % 500 == 0 {
            v = test_vmcs_64bit();
        }
        let enc = writable[rng.below(writable.len() as u64) as usize];
        let old = v.get(enc);
        assert!(v.write(enc, mutate(&mut rng, old)), "{enc:#x}");
        let host_lma = rng.below(8) != 0;
        match check_vm_entry_from(&v, &caps, [36, 39, 46, 52][rng.below(4) as usize], host_lma, &Ram(Vec::new())) {
            Ok(()) => counts[0] += 1,
            Err(violation) => {
                assert!(!violation.rule.is_empty(), "{enc:#x}");
                let section_ok = match violation.class {
                    CheckClass::Control => {
                        counts[1] += 1;
                        // 27.2.4 checks controls and host state against the address-space size.
                        violation.sdm.starts_with("27.2.1") || violation.sdm.starts_with("27.2.4")
                    }
                    CheckClass::HostState => {
                        counts[2] += 1;
                        violation.sdm.starts_with("27.2.2")
                            || violation.sdm.starts_with("27.2.3")
                            || violation.sdm.starts_with("27.2.4")
                    }
                    CheckClass::GuestState { qualification } => {
                        counts[3] += 1;
                        // SDM 27.8: 0 (default), 2 (PDPTE loading), 3 (NMI injection), 4 (VMCS link).
                        matches!(qualification, 0 | 2 | 3 | 4) && violation.sdm.starts_with("27.3")
                    }
                };
                assert!(section_ok, "{violation} ({:?}) after writing {:#x}", violation.class, enc);
                // Usually go back: the next change starts from a VMCS that still passes or
                // fails in one place only.
                if rng.below(4) != 0 {
                    v.set(enc, old);
                }
            }
        }
    }
    println!(
        "VM-entry check walk: {steps} VMCS mutations: {} pass, {} VMfailValid(7), {} VMfailValid(8), {} entry-failure exits",
        counts[0], counts[1], counts[2], counts[3]
    );
    assert!(counts.iter().all(|&n| n > 0), "the walk reaches every outcome: {counts:?}");
}
