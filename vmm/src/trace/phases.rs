//! Where nestbed's time goes, phase by phase, summed over a run: KVM_RUN of each level apart
//! from nestbed's own work (decoding, the VMX model, state transfer, memslots, hooks).

use std::time::Duration;

use super::Clock;

/// One phase of an exit's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Inside KVM_RUN of L1's vCPU (the guest and the host's KVM).
    KvmRunL1,
    /// Inside KVM_RUN of L2's vCPU.
    KvmRunL2,
    /// Turning a KVM exit into an `Exit`: instruction decoding, qualification, routing.
    Decode,
    /// Scripts and the trace.
    Hooks,
    /// The VMX model: instruction semantics and VM-entry checks.
    Model,
    /// State between the VMCS and the vCPUs at VM entry and exit.
    Transfer,
    /// L2's memslots and MSR filter at VM entry.
    Memslots,
    /// Everything else of the exit: devices, statistics, the debugger.
    Other,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::KvmRunL1,
        Phase::KvmRunL2,
        Phase::Decode,
        Phase::Hooks,
        Phase::Model,
        Phase::Transfer,
        Phase::Memslots,
        Phase::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::KvmRunL1 => "KVM_RUN (L1)",
            Phase::KvmRunL2 => "KVM_RUN (L2)",
            Phase::Decode => "decode and route",
            Phase::Hooks => "scripts and trace",
            Phase::Model => "VMX model",
            Phase::Transfer => "state transfer",
            Phase::Memslots => "memslots and MSR filter",
            Phase::Other => "devices, statistics, other",
        }
    }
}

/// Time per phase, summed in clock ticks (converted only when read: a conversion costs more
/// than reading the clock).
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    total: [u64; Phase::ALL.len()],
    clock: Clock,
}

impl Default for Phases {
    fn default() -> Self {
        Phases::new(Clock::new(None))
    }
}

impl Phases {
    pub fn new(clock: Clock) -> Self {
        Phases { total: [0; Phase::ALL.len()], clock }
    }

    /// Adds the time since `t0` (a `Clock::now` reading) to `phase`; returns the reading it
    /// ended at, for the next phase to start from.
    pub fn add_since(&mut self, phase: Phase, t0: u64) -> u64 {
        let now = self.clock.now();
        self.total[phase as usize] += now.saturating_sub(t0);
        now
    }

    /// Adds the time since `t0` to `phase`, less what `inner` phases gained since `before`
    /// (their `ticks` then): time spent in phases nested inside this one counts once.
    pub fn add_since_except(&mut self, phase: Phase, t0: u64, inner: &[Phase], before: u64) -> u64 {
        let now = self.clock.now();
        let nested = self.ticks(inner).saturating_sub(before);
        self.total[phase as usize] += now.saturating_sub(t0).saturating_sub(nested);
        now
    }

    /// The summed clock ticks of `phases`.
    pub fn ticks(&self, phases: &[Phase]) -> u64 {
        phases.iter().map(|&p| self.total[p as usize]).sum()
    }

    pub fn get(&self, phase: Phase) -> Duration {
        self.clock.duration(self.total[phase as usize])
    }

    /// What `other` adds beyond `self` (a later reading of the same run minus an earlier one).
    pub fn minus(&self, earlier: &Phases) -> Phases {
        let mut p = *self;
        for (t, e) in p.total.iter_mut().zip(earlier.total) {
            *t = t.saturating_sub(e);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_sum_separately() {
        let mut p = Phases::default();
        let t = p.clock.now();
        std::thread::sleep(Duration::from_millis(2));
        let t = p.add_since(Phase::Model, t);
        p.add_since(Phase::KvmRunL2, t);
        assert!(p.get(Phase::Model) >= Duration::from_millis(2));
        assert!(p.get(Phase::KvmRunL2) < p.get(Phase::Model));
        assert_eq!(p.get(Phase::Decode), Duration::ZERO);
        let mut later = p;
        later.total[Phase::Model as usize] += 1_000_000;
        assert_eq!(later.minus(&p).get(Phase::Model), Duration::from_millis(1));
        assert_eq!(later.minus(&p).get(Phase::KvmRunL2), Duration::ZERO);

        let mut q = Phases::default();
        let t = q.clock.now();
        let before = q.ticks(&[Phase::Transfer]);
        q.total[Phase::Transfer as usize] += 100_000_000;
        std::thread::sleep(Duration::from_millis(1));
        q.add_since_except(Phase::Other, t, &[Phase::Transfer], before);
        assert_eq!(q.get(Phase::Other), Duration::ZERO, "time inside a nested phase counts once");
    }
}
