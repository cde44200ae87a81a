//! The command-line parts of `toFQDN`: the daemon's flags and `chokepoint fqdn`.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use clap::Args;

use crate::{
    api::Request,
    cli::{Format, OutputArgs},
    util,
};

/// Daemon flags for `toFQDN` rules.
#[derive(Args, Debug, Clone, Default)]
pub struct FqdnArgs {
    /// An IPv4 address of this host that pods reach (e.g. the node IP, or the host side of the
    /// pods' veths): lookups from other network namespaces are redirected to the DNS proxy there.
    /// Without it only identities in the daemon's own namespace are served (pods get no answer).
    #[arg(long)]
    pub dns_proxy_pod_addr: Option<Ipv4Addr>,
    /// Shortest lifetime of a learned address, whatever the answer's TTL (default 0s).
    #[arg(long)]
    pub fqdn_min_ttl: Option<String>,
    /// Time a learned address stays allowed after its TTL (default 5s).
    #[arg(long)]
    pub fqdn_grace: Option<String>,
    /// Most learned addresses per identity (default 1024); past it, new addresses are not
    /// learned and an `fqdn_cap` record is written.
    #[arg(long)]
    pub fqdn_max_per_identity: Option<usize>,
}

/// Resolved `toFQDN` options of the daemon.
#[derive(Clone, Debug)]
pub struct FqdnOptions {
    /// The address pods' lookups are redirected to (`--dns-proxy-pod-addr`).
    pub pod_addr: Option<Ipv4Addr>,
    /// Shortest lifetime of a learned address, whatever the answer's TTL.
    pub min_ttl: Duration,
    /// Time a learned address stays allowed after its TTL.
    pub grace: Duration,
    /// Most learned addresses per identity.
    pub max_per_identity: usize,
}

impl Default for FqdnOptions {
    fn default() -> Self {
        Self {
            pod_addr: None,
            min_ttl: super::DEFAULT_MIN_TTL,
            grace: super::DEFAULT_GRACE,
            max_per_identity: super::DEFAULT_MAX_PER_IDENTITY,
        }
    }
}

impl FqdnArgs {
    /// Validates the flags.
    pub fn resolve(&self) -> anyhow::Result<FqdnOptions> {
        let d = FqdnOptions::default();
        let dur = |flag: &str, v: &Option<String>, def: Duration| match v {
            // Zero is a valid lifetime bound here.
            Some(s) if s.trim_start_matches('0').is_empty() || s.trim_start_matches('0') == "s" => {
                Ok(Duration::ZERO)
            }
            Some(s) => util::parse_duration(s).map_err(|e| anyhow::anyhow!("--{flag}: {e}")),
            None => Ok(def),
        };
        let max = self.fqdn_max_per_identity.unwrap_or(d.max_per_identity);
        if max == 0 {
            anyhow::bail!("--fqdn-max-per-identity must be at least 1");
        }
        Ok(FqdnOptions {
            pod_addr: self.dns_proxy_pod_addr,
            min_ttl: dur("fqdn-min-ttl", &self.fqdn_min_ttl, d.min_ttl)?,
            grace: dur("fqdn-grace", &self.fqdn_grace, d.grace)?,
            max_per_identity: max,
        })
    }
}

/// `chokepoint fqdn`: names learned for toFQDN rules, their addresses and remaining TTLs.
#[derive(Args, Debug)]
pub struct FqdnCmd {
    /// Only this identity.
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,
    /// Output format.
    #[command(flatten)]
    pub out: OutputArgs,
}

impl FqdnCmd {
    /// Runs the command against the daemon at `socket`.
    pub async fn run(self, socket: &Path) -> anyhow::Result<()> {
        let mut c = crate::api::Client::connect(socket).await?;
        let v: crate::api::responses::FqdnLearned = c
            .call(&Request::Fqdn {
                identity: self.identity,
            })
            .await?;
        match self.out.format() {
            Format::Text => print!("{}", super::print_text(&v)),
            Format::Json => println!("{}", serde_json::to_string_pretty(&v)?),
            Format::Jsonl => {
                for e in &v.learned {
                    println!("{}", serde_json::to_string(e)?);
                }
            }
        }
        Ok(())
    }
}
