//! The MSR areas of VM entries and exits (`vmx::msr_list`) carried out on the vCPUs: the
//! VM-entry MSR-load area into L2's vCPU (SDM 27.4), the VM-exit MSR-store area from it (28.4),
//! the VM-exit MSR-load area into L1's (28.6). A run of entries for one vCPU is one
//! KVM_SET_MSRS or KVM_GET_MSRS (per 255 MSRs); an area with a count of 0 costs nothing.
//!
//! IA32_TSC is the processor's TSC, which nestbed keeps in L1's vCPU (L2's RDTSC adds
//! TSC_OFFSET to it, `runner/sensitive.rs`): loads of it go there, and the store area gets it
//! without TSC_OFFSET, which only RDTSC and RDMSR in VMX non-root operation add (SDM 26.3); the
//! store is part of the VM exit (kvm-unit-tests' `vmx_store_tsc_test` checks this). Measured:
//! this host's KVM accepts writes of IA32_TSC and ignores them.
//!
//! KVM_SET_MSRS is a host-initiated write: KVM takes a few MSRs there that a guest's WRMSR
//! could not write (IA32_FS_BASE, which the SDM rules out anyway, and some read-only ones);
//! nestbed's own rules (`vmx::msr_list::check_entry`) come first.

use crate::error::Error;
use crate::machine::Vcpu;
use crate::vmx::msr_list::{MsrEntry, IA32_TSC};

/// MSRs of L1 that nestbed models itself instead of KVM (the local APIC's).
pub trait ModelMsrs {
    fn handles(&self, index: u32) -> bool;
    /// WRMSR; false when it would #GP.
    fn write(&mut self, index: u32, value: u64) -> bool;
}

/// No MSR is modelled.
pub struct NoModel;

impl ModelMsrs for NoModel {
    fn handles(&self, _: u32) -> bool {
        false
    }
    fn write(&mut self, _: u32, _: u64) -> bool {
        false
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Home {
    Vcpu,
    /// The processor's TSC, in L1's vCPU.
    Tsc,
    Model,
}

/// Loads `entries` in order into `vcpu` (IA32_TSC into `l1`, `model`'s MSRs through it) and
/// returns the position of the first entry refused, the entries before it being loaded.
pub fn load(entries: &[MsrEntry], vcpu: &Vcpu, l1: &Vcpu, model: &mut dyn ModelMsrs) -> Result<Option<usize>, Error> {
    let homes: Vec<Home> = entries
        .iter()
        .map(|e| match e.index {
            i if model.handles(i) => Home::Model,
            IA32_TSC => Home::Tsc,
            _ => Home::Vcpu,
        })
        .collect();
    let mut start = 0;
    while start < entries.len() {
        let h = homes[start];
        let len = homes[start..].iter().take_while(|&&x| x == h).count();
        let run = &entries[start..start + len];
        let taken = match h {
            Home::Model => run.iter().take_while(|e| model.write(e.index, e.data)).count(),
            Home::Vcpu | Home::Tsc => {
                let target = if h == Home::Tsc { l1 } else { vcpu };
                let values: Vec<(u32, u64)> = run.iter().map(|e| (e.index, e.data)).collect();
                target.set_msrs_prefix(&values)?
            }
        };
        if taken < len {
            return Ok(Some(start + taken));
        }
        start += len;
    }
    Ok(None)
}

/// The values the store area gets for `entries`: `kept(index)` for the MSRs nestbed holds
/// itself, IA32_TSC from `l1`, the others from `vcpu` in one batch. `Err` is the position of
/// the first MSR the host cannot read.
pub fn read(
    entries: &[MsrEntry],
    vcpu: &Vcpu,
    l1: &Vcpu,
    kept: impl Fn(u32) -> Option<u64>,
) -> Result<Result<Vec<u64>, usize>, Error> {
    let mut values: Vec<Option<u64>> = entries.iter().map(|e| kept(e.index)).collect();
    if entries.iter().zip(&values).any(|(e, v)| v.is_none() && e.index == IA32_TSC) {
        let tsc = l1.get_msrs(&[IA32_TSC])?.first().copied();
        let Some(tsc) = tsc else { return Ok(Err(position(entries, &values, |i| i == IA32_TSC))) };
        for (e, v) in entries.iter().zip(values.iter_mut()) {
            if v.is_none() && e.index == IA32_TSC {
                *v = Some(tsc);
            }
        }
    }
    let wanted: Vec<usize> = (0..entries.len()).filter(|&i| values[i].is_none()).collect();
    if !wanted.is_empty() {
        let indices: Vec<u32> = wanted.iter().map(|&i| entries[i].index).collect();
        let got = vcpu.get_msrs(&indices)?;
        if got.len() < wanted.len() {
            return Ok(Err(wanted[got.len()]));
        }
        for (&i, v) in wanted.iter().zip(got) {
            values[i] = Some(v);
        }
    }
    Ok(Ok(values.into_iter().map(|v| v.unwrap_or(0)).collect()))
}

fn position(entries: &[MsrEntry], values: &[Option<u64>], f: impl Fn(u32) -> bool) -> usize {
    entries.iter().zip(values).position(|(e, v)| v.is_none() && f(e.index)).unwrap_or(0)
}
