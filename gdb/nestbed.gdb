# nestbed's gdb helpers. Load with `gdb -x gdb/nestbed.gdb [ELF with symbols]`, then
# `target remote :1234` (or use `just gdb GUEST`, which does both). See GDB.md.

set pagination off
set confirm off
set disassembly-flavor intel

define l1
  thread 1
end
document l1
Select L1, the guest hypervisor's vCPU (thread 1).
end

define l2
  thread 2
end
document l2
Select L2, the nested guest (thread 2, present while L1 has a launched VMCS).
end

define vmcs
  if $argc == 0
    monitor vmcs
  else
    monitor vmcs $arg0
  end
end
document vmcs
vmcs [FIELD]: L1's current VMCS, all non-zero fields or one by SDM name (e.g. vmcs GUEST_RIP).
While L2 runs, guest-state fields show its live state.
end

define exits
  monitor exits
end
document exits
Exit statistics so far, by level, reason and handler, then the last 16 exits with the VMCS
field (name, encoding, value) or MSR each names.
end

define exit-break
  if $argc == 1
    monitor break-on-exit $arg0
  else
    monitor break-on-exit $arg0 $arg1
  end
end
document exit-break
exit-break REASON [L1|L2]: stop when an exit of this reason is handled (e.g. exit-break HLT L2).
`monitor break-on-exit clear` removes them all.
end

define phys
  if $argc == 1
    monitor phys $arg0
  else
    monitor phys $arg0 $arg1
  end
end
document phys
phys ADDR [LEN]: hex dump of L1-physical memory.
end
