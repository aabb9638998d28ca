//! What a script's code can touch, found once by walking its AST: which parts of the exit's
//! state nestbed must capture for it, and whether its `on_exit` only observes (then it may run
//! off the vCPU thread on a snapshot, see `pipeline`).
//!
//! The walk is conservative: any name that could reach an operation counts as a use of it,
//! whatever the object it is applied to (a property, a method, a string or a function pointer,
//! also inside constant arrays and maps); a function pointer made from a name computed at run
//! time counts as a use of everything; and Rhai's functions that take a function's *name* are
//! replaced by nestbed (see `api`), so a name in a string cannot call anything. Should a script
//! still reach an operation the run loop did not prepare for, the call fails with
//! `ApiError::Copy` or `ApiError::NotCaptured` instead of answering from the wrong state.

use rhai::{ASTNode, Dynamic, Expr, Stmt, AST};

use super::context::GPR_NAMES;

/// Properties that read CR0, CR2, CR3, CR4 or EFER.
/// Read with SREGS and the vCPU's event state.
const CONTROL_REGS: [&str; 7] = ["cr0", "cr2", "cr3", "cr4", "efer", "interruptibility", "pending_event"];
/// Methods that walk the guest's page tables (they need the paging mode from CR0/CR4/EFER).
const VIRTUAL: [&str; 2] = ["read_virt", "write_virt"];
/// Methods on the current VMCS.
const VMCS: [&str; 2] = ["vmcs_read", "vmcs_write"];
/// Methods on guest memory (besides `VIRTUAL`).
const MEMORY: [&str; 4] = ["read_phys", "write_phys", "read_u64", "write_u64"];
/// Methods that change the guest or decide what happens to the exit.
const CHANGES: [&str; 11] = [
    "skip",
    "set_result",
    "inject",
    "reflect",
    "keep_in_l0",
    "stop",
    "write_phys",
    "write_u64",
    "write_virt",
    "vmcs_write",
    "patch_range",
];
#[cfg(test)]
/// Members of the exit that read only its own record: a copy taken at the exit answers them.
const RECORD: [&str; 27] = [
    "level",
    "vmcs",
    "guest_level",
    "reason",
    "reason_nr",
    "qualification",
    "seq",
    "insn",
    "insn_len",
    "action",
    "route",
    "rip",
    "rflags",
    "port",
    "size",
    "is_write",
    "is_in",
    "data",
    "msr",
    "value",
    "gpa",
    "mnemonic",
    "operands",
    "vmx",
    "msr_name",
    "to_string",
    "to_debug",
];
#[cfg(test)]
/// Global functions, and the Rhai functions nestbed replaces or refuses: none touches the exit
/// (`cpuid_set` works in `on_start` only).
const GLOBALS: [&str; 17] = [
    "rand",
    "rand_int",
    "hex",
    "le32",
    "cpuid_set",
    "map",
    "filter",
    "some",
    "all",
    "dedup",
    "reduce",
    "reduce_rev",
    "sort",
    "drain",
    "retain",
    "index_of",
    "sleep",
];

#[cfg(test)]
/// Whether the walk knows what `name`, a function or property nestbed registers, touches (a
/// test keeps every registered name classified).
pub fn classified(name: &str) -> bool {
    [&RECORD[..], &GPR_NAMES, &CONTROL_REGS, &VIRTUAL, &VMCS, &MEMORY, &CHANGES, &GLOBALS]
        .iter()
        .any(|set| set.contains(&name))
}
/// Makes a function pointer from a name computed at run time (`Fn` of a constant is folded
/// into a constant pointer, see `constant`).
const DYNAMIC: [&str; 1] = ["Fn"];
/// Methods on an integer that leave it as it is (Rhai still stores it back, unchanged: see
/// `ExitRef::set_gpr`).
const PURE_METHODS: [&str; 7] = ["to_string", "to_debug", "to_hex", "to_octal", "to_binary", "get_bit", "get_bits"];
/// Properties with a setter besides the general registers.
const WRITABLE: [&str; 2] = ["rip", "rflags"];

/// What the code of one script can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// CR0, CR2, CR3, CR4, EFER or the paging mode.
    pub control_regs: bool,
    /// The current VMCS.
    pub vmcs: bool,
    /// Guest memory, physical or virtual (for L2, through L1's EPT).
    pub memory: bool,
    /// Changes registers, memory or the VMCS, or decides.
    pub changes: bool,
}

impl Needs {
    /// Everything, for code the walk cannot follow.
    pub const ALL: Needs = Needs { control_regs: true, vmcs: true, memory: true, changes: true };

    /// The hooks only read the exit's own record (reason, registers...): they may run later on
    /// a copy of it without any difference a script could observe besides timing.
    pub fn observe_only(&self) -> bool {
        !(self.vmcs || self.memory || self.changes)
    }

    pub fn union(self, o: Needs) -> Needs {
        Needs {
            control_regs: self.control_regs || o.control_regs,
            vmcs: self.vmcs || o.vmcs,
            memory: self.memory || o.memory,
            changes: self.changes || o.changes,
        }
    }

    /// Walks every statement and function of `ast`.
    pub fn of(ast: &AST) -> Needs {
        let mut n = Needs::default();
        ast.walk(&mut |path: &[ASTNode]| {
            if let Some(node) = path.last() {
                n.visit(node);
            }
            true
        });
        n
    }

    fn visit(&mut self, node: &ASTNode) {
        match node {
            ASTNode::Stmt(Stmt::Assignment(x)) if assigns_property(&x.1.lhs) => self.changes = true,
            ASTNode::Stmt(Stmt::FnCall(call, _)) => self.name(&call.name),
            ASTNode::Expr(Expr::FnCall(call, _) | Expr::MethodCall(call, _)) => self.name(&call.name),
            ASTNode::Expr(Expr::Property(p, _)) => self.name(&p.2),
            ASTNode::Expr(Expr::StringConstant(s, _)) => self.name(s),
            ASTNode::Expr(Expr::DynamicConstant(v, _)) => self.constant(v),
            ASTNode::Expr(Expr::Dot(b, ..)) if method_on_property(&b.lhs, &b.rhs) => self.changes = true,
            _ => {}
        }
    }

    /// A constant: `Fn("skip")` and closures become function pointers, which can only call the
    /// function they name (a closure's body is walked as a function of the AST).
    fn constant(&mut self, v: &Dynamic) {
        if let Some(f) = v.read_lock::<rhai::FnPtr>() {
            self.name(f.fn_name());
        } else if let Some(s) = v.read_lock::<rhai::ImmutableString>() {
            self.name(&s);
        } else if let Some(a) = v.read_lock::<rhai::Array>() {
            a.iter().for_each(|x| self.constant(x));
        } else if let Some(m) = v.read_lock::<rhai::Map>() {
            m.values().for_each(|x| self.constant(x));
        }
    }

    fn name(&mut self, name: &str) {
        let is = |set: &[&str]| set.contains(&name);
        if is(&DYNAMIC) {
            *self = Needs::ALL;
            return;
        }
        if is(&CONTROL_REGS) || is(&VIRTUAL) {
            self.control_regs = true;
        }
        if is(&VIRTUAL) || is(&MEMORY) {
            self.memory = true;
        }
        if is(&VMCS) {
            self.vmcs = true;
        }
        if is(&CHANGES) {
            self.changes = true;
        }
    }
}

/// Whether `name` is a property scripts can set.
fn writable(name: &str) -> bool {
    GPR_NAMES.contains(&name) || WRITABLE.contains(&name)
}

/// `x.rax.set_bit(0, true)`: Rhai stores a property back after a method call on it.
fn method_on_property(lhs: &Expr, rhs: &Expr) -> bool {
    let method = match rhs {
        Expr::MethodCall(call, _) => Some(call),
        Expr::Dot(b, ..) => match &b.lhs {
            Expr::MethodCall(call, _) => Some(call),
            _ => None,
        },
        _ => None,
    };
    match (lhs, method) {
        (Expr::Property(p, _), Some(call)) => writable(&p.2) && !PURE_METHODS.contains(&call.name.as_str()),
        _ => false,
    }
}

/// `x.rax = ...`, `x.rip += ...`: an assignment through a property with a setter.
fn assigns_property(lhs: &Expr) -> bool {
    match lhs {
        Expr::Dot(b, ..) | Expr::Index(b, ..) => assigns_property(&b.rhs) || assigns_property(&b.lhs),
        Expr::Property(p, _) => writable(&p.2),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(src: &str) -> Needs {
        let engine = rhai::Engine::new();
        Needs::of(&engine.compile(src).unwrap())
    }

    #[test]
    fn counting_only_observes() {
        let n = needs(include_str!("../../../scripts/count-exits.rhai"));
        assert_eq!(n, Needs::default());
        assert!(n.observe_only());
    }

    #[test]
    fn control_registers_are_named() {
        let n = needs("fn on_exit(e) { if e.cr3 == 0 { print(e.rip) } }");
        assert!(n.control_regs && n.observe_only());
        let n = needs("fn on_exit(e) { let b = e.read_virt(e.rip, 4); }");
        assert!(n.control_regs && n.memory && !n.observe_only());
    }

    #[test]
    fn every_change_is_seen() {
        for src in [
            "fn on_exit(e) { e.rax = 1; }",
            "fn on_exit(e) { e.rip += 2; }",
            "fn on_exit(e) { e.skip(); }",
            "fn on_exit(e) { if e.port == 0x80 { e.stop(\"why\") } }",
            "fn on_exit(e) { e.vmcs_write(\"EXIT_QUALIFICATION\", 1); }",
            "fn on_exit(e) { e.write_u64(0x1000, 1); }",
            "fn on_exit(e) { helper(e); } fn helper(x) { x.inject(6); }",
            "fn on_exit(e) { let f = |x| x.reflect(); f.call(e); }",
        ] {
            let n = needs(src);
            assert!(n.changes, "{src}: {n:?}");
            assert!(!n.observe_only(), "{src}");
        }
    }

    #[test]
    fn methods_that_store_a_register_back_are_changes() {
        assert!(needs("fn on_exit(e) { e.rax.set_bit(0, true); }").changes);
        assert!(needs("fn on_exit(e) { let x = e; x.rflags.set_bits(0, 4, 5); }").changes);
        assert!(needs("fn on_exit(e) { e.rip.set_bit(0, true).to_string(); }").changes);
        assert!(needs("fn on_exit(e) { print(e.rax.to_hex() + e.rip.to_string()); }").observe_only());
        assert!(needs("fn on_exit(e) { let b = e.qualification.get_bit(3); }").observe_only());
    }

    #[test]
    fn names_inside_constant_arrays_and_maps_are_seen() {
        assert!(needs("fn on_exit(e) { let a = [\"skip\"]; }").changes);
        assert!(needs("fn on_exit(e) { let a = [[Fn(\"write_u64\")]]; }").memory);
        assert!(needs("fn on_exit(e) { let m = #{ f: Fn(\"vmcs_read\") }; }").vmcs);
    }

    #[test]
    fn live_reads_are_seen() {
        assert!(needs("fn on_exit(e) { e.vmcs_read(\"GUEST_RIP\") }").vmcs);
        assert!(needs("fn on_exit(e) { e.read_phys(0, 8) }").memory);
        assert!(!needs("fn on_exit(e) { e.read_u64(0) }").observe_only());
    }

    #[test]
    fn dynamic_calls_need_everything() {
        assert_eq!(needs("fn on_exit(e) { let n = \"sk\"; n += \"ip\"; e.call(Fn(n)); }"), Needs::ALL);
        // Folded by the optimizer into a constant pointer to `skip`.
        assert!(needs("fn on_exit(e) { let f = Fn(\"sk\" + \"ip\"); e.call(f); }").changes);
        assert!(needs("fn on_exit(e) { let f = Fn(\"skip\"); }").changes);
        assert!(needs("fn on_exit(e) { let f = Fn(\"rand\"); f.call(); }").observe_only());
        // A method name kept in a string, for natives that take one.
        assert!(needs("fn on_exit(e) { let n = \"skip\"; }").changes);
    }

    #[test]
    fn assignments_to_globals_only_observe() {
        let n = needs("let m = #{}; let t = 0; fn on_exit(e) { m[e.reason] = e.rax; t += e.qualification; }");
        assert!(n.observe_only(), "{n:?}");
    }
}
