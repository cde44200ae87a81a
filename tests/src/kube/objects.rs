//! The cluster's objects, as the tests read and write them: the dynamic API per kind, server-side
//! apply (also dry-run), get, list, status patches, deletes, ServiceAccount tokens.

use std::time::{Duration, Instant};

use kube::{
    api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    core::GroupVersionKind,
    discovery::{self, Scope},
};
use serde_json::{Value, json};

use super::Cluster;

impl Cluster {
    /// Runs a future on the cluster's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The dynamic API for `apiVersion`/`kind`, namespaced when the kind is and `ns` is given.
    pub fn api(&self, api_version: &str, kind: &str, ns: Option<&str>) -> Api<DynamicObject> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let t0 = Instant::now();
        let (ar, caps) = loop {
            match self.block_on(discovery::pinned_kind(&self.client, &gvk)) {
                Ok(r) => break r,
                // A just-created CRD takes a moment to be served.
                Err(e) if t0.elapsed() < Duration::from_secs(20) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("{api_version} {kind} is not served: {e}"),
            }
        };
        match (caps.scope, ns) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            _ => Api::all_with(self.client.clone(), &ar),
        }
    }

    fn apply_params(dry_run: bool) -> PatchParams {
        let mut pp = PatchParams::apply("chokepoint-tests").force();
        pp.dry_run = dry_run;
        pp
    }

    /// Server-side applies one object (JSON); returns what the server stored. `Err` carries the
    /// server's message.
    pub fn try_apply(&self, obj: &Value, dry_run: bool) -> Result<Value, String> {
        let av = obj["apiVersion"].as_str().ok_or("no apiVersion")?;
        let kind = obj["kind"].as_str().ok_or("no kind")?;
        let name = obj["metadata"]["name"].as_str().ok_or("no metadata.name")?;
        let api = self.api(av, kind, obj["metadata"]["namespace"].as_str());
        self.block_on(api.patch(name, &Self::apply_params(dry_run), &Patch::Apply(obj)))
            .map(|o| serde_json::to_value(o).expect("json"))
            .map_err(|e| format!("{kind}/{name}: {e}"))
    }

    /// Server-side applies one object; panics on failure.
    pub fn apply(&self, obj: Value) -> Value {
        self.try_apply(&obj, false)
            .unwrap_or_else(|e| panic!("apply failed: {e}"))
    }

    /// Every document of a multi-document YAML stream, as JSON (empty documents dropped).
    pub fn parse_yaml(yaml: &str) -> Vec<Value> {
        yaml.split("\n---")
            .filter_map(|d| {
                let v: Value = serde_saphyr::from_str(d).expect("YAML document");
                (!v.is_null()).then_some(v)
            })
            .collect()
    }

    /// Server-side applies (or, with `dry_run`, validates) every document of a YAML stream;
    /// returns the server's answer for each.
    pub fn apply_yaml(&self, yaml: &str, dry_run: bool) -> Vec<Result<Value, String>> {
        Self::parse_yaml(yaml)
            .iter()
            .map(|d| self.try_apply(d, dry_run))
            .collect()
    }

    /// One object, when it exists.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let api = self.api(api_version, kind, ns);
        self.block_on(api.get_opt(name))
            .expect("get")
            .map(|o| serde_json::to_value(o).expect("json"))
    }

    /// Every object of a kind (in `ns`, or everywhere).
    pub fn list(&self, api_version: &str, kind: &str, ns: Option<&str>) -> Vec<Value> {
        let api = self.api(api_version, kind, ns);
        self.block_on(api.list(&ListParams::default()))
            .expect("list")
            .items
            .into_iter()
            .map(|o| serde_json::to_value(o).expect("json"))
            .collect()
    }

    /// Merge-patches an object's `status` subresource (what kubelet or a controller writes).
    pub fn patch_status(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
        status: Value,
    ) {
        let api = self.api(api_version, kind, ns);
        self.block_on(api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        ))
        .unwrap_or_else(|e| panic!("status of {kind}/{name}: {e}"));
    }

    /// Deletes an object (no grace period).
    pub fn delete(&self, api_version: &str, kind: &str, ns: Option<&str>, name: &str) {
        let api = self.api(api_version, kind, ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        self.block_on(api.delete(name, &dp))
            .unwrap_or_else(|e| panic!("delete {kind}/{name}: {e}"));
    }

    /// A token for ServiceAccount `ns/name` from the TokenRequest API.
    pub fn token(&self, ns: &str, name: &str) -> String {
        let api = self.api("v1", "ServiceAccount", Some(ns));
        let req = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        });
        let v: Value = self
            .block_on(api.create_subresource("token", name, &PostParams::default(), &req))
            .unwrap_or_else(|e| panic!("token for {ns}/{name}: {e}"));
        v["status"]["token"].as_str().expect("token").to_string()
    }
}
