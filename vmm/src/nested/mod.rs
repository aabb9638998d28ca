//! Drives the pure VMX model (`crate::vmx`) with KVM: L1's trapped VMX instructions come in
//! through [`trap::decode_trap`], VM entry and VM exit are [`transition`]s between the L1 vCPU
//! and the L2 VM ([`L2`]), whose memslots map L1-physical memory identically or through L1's
//! EPT ([`space`]); state moves through sync regs ([`transfer`]); [`route`] decides who handles
//! an L2 exit.

pub mod access;
pub mod debug_regs;
pub mod env;
pub mod l2;
pub mod msr_filter;
pub mod msr_lists;
pub mod route;
pub mod space;
pub mod transfer;
pub mod transition;
pub mod trap;

pub use l2::L2;
pub use transition::{Entry, Insn, Nested};
