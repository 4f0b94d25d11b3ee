//! Where a request's prompt-caching breakpoints go.
//!
//! What it owns: the choice of at most [`MAX_BREAKPOINTS`] blocks to mark with `cache_control`
//! (Anthropic's explicit caching) and the per-model minimum cacheable length. It does not
//! serialize anything (`anthropic.rs` puts the marks on the wire) and does not price anything
//! (`config::price`). OpenAI caches repeated prefixes on its own; only prompt order matters
//! there, and that is the callers' part (what all requests share first).
//!
//! The breakpoints, in the order they are worth having (a prefix below the model's minimum is
//! never marked: the API would neither write nor read it, and the mark would be wasted):
//! 1. **the conversation so far** — the last block of the last message: this turn writes
//!    everything, the next turn reads it (turn k reads turns 1..k-1);
//! 2. **the shared prefix** — what every request of a run has in common (tools, the system
//!    prompt, and any leading message blocks named by [`Request::shared_until`]): written by the
//!    first agent, read by the other 999;
//! 3. **the previous turn** — the last block of the message before the last assistant turn,
//!    where the previous request put its mark: an exact hit even when the newest turn added
//!    more blocks than the API looks back over (about 20);
//! 4. **the tools** — when tools alone make a long enough prefix.

use super::types::{Request, Role};

/// The API's limit on blocks carrying `cache_control` in one request.
pub const MAX_BREAKPOINTS: usize = 4;

/// Bytes per two tokens of the estimate that decides whether a prefix is long enough: 3.5 bytes
/// per token, the governor's rate, in integers.
const BYTES_PER_TWO_TOKENS: usize = 7;

/// The smallest prefix, in tokens, an Anthropic model caches (the providers' published table;
/// a model it does not name gets the common 1,024).
pub fn minimum_cacheable(model: &str) -> u64 {
    let model = model.to_ascii_lowercase();
    if model.contains("haiku-4") || model.contains("opus-4-5") || model.contains("opus-4-6") {
        4096
    } else if model.contains("haiku") || model.contains("sonnet-4-6") {
        2048
    } else {
        1024
    }
}

/// Estimated tokens of `bytes` bytes of prompt.
fn tokens(bytes: usize) -> u64 {
    (bytes * 2 / BYTES_PER_TWO_TOKENS) as u64
}

/// A block of a message: `(message index, block index)`.
pub type BlockRef = (usize, usize);

/// The blocks to mark.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Breakpoints {
    /// The last tool.
    pub tools: bool,
    /// The (shared) system prompt: its first block, before [`Request::system_agent`].
    pub system: bool,
    /// Message blocks.
    pub blocks: Vec<BlockRef>,
}

impl Breakpoints {
    /// Marks placed.
    pub fn len(&self) -> usize {
        usize::from(self.tools) + usize::from(self.system) + self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the block `(message, block)` is marked.
    pub fn marks(&self, message: usize, block: usize) -> bool {
        self.blocks.contains(&(message, block))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Tools,
    System,
    Block(BlockRef),
}

/// The breakpoints of `request` under its caching switches.
pub fn place(request: &Request) -> Breakpoints {
    let mut out = Breakpoints::default();
    if !request.cache_prefix && !request.cache_turns {
        return out;
    }
    let minimum = minimum_cacheable(&request.model);
    // Bytes of the prompt up to the end of each place, in the API's cache order: tools,
    // system, messages.
    let tools_bytes: usize = request
        .tools
        .iter()
        .map(|tool| tool.name.len() + tool.description.len() + json_len(&tool.input_schema))
        .sum();
    let system_bytes = tools_bytes + request.system.as_ref().map_or(0, String::len);
    let mut message_ends: Vec<usize> = Vec::with_capacity(request.messages.len());
    let mut block_ends: Vec<Vec<usize>> = Vec::with_capacity(request.messages.len());
    let mut running = system_bytes + request.system_agent.as_ref().map_or(0, String::len);
    for message in &request.messages {
        let mut ends = Vec::with_capacity(message.content.len());
        for block in &message.content {
            running += super::types::block_bytes(block);
            ends.push(running);
        }
        message_ends.push(running);
        block_ends.push(ends);
    }
    let bytes_at = |place: Place| match place {
        Place::Tools => tools_bytes,
        Place::System => system_bytes,
        Place::Block((m, b)) => block_ends
            .get(m)
            .and_then(|ends| ends.get(b))
            .copied()
            .unwrap_or(0),
    };
    let last_block = |m: usize| {
        request
            .messages
            .get(m)
            .and_then(|message| message.content.len().checked_sub(1))
            .map(|b| Place::Block((m, b)))
    };

    let mut wanted: Vec<Place> = Vec::new();
    let count = request.messages.len();
    if request.cache_turns
        && let Some(place) = count.checked_sub(1).and_then(last_block)
    {
        wanted.push(place);
    }
    if request.cache_prefix {
        match request.shared_until {
            Some(block) => wanted.push(Place::Block(block)),
            None if request.system.is_some() => wanted.push(Place::System),
            None => {}
        }
    }
    if request.cache_turns {
        let last_assistant = request
            .messages
            .iter()
            .rposition(|message| message.role == Role::Assistant);
        if let Some(place) = last_assistant
            .and_then(|a| a.checked_sub(1))
            .and_then(last_block)
        {
            wanted.push(place);
        }
    }
    if request.cache_prefix && !request.tools.is_empty() {
        wanted.push(Place::Tools);
    }
    let mut chosen: Vec<Place> = Vec::new();
    for place in wanted {
        if chosen.len() == MAX_BREAKPOINTS || chosen.contains(&place) {
            continue;
        }
        if tokens(bytes_at(place)) < minimum {
            continue;
        }
        chosen.push(place);
    }
    for place in chosen {
        match place {
            Place::Tools => out.tools = true,
            Place::System => out.system = true,
            Place::Block(block) => out.blocks.push(block),
        }
    }
    out
}

fn json_len(value: &serde_json::Value) -> usize {
    super::types::json_len(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::types::{ContentBlock, Message, ToolSpec};
    use serde_json::json;

    fn long(n: usize) -> String {
        "x".repeat(n)
    }

    fn conversation(turns: usize) -> Request {
        let mut request = Request::new("claude-sonnet-4-5", 100).caching(true);
        request.system = Some(long(4000));
        request.messages.push(Message::user(long(400)));
        for i in 0..turns {
            request
                .messages
                .push(Message::assistant(vec![ContentBlock::ToolUse {
                    id: format!("t{i}"),
                    name: "read_file".into(),
                    input: json!({"path": "a"}),
                }]));
            request.messages.push(Message {
                role: Role::User,
                content: vec![ContentBlock::ToolResult {
                    tool_use_id: format!("t{i}"),
                    content: long(800),
                    is_error: false,
                }],
            });
        }
        request
    }

    #[test]
    fn turns_shared_prefix_and_previous_turn() {
        let request = conversation(3);
        let marks = place(&request);
        assert!(marks.system);
        assert!(!marks.tools);
        assert_eq!(marks.blocks, vec![(6, 0), (4, 0)]);
        assert_eq!(marks.len(), 3);
    }

    #[test]
    fn never_more_than_four_and_never_below_the_minimum() {
        let mut request = conversation(3);
        request.tools.push(ToolSpec {
            name: "t".into(),
            description: long(4000),
            input_schema: json!({"type": "object"}),
        });
        assert_eq!(place(&request).len(), 4);
        // A short system prompt alone is below 1,024 tokens: not marked.
        let mut short = Request::new("claude-sonnet-4-5", 100);
        short.system = Some(long(400));
        short.messages.push(Message::user("hi"));
        assert!(place(&short).is_empty());
        // Haiku 4.5 needs 4,096 tokens.
        let mut haiku = conversation(3);
        haiku.model = "claude-haiku-4-5".into();
        assert!(place(&haiku).is_empty());
    }

    #[test]
    fn switched_off() {
        let mut request = conversation(3);
        request.cache_turns = false;
        let marks = place(&request);
        assert!(marks.system);
        assert!(marks.blocks.is_empty());
        request.cache_prefix = false;
        assert!(place(&request).is_empty());
    }
}
