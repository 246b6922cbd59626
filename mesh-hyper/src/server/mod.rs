//! Layers for hyper servers: what a sidecar would do to incoming requests.
//!
//! - [`RateLimitLayer`]: per-route and per-caller rate limits answering `429 Too Many Requests`
//!   with `Retry-After`.

mod rate_limit;

pub use self::rate_limit::{RateLimit, RateLimitLayer, RateLimitRule};
