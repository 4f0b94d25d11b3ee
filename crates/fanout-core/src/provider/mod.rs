//! Model providers behind one small trait.
//!
//! `types` is the provider-neutral vocabulary; `error` the typed failures. Each provider module
//! (`anthropic`, `openai`) only translates between those types and its wire format; `http` is
//! the shared transport (reqwest, timeouts, error bodies, the `send_window` that puts a
//! fleet's requests on the wire in order) and `sse` the server-sent-events
//! parser both streaming paths use; `headers` reads rate-limit and retry headers. `batch` is
//! the batch client for both APIs (submit, poll, collect by `custom_id`); `cache` decides where
//! prompt-caching breakpoints go; `genai` writes a call's content in the OpenTelemetry GenAI
//! conventions' shape.
//!
//! Start reading at [`Provider`].

pub mod anthropic;
pub mod batch;
pub mod cache;
pub mod error;
pub mod genai;
pub mod headers;
pub mod http;
pub mod openai;
pub mod send_window;
pub mod sse;
pub mod types;

use std::future::Future;
use std::pin::Pin;

pub use error::{ApiErrorDetails, ErrorClass, ProviderError};
pub use types::*;

/// A boxed future, so providers can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Per-attempt facts the transport sends along (the retry count header).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attempt {
    /// 0 for the first try, 1 for the first retry, …
    pub retry: u32,
}

/// One model API. Implementations translate; they never retry, sleep or rate-limit: that is
/// the job of [`crate::retry`] and [`crate::governor`].
pub trait Provider: Send + Sync {
    /// Short name used in errors and logs (`anthropic`, `openai`).
    fn name(&self) -> &'static str;

    /// Send one request and return the complete answer. When `stream` is set the answer is
    /// read as server-sent events and assembled; the result is the same either way.
    fn send<'a>(
        &'a self,
        request: &'a Request,
        attempt: Attempt,
        stream: bool,
    ) -> BoxFuture<'a, Result<Response, ProviderError>>;

    /// Ask the server how many input tokens a request would use (Anthropic
    /// `count_tokens`). Providers without such an endpoint return `None`.
    fn count_tokens<'a>(
        &'a self,
        request: &'a Request,
    ) -> BoxFuture<'a, Option<Result<u64, ProviderError>>>;
}
