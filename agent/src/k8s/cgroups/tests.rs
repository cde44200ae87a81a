//! Tests of the kubelet cgroup names: both drivers, every QoS class, runtimes, nesting.

use super::*;

const UID: &str = "0f1e2d3c-4b5a-6978-8a9b-acbdcedf0011";
const CID: &str = "5d2f3b5e3c1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b";

#[test]
fn cgroupfs_paths_for_every_qos_class() {
    let p = |q| pod_cgroup_path(&[], Driver::Cgroupfs, q, UID);
    assert_eq!(p(Qos::Guaranteed), format!("kubepods/pod{UID}"));
    assert_eq!(p(Qos::Burstable), format!("kubepods/burstable/pod{UID}"));
    assert_eq!(p(Qos::BestEffort), format!("kubepods/besteffort/pod{UID}"));
    assert_eq!(
        pod_cgroup_path(&["kubelet"], Driver::Cgroupfs, Qos::Burstable, UID),
        format!("kubelet/kubepods/burstable/pod{UID}")
    );
}

#[test]
fn systemd_paths_for_every_qos_class() {
    let u = UID.replace('-', "_");
    let p = |q| pod_cgroup_path(&[], Driver::Systemd, q, UID);
    assert_eq!(
        p(Qos::Guaranteed),
        format!("kubepods.slice/kubepods-pod{u}.slice")
    );
    assert_eq!(
        p(Qos::Burstable),
        format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice")
    );
    assert_eq!(
        p(Qos::BestEffort),
        format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice")
    );
    assert_eq!(
        pod_cgroup_path(&["kubelet"], Driver::Systemd, Qos::BestEffort, UID),
        format!(
            "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice"
        )
    );
}

#[test]
fn parses_back_what_it_generates() {
    for prefix in [&[][..], &["kubelet"][..]] {
        for driver in [Driver::Cgroupfs, Driver::Systemd] {
            for qos in [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort] {
                let path = pod_cgroup_path(prefix, driver, qos, UID);
                let got = parse(&format!("/{path}")).unwrap_or_else(|| panic!("{path}"));
                assert_eq!(
                    got.pod,
                    PodCgroup {
                        uid: UID.into(),
                        qos,
                        driver,
                        path: path.clone()
                    }
                );
                assert_eq!(got.container, None);
                // And the directory is one of the scanned QoS dirs' children.
                let parent = path.rsplit_once('/').map(|(p, _)| p.to_string()).unwrap();
                assert!(qos_dirs(prefix).contains(&parent), "{parent}");
            }
        }
    }
}

#[test]
fn container_children_of_every_runtime() {
    let base = pod_cgroup_path(&[], Driver::Cgroupfs, Qos::Burstable, UID);
    let c = |child: &str| parse(&format!("{base}/{child}")).unwrap().container;
    assert_eq!(c(CID).unwrap().runtime, None);
    assert_eq!(
        c(&format!("crio-{CID}")).unwrap().runtime,
        Some(Runtime::Crio)
    );
    let sbase = pod_cgroup_path(&[], Driver::Systemd, Qos::Guaranteed, UID);
    let s = |child: &str| {
        parse(&format!("{sbase}/{child}/sub"))
            .unwrap()
            .container
            .unwrap()
    };
    assert_eq!(
        s(&format!("cri-containerd-{CID}.scope")).runtime,
        Some(Runtime::Containerd)
    );
    assert_eq!(s(&format!("crio-{CID}.scope")).runtime, Some(Runtime::Crio));
    let conmon = s(&format!("crio-conmon-{CID}.scope"));
    assert!(conmon.conmon && conmon.id == CID);
    assert_eq!(
        s(&format!("docker-{CID}.scope")).runtime,
        Some(Runtime::Docker)
    );
    // A path below a container still names the pod.
    let deep = parse(&format!("{base}/{CID}/a/b")).unwrap();
    assert_eq!(deep.pod.path, base);
    assert_eq!(deep.container.unwrap().id, CID);
    // Unknown child names are not containers, the pod is still found.
    assert_eq!(c("not-a-container"), None);
    assert_eq!(
        parse_container_id(&format!("containerd://{CID}")),
        Some((Runtime::Containerd, CID.to_string()))
    );
    assert_eq!(
        parse_container_id(&format!("cri-o://{CID}")).unwrap().0,
        Runtime::Crio
    );
    assert_eq!(parse_container_id("containerd://short"), None);
    assert_eq!(parse_container_id(CID), None);
}

#[test]
fn rejects_what_kubelet_does_not_create() {
    for bad in [
        format!("pod{UID}"),
        format!("other/pod{UID}"),
        format!("kubepods/guaranteed/pod{UID}"),
        format!("kubepods/burstable/pod{}", UID.to_uppercase()),
        "kubepods/burstable/pod1234".to_string(),
        format!("kubepods/burstable/pod{}", UID.replace('-', "_")),
        format!("kubepods-pod{}.slice", UID.replace('-', "_")),
        format!(
            "kubepods.slice/kubepods-burstable-pod{}.slice",
            UID.replace('-', "_")
        ),
        format!("system.slice/system-pod{}.slice", UID.replace('-', "_")),
        "kubepods/burstable".to_string(),
    ] {
        assert_eq!(parse(&bad), None, "{bad}");
    }
    assert!(is_uid(UID));
    assert!(!is_uid(&UID[1..]));
}

#[test]
fn qos_from_status() {
    assert_eq!(Qos::from_status("BestEffort"), Some(Qos::BestEffort));
    assert_eq!(Qos::from_status("burstable"), None);
}
