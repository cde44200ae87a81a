//! Map definitions. Names come from `chokepoint_common::names`; userspace pins every map.

use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use chokepoint_common::{
    ACCEPT_SIZE, ATTEST_SIZE, AcceptVal, AttestVal, CGCACHE_SIZE, CgCache, Config, DNSANS_BYTES,
    DNSORIG_SIZE, DnsCfg, DnsOrig, DnsProxy, EVENTS_BYTES, FlowKey, FqdnKey, FqdnVal, GrantVal,
    IdentKey, IdentVal, LPM_DATA_LEN, MAX_DNSPX, MAX_FQDN, MAX_GRANTS, MAX_IDENT_CGROUPS,
    MAX_RULES, REPLY_SIZE, ReplyKey, ReplyVal, RuleVal, STATS_LEN, SockTag,
};

#[map]
pub(crate) static CP_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
pub(crate) static CP_IDENT: HashMap<IdentKey, IdentVal> =
    HashMap::with_max_entries(MAX_IDENT_CGROUPS, 0);

#[map]
pub(crate) static CP_RULES: LpmTrie<[u8; LPM_DATA_LEN], RuleVal> =
    LpmTrie::with_max_entries(MAX_RULES, 0);

#[map]
pub(crate) static CP_GRANTS: LpmTrie<[u8; LPM_DATA_LEN], GrantVal> =
    LpmTrie::with_max_entries(MAX_GRANTS, 0);

#[map]
pub(crate) static CP_CGSLOTS: Array<CgCache> = Array::with_max_entries(CGCACHE_SIZE, 0);

#[btf_map]
pub(crate) static CP_SKTAG: SkStorage<SockTag> = SkStorage::new();

#[map]
pub(crate) static CP_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
pub(crate) static CP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

#[map]
pub(crate) static CP_ATTEST: LruHashMap<FlowKey, AttestVal> =
    LruHashMap::with_max_entries(ATTEST_SIZE, 0);

#[map]
pub(crate) static CP_ACCEPT: LruHashMap<FlowKey, AcceptVal> =
    LruHashMap::with_max_entries(ACCEPT_SIZE, 0);

#[map]
pub(crate) static CP_REPLY: LruHashMap<ReplyKey, ReplyVal> =
    LruHashMap::with_max_entries(REPLY_SIZE, 0);

#[map]
pub(crate) static CP_FQDN: HashMap<FqdnKey, FqdnVal> = HashMap::with_max_entries(MAX_FQDN, 0);

#[map]
pub(crate) static CP_DNSPX: HashMap<u32, DnsProxy> = HashMap::with_max_entries(MAX_DNSPX, 0);

#[map]
pub(crate) static CP_DNSCFG: Array<DnsCfg> = Array::with_max_entries(1, 0);

#[map]
pub(crate) static CP_DNSORIG: LruHashMap<u64, DnsOrig> =
    LruHashMap::with_max_entries(DNSORIG_SIZE, 0);

#[map]
pub(crate) static CP_DNSANS: RingBuf = RingBuf::with_byte_size(DNSANS_BYTES, 0);

#[map]
pub(crate) static CP_DNSLOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
