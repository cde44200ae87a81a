//! The guest's initramfs: busybox, the modules the guest needs (with their dependencies, from
//! the kernel package), and `/init`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use super::package::KernelTree;

/// Modules loaded in the guest (with their dependencies), when the kernel builds them as modules.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtiofs",
    "overlay",
    "veth",
    "sch_ingress",
    "cls_bpf",
];

/// The guest's `/init` (busybox sh): modules, virtio-fs root under a tmpfs overlay, the usual
/// pseudo file systems, then the run script named on the command line, then power off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /lower /upper /newroot
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod "/modules/$m" || echo "cp-guest: insmod $m failed"; done
run=$(sed -n 's/.*cp\.run=\([^ ]*\).*/\1/p' /proc/cmdline)
fail() { echo "cp-guest: $*"; echo "CP-GUEST-RC=99"; poweroff -f; }
mount -t virtiofs host /lower -o ro || fail "cannot mount the host tree over virtio-fs"
mount -t tmpfs -o size=1024m upper /upper
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot \
  || fail "cannot mount the overlay root"
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs shm /newroot/dev/shm
# /tmp stays the overlay's (writes land in the tmpfs upper): a tmpfs here would hide a
# workspace that lives under /tmp (a CI clone), and with it the binaries and run.sh.
mount -t tmpfs run /newroot/run
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup
mount -t securityfs securityfs /newroot/sys/kernel/security
mount -t bpf bpf /newroot/sys/fs/bpf
echo "cp-guest: kernel $(uname -r), lsm $(cat /newroot/sys/kernel/security/lsm)"
chroot /newroot /bin/sh "$run"
echo "CP-GUEST-RC=$?"
poweroff -f
"#;

/// Module files to load for `wanted`, dependencies first (from `modules.dep`); modules built
/// into the kernel are skipped.
fn module_order(tree: &KernelTree, wanted: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let dir = tree.modules();
    let dep = fs::read_to_string(dir.join("modules.dep")).context("modules.dep")?;
    let builtin = fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let norm = |s: &str| s.replace('-', "_");
    let stem = |p: &str| {
        let f = p.rsplit('/').next().unwrap_or(p);
        norm(f.split(".ko").next().unwrap_or(f))
    };
    let deps: std::collections::HashMap<String, (String, Vec<String>)> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| {
            (
                stem(m),
                (m.to_string(), d.split_whitespace().map(&stem).collect()),
            )
        })
        .collect();
    let is_builtin = |m: &str| builtin.lines().any(|l| stem(l) == m);
    fn visit(
        m: &str,
        deps: &std::collections::HashMap<String, (String, Vec<String>)>,
        out: &mut Vec<String>,
        seen: &mut Vec<String>,
    ) {
        if seen.iter().any(|s| s == m) {
            return;
        }
        seen.push(m.to_string());
        if let Some((path, ds)) = deps.get(m) {
            for d in ds {
                visit(d, deps, out, seen);
            }
            out.push(path.clone());
        }
    }
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for w in wanted {
        let w = norm(w);
        if !deps.contains_key(&w) {
            if is_builtin(&w) {
                continue;
            }
            bail!(
                "{}: module {w} is neither built in nor a module",
                tree.package
            );
        }
        visit(&w, &deps, &mut out, &mut seen);
    }
    Ok(out.into_iter().map(|p| dir.join(p)).collect())
}

/// Builds the initramfs (busybox, modules decompressed, `/init`) as a newc cpio archive.
pub(super) fn initramfs(tree: &KernelTree, work: &Path) -> anyhow::Result<PathBuf> {
    let dir = work.join("initramfs");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("bin"))?;
    fs::create_dir_all(dir.join("modules"))?;
    fs::copy("/bin/busybox", dir.join("bin/busybox")).context("busybox-static")?;
    let mut order = Vec::new();
    for m in module_order(tree, MODULES)? {
        let name = m
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let plain = name
            .trim_end_matches(".xz")
            .trim_end_matches(".zst")
            .to_string();
        let dst = dir.join("modules").join(&plain);
        if name.ends_with(".xz") {
            let out = Command::new("xz").arg("-dc").arg(&m).output()?;
            if !out.status.success() {
                bail!("xz -d {}", m.display());
            }
            fs::write(&dst, out.stdout)?;
        } else if name.ends_with(".zst") {
            bail!("{}: zstd-compressed modules are not handled", m.display());
        } else {
            fs::copy(&m, &dst)?;
        }
        order.push(plain);
    }
    fs::write(dir.join("modules.order"), order.join("\n") + "\n")?;
    fs::write(dir.join("init"), INIT)?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.join("init"), fs::Permissions::from_mode(0o755))?;
    let cpio = work.join("initramfs.cpio");
    let out = fs::File::create(&cpio)?;
    let st = Command::new("sh")
        .args(["-c", "find . | LC_ALL=C sort | cpio -o -H newc --quiet"])
        .current_dir(&dir)
        .stdout(out)
        .status()?;
    if !st.success() {
        bail!("cpio failed");
    }
    Ok(cpio)
}
