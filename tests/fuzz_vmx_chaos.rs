//! The vmx-chaos guest under nestbed: seeded streams of one-field VMCS changes and VM entries
//! near the valid/invalid boundary (guests/vmx-chaos). nestbed must survive every one and
//! give each an SDM outcome. `NESTBED_FUZZ_SCALE` multiplies the seeds and the entries.

mod common;

#[test]
fn vmx_chaos_streams_get_sdm_outcomes_and_nestbed_survives() {
    let scale = common::fuzz_scale();
    let (seeds, n) = (3 * scale, 150 * scale);
    let mut total = 0;
    for seed in 1..=seeds {
        let cmdline = format!("seed={seed} n={n}");
        let r = common::nestbed(&["run", "--guest", "vmx-chaos", "--cmdline", &cmdline, "--timeout", "300"]);
        let summary = r.stdout.lines().find(|l| l.starts_with("vmx-chaos: seed")).unwrap_or_default().to_string();
        assert_eq!(r.code, 0, "{cmdline}: {summary}\n{}\n{}", r.stdout, r.stderr);
        assert!(summary.contains(" 0 outcomes outside the SDM"), "{cmdline}: {summary}");
        println!("{summary}");
        total += n;
    }
    println!("vmx-chaos: {total} VM entries over {seeds} seeds");
}

#[test]
fn a_guest_cr0_with_nw_set_and_cd_clear_is_entered_not_a_kvm_error() {
    // Seed 3 found it: VM entry neither checks nor loads CR0.NW and CR0.CD (SDM 27.3.1.1),
    // and KVM refuses NW=1 with CD=0, so nestbed once ended with "KVM_RUN: Invalid argument".
    let r = common::nestbed(&["run", "--guest", "vmx-chaos", "--cmdline", "seed=3 n=600 verbose", "--timeout", "300"]);
    assert!(r.stdout.contains("vmx-chaos: field 0x6800 = 0xa0000033, VMRESUME"), "{}", r.stdout);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout.lines().last().unwrap_or_default(), r.stderr);
}

#[test]
fn a_guest_cr4_bit_the_host_cannot_hold_fails_vm_entry_not_a_kvm_error() {
    // Seed 5 found it (`just fuzz`): GUEST_CR4 with PCIDE, which this host's KVM refuses in any
    // vCPU's state, passed the entry checks and ended the run with "KVM_RUN: Invalid argument".
    // IA32_VMX_CR4_FIXED1 now offers only the CR4 bits a start-up probe finds the host takes.
    let r = common::nestbed(&["run", "--guest", "vmx-chaos", "--cmdline", "seed=5 n=700 verbose", "--timeout", "300"]);
    assert!(r.stdout.contains("vmx-chaos: field 0x6804 = 0x62620, VMRESUME"), "{}", r.stdout);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout.lines().last().unwrap_or_default(), r.stderr);
}
