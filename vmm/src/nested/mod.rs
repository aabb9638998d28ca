//! Drives the pure VMX model (`crate::vmx`) with KVM: L1's trapped VMX instructions come in
//! through [`trap::decode_trap`], L2 runs in a second KVM VM ([`L2`]) whose memslots map
//! L1-physical memory, identically or through L1's EPT ([`space`]), and state moves between the VMCS and the vCPUs through sync regs
//! ([`transfer`]).

pub mod access;
pub mod env;
pub mod l2;
pub mod msr_filter;
pub mod space;
pub mod transfer;
pub mod trap;

pub use l2::L2;
