//! Kubelet's pod cgroup names for both cgroup drivers, every QoS class, the container runtimes'
//! child names, and nested kubelets (kind puts a `kubelet` level first).
//!
//! Kubelet names a pod's cgroup `[prefix…, "kubepods", qos?, "pod" + uid]` (Guaranteed pods have
//! no QoS level). The cgroupfs driver joins the parts with `/`; the systemd driver escapes `-` in
//! each part to `_` and expands the name as nested slices (`a.slice/a-b.slice/a-b-c.slice`).
//! Under the pod directory each container (and the sandbox) has its own directory, named by the
//! runtime: `<id>` (containerd, cri-dockerd with cgroupfs), `crio-<id>` (CRI-O with cgroupfs),
//! `cri-containerd-<id>.scope`, `crio-<id>.scope`, `crio-conmon-<id>.scope`, `docker-<id>.scope`
//! (systemd).

use std::{fs, path::Path};

/// The kubelet cgroup driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// Pod cgroups as `kubepods/<qos>/pod<uid>` directories.
    Cgroupfs,
    /// Pod cgroups as systemd slices (`kubepods-<qos>-pod<uid>.slice`).
    Systemd,
}

/// A pod's QoS class (`status.qosClass`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    /// Requests equal limits for every container.
    Guaranteed,
    /// Some requests or limits, not Guaranteed.
    Burstable,
    /// No requests or limits.
    BestEffort,
}

impl Qos {
    /// Kubelet's level name (none for Guaranteed).
    fn level(self) -> Option<&'static str> {
        match self {
            Qos::Guaranteed => None,
            Qos::Burstable => Some("burstable"),
            Qos::BestEffort => Some("besteffort"),
        }
    }

    /// From `status.qosClass`.
    pub fn from_status(s: &str) -> Option<Qos> {
        match s {
            "Guaranteed" => Some(Qos::Guaranteed),
            "Burstable" => Some(Qos::Burstable),
            "BestEffort" => Some(Qos::BestEffort),
            _ => None,
        }
    }
}

/// A container runtime, as seen in a container cgroup's name or a `containerID` URI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// containerd.
    Containerd,
    /// CRI-O.
    Crio,
    /// Docker (cri-dockerd).
    Docker,
}

/// A pod-level cgroup found under the cgroup root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    /// The pod UID, with dashes (as in `metadata.uid`).
    pub uid: String,
    /// The pod's QoS class (which level of the tree it is under).
    pub qos: Qos,
    /// The cgroup driver the path's form shows.
    pub driver: Driver,
    /// Path of the pod cgroup relative to the cgroup root, without leading `/`.
    pub path: String,
}

/// A container cgroup below a pod cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerCgroup {
    /// `None` when the name has no runtime prefix (containerd or cri-dockerd with cgroupfs).
    pub runtime: Option<Runtime>,
    /// The container id (64 hex digits).
    pub id: String,
    /// CRI-O's conmon scope (the monitor, not the container itself).
    pub conmon: bool,
}

/// What a cgroup path says about pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The pod cgroup.
    pub pod: PodCgroup,
    /// The container directory directly under the pod, when the path goes below the pod.
    pub container: Option<ContainerCgroup>,
}

/// Whether `s` is a pod UID in canonical form (8-4-4-4-12 lowercase hex).
pub fn is_uid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
}

fn kubelet_parts(prefix: &[&str], qos: Qos, uid: &str) -> Vec<String> {
    let mut parts: Vec<String> = prefix
        .iter()
        .map(std::string::ToString::to_string)
        .collect();
    parts.push("kubepods".into());
    if let Some(l) = qos.level() {
        parts.push(l.into());
    }
    parts.push(format!("pod{uid}"));
    parts
}

/// The systemd driver's expansion of a kubelet cgroup name into nested slices.
fn systemd_path(parts: &[String]) -> String {
    let mut out = Vec::new();
    let mut acc = String::new();
    for p in parts {
        if !acc.is_empty() {
            acc.push('-');
        }
        acc.push_str(&p.replace('-', "_"));
        out.push(format!("{acc}.slice"));
    }
    out.join("/")
}

/// Path of a pod's cgroup relative to the cgroup root, as kubelet creates it. `prefix` is the
/// kubelet `--cgroup-root` split into parts (empty for `/`, `["kubelet"]` for kind).
pub fn pod_cgroup_path(prefix: &[&str], driver: Driver, qos: Qos, uid: &str) -> String {
    let parts = kubelet_parts(prefix, qos, uid);
    match driver {
        Driver::Cgroupfs => parts.join("/"),
        Driver::Systemd => systemd_path(&parts),
    }
}

/// The directories whose children are pod cgroups (one per driver and QoS class), relative to
/// the cgroup root: these are scanned and watched for pods appearing.
pub fn qos_dirs(prefix: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for driver in [Driver::Cgroupfs, Driver::Systemd] {
        for qos in [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort] {
            let mut path = pod_cgroup_path(prefix, driver, qos, "x");
            // Drop the pod level.
            match path.rfind('/') {
                Some(i) => path.truncate(i),
                None => path.clear(),
            }
            out.push(path);
        }
    }
    out
}

fn hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// Parses a container directory name under a pod cgroup.
pub fn parse_container(name: &str) -> Option<ContainerCgroup> {
    let c = |runtime, id: &str, conmon| {
        hex64(id).then(|| ContainerCgroup {
            runtime,
            id: id.to_string(),
            conmon,
        })
    };
    if let Some(scope) = name.strip_suffix(".scope") {
        if let Some(id) = scope.strip_prefix("cri-containerd-") {
            return c(Some(Runtime::Containerd), id, false);
        }
        if let Some(id) = scope.strip_prefix("crio-conmon-") {
            return c(Some(Runtime::Crio), id, true);
        }
        if let Some(id) = scope.strip_prefix("crio-") {
            return c(Some(Runtime::Crio), id, false);
        }
        if let Some(id) = scope.strip_prefix("docker-") {
            return c(Some(Runtime::Docker), id, false);
        }
        return None;
    }
    if let Some(id) = name.strip_prefix("crio-") {
        return c(Some(Runtime::Crio), id, false);
    }
    c(None, name, false)
}

/// A cgroupfs pod component: `pod<uid>`.
fn cgroupfs_pod(name: &str) -> Option<String> {
    let uid = name.strip_prefix("pod")?;
    is_uid(uid).then(|| uid.to_string())
}

/// A systemd pod component: `…kubepods[-qos]-pod<uid with _>.slice`, and its QoS.
fn systemd_pod(name: &str) -> Option<(String, Qos)> {
    let stem = name.strip_suffix(".slice")?;
    let (head, uid) = stem.rsplit_once("-pod")?;
    let uid = uid.replace('_', "-");
    if !is_uid(&uid) {
        return None;
    }
    let qos = if head == "kubepods" || head.ends_with("-kubepods") {
        Qos::Guaranteed
    } else if head.ends_with("kubepods-burstable") {
        Qos::Burstable
    } else if head.ends_with("kubepods-besteffort") {
        Qos::BestEffort
    } else {
        return None;
    };
    Some((uid, qos))
}

/// Finds the pod (and container) a cgroup path belongs to. The path is relative to the cgroup
/// root, with or without a leading `/`.
pub fn parse(path: &str) -> Option<Parsed> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for (i, comp) in comps.iter().enumerate() {
        let parent = i.checked_sub(1).map(|j| comps[j]);
        let grandparent = i.checked_sub(2).map(|j| comps[j]);
        let found = if let Some(uid) = cgroupfs_pod(comp) {
            match (grandparent, parent) {
                (_, Some("kubepods")) => Some((uid, Qos::Guaranteed, Driver::Cgroupfs)),
                (Some("kubepods"), Some("burstable")) => {
                    Some((uid, Qos::Burstable, Driver::Cgroupfs))
                }
                (Some("kubepods"), Some("besteffort")) => {
                    Some((uid, Qos::BestEffort, Driver::Cgroupfs))
                }
                _ => None,
            }
        } else if let Some((uid, qos)) = systemd_pod(comp) {
            // The parent slice must be the one the pod's name expands from.
            let expected_parent = comp
                .strip_suffix(".slice")
                .and_then(|s| s.rsplit_once("-pod"))
                .map(|(head, _)| format!("{head}.slice"));
            (parent.map(str::to_string) == expected_parent).then_some((uid, qos, Driver::Systemd))
        } else {
            None
        };
        if let Some((uid, qos, driver)) = found {
            return Some(Parsed {
                pod: PodCgroup {
                    uid,
                    qos,
                    driver,
                    path: comps[..=i].join("/"),
                },
                container: comps.get(i + 1).and_then(|c| parse_container(c)),
            });
        }
    }
    None
}

/// Splits a `status.*ContainerStatuses[].containerID` (`containerd://<id>`, `cri-o://<id>`,
/// `docker://<id>`).
pub fn parse_container_id(uri: &str) -> Option<(Runtime, String)> {
    let (scheme, id) = uri.split_once("://")?;
    let rt = match scheme {
        "containerd" => Runtime::Containerd,
        "cri-o" => Runtime::Crio,
        "docker" => Runtime::Docker,
        _ => return None,
    };
    hex64(id).then(|| (rt, id.to_string()))
}

/// Every pod cgroup under `root` (both drivers, all QoS classes, for each prefix).
pub fn scan(root: &Path, prefixes: &[Vec<String>]) -> Vec<PodCgroup> {
    let mut out = Vec::new();
    for prefix in prefixes {
        let p: Vec<&str> = prefix.iter().map(String::as_str).collect();
        for dir in qos_dirs(&p) {
            let Ok(rd) = fs::read_dir(root.join(&dir)) else {
                continue;
            };
            for e in rd.filter_map(Result::ok) {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = e.file_name();
                let rel = format!("{dir}/{}", name.to_string_lossy());
                if let Some(parsed) = parse(&rel)
                    && parsed.pod.path == rel
                {
                    out.push(parsed.pod);
                }
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup_by(|a, b| a.path == b.path);
    out
}

#[cfg(test)]
mod tests;
