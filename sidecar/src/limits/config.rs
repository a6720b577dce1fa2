//! Rate-limit flags of the sidecar. The limits themselves come from the policy
//! (`limits` in `package mcp.authz`); these say where fleet-wide limits are counted.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use mcp_guard_common::duration::parse_duration;
use mcp_guard_common::env;

#[derive(Debug, Clone, Args)]
pub struct LimitsConfig {
    /// Redis that counts fleet-wide rate limits for every replica of this server,
    /// `redis://HOST:PORT[/DB]` (a username may be in the URL; the password never is: use
    /// --rate-limit-redis-password-file). Unset: every limit is counted in this replica alone.
    #[arg(long, env = env::RATE_LIMIT_REDIS_URL)]
    pub rate_limit_redis_url: Option<String>,

    /// File holding the Redis password (a mounted Secret). Read once at startup.
    #[arg(long, env = env::RATE_LIMIT_REDIS_PASSWORD_FILE)]
    pub rate_limit_redis_password_file: Option<PathBuf>,

    /// How long a fleet-wide check may wait for Redis; past it, the limit falls back (to this
    /// replica's bucket, or a refusal where the limit says `fallback: deny`).
    #[arg(long, env = env::RATE_LIMIT_REDIS_TIMEOUT, default_value = "50ms", value_parser = parse_duration)]
    pub rate_limit_redis_timeout: Duration,

    /// Buckets this replica keeps at most (one per limit and key value; about 100 bytes each).
    /// Idle buckets are evicted; a new key finding the table full of busy buckets is refused.
    #[arg(long, env = env::RATE_LIMIT_MAX_BUCKETS, default_value_t = 100_000)]
    pub rate_limit_max_buckets: usize,
}
