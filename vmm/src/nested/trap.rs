//! The one trap source feeding the VMX model: an emulation-failure exit carrying instruction
//! bytes (how VMX instructions reach userspace on hosts without VMX, README, "Host facts"). Another
//! source (a #UD forwarded by a guest, a host with real VMX, load-time patching) only needs to
//! produce the same bytes and mode.

use kvm_bindings::kvm_sregs;

use crate::vmx::decode::{decode, DecodeError, VmxInsn};

/// Code-segment bitness of a vCPU: 64 in 64-bit mode, else 32 or 16 by CS.D.
pub fn bitness(s: &kvm_sregs) -> u32 {
    if s.efer & (1 << 10) != 0 && s.cs.l != 0 {
        64
    } else if s.cs.db != 0 {
        32
    } else {
        16
    }
}

/// Decodes the trapped instruction at `rip`.
pub fn decode_trap(bytes: &[u8], sregs: &kvm_sregs, rip: u64) -> Result<VmxInsn, DecodeError> {
    decode(bytes, bitness(sregs), rip)
}
