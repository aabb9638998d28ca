# nestbed recipes. Install just with `cargo install just` or `pip install rust-just`.

# List the recipes.
default:
    @just --list

# Boot a guest (default: the nested demo), e.g. `just run hello --stats`.
run guest="nested-demo" *args="":
    cargo run --release -- run --guest {{guest}} {{args}}

# Run the whole test suite (what CI runs).
test:
    cargo test --workspace

# Run the fuzzers with 20 times their CI budget (README, "Reliability"); SCALE to change it.
fuzz scale="20":
    NESTBED_FUZZ_SCALE={{scale}} cargo test --release --workspace --lib -- fuzz --nocapture
    NESTBED_FUZZ_SCALE={{scale}} cargo test --release --test fuzz_images --test fuzz_vmx_chaos -- --nocapture
    NESTBED_FUZZ_SCALE={{scale}} cargo test --release --test gdb_raw fuzzed -- --nocapture

# List the embedded guests.
guests:
    cargo run --release -- guests

# Measure exit costs side by side and write BENCHMARKS.md.
bench:
    cargo run --release --example bench -- BENCHMARKS.md

# Format check and clippy (-D warnings) of the VMM and the guests, as CI runs them.
lint:
    .ci/lint

# Build kvm-unit-tests (a tree or tarball; default: the pinned copy) and run its x86 tests with nestbed as QEMU.
kvm-unit-tests source=(justfile_directory() / "../shared/kvm-unit-tests/kvm-unit-tests-1da1819e.tar.gz") *tests="":
    tests/kvm-unit-tests/run.sh "{{source}}" {{tests}}

# Run one scenario: `just scenario vmx-basic` runs tests/scenarios/vmx-basic.toml.
scenario name:
    cargo run --release -- scenario run tests/scenarios/{{name}}.toml

# Run every scenario in tests/scenarios.
scenarios:
    cargo run --release -- scenario run tests/scenarios/*.toml

# Rerun a scenario and rewrite its golden trace (review the diff before committing).
bless name:
    cargo run --release -- scenario bless tests/scenarios/{{name}}.toml

# Print a trace's statistics table and draw it next to it as SVG (FILE with .svg).
trace-report file:
    cargo run --release -- trace report "{{join(invocation_directory(), file)}}"

# Debug a guest under gdb: nestbed in a session of its own (Ctrl-C stays gdb's), output in nestbed-gdb.log.
gdb guest="nested-demo" *args="":
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --release
    nb=./target/release/nestbed
    log=nestbed-gdb.log
    symbols=$("$nb" guests --symbols {{guest}})
    setsid "$nb" run --guest {{guest}} --gdb-wait {{args}} </dev/null >"$log" 2>&1 &
    pid=$!
    trap 'kill $pid 2>/dev/null || true' EXIT
    until grep -q "gdb server on" "$log"; do
        kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
        sleep 0.1
    done
    addr=$(sed -n 's/.*gdb server on \([^,]*\).*/\1/p' "$log")
    echo "nestbed's console and messages go to $log (tail -f $log in another terminal)"
    gdb -x gdb/nestbed.gdb -ex "target remote $addr" "$symbols"

# Install `nestbed` into ~/.cargo/bin, built in ./target (where `nestbed guests --symbols` finds images).
install:
    cargo install --locked --path vmm --target-dir target
