//! Ctrl-C, SIGTERM, SIGHUP (the terminal closed) and the `--timeout` alarm: the handlers record
//! the cause and set the running vCPU's `immediate_exit`, so KVM_RUN returns EINTR at once and
//! the run loop stops cleanly with statistics and traces flushed. A SIGALRM another process
//! sends is an interruption, not the timeout.

use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU8, Ordering};

use kvm_bindings::kvm_run;

pub const NONE: u8 = 0;
pub const INTERRUPT: u8 = 1;
pub const TIMEOUT: u8 = 2;
pub const KICK: u8 = 3;

const HANDLED: [libc::c_int; 5] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGALRM, libc::SIGUSR1];

static CAUSE: AtomicU8 = AtomicU8::new(NONE);
/// Stop requests so far (signals and the timeout; a kick is none): what runs long outside
/// KVM_RUN (a script hook, a gdb wait) compares it with the count it started with.
static STOPS: AtomicU32 = AtomicU32::new(0);
static RUNNING: AtomicPtr<kvm_run> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t with SA_SIGINFO; si_code is a plain field.
    let from_kernel = !info.is_null() && unsafe { (*info).si_code } == libc::SI_KERNEL;
    let cause = match sig {
        // alarm(2)'s expiry comes from the kernel; kill(2) from another process does not.
        libc::SIGALRM if from_kernel => TIMEOUT,
        libc::SIGUSR1 => KICK,
        _ => INTERRUPT,
    };
    if cause != KICK {
        CAUSE.store(cause, Ordering::SeqCst);
        STOPS.fetch_add(1, Ordering::SeqCst);
    }
    let run = RUNNING.load(Ordering::SeqCst);
    if !run.is_null() {
        // SAFETY: `run` is the mmap'd kvm_run of the vCPU the run loop is about to enter or is
        // in; it stays mapped while registered (cleared before the vCPU is dropped). A byte
        // store is async-signal-safe.
        unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*run).immediate_exit), 1) };
    }
}

/// Installs the handlers (without SA_RESTART, so blocking calls see EINTR).
pub fn install() {
    for sig in HANDLED {
        // SAFETY: a zeroed sigaction with a valid three-argument handler, SA_SIGINFO and an
        // empty mask is well-formed; `on_signal` only does atomic and volatile stores.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Blocks the handled signals on the calling thread, so that they reach the thread that runs
/// the guest (a process-directed signal goes to any thread that does not block it, and only
/// the vCPU thread's KVM_RUN must return). Every other thread of nestbed calls it first.
pub fn block_here() {
    // SAFETY: a sigset_t filled by sigemptyset/sigaddset, and a null old set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in HANDLED {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Arms `--timeout`.
pub fn arm_timeout(secs: u32) {
    // SAFETY: alarm(2) has no memory effects.
    unsafe { libc::alarm(secs) };
}

/// Registers the kvm_run of the vCPU about to run (null when none).
///
/// # Safety
/// `run` must be null or the live kvm_run mapping of a vCPU that outlives the registration.
pub unsafe fn set_running(run: *mut kvm_run) {
    RUNNING.store(run, Ordering::SeqCst);
    if !run.is_null() && CAUSE.load(Ordering::SeqCst) != NONE {
        // SAFETY: as in on_signal: a live kvm_run mapping.
        unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*run).immediate_exit), 1) };
    }
}

/// Why the run loop should stop, if it should.
pub fn cause() -> u8 {
    CAUSE.load(Ordering::SeqCst)
}

/// How many stop requests came so far.
pub fn stop_requests() -> u32 {
    STOPS.load(Ordering::SeqCst)
}

/// Clears a stop request (between runs in one process, e.g. scenarios).
pub fn reset() {
    CAUSE.store(NONE, Ordering::SeqCst);
}
