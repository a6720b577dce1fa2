//! Rate limits at the enforcement point. The policy decides which limits a request counts
//! against (`limits` in `package mcp.authz`, read and checked by [`mcp_guard_policy::limits`]);
//! this module counts them, after authorization (a denied request uses no quota): in this
//! replica's lock-free buckets ([`local`]), or across every replica of the server in Redis
//! ([`fleet`]) when the sidecar has one, falling back to the local bucket (or refusing, where a
//! limit says so) while Redis cannot be reached.

pub mod config;
pub mod fleet;
pub mod local;

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use mcp_guard_policy::limits::{Fallback, KeyPart, Limit, Scope};

use crate::identity::Identity;
use crate::metrics::Metrics;
use config::LimitsConfig;
use fleet::{Fleet, FleetBucket};
use local::{LocalBuckets, Rate, Refused};

/// How often idle local buckets are evicted.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Why the limits could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("--rate-limit-redis-url: {0}")]
    Url(String),
    #[error("cannot read --rate-limit-redis-password-file {path}: {source}")]
    Password {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The rate limits an allowed message counts against, and the bundle that set them.
#[derive(Debug, Clone, PartialEq)]
pub struct Quota {
    pub limits: Vec<Limit>,
    pub policy_hash: Arc<str>,
}

impl Quota {
    /// Takes the limits a decision noted, when it noted any.
    pub fn of(note: &mut crate::intercept::DecisionNote) -> Option<Quota> {
        if note.limits.is_empty() {
            return None;
        }
        Some(Quota {
            limits: std::mem::take(&mut note.limits),
            policy_hash: note.policy_hash.clone().unwrap_or_else(|| Arc::from("")),
        })
    }
}

/// A request a limit refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Tripped {
    /// The limit's name.
    pub limit: String,
    /// When the client may try again.
    pub retry_after: Duration,
    /// Counted across the fleet (else in this replica).
    pub fleet: bool,
    /// The fleet store could not be reached and the limit says `fallback: deny`.
    pub unavailable: bool,
    /// The limit, as the client is told (`60 requests per 1m`).
    pub rate: String,
}

impl Tripped {
    /// `Retry-After` in whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }

    /// What the client is told.
    pub fn message(&self) -> String {
        if self.unavailable {
            format!(
                "rate limit {} cannot be checked: its fleet-wide store is unreachable, and the limit refuses then",
                self.limit
            )
        } else {
            format!(
                "rate limit {} exceeded ({}); retry after {} s",
                self.limit,
                self.rate,
                self.retry_after_secs()
            )
        }
    }

    /// Where it was counted: `local`, `fleet`, or `unavailable` (the fleet store could not be).
    pub fn store(&self) -> &'static str {
        match (self.unavailable, self.fleet) {
            (true, _) => "unavailable",
            (false, true) => "fleet",
            (false, false) => "local",
        }
    }
}

/// What a request is counted by.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The bundle that decided: a new bundle starts every count afresh.
    pub policy_hash: &'a str,
    pub identity: Option<&'a Identity>,
    pub method: &'a str,
    /// The item the request names (the tool of a `tools/call`).
    pub item: Option<&'a str>,
}

/// The limits of this sidecar: local buckets, and the fleet store when configured.
pub struct Limiter {
    local: LocalBuckets,
    fleet: Option<Arc<Fleet>>,
    metrics: Arc<Metrics>,
    /// The Redis key prefix naming this server: `mcp-guard:{NAMESPACE/NAME}`.
    server: String,
    /// Shadow enforcement: a tripped limit is recorded, and the request forwarded.
    shadow: bool,
}

impl Limiter {
    /// Limits of the server `namespace/name`, as configured.
    pub fn from_config(
        config: &LimitsConfig,
        namespace: &str,
        name: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, LimitsError> {
        let fleet = match &config.rate_limit_redis_url {
            None => None,
            Some(url) => {
                let password = match &config.rate_limit_redis_password_file {
                    None => None,
                    Some(path) => Some(
                        std::fs::read_to_string(path)
                            .map_err(|source| LimitsError::Password {
                                path: path.clone(),
                                source,
                            })?
                            .trim_end_matches(['\r', '\n'])
                            .to_owned(),
                    ),
                };
                let (info, address) = connection_info(url, password)?;
                let fleet = Fleet::new(
                    info,
                    address,
                    config.rate_limit_redis_timeout,
                    Arc::clone(&metrics),
                )
                .map_err(|e| LimitsError::Url(e.to_string()))?;
                Some(Arc::new(fleet))
            }
        };
        Ok(Limiter {
            local: LocalBuckets::new(config.rate_limit_max_buckets),
            fleet,
            metrics,
            server: format!("mcp-guard:{{{namespace}/{name}}}"),
            shadow: false,
        })
    }

    /// A limiter with local buckets only (tests, benchmarks).
    pub fn local_only(max_buckets: usize, metrics: Arc<Metrics>) -> Self {
        Limiter {
            local: LocalBuckets::new(max_buckets),
            fleet: None,
            metrics,
            server: "mcp-guard:{/}".into(),
            shadow: false,
        }
    }

    /// In shadow enforcement a tripped limit is recorded and the request forwarded.
    pub fn with_shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// Whether tripped limits are only recorded (shadow enforcement).
    pub fn shadow(&self) -> bool {
        self.shadow
    }

    /// Starts the fleet store's connection and health checks, and the eviction of idle local
    /// buckets. Needs a Tokio runtime.
    pub fn spawn(self: &Arc<Self>) {
        if let Some(f) = &self.fleet {
            tracing::info!(redis = %f.address, "fleet-wide rate limits counted in Redis");
            tokio::spawn(Arc::clone(f).run());
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tick.tick().await;
                let Some(l) = me.upgrade() else { return };
                let held = l.local.sweep();
                l.metrics.rate_limit_buckets(held);
            }
        });
    }

    /// Whether fleet-wide checks go to Redis now.
    pub fn fleet_up(&self) -> bool {
        self.fleet.as_ref().is_some_and(|f| f.is_up())
    }

    /// Counts a request against every limit of its decision that applies to it; refuses it when
    /// one has no token left (taking none from the others).
    pub async fn check(&self, limits: &[Limit], req: &Request<'_>) -> Result<(), Tripped> {
        let r = self.check_counted(limits, req).await;
        if let Err(t) = &r {
            self.metrics.rate_limited(&t.limit, t.store());
        }
        r
    }

    async fn check_counted(&self, limits: &[Limit], req: &Request<'_>) -> Result<(), Tripped> {
        let mut local = Vec::new();
        let mut fleet = Vec::new();
        for l in limits.iter().filter(|l| l.applies(req.method, req.item)) {
            let key = bucket_key(l, req);
            if l.scope == Scope::Fleet && self.fleet.is_some() {
                fleet.push((l, key));
            } else {
                local.push((l, key));
            }
        }
        let mut taken: Vec<(u128, Rate)> = Vec::with_capacity(local.len() + fleet.len());
        for (l, key) in &local {
            self.take_local(l, *key, &mut taken, false)?;
        }
        let Some(store) = self.fleet.as_ref().filter(|_| !fleet.is_empty()) else {
            return Ok(());
        };
        let buckets: Vec<FleetBucket> = fleet
            .iter()
            .map(|(l, key)| fleet_bucket(&self.server, req.policy_hash, l, *key))
            .collect();
        match store.check(&buckets).await {
            Ok(None) => {
                for (l, key) in &fleet {
                    self.local.record(*key, rate(l));
                }
                Ok(())
            }
            Ok(Some((i, wait))) => {
                self.give_back(&taken);
                let l = fleet.get(i).map(|(l, _)| *l).unwrap_or(fleet[0].0);
                Err(tripped(l, wait, true, false))
            }
            Err(e) => {
                tracing::debug!(error = %e, "fleet-wide limits checked locally");
                self.metrics.rate_limit_fallback();
                if let Some((l, _)) = fleet.iter().find(|(l, _)| l.fallback == Fallback::Deny) {
                    self.give_back(&taken);
                    return Err(tripped(l, Duration::from_secs(1), true, true));
                }
                for (l, key) in &fleet {
                    self.take_local(l, *key, &mut taken, false)?;
                }
                Ok(())
            }
        }
    }

    /// Takes a token of `limit`'s local bucket, or gives back everything `taken` and refuses.
    fn take_local(
        &self,
        limit: &Limit,
        key: u128,
        taken: &mut Vec<(u128, Rate)>,
        fleet: bool,
    ) -> Result<(), Tripped> {
        let r = rate(limit);
        match self.local.take(key, r) {
            Ok(()) => {
                taken.push((key, r));
                Ok(())
            }
            Err(refused) => {
                self.give_back(taken);
                let wait = match refused {
                    Refused::Empty(d) => d,
                    Refused::Full => {
                        tracing::warn!(
                            limit = %limit.name,
                            "rate-limit table full ({} buckets, none idle): a new caller is refused; raise --rate-limit-max-buckets",
                            self.local.len()
                        );
                        Duration::from_secs(1)
                    }
                };
                Err(tripped(limit, wait, fleet, false))
            }
        }
    }

    fn give_back(&self, taken: &[(u128, Rate)]) {
        for (key, r) in taken {
            self.local.give_back(*key, *r);
        }
    }
}

fn tripped(l: &Limit, wait: Duration, fleet: bool, unavailable: bool) -> Tripped {
    Tripped {
        limit: l.name.clone(),
        retry_after: wait,
        fleet,
        unavailable,
        rate: format!("{} requests per {}", l.requests, period_text(l.per)),
    }
}

fn period_text(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        _ if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

fn rate(l: &Limit) -> Rate {
    Rate {
        interval: l.interval_nanos(),
        period: l.period_nanos(),
    }
}

/// The bucket a request counts in for `limit`: the bundle, the limit as written, and the
/// values of its key, hashed. Every part is length-prefixed, so no two keys run together.
fn bucket_key(limit: &Limit, req: &Request<'_>) -> u128 {
    let mut h = Sha256::new();
    let mut part = |s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    part(req.policy_hash);
    part(&limit.id);
    for k in &limit.key {
        match k {
            KeyPart::Subject => match req.identity {
                Some(i) => {
                    part(&i.iss);
                    part(&i.sub);
                }
                None => part("anonymous"),
            },
            KeyPart::Client => part(
                req.identity
                    .and_then(|i| i.client_id.as_deref())
                    .unwrap_or(""),
            ),
            KeyPart::Tool => part(req.item.unwrap_or(req.method)),
            KeyPart::Server => part(""),
        }
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(bytes)
}

fn fleet_bucket(server: &str, policy_hash: &str, l: &Limit, key: u128) -> FleetBucket {
    let per_us = u64::try_from(l.per.as_micros()).unwrap_or(u64::MAX);
    let interval_us = (per_us / l.requests.max(1)).max(1);
    let bundle = policy_hash.strip_prefix("sha256:").unwrap_or(policy_hash);
    let bundle = bundle.get(..16).unwrap_or(bundle);
    FleetBucket {
        key: format!("{server}:{bundle}:{key:032x}"),
        interval_us,
        period_us: interval_us.saturating_mul(l.requests),
    }
}

/// The connection to `url` with `password`, and the address to log (no secret in it).
fn connection_info(
    url: &str,
    password: Option<String>,
) -> Result<(redis::ConnectionInfo, String), LimitsError> {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()
        .map_err(|e| LimitsError::Url(format!("{e} (expected redis://HOST:PORT[/DB])")))?;
    if info.redis_settings().password().is_some() {
        return Err(LimitsError::Url(
            "the URL carries a password; give it by reference with --rate-limit-redis-password-file (a mounted Secret)".into(),
        ));
    }
    let address = info.addr().to_string();
    let info = match password {
        Some(p) if !p.is_empty() => {
            let settings = info.redis_settings().clone().set_password(p);
            info.set_redis_settings(settings)
        }
        _ => info,
    };
    Ok((info, address))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limit(v: serde_json::Value) -> Limit {
        mcp_guard_policy::limits::parse(&v).unwrap()
    }

    fn who(sub: &str) -> Identity {
        Identity {
            sub: sub.into(),
            iss: "https://idp".into(),
            client_id: Some("agent".into()),
            ..Identity::default()
        }
    }

    #[tokio::test]
    async fn exactly_n_then_refused_per_key() {
        let l = Limiter::local_only(100, Arc::new(Metrics::new()));
        let limits = [limit(json!({"key": "subject", "per": "1h", "requests": 3}))];
        let (ana, bob) = (who("ana"), who("bob"));
        let req = |i: &'static Identity| Request {
            policy_hash: "sha256:ab",
            identity: Some(i),
            method: "tools/call",
            item: Some("echo"),
        };
        let ana: &'static Identity = Box::leak(Box::new(ana));
        let bob: &'static Identity = Box::leak(Box::new(bob));
        for _ in 0..3 {
            l.check(&limits, &req(ana)).await.unwrap();
        }
        let t = l.check(&limits, &req(ana)).await.unwrap_err();
        assert_eq!(t.limit, "subject:*:3/1h");
        assert!(t.retry_after_secs() > 1000, "{t:?}");
        assert!(t.message().contains("3 requests per 1h"), "{}", t.message());
        l.check(&limits, &req(bob)).await.unwrap();
        // Another bundle counts afresh.
        let other = Request {
            policy_hash: "sha256:cd",
            ..req(ana)
        };
        l.check(&limits, &other).await.unwrap();
    }

    #[tokio::test]
    async fn a_refusal_by_one_limit_takes_nothing_from_the_others() {
        let l = Limiter::local_only(100, Arc::new(Metrics::new()));
        let wide = limit(json!({"key": "server", "per": "1h", "requests": 2}));
        let narrow = limit(json!({"key": "tool", "tool": "search", "per": "1h", "requests": 1}));
        let call = |item| Request {
            policy_hash: "h",
            identity: None,
            method: "tools/call",
            item: Some(item),
        };
        let both = [wide.clone(), narrow];
        l.check(&both, &call("search")).await.unwrap();
        // `search` is spent; its refusal must not spend `wide`'s second token.
        assert!(l.check(&both, &call("search")).await.is_err());
        l.check(&both, &call("echo")).await.unwrap();
        assert!(l.check(&both, &call("echo")).await.is_err());
    }

    #[test]
    fn redis_urls_carry_no_password() {
        assert!(connection_info("redis://127.0.0.1:6379/0", Some("pw".into())).is_ok());
        let e = connection_info("redis://:secret@127.0.0.1:6379", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("password-file") && !e.contains("secret"), "{e}");
        assert!(connection_info("http://x", None).is_err());
    }
}
