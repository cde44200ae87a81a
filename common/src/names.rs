//! Names of every pinned map and every program. Short, prefixed, at most 15 bytes.

/// Array[1] of [`crate::Config`]: active slot, generation and epoch.
pub const CONFIG: &str = "CP_CONFIG";
/// Hash of [`crate::IdentKey`] → [`crate::IdentVal`]: cgroup id (per slot) → identity.
pub const IDENT: &str = "CP_IDENT";
/// LPM trie of [`crate::LpmKey`] → [`crate::RuleVal`]: gateway endpoints and allow rules.
pub const RULES: &str = "CP_RULES";
/// LPM trie of [`crate::LpmKey`] → [`crate::GrantVal`]: task-scoped grants with expiry.
pub const GRANTS: &str = "CP_GRANTS";
/// Array of [`crate::CgCache`], direct-mapped by cgroup id (`id % CGCACHE_SIZE`): resolved
/// identities, valid for one epoch. An array lookup is inlined by the verifier (no helper
/// call, no hashing), which is what a socket of no identity pays on every hook.
pub const CGCACHE: &str = "CP_CGSLOTS";
/// Socket local storage of [`crate::SockTag`]: identity and cached verdict per socket.
pub const SKTAG: &str = "CP_SKTAG";
/// Ring buffer of [`crate::Event`]: flow decision records.
pub const EVENTS: &str = "CP_EVENTS";
/// Per-CPU array of u64 counters indexed by [`crate::stat_index`].
pub const STATS: &str = "CP_STATS";
/// LRU hash of [`crate::FlowKey`] → [`crate::AttestVal`]: live gateway connections of
/// identities, keyed by the 4-tuple as the gateway sees it.
pub const ATTEST: &str = "CP_ATTEST";
/// LRU hash of [`crate::FlowKey`] → [`crate::AcceptVal`]: connections others are opening to
/// a listener of an identity (SYN seen, child not yet established).
pub const ACCEPT: &str = "CP_ACCEPT";
/// LRU hash of [`crate::ReplyKey`] → [`crate::ReplyVal`]: UDP peers that sent first to a
/// socket of an identity, with when they last did.
pub const REPLY: &str = "CP_REPLY";
/// Hash of [`crate::FqdnKey`] → [`crate::FqdnVal`]: addresses learned for `toFQDN` rules,
/// per identity, with their expiry.
pub const FQDN: &str = "CP_FQDN";
/// Hash of identity id → [`crate::DnsProxy`]: where the identity's DNS is redirected.
pub const DNSPX: &str = "CP_DNSPX";
/// Array[1] of [`crate::DnsCfg`]: the DNS proxy's addresses.
pub const DNSCFG: &str = "CP_DNSCFG";
/// LRU hash of socket cookie → [`crate::DnsOrig`]: the resolver a redirected socket asked,
/// restored as the source of the replies.
pub const DNSORIG: &str = "CP_DNSORIG";
/// Ring buffer of [`crate::DnsAnswer`]: DNS answers (UDP from port 53) an identity's socket
/// received from a peer it may send to (its sanctioned resolver), for the inventory's host
/// names.
pub const DNSANS: &str = "CP_DNSANS";
/// Per-CPU array[1] of u64: DNS answers not captured because [`DNSANS`] was full.
pub const DNSLOST: &str = "CP_DNSLOST";

/// `cgroup/sock_create` program.
pub const PROG_SOCK_CREATE: &str = "cp_sock_create";
/// `cgroup/connect4` program.
pub const PROG_CONNECT4: &str = "cp_connect4";
/// `cgroup/connect6` program.
pub const PROG_CONNECT6: &str = "cp_connect6";
/// `cgroup/sendmsg4` program.
pub const PROG_SENDMSG4: &str = "cp_sendmsg4";
/// `cgroup/sendmsg6` program.
pub const PROG_SENDMSG6: &str = "cp_sendmsg6";
/// `cgroup_skb/egress` program.
pub const PROG_SKB_EGRESS: &str = "cp_skb_egress";
/// TC egress classifier (tcx).
pub const PROG_TC_EGRESS: &str = "cp_tc_egress";
/// BPF LSM `socket_create` program.
pub const PROG_LSM_SOCKET: &str = "cp_lsm_socket";
/// `sockops` program (gateway connection attestation, accepted connections).
pub const PROG_SOCK_OPS: &str = "cp_sock_ops";
/// `cgroup_skb/ingress` program (who opens connections to identities, UDP peers).
pub const PROG_SKB_INGRESS: &str = "cp_skb_ingress";
/// `cgroup/setsockopt` program (options that would skip the TC backstop).
pub const PROG_SETSOCKOPT: &str = "cp_setsockopt";

/// `raw_tracepoint/sys_enter` program (32-bit syscalls that would skip `cgroup/setsockopt`).
pub const PROG_COMPAT_SYS: &str = "cp_compat_sys";
/// kprobe program of the same guard, attached to the compat syscall entries instead (only
/// those calls run it); linked once per entry function (`cp_compat_kprobe@<function>`).
pub const PROG_COMPAT_KPROBE: &str = "cp_compat_kprobe";

/// `cgroup/recvmsg4` program (DNS proxy replies).
pub const PROG_RECVMSG4: &str = "cp_recvmsg4";
/// `cgroup/getpeername4` program (DNS proxy peer).
pub const PROG_GETPEER4: &str = "cp_getpeername4";

/// Every program, in attach order.
pub const PROGRAMS: [&str; 14] = [
    PROG_SOCK_CREATE,
    PROG_LSM_SOCKET,
    PROG_CONNECT4,
    PROG_CONNECT6,
    PROG_SENDMSG4,
    PROG_SENDMSG6,
    PROG_SKB_EGRESS,
    PROG_TC_EGRESS,
    PROG_SOCK_OPS,
    PROG_SKB_INGRESS,
    PROG_SETSOCKOPT,
    PROG_COMPAT_SYS,
    PROG_RECVMSG4,
    PROG_GETPEER4,
];
