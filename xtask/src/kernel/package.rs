//! The kernel package: Debian's cloud image of a series, resolved with apt, downloaded and
//! extracted once under [`CACHE`], with the host packages the guest is assembled from.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

/// Where kernel packages are downloaded and extracted (kept across `cargo clean`).
const CACHE: &str = "/var/cache/chokepoint/kernels";

/// Debian packages the guest is assembled from.
const APT: &[&str] = &["qemu-system-x86", "busybox-static", "kmod", "cpio"];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs QEMU, busybox-static, kmod and cpio when missing.
pub(super) fn ensure_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("kernel: installing Debian packages: {}", missing.join(" "));
    crate::run(Command::new("apt-get").args(["update", "-qq"]))?;
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Numeric components of a package name, for picking the newest ABI of a series.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// True when `name` is Debian's cloud kernel image of `series`:
/// `linux-image-6.1.0-57-cloud-amd64`, `linux-image-6.12.117+deb12-cloud-amd64`.
fn is_series_image(name: &str, series: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("linux-image-")
        .and_then(|r| r.strip_prefix(series))
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|r| r.strip_suffix("-cloud-amd64"))
    else {
        return false;
    };
    let (ver, abi) = match rest.split_once('+') {
        Some((v, a)) => (v, Some(a)),
        None => (rest, None),
    };
    let ver_ok = ver
        .split(['.', '-'])
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    ver_ok && abi.is_none_or(|a| a.starts_with("deb") && a[3..].bytes().all(|b| b.is_ascii_digit()))
}

/// The newest cloud kernel package of `series` the apt sources know (or the newest cached one
/// when apt knows none, e.g. offline).
fn resolve_package(series: &str) -> anyhow::Result<String> {
    let out = Command::new("apt-cache")
        .args(["search", "--names-only"])
        .arg(format!("^linux-image-{}\\.", series.replace('.', "\\.")))
        .output()
        .context("apt-cache")?;
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| is_series_image(n, series))
        .map(str::to_string)
        .collect();
    if names.is_empty()
        && let Ok(rd) = fs::read_dir(CACHE)
    {
        names = rd
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| {
                is_series_image(n, series) && Path::new(CACHE).join(n).join(".done").exists()
            })
            .collect();
    }
    names.sort_by_key(|n| version_key(n));
    names.pop().with_context(|| {
        format!("no Debian cloud kernel package for {series} (linux-image-{series}…-cloud-amd64) in the apt sources or in {CACHE}")
    })
}

/// A kernel package extracted under the cache: its vmlinuz and module tree.
pub(super) struct KernelTree {
    /// The package name (`linux-image-…-cloud-amd64`).
    pub(super) package: String,
    root: PathBuf,
    /// The kernel release (`uname -r`).
    pub(super) release: String,
}

impl KernelTree {
    /// The kernel image.
    pub(super) fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }
    /// The module tree of the release.
    pub(super) fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

/// Downloads (apt) and extracts the kernel package once; later runs reuse the cache.
pub(super) fn fetch_kernel(series: &str) -> anyhow::Result<KernelTree> {
    let package = resolve_package(series)?;
    let root = Path::new(CACHE).join(&package);
    let done = root.join(".done");
    if !done.exists() {
        let dl = Path::new(CACHE).join("download");
        let _ = fs::remove_dir_all(&dl);
        fs::create_dir_all(&dl).with_context(|| format!("creating {}", dl.display()))?;
        eprintln!("kernel: downloading {package}");
        let st = Command::new("apt-get")
            .args(["download", "-q", "-o", "APT::Sandbox::User=root", &package])
            .current_dir(&dl)
            .status()
            .context("apt-get")?;
        if !st.success() {
            bail!("apt-get download {package} failed ({st})");
        }
        let deb = fs::read_dir(&dl)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get download {package} left no .deb"))?;
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root)?;
        crate::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        let release = release_of(&root)?;
        crate::run(Command::new("depmod").arg("-b").arg(&root).arg(&release))
            .context("depmod on the extracted kernel")?;
        fs::remove_dir_all(&dl)?;
        fs::write(&done, &package)?;
    }
    let release = release_of(&root)?;
    Ok(KernelTree {
        package,
        root,
        release,
    })
}

fn release_of(root: &Path) -> anyhow::Result<String> {
    fs::read_dir(root.join("lib/modules"))
        .with_context(|| format!("{}: no lib/modules", root.display()))?
        .filter_map(Result::ok)
        .find_map(|e| e.file_name().into_string().ok())
        .with_context(|| format!("{}: empty lib/modules", root.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_image_names() {
        assert!(is_series_image("linux-image-6.1.0-57-cloud-amd64", "6.1"));
        assert!(is_series_image(
            "linux-image-6.12.117+deb12-cloud-amd64",
            "6.12"
        ));
        assert!(!is_series_image(
            "linux-image-6.12.117+deb12-cloud-amd64",
            "6.1"
        ));
        assert!(!is_series_image(
            "linux-image-6.1.0-57-cloud-amd64-unsigned",
            "6.1"
        ));
        assert!(!is_series_image(
            "linux-image-6.1.0-57-cloud-amd64-dbg",
            "6.1"
        ));
        assert!(!is_series_image("linux-image-6.12-cloud-amd64", "6.12"));
        assert!(
            version_key("linux-image-6.1.0-57-cloud-amd64")
                > version_key("linux-image-6.1.0-9-cloud-amd64")
        );
    }
}
