//! Connection maps: attested gateway connections, pending accepts, UDP reply windows.

#[cfg(doc)]
use crate::names;
/// Value of [`names::ATTEST`]: who is behind the connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttestVal {
    /// Establishment time (boot ns).
    pub since_ns: u64,
    /// Socket cookie.
    pub cookie: u64,
    /// cgroup id of the socket.
    pub cgroup_id: u64,
    /// pid/tgid of the socket's creator.
    pub pid_tgid: u64,
    /// Task id of the grant behind the connection, 0 when none.
    pub task: u64,
    /// Identity id.
    pub ident: u32,
    /// Policy generation the connection was allowed under.
    pub generation: u32,
}

/// A TCP connection as its `local` end sees it: the key of [`names::ATTEST`] (the gateway's end:
/// `peer` is the identity's client socket, `local` the gateway endpoint) and of
/// [`names::ACCEPT`] (the identity's listener: `peer` is who connects, `local` the listening
/// address). One type for both, so the two maps cannot disagree on the layout a 4-tuple has.
/// IPv4 (also IPv4-mapped) in the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// 4 or 6.
    pub family: u8,
    /// Padding.
    pub _pad: u8,
    /// The other end's port (host order).
    pub peer_port: u16,
    /// This end's port (host order).
    pub local_port: u16,
    /// Padding.
    pub _pad2: u16,
    /// The other end's address.
    pub peer_addr: [u8; 16],
    /// This end's address.
    pub local_addr: [u8; 16],
}

/// Value of [`names::ACCEPT`]: who listens.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptVal {
    /// When the SYN was seen (boot ns).
    pub seen_ns: u64,
    /// cgroup id of the listener.
    pub cgroup_id: u64,
    /// pid/tgid of the listener's creator.
    pub pid_tgid: u64,
    /// uid/gid of the listener's creator.
    pub uid_gid: u64,
    /// The listener creator's command name.
    pub comm: [u8; 16],
    /// Identity id.
    pub ident: u32,
    /// Identity mode.
    pub mode: u8,
    /// Padding.
    pub _pad: [u8; 3],
}

/// Key of [`names::REPLY`]: a UDP peer of one socket. IPv4 in the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReplyKey {
    /// Socket cookie of the identity's socket.
    pub cookie: u64,
    /// The peer's address.
    pub addr: [u8; 16],
    /// The peer's port (host order).
    pub port: u16,
    /// 4 or 6.
    pub family: u8,
    /// IP protocol number.
    pub proto: u8,
    /// Padding.
    pub _pad: u32,
}

/// Value of [`names::REPLY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyVal {
    /// When the peer last sent to the socket (boot ns).
    pub seen_ns: u64,
    /// Epoch `ingress.allowFrom` was last checked under.
    pub epoch: u32,
    /// 1 once the reply flow has been recorded.
    pub recorded: u8,
    /// Padding.
    pub _pad: [u8; 3],
}

assert_size!(AttestVal, 48);
assert_size!(FlowKey, 40);
assert_size!(AcceptVal, 56);
assert_size!(ReplyKey, 32);
assert_size!(ReplyVal, 16);
