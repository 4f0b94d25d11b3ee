//! The exchange log and the counters behind `/sim/stats`.
//!
//! Exchanges are kept in memory (by default at most [`MAX_EXCHANGES`]; older ones are dropped
//! first; a simulator configured to keep none only counts) and,
//! when a record path is set, appended as JSON lines by a background writer thread so the request
//! path never touches the file system.

use std::collections::{BTreeMap, VecDeque};
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::mpsc;
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::SimError;

/// At most this many exchanges are kept in memory.
pub const MAX_EXCHANGES: usize = 200_000;

/// One request and the simulator's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Exchange {
    /// Arrival order, from 0.
    pub seq: u64,
    /// Milliseconds since the simulator started (tokio time) when the request body had arrived
    /// (the moment the rate limiter judged it).
    pub at_ms: u64,
    /// `messages`, `count_tokens`, `chat_completions` (or the path for anything else).
    pub endpoint: String,
    /// The `request-id` / `x-request-id` sent back.
    pub request_id: String,
    /// The request body as JSON, or as a string when it was not valid JSON.
    pub request: Value,
    /// Selected request headers: `x-api-key` / `authorization` as `"present"`,
    /// `anthropic-version`, `anthropic-beta`, `x-stainless-retry-count`, `content-type`.
    pub headers: BTreeMap<String, String>,
    /// HTTP status sent (0 for a hung request that was never answered).
    pub status: u16,
    /// The response body: JSON, or the raw text (SSE streams, broken bodies).
    pub response: Value,
    /// The answer was streamed.
    pub stream: bool,
    /// The injected fault, if any: `overloaded`, `api_error`, `hang`, `truncate_body`,
    /// `cut_stream`, `malformed_json` (or the scenario's `malformed` kind).
    pub fault: Option<String>,
    /// Index (from 0) of the scenario rule that fired, if any.
    pub rule: Option<usize>,
    /// Name of that rule, if it has one.
    pub rule_name: Option<String>,
    /// Input tokens counted for the request (0 when it was rejected before counting).
    pub input_tokens: u64,
    /// Output tokens of the answer (0 for errors).
    pub output_tokens: u64,
    /// Of `input_tokens`, those read from the prompt cache.
    #[serde(default)]
    pub cache_read_tokens: u64,
    /// Of `input_tokens`, those written to the prompt cache.
    #[serde(default)]
    pub cache_creation_tokens: u64,
}

/// Counters since start.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// Requests received on the model endpoints.
    pub requests_total: u64,
    /// Responses by HTTP status.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests by endpoint.
    pub by_endpoint: BTreeMap<String, u64>,
    /// 429 answers (rate limits, the concurrency cap, scripted 429s).
    pub rate_limited: u64,
    /// Injected faults by kind.
    pub faults: BTreeMap<String, u64>,
    /// Requests being handled now (streams count until their last byte).
    pub in_flight: u64,
    /// Highest `in_flight` seen.
    pub peak_in_flight: u64,
    /// Requests that passed the rate limiter and the concurrency cap.
    pub admitted: u64,
    /// Input tokens of admitted requests.
    pub input_tokens: u64,
    /// Of the answered requests' input tokens, those read from the prompt cache.
    #[serde(default)]
    pub cache_read_tokens: u64,
    /// Of the answered requests' input tokens, those written to the prompt cache.
    #[serde(default)]
    pub cache_creation_tokens: u64,
    /// Output tokens generated.
    pub output_tokens: u64,
}

/// In-memory log plus the optional JSONL writer.
#[derive(Debug)]
pub(crate) struct Recorder {
    /// Most exchanges kept in `log`.
    keep: usize,
    log: Mutex<VecDeque<Exchange>>,
    writer: Mutex<Option<mpsc::Sender<String>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Recorder {
    pub(crate) fn new(path: Option<&Path>, keep: usize) -> Result<Self, SimError> {
        let (writer, thread) = match path {
            None => (None, None),
            Some(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| SimError::Record {
                        path: path.to_path_buf(),
                        source,
                    })?;
                let (tx, rx) = mpsc::channel::<String>();
                let thread = std::thread::Builder::new()
                    .name("fanout-sim-record".to_string())
                    .spawn(move || {
                        let mut out = BufWriter::new(file);
                        while let Ok(line) = rx.recv() {
                            let _ = out.write_all(line.as_bytes());
                            // Drain what is queued before flushing once.
                            while let Ok(line) = rx.try_recv() {
                                let _ = out.write_all(line.as_bytes());
                            }
                            let _ = out.flush();
                        }
                        let _ = out.flush();
                    })
                    .map_err(|source| SimError::Record {
                        path: path.to_path_buf(),
                        source,
                    })?;
                (Some(tx), Some(thread))
            }
        };
        Ok(Self {
            keep,
            log: Mutex::new(VecDeque::new()),
            writer: Mutex::new(writer),
            thread: Mutex::new(thread),
        })
    }

    /// Whether a pushed exchange's request body is used (kept in memory or written out).
    pub(crate) fn keeps_requests(&self) -> bool {
        self.keep > 0 || self.writer.lock().map(|w| w.is_some()).unwrap_or(true)
    }

    pub(crate) fn push(&self, exchange: Exchange) {
        if let Ok(writer) = self.writer.lock()
            && let Some(tx) = writer.as_ref()
            && let Ok(mut line) = serde_json::to_string(&exchange)
        {
            line.push('\n');
            let _ = tx.send(line);
        }
        if self.keep == 0 {
            return;
        }
        if let Ok(mut log) = self.log.lock() {
            if log.len() >= self.keep {
                log.pop_front();
            }
            log.push_back(exchange);
        }
    }

    pub(crate) fn all(&self) -> Vec<Exchange> {
        let mut list: Vec<Exchange> = self
            .log
            .lock()
            .map(|log| log.iter().cloned().collect())
            .unwrap_or_default();
        list.sort_by_key(|e| e.seq);
        list
    }

    /// Stops the writer thread after it has written everything queued.
    pub(crate) fn close(&self) -> Option<JoinHandle<()>> {
        if let Ok(mut writer) = self.writer.lock() {
            writer.take();
        }
        self.thread.lock().ok().and_then(|mut t| t.take())
    }
}
