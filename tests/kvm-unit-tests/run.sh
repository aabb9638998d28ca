#!/usr/bin/env bash
# Builds a kvm-unit-tests tree and runs its x86 tests through its own runner, with nestbed
# standing in for QEMU (`qemu-system-x86_64` is a symlink to nestbed, which then takes QEMU's
# command line). Prints a PASS/FAIL/SKIP table.
#
#   run.sh SOURCE [TEST...]            SOURCE: a kvm-unit-tests tree, or its source tarball
#   run.sh --check LIST SOURCE         runs the tests LIST names and fails unless each passes
#   NESTBED_BIN=path run.sh ...        uses that nestbed binary instead of building a release one
set -euo pipefail

check=""
if [ "${1:-}" = "--check" ]; then
    check=$(realpath "$2")
    shift 2
fi
src=${1:?usage: run.sh [--check LIST] SOURCE [TEST...]}
shift
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ -f "$src" ]; then
    tar xzf "$src" -C "$work"
    tree=$(find "$work" -maxdepth 2 -name run_tests.sh -printf '%h\n' | head -1)
else
    tree=$(realpath "$src")
fi
[ -x "$tree/run_tests.sh" ] || { echo "run.sh: no kvm-unit-tests tree in $src" >&2; exit 2; }
if ! ls "$tree"/x86/*.flat >/dev/null 2>&1; then
    echo "building kvm-unit-tests in $tree"
    (cd "$tree" && ./configure >/dev/null && make -j"$(nproc)" >/dev/null)
fi

# NESTBED_BIN: a nestbed binary to use instead of building the release one.
bin=${NESTBED_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release --manifest-path "$root/Cargo.toml" -q
    bin="$root/target/release/nestbed"
fi
mkdir -p "$work/bin"
ln -sf "$(realpath "$bin")" "$work/bin/qemu-system-x86_64"

tests=("$@")
if [ -n "$check" ]; then
    mapfile -t tests < <(grep -v '^#' "$check" | awk 'NF {print $1}')
fi
out="$work/results"
(cd "$tree" && QEMU="$work/bin/qemu-system-x86_64" ACCEL=kvm ./run_tests.sh "${tests[@]}" || true) \
    | sed 's/\x1b\[[0-9;]*m//g' | tee "$out"

echo
printf '%-44s %s\n' "test" "result"
grep -E '^(PASS|FAIL|SKIP)' "$out" | awk '{r=$1; n=$2; $1=""; $2=""; sub(/^ +/, ""); printf "%-44s %s %s\n", n, r, $0}'
printf '%s passed, %s failed, %s skipped\n' "$(grep -c '^PASS' "$out")" "$(grep -c '^FAIL' "$out")" "$(grep -c '^SKIP' "$out")"

if [ -n "$check" ]; then
    bad=0
    # vmx.flat as a whole is slower than the runner's timeout here; its VMXON tests and the VM
    # entry tests whose L2 ends with VMCALL (the PAT and EFER load/save controls, the debug
    # controls, the MSR areas, VM entry after MOV SS), and its event tests (interrupts while L2
    # runs, the interrupt and NMI windows, pending events, the preemption timer), run quickly
    # and must all pass.
    vmx_tests="test_vmx_feature_control test_vmxon test_vmptrld test_vmclear null vmenter control*"
    vmx_tests+=" debug_controls MSR_switch vmx_store_tsc_test atomic_switch_max_msrs_test vmentry_movss_shadow_test"
    vmx_tests+=" interrupt vmx_intr_window_test vmx_nmi_window_test vmx_pending_event_test vmx_pending_event_hlt_test"
    vmx_tests+=" vmx_preemption_timer_zero_test vmx_preemption_timer_expiry_test"
    # RDTSCP patched (the RDTSC exiting of instruction_intercept asks for it) and then disabled.
    vmx_tests+=" instruction_intercept disable_RDTSCP"
    vmx_out=$(cd "$tree" && "$work/bin/qemu-system-x86_64" -kernel x86/vmx.flat -smp 1 -m 256 -cpu max,+vmx \
        -device isa-debug-exit,iobase=0xf4,iosize=0x4 -serial stdio -display none -nodefaults -no-reboot \
        -append "$vmx_tests" 2>&1) && status=0 || status=$?
    summary=$(printf '%s\n' "$vmx_out" | grep '^SUMMARY' || true)
    echo "vmx ($vmx_tests): ${summary:-no SUMMARY}, status $status"
    if [ "$status" != 1 ] || [ -z "$summary" ] || printf '%s' "$summary" | grep -q unexpected; then
        printf '%s\n' "$vmx_out" | grep -E '^(FAIL|SUMMARY)' >&2 || true
        echo "kvm-unit-tests: vmx.flat's VMXON and VM-entry tests did not all pass" >&2
        bad=1
    fi
    for t in "${tests[@]}"; do
        if ! grep -qE "^PASS $t( |$)" "$out"; then
            echo "kvm-unit-tests: $t is listed as passing in $(basename "$check") but did not pass" >&2
            bad=1
        fi
    done
    exit $bad
fi
