//! Decomposition: splitting items into chunks, one worker call per chunk.
//!
//! Three strategies ([`Decomposition`]): one item per chunk, fixed-size chunks, and chunks
//! sized to a token budget. The budget is estimated before anything is sent, from the bytes
//! each item adds to the worker prompt ([`super::worker::render_item`]) at
//! [`BYTES_PER_TOKEN`] with a [`ESTIMATE_MARGIN`] on top, so that no chunk exceeds the model's
//! input limit nor a given share of the input-tokens-per-minute limit (one huge chunk would
//! otherwise stall the whole fleet on the rate governor). An item that alone exceeds the budget
//! becomes a chunk of its own, flagged [`Chunk::oversized`]: the engine decides whether to try
//! it or to fail it.
//!
//! Chunks keep input order and get ids `chunk-0001`, `chunk-0002`… (wider when there are more
//! than 9,999), so the same input and settings always give the same chunks: what resume relies
//! on.

use serde::{Deserialize, Serialize};

use super::Item;
use super::worker::render_item;

/// Bytes of English-like text per token, for estimates made before sending.
pub const BYTES_PER_TOKEN: f64 = 3.5;
/// Estimates are scaled up by this much, since underestimating costs a rejected request.
pub const ESTIMATE_MARGIN: f64 = 1.15;

/// Estimated tokens of `bytes` bytes of prompt text (rounded up, margin included).
pub fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as f64 / BYTES_PER_TOKEN * ESTIMATE_MARGIN).ceil() as u64
}

/// A chunk's id (defined with the other ids).
pub use crate::ids::ChunkId;

/// Items sent to one worker together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    pub id: ChunkId,
    pub items: Vec<Item>,
    /// Estimated tokens of the items as rendered in the prompt (the fixed part of the prompt
    /// not included).
    pub estimated_tokens: u64,
    /// A single item larger than the token budget on its own.
    pub oversized: bool,
}

impl Chunk {
    /// A chunk of these items, with its estimate.
    pub fn new(id: ChunkId, items: Vec<Item>) -> Chunk {
        let estimated_tokens = items.iter().map(item_tokens).sum();
        Chunk {
            id,
            items,
            estimated_tokens,
            oversized: false,
        }
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(|item| item.id.as_str())
    }
}

/// Estimated tokens one item adds to a worker prompt.
pub fn item_tokens(item: &Item) -> u64 {
    estimate_tokens(render_item(item).len())
}

/// How to split items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "snake_case")]
pub enum Decomposition {
    /// One item per chunk.
    PerItem,
    /// `size` items per chunk (the last may be smaller).
    Fixed { size: usize },
    /// As many items as fit the budget.
    TokenBudget(TokenBudget),
}

/// The limits a token-budgeted chunk must respect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenBudget {
    /// The model's input limit (its context window less the output reserved).
    pub max_input_tokens: u64,
    /// Tokens of the prompt around the items (system text, instructions, tool schema).
    pub overhead_tokens: u64,
    /// The input-tokens-per-minute limit, if known, and the share of it one chunk may use
    /// (e.g. 0.05: twenty chunks a minute can start even when the bucket is full).
    pub input_tokens_per_minute: Option<u64>,
    pub share_of_minute: f64,
    /// At most this many items per chunk, whatever their size (bounds the answer's length).
    pub max_items: Option<usize>,
}

impl TokenBudget {
    /// Tokens available for the items of one chunk.
    pub fn item_budget(&self) -> u64 {
        let mut limit = self.max_input_tokens;
        if let Some(per_minute) = self.input_tokens_per_minute {
            let share = (per_minute as f64 * self.share_of_minute.clamp(0.0, 1.0)).floor() as u64;
            limit = limit.min(share);
        }
        limit.saturating_sub(self.overhead_tokens)
    }
}

/// Why items could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk size must be at least 1")]
    ZeroSize,
    #[error(
        "the token budget leaves no room for items: limit {limit} tokens, prompt overhead {overhead} tokens"
    )]
    NoRoom { limit: u64, overhead: u64 },
}

/// Split `items` (in order) into chunks.
pub fn decompose(items: &[Item], how: &Decomposition) -> Result<Vec<Chunk>, ChunkError> {
    decompose_within(items, how, u64::MAX)
}

/// [`decompose`] where no chunk of a `per_item` or `fixed` split may hold more than `room`
/// tokens of items either (a token budget has its own limit): a fixed-size group over it is
/// sent one item per chunk instead, and a single item over it is a chunk of its own flagged
/// [`Chunk::oversized`] (the runner fails it rather than sending a request the model refuses).
pub fn decompose_within(
    items: &[Item],
    how: &Decomposition,
    room: u64,
) -> Result<Vec<Chunk>, ChunkError> {
    let groups: Vec<(Vec<Item>, bool)> = match how {
        Decomposition::PerItem => items
            .iter()
            .map(|item| (vec![item.clone()], false))
            .collect(),
        Decomposition::Fixed { size } => {
            if *size == 0 {
                return Err(ChunkError::ZeroSize);
            }
            items
                .chunks(*size)
                .map(|group| (group.to_vec(), false))
                .collect()
        }
        Decomposition::TokenBudget(budget) => by_budget(items, budget)?,
    };
    let groups: Vec<(Vec<Item>, bool)> = if matches!(how, Decomposition::TokenBudget(_)) {
        groups
    } else {
        let mut split = Vec::with_capacity(groups.len());
        for (group, oversized) in groups {
            let tokens: u64 = group.iter().map(item_tokens).sum();
            if tokens <= room {
                split.push((group, oversized));
            } else {
                for item in group {
                    let alone = item_tokens(&item) > room;
                    split.push((vec![item], alone));
                }
            }
        }
        split
    };
    let total = groups.len();
    Ok(groups
        .into_iter()
        .enumerate()
        .map(|(index, (items, oversized))| {
            let mut chunk = Chunk::new(ChunkId::numbered(index + 1, total), items);
            chunk.oversized = oversized;
            chunk
        })
        .collect())
}

fn by_budget(items: &[Item], budget: &TokenBudget) -> Result<Vec<(Vec<Item>, bool)>, ChunkError> {
    let room = budget.item_budget();
    if room == 0 {
        return Err(ChunkError::NoRoom {
            limit: budget.item_budget() + budget.overhead_tokens,
            overhead: budget.overhead_tokens,
        });
    }
    if budget.max_items == Some(0) {
        return Err(ChunkError::ZeroSize);
    }
    let max_items = budget.max_items.unwrap_or(usize::MAX);
    let mut groups = Vec::new();
    let mut current: Vec<Item> = Vec::new();
    let mut used = 0u64;
    for item in items {
        let tokens = item_tokens(item);
        if tokens > room {
            if !current.is_empty() {
                groups.push((std::mem::take(&mut current), false));
                used = 0;
            }
            groups.push((vec![item.clone()], true));
            continue;
        }
        if !current.is_empty() && (used + tokens > room || current.len() >= max_items) {
            groups.push((std::mem::take(&mut current), false));
            used = 0;
        }
        used += tokens;
        current.push(item.clone());
    }
    if !current.is_empty() {
        groups.push((current, false));
    }
    Ok(groups)
}

/// What a job will send, estimated before anything is sent (for the dry run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JobEstimate {
    pub requests: u64,
    pub items: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub oversized_chunks: u64,
}

/// Estimate one request per chunk: its items plus `overhead_tokens` of prompt, and
/// `output_tokens_per_item` of answer per item (retries not included). Prices are the
/// caller's; with batch execution they are [`crate::provider::batch::BATCH_PRICE_FACTOR`] of
/// the normal ones.
pub fn estimate(
    chunks: &[Chunk],
    overhead_tokens: u64,
    output_tokens_per_item: u64,
) -> JobEstimate {
    let mut estimate = JobEstimate::default();
    for chunk in chunks {
        estimate.requests += 1;
        estimate.items += chunk.items.len() as u64;
        estimate.input_tokens += overhead_tokens + chunk.estimated_tokens;
        estimate.output_tokens += output_tokens_per_item * chunk.items.len() as u64;
        estimate.oversized_chunks += u64::from(chunk.oversized);
    }
    estimate
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn items(sizes: &[usize]) -> Vec<Item> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, size)| Item::new(format!("{}", i + 1), json!("x".repeat(*size))))
            .collect()
    }

    fn shape(chunks: &[Chunk]) -> Vec<Vec<&str>> {
        chunks.iter().map(|c| c.ids().collect()).collect()
    }

    #[test]
    fn per_item_and_fixed_keep_order_with_stable_ids() {
        let input = items(&[1, 1, 1, 1, 1]);
        let chunks = decompose(&input, &Decomposition::PerItem).unwrap();
        assert_eq!(chunks.len(), 5);
        assert_eq!(chunks[0].id.as_str(), "chunk-0001");
        assert_eq!(chunks[4].id.as_str(), "chunk-0005");

        let chunks = decompose(&input, &Decomposition::Fixed { size: 2 }).unwrap();
        assert_eq!(shape(&chunks), [vec!["1", "2"], vec!["3", "4"], vec!["5"]]);
        assert_eq!(
            decompose(&input, &Decomposition::Fixed { size: 0 }),
            Err(ChunkError::ZeroSize)
        );
        // Same input, same chunks.
        assert_eq!(
            chunks,
            decompose(&input, &Decomposition::Fixed { size: 2 }).unwrap()
        );
    }

    #[test]
    fn job_estimate_adds_overhead_per_request() {
        let input = items(&[300, 300, 300]);
        let chunks = decompose(&input, &Decomposition::Fixed { size: 2 }).unwrap();
        let estimate = estimate(&chunks, 1_000, 50);
        assert_eq!(
            estimate,
            JobEstimate {
                requests: 2,
                items: 3,
                input_tokens: 2_000 + 3 * 107,
                output_tokens: 150,
                oversized_chunks: 0,
            }
        );
    }

    #[test]
    fn ids_widen_past_9999_chunks() {
        assert_eq!(ChunkId::numbered(7, 300).as_str(), "chunk-0007");
        assert_eq!(ChunkId::numbered(7, 12_000).as_str(), "chunk-00007");
        assert_eq!(
            ChunkId::numbered(7, 300).retry(1, 3).as_str(),
            "chunk-0007-r1-3"
        );
    }

    #[test]
    fn estimates_are_bytes_over_3_5_with_margin() {
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(350), 115);
        assert_eq!(estimate_tokens(1), 1);
    }

    #[test]
    fn budget_chunks_never_exceed_the_budget_and_flag_giants() {
        let input = items(&[300, 300, 300, 5000, 300, 300, 300, 300]);
        let per_item = item_tokens(&input[0]);
        let budget = TokenBudget {
            max_input_tokens: 100_000,
            overhead_tokens: 500,
            input_tokens_per_minute: Some(20_000),
            share_of_minute: 0.05, // 1,000 tokens a chunk, 500 of them for items
            max_items: None,
        };
        assert_eq!(budget.item_budget(), 500);
        assert_eq!(per_item, 107, "300 bytes + quotes + markup = 325 bytes");
        let chunks = decompose(&input, &Decomposition::TokenBudget(budget.clone())).unwrap();
        for chunk in &chunks {
            assert!(
                chunk.oversized || chunk.estimated_tokens <= 500,
                "{} has {}",
                chunk.id,
                chunk.estimated_tokens
            );
        }
        // Four 107-token items fit 500; the giant is alone; the rest follow.
        let sizes: Vec<usize> = chunks.iter().map(|c| c.items.len()).collect();
        assert_eq!(sizes, [3, 1, 4]);
        let oversized: Vec<_> = chunks.iter().filter(|c| c.oversized).collect();
        assert_eq!(oversized.len(), 1);
        assert_eq!(oversized[0].items.len(), 1);
        assert_eq!(oversized[0].items[0].id, "4");
        // Every item once, in order.
        let flat: Vec<&str> = chunks.iter().flat_map(Chunk::ids).collect();
        assert_eq!(flat, ["1", "2", "3", "4", "5", "6", "7", "8"]);

        let capped = TokenBudget {
            max_items: Some(1),
            ..budget.clone()
        };
        let chunks = decompose(&input, &Decomposition::TokenBudget(capped)).unwrap();
        assert_eq!(chunks.len(), 8);

        let no_room = TokenBudget {
            overhead_tokens: 5_000,
            ..budget
        };
        assert!(matches!(
            decompose(&input, &Decomposition::TokenBudget(no_room)),
            Err(ChunkError::NoRoom { .. })
        ));
    }

    #[test]
    fn budget_is_the_smaller_of_context_and_minute_share() {
        let budget = TokenBudget {
            max_input_tokens: 2_000,
            overhead_tokens: 100,
            input_tokens_per_minute: Some(1_000_000),
            share_of_minute: 0.1,
            max_items: None,
        };
        assert_eq!(budget.item_budget(), 1_900);
        let budget = TokenBudget {
            input_tokens_per_minute: None,
            ..budget
        };
        assert_eq!(budget.item_budget(), 1_900);
    }
}
