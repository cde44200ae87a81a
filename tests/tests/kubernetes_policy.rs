//! The `EgressPolicy` custom resource against a real kube-apiserver: the CRD generated from the
//! policy model installed for real, an object applied by every node's daemon through the same
//! generation path as the CLI, an invalid one refused (Warning Event, `Accepted=False`) while
//! the active generation and its enforcement stay.

use std::time::{Duration, Instant};

use chokepoint_tests::kube_node::*;
use serde_json::{Value, json};

fn accepted(n: &Node, generation: i64) -> Value {
    let t0 = Instant::now();
    loop {
        let o = n
            .cluster
            .get("chokepoint.dev/v1alpha1", "EgressPolicy", None, "main")
            .expect("EgressPolicy main");
        let c = o["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Accepted").cloned());
        if let Some(c) = c
            && c["observedGeneration"] == generation
        {
            return c;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no Accepted condition for generation {generation}: {o:#}\n{}",
            n.daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kube_egress_policy_object_is_applied_and_a_bad_one_refused_with_event_and_condition() {
    let mut n = Node::new(&["--kube-policy", "main"]);
    // No policy at start: the daemon runs and waits for the object.
    n.start(None);
    let g0 = n.daemon.cli_json(&["status", "--json"])["generation"].clone();
    team_a(&n);
    let (_, a) = n.run_pod(&agent_pod("agent-0"));
    let doc = n.policy(&[AGENTS], "", "");
    let obj = n.cluster.apply(egress_policy("main", &doc));
    let gen1 = obj["metadata"]["generation"].as_i64().expect("generation");
    let c = accepted(&n, gen1);
    assert_eq!(c["status"], "True", "{c}");
    let active = n.daemon.cli_json(&["status", "--json"])["generation"].clone();
    assert_ne!(active, g0, "no new generation");
    n.wait_bound("agents", "team-a", "agent-0");
    n.assert_enforced(&a, "agents", "team-a", "agent-0", "default");
    // The apiserver itself refuses an object that breaks the CRD schema.
    let mut broken = egress_policy("main", &doc);
    broken["spec"]["identities"] = json!("not-a-list");
    let e = n.cluster.try_apply(&broken, false);
    assert!(e.is_err(), "the CRD schema let a broken spec in: {e:?}");
    // A schema-valid object the compiler refuses: unknown gateway.
    let bad = egress_policy(
        "main",
        &doc.replace("gateways: [llm-gateway]", "gateways: [nowhere]"),
    );
    let obj = n.cluster.apply(bad);
    let gen2 = obj["metadata"]["generation"].as_i64().expect("generation");
    assert!(gen2 > gen1);
    let c = accepted(&n, gen2);
    assert_eq!(c["status"], "False", "{c}");
    assert_eq!(c["reason"], "Invalid", "{c}");
    assert!(
        c["message"].as_str().is_some_and(|m| m.contains("nowhere")),
        "{c}"
    );
    let t0 = Instant::now();
    let event = loop {
        let evs = n.cluster.list("events.k8s.io/v1", "Event", None);
        if let Some(e) = evs.into_iter().find(|e| {
            e["reason"] == "InvalidPolicy"
                && e["regarding"]["name"] == "main"
                && e["regarding"]["kind"] == "EgressPolicy"
        }) {
            break e;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no InvalidPolicy Event\n{}",
            n.daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(event["type"], "Warning", "{event}");
    assert!(
        event["note"]
            .as_str()
            .is_some_and(|m| m.contains("active generation stays")),
        "{event}"
    );
    // The active generation stayed, and so did its enforcement.
    let still = n.daemon.cli_json(&["status", "--json"])["generation"].clone();
    assert_eq!(
        still, active,
        "the bad object changed the active generation"
    );
    n.assert_enforced(&a, "agents", "team-a", "agent-0", "default");
    // Fixed: applied again, accepted.
    let obj = n
        .cluster
        .apply(egress_policy("main", &n.policy(&[AGENTS], "", "")));
    let gen3 = obj["metadata"]["generation"].as_i64().expect("generation");
    let c = accepted(&n, gen3);
    assert_eq!(c["status"], "True", "{c}");
}
