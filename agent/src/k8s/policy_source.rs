//! Policy from the cluster: the daemon watches one cluster-scoped `EgressPolicy` object and
//! applies it through the same compile-and-switch path as `chokepoint policy apply`. An object
//! that does not compile leaves the active generation in force; the failure is reported as a
//! Warning Event on the object and as its `Accepted` condition.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::{Event as CoreEvent, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use tracing::{info, warn};

use super::crd::{self, Condition, EgressPolicyStatus};

/// What applying an object did.
pub enum Outcome {
    /// A new generation is active.
    Applied(u32),
    /// The object's policy is the one already active.
    Unchanged(u32),
    /// It did not compile or could not be applied: the active generation stays.
    Rejected(String),
}

/// The `EgressPolicy` resource for dynamic clients.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(crd::GROUP, crd::VERSION, crd::KIND),
        crd::PLURAL,
    )
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The Warning Event for a refused object. Written through the core `v1` Events API, which
/// every apiserver version accepts for a cluster-scoped object in `default` (the
/// `events.k8s.io/v1` API of 1.20 refuses such an Event: "involvedObject.namespace does not
/// match event.namespace"); both APIs list it.
fn warning(reference: ObjectReference, node: &str, note: String) -> CoreEvent {
    let now = Time(Timestamp::now());
    CoreEvent {
        metadata: ObjectMeta {
            generate_name: Some(format!(
                "{}.",
                reference.name.as_deref().unwrap_or(crd::PLURAL)
            )),
            ..Default::default()
        },
        involved_object: reference,
        reason: Some("InvalidPolicy".into()),
        message: Some(note),
        type_: Some("Warning".into()),
        action: Some("Apply".into()),
        source: Some(EventSource {
            component: Some("chokepoint".into()),
            host: Some(node.to_string()),
        }),
        reporting_component: Some("chokepoint".into()),
        reporting_instance: Some(node.to_string()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Default::default()
    }
}

/// Watches the object `name` and hands each new version's document to `apply` (which runs on a
/// blocking thread). Runs until the process ends.
pub async fn run<F>(client: Client, name: String, node: String, apply: Arc<F>)
where
    F: Fn(String, String) -> Outcome + Send + Sync + 'static,
{
    let ar = api_resource();
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    // Events of a cluster-scoped object live in `default`.
    let events: Api<CoreEvent> = Api::namespaced(client, "default");
    let cfg = watcher::Config::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(290);
    let mut stream = watcher(api.clone(), cfg)
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut last: Option<(String, i64)> = None;
    while let Some(ev) = stream.next().await {
        let obj = match ev {
            Ok(o) => o,
            Err(e) => {
                warn!(error = %e, "EgressPolicy watch failed; retrying");
                continue;
            }
        };
        let generation = obj.metadata.generation.unwrap_or(0);
        let uid = obj.uid().unwrap_or_default();
        // Status writes (ours and other nodes') come back as events: act on spec changes only.
        if last.as_ref() == Some(&(uid.clone(), generation)) {
            continue;
        }
        last = Some((uid, generation));
        let doc = crd::document(&obj.name_any(), obj.data.get("spec"));
        let label = format!("egresspolicy/{}", obj.name_any());
        let a = apply.clone();
        let outcome = tokio::task::spawn_blocking(move || a(label, doc))
            .await
            .unwrap_or_else(|e| Outcome::Rejected(format!("internal error: {e}")));
        let (status, reason, message) = match &outcome {
            Outcome::Applied(g) => {
                info!(generation = g, object = %obj.name_any(), "EgressPolicy applied");
                (
                    "True",
                    "Applied",
                    format!("node {node}: active as generation {g}"),
                )
            }
            Outcome::Unchanged(g) => (
                "True",
                "Applied",
                format!("node {node}: already active as generation {g}"),
            ),
            Outcome::Rejected(e) => {
                warn!(object = %obj.name_any(), error = %e, "EgressPolicy rejected; the active generation stays");
                ("False", "Invalid", format!("node {node}: {e}"))
            }
        };
        if let Outcome::Rejected(e) = &outcome {
            let reference = ObjectReference {
                api_version: Some(format!("{}/{}", crd::GROUP, crd::VERSION)),
                kind: Some(crd::KIND.into()),
                name: Some(obj.name_any()),
                uid: obj.uid(),
                resource_version: obj.resource_version(),
                ..Default::default()
            };
            let note = truncate(
                &format!("node {node}: {e}; the active generation stays"),
                1000,
            );
            if let Err(err) = events
                .create(&PostParams::default(), &warning(reference, &node, note))
                .await
            {
                warn!(error = %err, "publishing the Event failed");
            }
        }
        let st = EgressPolicyStatus {
            observed_generation: Some(generation),
            conditions: vec![Condition {
                type_: "Accepted".into(),
                status: status.into(),
                reason: reason.into(),
                message: truncate(&message, 4000),
                last_transition_time: crate::util::rfc3339_ns(crate::util::wall_ns())
                    .chars()
                    .take(19)
                    .collect::<String>()
                    + "Z",
                observed_generation: Some(generation),
            }],
        };
        if let Err(e) = api
            .patch_status(
                &obj.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": st})),
            )
            .await
        {
            warn!(error = %e, "writing the EgressPolicy status failed");
        }
    }
}
