//! SDM 27.3.1.2: checks on guest segment registers.

use crate::vmx::bits::is_canonical;
use crate::vmx::caps::cr;
use crate::vmx::checks::{Violation, G};
use crate::vmx::fields::*;
use crate::vmx::vmcs::Vmcs;

use super::{ar, Guest};

/// G must be 0 if any of limit bits 11:0 is 0, and 1 if any of bits 31:20 is 1.
fn granularity_ok(limit: u32, a: u32) -> bool {
    let g = a & ar::G != 0;
    !((limit & 0xfff != 0xfff && g) || (limit >> 20 != 0 && !g))
}

struct Seg {
    sel: u64,
    base: u64,
    limit: u32,
    ar: u32,
}

impl Seg {
    fn read(v: &Vmcs, sel: u32, base: u32, limit: u32, ar: u32) -> Seg {
        Seg { sel: v.get(sel), base: v.get(base), limit: v.get32(limit), ar: v.get32(ar) }
    }
    fn usable(&self) -> bool {
        self.ar & ar::UNUSABLE == 0
    }
    fn ty(&self) -> u32 {
        self.ar & ar::TYPE
    }
}

/// The guest segment registers of the VMCS.
struct Segs {
    cs: Seg,
    ss: Seg,
    ds: Seg,
    es: Seg,
    fs: Seg,
    gs: Seg,
    tr: Seg,
    ldtr: Seg,
}

impl Segs {
    fn read(vmcs: &Vmcs) -> Segs {
        Segs {
            cs: Seg::read(vmcs, GUEST_CS_SELECTOR, GUEST_CS_BASE, GUEST_CS_LIMIT, GUEST_CS_AR_BYTES),
            ss: Seg::read(vmcs, GUEST_SS_SELECTOR, GUEST_SS_BASE, GUEST_SS_LIMIT, GUEST_SS_AR_BYTES),
            ds: Seg::read(vmcs, GUEST_DS_SELECTOR, GUEST_DS_BASE, GUEST_DS_LIMIT, GUEST_DS_AR_BYTES),
            es: Seg::read(vmcs, GUEST_ES_SELECTOR, GUEST_ES_BASE, GUEST_ES_LIMIT, GUEST_ES_AR_BYTES),
            fs: Seg::read(vmcs, GUEST_FS_SELECTOR, GUEST_FS_BASE, GUEST_FS_LIMIT, GUEST_FS_AR_BYTES),
            gs: Seg::read(vmcs, GUEST_GS_SELECTOR, GUEST_GS_BASE, GUEST_GS_LIMIT, GUEST_GS_AR_BYTES),
            tr: Seg::read(vmcs, GUEST_TR_SELECTOR, GUEST_TR_BASE, GUEST_TR_LIMIT, GUEST_TR_AR_BYTES),
            ldtr: Seg::read(vmcs, GUEST_LDTR_SELECTOR, GUEST_LDTR_BASE, GUEST_LDTR_LIMIT, GUEST_LDTR_AR_BYTES),
        }
    }
}

/// SDM 27.3.1.2: segment registers.
pub(super) fn check_segment_registers(vmcs: &Vmcs, g: &Guest) -> Result<(), Violation> {
    let segs = Segs::read(vmcs);
    check_selectors(&segs, g)?;
    if g.v86 {
        check_v86_segments(&segs)?;
    }
    check_bases(&segs)?;
    if !g.v86 {
        check_cs_ss_access_rights(&segs, g)?;
        check_data_access_rights(&segs, g)?;
    }
    check_tr_ldtr_access_rights(&segs, g)
}

/// SDM 27.3.1.2, selector fields.
fn check_selectors(segs: &Segs, g: &Guest) -> Result<(), Violation> {
    let Segs { cs, ss, tr, ldtr, .. } = segs;

    rule!(tr.sel & 4 != 0, G, "27.3.1.2", "guest TR selector TI flag set");
    rule!(ldtr.usable() && ldtr.sel & 4 != 0, G, "27.3.1.2", "guest LDTR selector TI flag set");
    rule!(
        !g.v86 && !g.unrestricted && ss.sel & 3 != cs.sel & 3,
        G,
        "27.3.1.2",
        "guest SS selector RPL differs from CS selector RPL"
    );
    Ok(())
}

/// SDM 27.3.1.2, base, limit and access rights of CS, SS, DS, ES, FS and GS in
/// virtual-8086 mode.
fn check_v86_segments(segs: &Segs) -> Result<(), Violation> {
    let Segs { cs, ss, ds, es, fs, gs, .. } = segs;

    for (s, base_rule, limit_rule, ar_rule) in [
        (
            cs,
            "guest CS base not selector*16 in virtual-8086 mode",
            "guest CS limit not 0xffff in virtual-8086 mode",
            "guest CS access rights not 0xf3 in virtual-8086 mode",
        ),
        (
            ss,
            "guest SS base not selector*16 in virtual-8086 mode",
            "guest SS limit not 0xffff in virtual-8086 mode",
            "guest SS access rights not 0xf3 in virtual-8086 mode",
        ),
        (
            ds,
            "guest DS base not selector*16 in virtual-8086 mode",
            "guest DS limit not 0xffff in virtual-8086 mode",
            "guest DS access rights not 0xf3 in virtual-8086 mode",
        ),
        (
            es,
            "guest ES base not selector*16 in virtual-8086 mode",
            "guest ES limit not 0xffff in virtual-8086 mode",
            "guest ES access rights not 0xf3 in virtual-8086 mode",
        ),
        (
            fs,
            "guest FS base not selector*16 in virtual-8086 mode",
            "guest FS limit not 0xffff in virtual-8086 mode",
            "guest FS access rights not 0xf3 in virtual-8086 mode",
        ),
        (
            gs,
            "guest GS base not selector*16 in virtual-8086 mode",
            "guest GS limit not 0xffff in virtual-8086 mode",
            "guest GS access rights not 0xf3 in virtual-8086 mode",
        ),
    ] {
        let fail = |rule| Err(Violation { rule, sdm: "27.3.1.2", class: G });
        if s.base != s.sel << 4 {
            return fail(base_rule);
        }
        if s.limit != 0xffff {
            return fail(limit_rule);
        }
        if s.ar != 0xf3 {
            return fail(ar_rule);
        }
    }
    Ok(())
}

/// SDM 27.3.1.2, base-address fields.
fn check_bases(segs: &Segs) -> Result<(), Violation> {
    let Segs { cs, ss, ds, es, fs, gs, tr, ldtr } = segs;

    rule!(!is_canonical(tr.base, 48), G, "27.3.1.2", "guest TR base not canonical");
    rule!(!is_canonical(fs.base, 48), G, "27.3.1.2", "guest FS base not canonical");
    rule!(!is_canonical(gs.base, 48), G, "27.3.1.2", "guest GS base not canonical");
    rule!(ldtr.usable() && !is_canonical(ldtr.base, 48), G, "27.3.1.2", "guest LDTR base not canonical");
    rule!(cs.base >> 32 != 0, G, "27.3.1.2", "guest CS base bits 63:32 set");
    rule!(ss.usable() && ss.base >> 32 != 0, G, "27.3.1.2", "guest SS base bits 63:32 set");
    rule!(ds.usable() && ds.base >> 32 != 0, G, "27.3.1.2", "guest DS base bits 63:32 set");
    rule!(es.usable() && es.base >> 32 != 0, G, "27.3.1.2", "guest ES base bits 63:32 set");
    Ok(())
}

/// SDM 27.3.1.2, access-rights fields of CS and SS outside virtual-8086 mode.
fn check_cs_ss_access_rights(segs: &Segs, g: &Guest) -> Result<(), Violation> {
    let Segs { cs, ss, .. } = segs;
    let &Guest { ia32e, unrestricted, cr0, .. } = g;

    let cs_ty = cs.ty();
    rule!(
        !(matches!(cs_ty, 9 | 11 | 13 | 15) || (cs_ty == 3 && unrestricted)),
        G,
        "27.3.1.2",
        "guest CS type not an accessed code segment"
    );
    rule!(cs.ar & ar::S == 0, G, "27.3.1.2", "guest CS S flag clear");
    rule!(cs_ty == 3 && ar::dpl(cs.ar) != 0, G, "27.3.1.2", "guest CS DPL not 0 for type 3");
    rule!(
        matches!(cs_ty, 9 | 11) && ar::dpl(cs.ar) != ar::dpl(ss.ar),
        G,
        "27.3.1.2",
        "guest CS DPL differs from SS DPL for non-conforming code"
    );
    rule!(
        matches!(cs_ty, 13 | 15) && ar::dpl(cs.ar) > ar::dpl(ss.ar),
        G,
        "27.3.1.2",
        "guest CS DPL greater than SS DPL for conforming code"
    );
    rule!(cs.ar & ar::P == 0, G, "27.3.1.2", "guest CS not present");
    rule!(cs.ar & ar::RESERVED != 0, G, "27.3.1.2", "guest CS access-rights reserved bits set");
    rule!(
        ia32e && cs.ar & ar::L != 0 && cs.ar & ar::DB != 0,
        G,
        "27.3.1.2",
        "guest CS.L and CS.D both set in IA-32e mode"
    );
    rule!(!granularity_ok(cs.limit, cs.ar), G, "27.3.1.2", "guest CS granularity inconsistent with limit");

    if ss.usable() {
        rule!(!matches!(ss.ty(), 3 | 7), G, "27.3.1.2", "guest SS type not read/write accessed data");
        rule!(ss.ar & ar::S == 0, G, "27.3.1.2", "guest SS S flag clear");
        rule!(ss.ar & ar::P == 0, G, "27.3.1.2", "guest SS not present");
        rule!(ss.ar & ar::RESERVED != 0, G, "27.3.1.2", "guest SS access-rights reserved bits set");
        rule!(!granularity_ok(ss.limit, ss.ar), G, "27.3.1.2", "guest SS granularity inconsistent with limit");
    }
    rule!(
        !unrestricted && ar::dpl(ss.ar) != (ss.sel & 3) as u32,
        G,
        "27.3.1.2",
        "guest SS DPL differs from SS selector RPL"
    );
    rule!(
        (cs_ty == 3 || cr0 & cr::CR0_PE == 0) && ar::dpl(ss.ar) != 0,
        G,
        "27.3.1.2",
        "guest SS DPL not 0 with CS type 3 or CR0.PE clear"
    );
    Ok(())
}

/// SDM 27.3.1.2, access-rights fields of DS, ES, FS and GS outside virtual-8086 mode.
fn check_data_access_rights(segs: &Segs, g: &Guest) -> Result<(), Violation> {
    let Segs { ds, es, fs, gs, .. } = segs;
    let unrestricted = g.unrestricted;

    for (s, rules) in [
        (
            ds,
            [
                "guest DS type not accessed or unreadable code",
                "guest DS S flag clear",
                "guest DS DPL less than RPL",
                "guest DS not present",
                "guest DS access-rights reserved bits set",
                "guest DS granularity inconsistent with limit",
            ],
        ),
        (
            es,
            [
                "guest ES type not accessed or unreadable code",
                "guest ES S flag clear",
                "guest ES DPL less than RPL",
                "guest ES not present",
                "guest ES access-rights reserved bits set",
                "guest ES granularity inconsistent with limit",
            ],
        ),
        (
            fs,
            [
                "guest FS type not accessed or unreadable code",
                "guest FS S flag clear",
                "guest FS DPL less than RPL",
                "guest FS not present",
                "guest FS access-rights reserved bits set",
                "guest FS granularity inconsistent with limit",
            ],
        ),
        (
            gs,
            [
                "guest GS type not accessed or unreadable code",
                "guest GS S flag clear",
                "guest GS DPL less than RPL",
                "guest GS not present",
                "guest GS access-rights reserved bits set",
                "guest GS granularity inconsistent with limit",
            ],
        ),
    ] {
        if !s.usable() {
            continue;
        }
        let ty = s.ty();
        let bad = [
            ty & 1 == 0 || (ty & 8 != 0 && ty & 2 == 0),
            s.ar & ar::S == 0,
            !unrestricted && ty <= 11 && ar::dpl(s.ar) < (s.sel & 3) as u32,
            s.ar & ar::P == 0,
            s.ar & ar::RESERVED != 0,
            !granularity_ok(s.limit, s.ar),
        ];
        if let Some(i) = bad.iter().position(|b| *b) {
            return Err(Violation { rule: rules[i], sdm: "27.3.1.2", class: G });
        }
    }
    Ok(())
}

/// SDM 27.3.1.2, access-rights fields of TR and LDTR.
fn check_tr_ldtr_access_rights(segs: &Segs, g: &Guest) -> Result<(), Violation> {
    let Segs { tr, ldtr, .. } = segs;
    let ia32e = g.ia32e;

    rule!(!tr.usable(), G, "27.3.1.2", "guest TR unusable");
    rule!(!(tr.ty() == 11 || (tr.ty() == 3 && !ia32e)), G, "27.3.1.2", "guest TR type not a busy TSS");
    rule!(tr.ar & ar::S != 0, G, "27.3.1.2", "guest TR S flag set");
    rule!(tr.ar & ar::P == 0, G, "27.3.1.2", "guest TR not present");
    rule!(tr.ar & ar::RESERVED != 0, G, "27.3.1.2", "guest TR access-rights reserved bits set");
    rule!(!granularity_ok(tr.limit, tr.ar), G, "27.3.1.2", "guest TR granularity inconsistent with limit");
    if ldtr.usable() {
        rule!(ldtr.ty() != 2, G, "27.3.1.2", "guest LDTR type not LDT");
        rule!(ldtr.ar & ar::S != 0, G, "27.3.1.2", "guest LDTR S flag set");
        rule!(ldtr.ar & ar::P == 0, G, "27.3.1.2", "guest LDTR not present");
        rule!(ldtr.ar & ar::RESERVED != 0, G, "27.3.1.2", "guest LDTR access-rights reserved bits set");
        rule!(!granularity_ok(ldtr.limit, ldtr.ar), G, "27.3.1.2", "guest LDTR granularity inconsistent with limit");
    }
    Ok(())
}
