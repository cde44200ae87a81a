//! The difference between two generations, applied to the first one's entries, gives exactly
//! the second one's entries.

use std::collections::HashMap;

use super::*;
use crate::policy::compile_source_with;

type Entries = HashMap<(u32, [u8; LPM_DATA_LEN]), RuleVal>;

fn compile(doc: &str) -> CompiledPolicy {
    compile_source_with("p.yaml", doc.as_bytes(), &|_, _| Ok(Vec::new())).unwrap()
}

fn entries(slot: u32, p: &CompiledPolicy) -> Entries {
    slot_rules(slot, p)
        .map(|(k, v)| ((k.prefix_len(), k.data()), v.rule_val()))
        .collect()
}

/// A policy of `n` identities; identity `i` allows `rules` (`(cidr, port)`) and, when given,
/// ingress from `from`.
/// An identity of [`doc`]: name, `(cidr, port)` rules, ingress peers.
type Ident<'a> = (&'a str, &'a [(&'a str, u16)], Option<&'a [&'a str]>);

fn doc(idents: &[Ident<'_>]) -> String {
    let mut s = String::from(
        "apiVersion: chokepoint.dev/v1alpha1\nkind: EgressPolicy\nmetadata:\n  name: t\nspec:\n  gateways:\n    - name: gw\n      endpoints: [\"10.77.0.1:8080/tcp\"]\n  identities:\n",
    );
    for (name, rules, from) in idents {
        s += &format!(
            "    - name: {name}\n      selector:\n        cgroupPath: \"/t/{name}\"\n      egress:\n        gateways: [gw]\n        allow:\n"
        );
        for (cidr, port) in *rules {
            s += &format!("          - to: \"{cidr}\"\n            ports: [\"{port}/tcp\"]\n");
        }
        if let Some(from) = from {
            s += &format!("      ingress:\n        allowFrom: {from:?}\n");
        }
    }
    s
}

fn check(slot: u32, old: &str, new: &str) -> usize {
    let (old, new) = (compile(old), compile(new));
    let mut map = entries(slot, &old);
    let RulesDiff { put, vals, stale } = rules_diff(slot, &old, &new);
    // The order `patch_slot` writes in: removals, then values.
    for k in &stale {
        assert!(
            map.remove(&(k.prefix_len(), k.data())).is_some(),
            "a key removed that the slot did not hold"
        );
    }
    for (k, v) in put.iter().zip(&vals) {
        map.insert((k.prefix_len(), k.data()), *v);
    }
    let want = entries(slot, &new);
    let extra: Vec<_> = map.keys().filter(|k| !want.contains_key(*k)).collect();
    let missing: Vec<_> = want.keys().filter(|k| !map.contains_key(*k)).collect();
    assert!(
        map == want,
        "the patched slot differs from the new generation: extra {extra:?}, missing {missing:?}"
    );
    put.len() + stale.len()
}

#[test]
fn the_patched_slot_is_the_new_generation() {
    let a: &[(&str, u16)] = &[
        ("10.0.0.0/8", 443),
        ("10.1.2.3/32", 80),
        ("192.0.2.0/24", 22),
    ];
    let b: &[(&str, u16)] = &[
        ("10.0.0.0/8", 443),
        ("10.1.2.3/32", 81),
        ("198.51.100.7/32", 9),
    ];
    let one = doc(&[("x", a, None)]);
    for slot in [0, 1] {
        // Nothing changed: nothing written.
        assert_eq!(check(slot, &one, &one), 0);
        // A value changed (10.1.2.3 now also carries port 81 instead of 80), a prefix removed,
        // one added.
        assert!(check(slot, &one, &doc(&[("x", b, None)])) > 0);
        // An identity added, then removed; identities renumbered.
        let two = doc(&[("x", a, None), ("y", b, Some(&["10.9.0.0/16"]))]);
        check(slot, &one, &two);
        check(slot, &two, &one);
        check(slot, &two, &doc(&[("y", b, Some(&["10.9.0.0/16"]))]));
        // Ingress prefixes changed, reordered (the index is the value), dropped.
        let i1 = doc(&[("x", a, Some(&["10.9.0.0/16", "10.8.0.0/16"]))]);
        let i2 = doc(&[("x", a, Some(&["10.8.0.0/16", "10.9.0.0/16", "fd00::/8"]))]);
        check(slot, &i1, &i2);
        check(slot, &i2, &i1);
        check(slot, &i1, &one);
        check(slot, &one, &i1);
    }
}

#[test]
fn one_rule_of_many_writes_one_entry() {
    let many: Vec<(String, u16)> = (0..2_000u32)
        .map(|i| {
            (
                format!("{}/32", std::net::Ipv4Addr::from(0x6440_0000 + i)),
                443,
            )
        })
        .collect();
    let rules: Vec<(&str, u16)> = many.iter().map(|(c, p)| (c.as_str(), *p)).collect();
    let mut changed = rules.clone();
    changed[1_000].1 = 8443;
    assert_eq!(
        check(
            0,
            &doc(&[("x", &rules, None)]),
            &doc(&[("x", &changed, None)])
        ),
        1
    );
}
