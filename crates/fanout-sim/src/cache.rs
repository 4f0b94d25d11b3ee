//! The prompt cache, as the providers document it.
//!
//! What it owns: the cached prefixes of every API key and model, their lifetimes, and the
//! split of a request's input tokens into uncached input, cache writes and cache reads. It does
//! not parse requests (`anthropic.rs` and `openai.rs` build a [`Prefix`] while validating) or
//! render usage.
//!
//! **Anthropic** (explicit): the request's blocks in cache order — tools, system blocks, then
//! the messages' content blocks — each hashed with everything before it (its `cache_control`
//! left out). A block carrying `cache_control` is a breakpoint (at most [`MAX_BREAKPOINTS`]).
//! For each breakpoint the longest live prefix ending at that block or at one of the
//! [`LOOKBACK`] block boundaries before it is a hit; the longest hit over all breakpoints is
//! read (`cache_read_input_tokens`) and its lifetime refreshed; the prefix up to the last
//! breakpoint beyond it is written (`cache_creation_input_tokens`), and every breakpoint's
//! prefix is stored. Prefixes shorter than the model's minimum ([`minimum_cacheable`]) are
//! neither written nor read. `input_tokens` is what remains, so input + creation + read is
//! the request's whole input.
//!
//! **OpenAI** (automatic): every message boundary (and each tool) is a candidate; the longest
//! live prefix of at least [`OPENAI_MINIMUM`] tokens is reported as
//! `prompt_tokens_details.cached_tokens`, rounded down to [`OPENAI_STEP`] tokens, and every
//! boundary of the request is stored.
//!
//! Lifetimes run on tokio time (5 minutes unless a breakpoint asks for `"ttl": "1h"`, refreshed
//! on every hit), so tests can pause the clock and advance it past an expiry.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

/// The API's limit on blocks carrying `cache_control`.
pub(crate) const MAX_BREAKPOINTS: usize = 4;
/// Block boundaries checked before a breakpoint for an earlier prefix.
pub(crate) const LOOKBACK: usize = 20;
/// Default lifetime of a cached prefix (refreshed on each hit).
pub(crate) const TTL: Duration = Duration::from_secs(5 * 60);
/// `"ttl": "1h"`.
pub(crate) const TTL_LONG: Duration = Duration::from_secs(60 * 60);
/// OpenAI caches prompts of at least this many tokens ...
pub(crate) const OPENAI_MINIMUM: u64 = 1024;
/// ... in steps of this many.
pub(crate) const OPENAI_STEP: u64 = 128;

/// The smallest cacheable prefix of an Anthropic model, in tokens (the providers' table;
/// models the table does not name get the common 1,024).
pub(crate) fn minimum_cacheable(model: &str) -> u64 {
    let model = model.to_ascii_lowercase();
    if model.contains("haiku-4") || model.contains("opus-4-5") || model.contains("opus-4-6") {
        4096
    } else if model.contains("haiku") || model.contains("sonnet-4-6") {
        2048
    } else {
        1024
    }
}

/// One block of the prompt in cache order.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// Hash of this block and every block before it.
    hash: u64,
    /// Bytes counted for this block and every block before it.
    bytes: usize,
    /// The block carries `cache_control` (with this lifetime).
    breakpoint: Option<Duration>,
}

/// The blocks of one request, in the order the cache reads them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Prefix {
    tools: Vec<(u64, usize, Option<Duration>)>,
    system: Vec<(u64, usize, Option<Duration>)>,
    messages: Vec<(u64, usize, Option<Duration>)>,
}

/// Where a block sits in the request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Part {
    Tools,
    System,
    Messages,
}

impl Prefix {
    /// Adds one block (`bytes` as the token counter counted them) to its part.
    pub(crate) fn push(&mut self, part: Part, block: &Value, bytes: usize) {
        let mut hasher = DefaultHasher::new();
        hash_value(block, &mut hasher);
        let entry = (hasher.finish(), bytes, breakpoint(block));
        match part {
            Part::Tools => self.tools.push(entry),
            Part::System => self.system.push(entry),
            Part::Messages => self.messages.push(entry),
        }
    }

    /// Adds one whole message (OpenAI: caching is automatic, so no block is a breakpoint).
    pub(crate) fn push_object(
        &mut self,
        part: Part,
        object: &serde_json::Map<String, Value>,
        bytes: usize,
    ) {
        let mut hasher = DefaultHasher::new();
        hash_object(object, &mut hasher);
        let entry = (hasher.finish(), bytes, None);
        match part {
            Part::Tools => self.tools.push(entry),
            Part::System => self.system.push(entry),
            Part::Messages => self.messages.push(entry),
        }
    }

    /// Blocks carrying `cache_control`.
    pub(crate) fn breakpoints(&self) -> usize {
        self.tools
            .iter()
            .chain(&self.system)
            .chain(&self.messages)
            .filter(|(_, _, ttl)| ttl.is_some())
            .count()
    }

    fn segments(&self) -> Vec<Segment> {
        let mut hash = 0u64;
        let mut bytes = 0usize;
        self.tools
            .iter()
            .chain(&self.system)
            .chain(&self.messages)
            .map(|&(block, size, breakpoint)| {
                let mut hasher = DefaultHasher::new();
                (hash, block).hash(&mut hasher);
                hash = hasher.finish();
                bytes = bytes.saturating_add(size);
                Segment {
                    hash,
                    bytes,
                    breakpoint,
                }
            })
            .collect()
    }
}

/// The lifetime a block's `cache_control` asks for, if it has one.
fn breakpoint(block: &Value) -> Option<Duration> {
    let control = block.get("cache_control")?;
    if control.is_null() {
        return None;
    }
    Some(match control.get("ttl").and_then(Value::as_str) {
        Some("1h") => TTL_LONG,
        _ => TTL,
    })
}

/// Hashes a JSON value, leaving out every `cache_control` key (marking a block does not
/// change the prefix it ends).
fn hash_value(value: &Value, hasher: &mut DefaultHasher) {
    match value {
        Value::Null => 0u8.hash(hasher),
        Value::Bool(b) => (1u8, b).hash(hasher),
        Value::Number(n) => (2u8, n.to_string()).hash(hasher),
        Value::String(s) => (3u8, s).hash(hasher),
        Value::Array(items) => {
            (4u8, items.len()).hash(hasher);
            for item in items {
                hash_value(item, hasher);
            }
        }
        Value::Object(map) => hash_object(map, hasher),
    }
}

fn hash_object(map: &serde_json::Map<String, Value>, hasher: &mut DefaultHasher) {
    5u8.hash(hasher);
    for (key, item) in map {
        if key == "cache_control" {
            continue;
        }
        key.hash(hasher);
        hash_value(item, hasher);
    }
}

/// How a request's input tokens split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CacheUse {
    /// Tokens read from the cache.
    pub(crate) read: u64,
    /// Tokens written to the cache (Anthropic only).
    pub(crate) creation: u64,
}

/// Every cached prefix, by API key, model and prefix hash, with its expiry.
#[derive(Debug, Default)]
pub(crate) struct PromptCache {
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    live: HashMap<u64, Instant>,
    /// When expired entries were last dropped.
    swept: Option<Instant>,
}

impl Entries {
    fn alive(&mut self, key: u64, now: Instant) -> bool {
        self.live.get(&key).is_some_and(|expiry| *expiry > now)
    }

    /// Stores (or refreshes) an entry; never shortens a longer lifetime.
    fn keep(&mut self, key: u64, until: Instant) {
        let expiry = self.live.entry(key).or_insert(until);
        if *expiry < until {
            *expiry = until;
        }
    }

    fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(60))
        {
            return;
        }
        self.live.retain(|_, expiry| *expiry > now);
        self.swept = Some(now);
    }
}

fn entry_key(api_key: &str, model: &str, prefix: u64) -> u64 {
    let mut hasher = DefaultHasher::new();
    (api_key, model, prefix).hash(&mut hasher);
    hasher.finish()
}

/// Tokens of a prefix of `bytes` bytes (rounded down: a prefix never counts more than the
/// whole request), capped at the request's total.
fn prefix_tokens(bytes: usize, total: u64) -> u64 {
    ((bytes / 4) as u64).min(total)
}

impl PromptCache {
    /// Anthropic's explicit caching for one answered request.
    pub(crate) fn anthropic(
        &self,
        api_key: &str,
        model: &str,
        prefix: &Prefix,
        total: u64,
        now: Instant,
    ) -> CacheUse {
        let segments = prefix.segments();
        if !segments.iter().any(|s| s.breakpoint.is_some()) {
            return CacheUse::default();
        }
        let minimum = minimum_cacheable(model);
        let tokens = |i: usize| segments.get(i).map_or(0, |s| prefix_tokens(s.bytes, total));
        let key = |i: usize| {
            segments
                .get(i)
                .map_or(0, |s| entry_key(api_key, model, s.hash))
        };
        let Ok(mut entries) = self.entries.lock() else {
            return CacheUse::default();
        };
        entries.sweep(now);
        let mut hit: Option<usize> = None;
        for (at, segment) in segments.iter().enumerate() {
            let Some(_) = segment.breakpoint else {
                continue;
            };
            for candidate in (at.saturating_sub(LOOKBACK)..=at).rev() {
                if tokens(candidate) < minimum {
                    break;
                }
                if entries.alive(key(candidate), now) {
                    if hit.is_none_or(|h| candidate > h) {
                        hit = Some(candidate);
                    }
                    break;
                }
            }
        }
        let read = hit.map_or(0, &tokens);
        if let Some(h) = hit {
            let ttl = segments
                .iter()
                .skip(h)
                .find_map(|s| s.breakpoint)
                .unwrap_or(TTL);
            entries.keep(key(h), now + ttl);
        }
        let mut written = read;
        for (at, segment) in segments.iter().enumerate() {
            let Some(ttl) = segment.breakpoint else {
                continue;
            };
            if tokens(at) < minimum {
                continue;
            }
            entries.keep(key(at), now + ttl);
            written = written.max(tokens(at));
        }
        CacheUse {
            read,
            creation: written - read,
        }
    }

    /// OpenAI's automatic caching for one answered request.
    pub(crate) fn openai(
        &self,
        api_key: &str,
        model: &str,
        prefix: &Prefix,
        total: u64,
        now: Instant,
    ) -> CacheUse {
        let segments = prefix.segments();
        let Ok(mut entries) = self.entries.lock() else {
            return CacheUse::default();
        };
        entries.sweep(now);
        let mut read = 0;
        for segment in segments.iter().rev() {
            let tokens = prefix_tokens(segment.bytes, total);
            if tokens < OPENAI_MINIMUM {
                break;
            }
            let key = entry_key(api_key, model, segment.hash);
            if entries.alive(key, now) {
                read = tokens / OPENAI_STEP * OPENAI_STEP;
                break;
            }
        }
        for segment in &segments {
            if prefix_tokens(segment.bytes, total) >= OPENAI_MINIMUM {
                entries.keep(entry_key(api_key, model, segment.hash), now + TTL);
            }
        }
        CacheUse { read, creation: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(t: &str, mark: bool) -> Value {
        if mark {
            json!({"type": "text", "text": t, "cache_control": {"type": "ephemeral"}})
        } else {
            json!({"type": "text", "text": t})
        }
    }

    #[test]
    fn cache_control_does_not_change_the_hash() {
        let mut a = Prefix::default();
        a.push(Part::System, &text("rules", true), 5);
        let mut b = Prefix::default();
        b.push(Part::System, &text("rules", false), 5);
        assert_eq!(a.segments()[0].hash, b.segments()[0].hash);
        assert_eq!(a.breakpoints(), 1);
        assert_eq!(b.breakpoints(), 0);
    }

    #[test]
    fn minimums() {
        assert_eq!(minimum_cacheable("claude-sonnet-4-5"), 1024);
        assert_eq!(minimum_cacheable("claude-haiku-4-5"), 4096);
        assert_eq!(minimum_cacheable("claude-3-5-haiku-latest"), 2048);
        assert_eq!(minimum_cacheable("claude-opus-4-6"), 4096);
    }
}
