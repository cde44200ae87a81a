//! Compiler tests: the design example, positioned errors, limits.

use chokepoint_common::kind;

use super::*;
use crate::policy::parse::{PortSpec, parse_cidr};

const GOOD: &str = r#"apiVersion: chokepoint.dev/v1alpha1
kind: EgressPolicy
metadata:
  name: ai-agents
spec:
  gateways:
    - name: llm-gateway
      endpoints: ["10.77.0.1:8080/tcp", "[fd77::1]:8080/tcp"]
  identities:
    - name: research-agent
      tenant: acme
      mode: enforce
      selector:
        cgroupPath: "/agents/research"
      egress:
        gateways: [llm-gateway]
        allow:
          - to: "10.77.0.53/32"
            ports: ["53/udp", "53/tcp"]
            reason: cluster DNS
          - to: "10.0.0.0/8"
            ports: ["443/tcp"]
"#;

#[test]
fn compiles_the_design_example() {
    let p = compile_source("p.yaml", GOOD.as_bytes()).unwrap();
    assert_eq!(p.identities.len(), 1);
    let id = &p.identities[0];
    assert_eq!(id.cgroup_path, "agents/research");
    // gateway v4 + v6, dns /32, the /8
    assert_eq!(id.entries.len(), 4);
    // The /32 DNS prefix inherits 443/tcp from the enclosing /8.
    let dns = id.entries.get(&parse_cidr("10.77.0.53").unwrap()).unwrap();
    assert!(dns.iter().any(|e| e.port_lo == 443));
    assert!(dns.iter().any(|e| e.port_lo == 53 && e.proto == 17));
    // The gateway /32 inside 10/8 inherits 443 too, and keeps its own 8080.
    let gw = id.entries.get(&parse_cidr("10.77.0.1").unwrap()).unwrap();
    assert!(
        gw.iter()
            .any(|e| e.port_lo == 8080 && e.kind == kind::GATEWAY)
    );
    assert!(gw.iter().any(|e| e.port_lo == 443 && e.kind == kind::RULE));
}

fn err(doc: &str) -> PolicyError {
    compile_source("p.yaml", doc.as_bytes()).unwrap_err()
}

#[test]
fn ingress_allow_from() {
    let p = compile_source("p.yaml", GOOD.as_bytes()).unwrap();
    assert_eq!(p.identities[0].ingress_from, None);
    // Without allowFrom anyone may open connections: both families' whole space.
    assert_eq!(p.identities[0].ingress_prefixes().len(), 2);
    let doc = format!(
        "{GOOD}      ingress:\n        allowFrom: [\"10.0.0.0/8\", \"fd00::/8\", \"10.0.0.0/8\"]\n"
    );
    let p = compile_source("p.yaml", doc.as_bytes()).unwrap();
    let from = p.identities[0].ingress_from.as_ref().unwrap();
    assert_eq!(from.len(), 2, "duplicates merge: {from:?}");
    let doc = format!("{GOOD}      ingress:\n        allowFrom: []\n");
    let p = compile_source("p.yaml", doc.as_bytes()).unwrap();
    assert!(
        p.identities[0].ingress_prefixes().is_empty(),
        "[] admits no one"
    );
    let doc =
        format!("{GOOD}      ingress:\n        allowFrom: [\"10.0.0.0/8\", \"not-a-cidr\"]\n");
    let line = doc.lines().position(|l| l.contains("not-a-cidr")).unwrap() as u32 + 1;
    let e = err(&doc);
    assert_eq!(
        e.problems[0].field,
        "spec.identities[0].ingress.allowFrom[1]"
    );
    assert_eq!(e.problems[0].line, line);
    assert!(e.problems[0].column > 20, "{e}");
    let e = err(&format!("{GOOD}      ingress:\n        allowFom: []\n"));
    assert!(e.to_string().contains("allowFom"), "{e}");
}

#[test]
fn errors_name_line_and_field() {
    let e = err(&GOOD.replace("10.77.0.53/32", "10.77.0.53/40"));
    assert_eq!(e.problems[0].field, "spec.identities[0].egress.allow[0].to");
    assert_eq!(e.problems[0].line, 18);
    let e = err(&GOOD.replace("53/udp", "70000/udp"));
    assert!(e.to_string().contains("out of range"), "{e}");
    let e = err(&GOOD.replace("gateways: [llm-gateway]", "gateways: [nope]"));
    assert!(e.to_string().contains("no gateway named `nope`"), "{e}");
    let e = err(&GOOD.replace("tenant: acme", "tenant: acme\n      colour: red"));
    assert!(e.to_string().contains("colour"), "{e}");
    let e = err(&GOOD.replace("mode: enforce", "mode: yes-please"));
    assert!(e.to_string().contains("unknown mode"), "{e}");
}

#[test]
fn fqdn_rules_compile_and_errors_are_positioned() {
    let doc = GOOD.replace(
            "          - to: \"10.0.0.0/8\"\n            ports: [\"443/tcp\"]\n",
            "          - toFQDN: \"API.github.com\"\n            ports: [\"443/tcp\"]\n          - toFQDN: \"*.example.com\"\n",
        );
    let p = compile_source("p.yaml", doc.as_bytes()).unwrap();
    let id = &p.identities[0];
    assert_eq!(id.fqdn.len(), 2);
    assert_eq!(id.fqdn[0].rule, 1);
    assert_eq!(id.fqdn[0].pattern.to_string(), "api.github.com");
    assert_eq!(id.fqdn[1].ports, vec![PortSpec::ANY]);
    assert!(
        id.rules[1].contains("toFQDN api.github.com"),
        "{:?}",
        id.rules
    );
    assert_eq!(id.resolvers, vec![(0, "10.77.0.53".parse().unwrap())]);
    // No CIDR entry comes from a toFQDN rule.
    assert_eq!(id.entries.len(), 3);

    let e = err(&doc.replace("*.example.com", "a.*.example.com"));
    assert_eq!(
        e.problems[0].field,
        "spec.identities[0].egress.allow[2].toFQDN"
    );
    assert_eq!(e.problems[0].line, 23);
    assert!(e.to_string().contains("wildcard"), "{e}");
    let e = err(&doc.replace("ports: [\"53/udp\", \"53/tcp\"]", "ports: [\"53/tcp\"]"));
    assert!(e.to_string().contains("sanctioned resolver"), "{e}");
    assert_eq!(
        e.problems[0].field,
        "spec.identities[0].egress.allow[1].toFQDN"
    );
    let e = err(&doc.replace("API.github.com", "bad..name"));
    assert!(e.to_string().contains("empty label"), "{e}");
    let e = err(&doc.replace("toFQDN: \"API.github.com\"", "reason: nothing"));
    assert_eq!(e.problems[0].field, "spec.identities[0].egress.allow[1]");
    assert!(e.to_string().contains("needs `to`"), "{e}");
    let e = err(&doc.replace(
        "toFQDN: \"API.github.com\"",
        "toFQDN: \"API.github.com\"\n            to: \"10.0.0.1\"",
    ));
    assert!(e.to_string().contains("not both"), "{e}");
}

#[test]
fn overlapping_selectors_and_duplicates() {
    let two = GOOD.to_string()
        + r#"    - name: research-agent
      selector:
        cgroupPath: "/agents/research/sub"
"#;
    let e = err(&two);
    let s = e.to_string();
    assert!(s.contains("duplicate identity name"), "{s}");
    assert!(s.contains("overlaps"), "{s}");
}

#[test]
fn compiles_a_hundred_thousand_rules() {
    let mut doc = GOOD.to_string();
    for i in 0..100_000u32 {
        let a = std::net::Ipv4Addr::from((100u32 << 24) | (64 << 16) | (i + 1));
        doc += &format!("          - to: \"{a}/32\"\n            ports: [\"443/tcp\"]\n");
    }
    let p = compile_source("big.yaml", doc.as_bytes()).unwrap();
    assert!(p.prefix_count() > 100_000);
}

#[test]
fn rejects_bad_bytes_and_sizes() {
    let e = compile_source("p.yaml", b"apiVersion: \xff\xfe").unwrap_err();
    assert!(e.to_string().contains("invalid UTF-8"));
    let big = vec![b'#'; MAX_DOCUMENT_BYTES + 1];
    assert!(
        compile_source("p.yaml", &big)
            .unwrap_err()
            .to_string()
            .contains("larger than")
    );
}

/// `spec.defaults.unresolvedPods`: `gateway-only` (the default) binds not-yet-known pod cgroups
/// to an identity with only the pod identities' gateways, `deny` to one with nothing, `allow`
/// to none; an unknown value is a positioned problem; without pod identities nothing is added.
#[test]
fn unresolved_pods_default_per_value() {
    let pods = GOOD.replace(
        "cgroupPath: \"/agents/research\"",
        "pod: {namespace: team-a, matchLabels: {app: agent}}",
    );
    let with = |v: Option<&str>| {
        let d = v.map_or(String::new(), |v| {
            format!("  defaults:\n    unresolvedPods: {v}\n")
        });
        pods.replacen("  identities:\n", &format!("{d}  identities:\n"), 1)
    };
    let gw = parse_cidr("10.77.0.1").unwrap();
    for v in [None, Some("gateway-only")] {
        let p = compile_source("p.yaml", with(v).as_bytes()).unwrap();
        assert_eq!(p.unresolved_pods, UnresolvedPods::GatewayOnly);
        let u = p.unresolved_identity().expect("an unresolved identity");
        assert_eq!(u.name, UNRESOLVED_IDENTITY);
        assert_eq!(u.mode, Mode::Enforce);
        assert_eq!(u.gateways, ["llm-gateway"]);
        // The gateway, and not the pod identity's own allow rules (10/8, DNS).
        assert_eq!(u.entries.len(), 2, "{:?}", u.entries.keys());
        assert!(u.entries[&gw].iter().all(|e| e.kind == kind::GATEWAY));
        assert!(!u.entries.contains_key(&parse_cidr("10.0.0.0/8").unwrap()));
    }
    let p = compile_source("p.yaml", with(Some("deny")).as_bytes()).unwrap();
    assert_eq!(p.unresolved_pods, UnresolvedPods::Deny);
    let u = p.unresolved_identity().expect("an unresolved identity");
    assert!(u.entries.is_empty() && u.gateways.is_empty(), "{u:?}");
    let p = compile_source("p.yaml", with(Some("allow")).as_bytes()).unwrap();
    assert_eq!(p.unresolved_pods, UnresolvedPods::Allow);
    assert!(p.unresolved_identity().is_none());
    let e = err(&with(Some("open")));
    assert_eq!(e.problems[0].field, "spec.defaults.unresolvedPods");
    assert!(e.to_string().contains("gateway-only, deny or allow"), "{e}");
    // cgroupPath identities only: no unresolved identity.
    let p = compile_source("p.yaml", GOOD.as_bytes()).unwrap();
    assert!(p.unresolved_identity().is_none());
}

/// `GOOD` as pretty-printed JSON (YAML's JSON subset).
fn good_as_json() -> String {
    let v: serde_json::Value = serde_saphyr::from_str(GOOD).unwrap();
    serde_json::to_string_pretty(&v).unwrap()
}

/// A JSON document takes the JSON parser and compiles to exactly what its YAML form does.
#[test]
fn a_json_document_compiles_as_its_yaml_form() {
    let json = good_as_json();
    let from_json = compile_source("p.json", json.as_bytes()).unwrap();
    let from_yaml = compile_source("p.yaml", GOOD.as_bytes()).unwrap();
    assert_eq!(
        serde_json::to_value(&from_json.identities).unwrap(),
        serde_json::to_value(&from_yaml.identities).unwrap()
    );
    assert_eq!(from_json.name, from_yaml.name);
    assert_eq!(from_json.gateways, from_yaml.gateways);
    assert_eq!(from_json.source, json);
}

/// A problem in a JSON document is named at its line and column, as in YAML; JSON that the
/// JSON parser refuses is reported by the YAML parser, with its position.
#[test]
fn a_json_documents_problems_are_positioned() {
    let json = good_as_json().replace("10.77.0.53/32", "10.77.0.53/40");
    let line = json
        .lines()
        .position(|l| l.contains("10.77.0.53/40"))
        .unwrap() as u32
        + 1;
    let col = json
        .lines()
        .nth(line as usize - 1)
        .unwrap()
        .find("\"10.77")
        .unwrap() as u32
        + 1;
    let e = compile_source("p.json", json.as_bytes()).unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    assert_eq!(e.problems[0].field, "spec.identities[0].egress.allow[0].to");
    assert_eq!(
        (e.problems[0].line, e.problems[0].column),
        (line, col),
        "{e}"
    );

    let e = compile_source(
        "p.json",
        b"{\"apiVersion\": \"chokepoint.dev/v1alpha1\",\n \"kind\": [}",
    )
    .unwrap_err();
    assert_eq!(e.problems[0].line, 2, "{e}");
    let e = compile_source(
        "p.json",
        json.replace("\"tenant\"", "\"colour\"").as_bytes(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("colour"), "{e}");
}

/// Each gateway host name is resolved once, even when a JSON document with a problem is
/// lowered a second time for positions.
#[test]
fn a_gateway_name_is_resolved_once() {
    let doc = good_as_json()
        .replace("10.77.0.1:8080/tcp", "gw.example:8080/tcp")
        .replace("10.77.0.53/32", "10.77.0.53/40");
    let calls = std::cell::Cell::new(0);
    let resolve = |_: &str, _: u16| {
        calls.set(calls.get() + 1);
        Ok(vec!["10.77.0.1".parse().unwrap()])
    };
    assert!(compile_source_with("p.json", doc.as_bytes(), &resolve).is_err());
    assert_eq!(calls.get(), 1);
}
