//! `BPF_MAP_UPDATE_BATCH` / `BPF_MAP_DELETE_BATCH` (aya 0.14 has no batch calls): one system call
//! writes or removes a whole slice of keys, which is what makes a 100k-rule generation cheap to
//! build off to the side. Kernels or map types without batch support answer EINVAL/ENOTSUPP; the
//! caller then falls back to one call per key.

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::MapData;
use rustix::io::Errno;

/// `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH` (uapi `enum bpf_cmd`).
const BPF_MAP_UPDATE_BATCH: std::ffi::c_long = 26;
const BPF_MAP_DELETE_BATCH: std::ffi::c_long = 27;

/// Keys per system call: bounds the kernel's time without a reschedule point and the
/// per-call copy; 100k keys are a few dozen calls.
const CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Why a batch call stopped.
#[derive(Debug)]
pub(super) enum BatchError {
    /// The kernel or this map type has no batch command: use single-key calls.
    Unsupported,
    /// The kernel refused an element after `done` succeeded.
    Failed { done: usize, source: std::io::Error },
}

fn call(cmd: std::ffi::c_long, attr: &mut BatchAttr) -> Result<(), std::io::Error> {
    // SAFETY: `attr` is a valid `bpf_attr.batch` of the size passed; the key and value pointers
    // in it point at `count` elements the caller keeps alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<BatchAttr>() as std::ffi::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl BatchAttr {
    /// A batch over `keys` (and `values`, for an update) of the map `map_fd`.
    fn new<K, V>(map_fd: u32, keys: &[K], values: Option<&[V]>) -> Self {
        Self {
            keys: keys.as_ptr() as u64,
            values: values.map_or(0, |v| v.as_ptr() as u64),
            count: keys.len() as u32,
            map_fd,
            ..Self::default()
        }
    }
}

/// `EINVAL`, `EOPNOTSUPP`, and 524 (the kernel's internal `ENOTSUPP`): the kernel has no batch
/// operation for this map.
fn unsupported(e: &std::io::Error) -> bool {
    const EINVAL: i32 = Errno::INVAL.raw_os_error();
    const EOPNOTSUPP: i32 = Errno::OPNOTSUPP.raw_os_error();
    matches!(e.raw_os_error(), Some(EINVAL | EOPNOTSUPP | 524))
}

/// Why a batch call that failed with `e` stopped, after `done` keys of earlier calls and
/// `count` (the kernel's count) of this one: no batch support when the very first call did
/// nothing and the kernel refused the command itself, else a refused element.
fn stopped(e: std::io::Error, done: usize, count: u32) -> BatchError {
    if done == 0 && count == 0 && unsupported(&e) {
        BatchError::Unsupported
    } else {
        BatchError::Failed {
            done: done + count as usize,
            source: e,
        }
    }
}

/// Writes `keys[i] → values[i]` for every `i` (`K` and `V` laid out as the map's key and value).
pub(super) fn update<K: Copy, V: Copy>(
    map: &MapData,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchError> {
    assert_eq!(keys.len(), values.len());
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    let mut done = 0;
    for (k, v) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        let mut attr = BatchAttr::new(fd, k, Some(v));
        match call(BPF_MAP_UPDATE_BATCH, &mut attr) {
            Ok(()) => done += k.len(),
            Err(e) => return Err(stopped(e, done, attr.count)),
        }
    }
    Ok(())
}

/// Removes every key of `keys`; keys already absent are skipped (the kernel stops a batch at the
/// first missing key, so the rest of that chunk is retried past it).
pub(super) fn delete<K: Copy>(map: &MapData, keys: &[K]) -> Result<(), BatchError> {
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    let mut rest = keys;
    let mut done = 0;
    while !rest.is_empty() {
        let n = rest.len().min(CHUNK);
        let mut attr = BatchAttr::new::<K, K>(fd, &rest[..n], None);
        match call(BPF_MAP_DELETE_BATCH, &mut attr) {
            Ok(()) => {
                done += n;
                rest = &rest[n..];
            }
            Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                // attr.count keys were removed, the next one was absent: skip it.
                let skip = attr.count as usize + 1;
                done += skip;
                rest = &rest[skip.min(rest.len())..];
            }
            Err(e) => return Err(stopped(e, done, attr.count)),
        }
    }
    Ok(())
}
