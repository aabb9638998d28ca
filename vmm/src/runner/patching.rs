//! Sensitive instructions patched at load (`--patch-sensitive on`): the image's VMX
//! instructions, found by `crate::patch::scan`, become int3 traps of the same length. When one
//! traps, nestbed hands the original instruction to the same decoder and model as an
//! instruction the host trapped by itself, so the path is the same on hosts whose KVM reports
//! VMX instructions to userspace and on those where they would raise #UD (stock Intel and AMD
//! hosts). gdb's breakpoints and the guest's own int3 are told apart by address: patched sites
//! first, then gdb's breakpoints, else the guest's #BP.

use std::collections::BTreeMap;

use super::Runner;
use crate::error::Error;
use crate::machine::GuestRam;
use crate::patch::{patched_bytes, scan, Class, Selection};

/// The patched sites of L1's RAM, by guest-physical address.
#[derive(Debug, Default)]
pub struct Patches {
    sites: BTreeMap<u64, Vec<u8>>,
    /// Traps taken at patched sites.
    pub traps: u64,
}

impl Patches {
    /// Scans `image` and writes a trap over each of its VMX instructions in `ram` (where the
    /// loader placed the image). `name` is the image's name for messages.
    pub fn apply(name: &str, image: &[u8], ram: &GuestRam) -> Result<Self, Error> {
        let vmx = Class::ALL.iter().filter(|&&c| c <= Class::Invvpid).fold(Selection::NONE, |s, &c| s.with(c));
        let found = scan(image, vmx).map_err(|e| Error::Config(format!("{name}: --patch-sensitive: {e}")))?;
        let mut sites = BTreeMap::new();
        for site in &found.sites {
            ram.write(site.addr, &patched_bytes(site)).map_err(|_| {
                Error::Config(format!("{name}: --patch-sensitive: site {:#x} lies outside guest RAM", site.addr))
            })?;
            sites.insert(site.addr, site.original.clone());
        }
        tracing::info!(sites = sites.len(), "patched the image's VMX instructions");
        Ok(Patches { sites, traps: 0 })
    }

    pub fn len(&self) -> usize {
        self.sites.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// The original instruction of the site that starts at guest-physical `gpa`.
    pub fn original(&self, gpa: u64) -> Option<&[u8]> {
        self.sites.get(&gpa).map(Vec::as_slice)
    }
}

impl Runner {
    /// The original bytes of the patched instruction at `pc` of the active level, when an int3
    /// there is a patched site (not gdb's breakpoint, not the guest's own int3).
    pub(super) fn patched_original(&mut self, pc: u64) -> Option<Vec<u8>> {
        if self.patches.as_ref().is_none_or(Patches::is_empty) {
            return None;
        }
        let gpa = self.debug_translate(self.level, pc)?;
        let patches = self.patches.as_mut()?;
        let original = patches.original(gpa)?.to_vec();
        patches.traps += 1;
        Some(original)
    }
}
