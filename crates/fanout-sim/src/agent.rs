//! The default sub-agent: reads its scope, makes a small deterministic edit in each file it may
//! change, runs an allowed test command when its task asks for tests, and reports exactly what
//! it changed.
//!
//! A request is played as an agent when it declares file tools and a report tool (a tool whose
//! name says `report`, `result`, `finish` or `done`). Its state is the conversation itself:
//! each turn looks at the earlier tool calls and their results and makes the next batch of
//! calls (several per turn, as a model does when calls are independent):
//!
//! 1. `list_files` for each writable entry that is a glob or a directory;
//! 2. `read_file` for each writable file (a read-only agent lists what it may read, then reads
//!    the files its task names among them, or the first few);
//! 3. per writable file, an `edit_file` adding one comment line (in the file's comment syntax)
//!    before the first line that occurs once, or `write_file` for a file to create or when only
//!    `write_file` is allowed; files without a comment syntax (JSON, binaries) are left alone;
//! 4. `bash` with an allowlisted test command, when the task mentions tests;
//! 5. the report: `files_changed` lists exactly the files whose write succeeded.
//!
//! What the agent may do is read from the system prompt and the first user message (fanout
//! puts what all agents share in the first and each agent's own brief in the second) as fanout
//! words it ("Files you may change (nothing else):" with one `- path` per line, "Commands
//! allowed in bash …:" likewise, "Task ID: …") and from the declared tools. It owns no wire format; see `answer.rs`.

use serde_json::{Map, Value, json};

use crate::model::{Answer, Block, PastCall, Request};
use crate::schema_gen;

/// Files one agent edits at most.
const MAX_FILES: usize = 1000;
/// Calls of one kind in one turn (a long scope takes several turns, as a model would).
const BATCH: usize = 50;
/// Files a read-only agent reads when its task names none.
const READ_ONLY_SAMPLE: usize = 3;

const FILE_TOOLS: &[&str] = &[
    "read_file",
    "write_file",
    "edit_file",
    "list_files",
    "search",
    "bash",
];

/// The report tool's name, when `request` looks like a sub-agent's turn.
pub(crate) fn report_tool(request: &Request) -> Option<&str> {
    let has_file_tool = request
        .tools
        .iter()
        .any(|t| FILE_TOOLS.contains(&t.name.as_str()));
    if !has_file_tool
        && !request.system.contains("Files you may change")
        && !request.first_user_text().contains("Files you may change")
    {
        return None;
    }
    request.tools.iter().map(|t| t.name.as_str()).find(|name| {
        let lower = name.to_ascii_lowercase();
        ["report", "result", "finish", "done"]
            .iter()
            .any(|w| lower.contains(w))
    })
}

/// The agent's next turn.
pub(crate) fn answer(request: &Request, report: &str) -> Answer {
    let brief = Brief::parse(request);
    let forced_report = request.forced_tool.as_deref() == Some(report);
    let calls = if forced_report {
        Vec::new()
    } else {
        next_calls(&brief, &request.history)
    };
    let blocks = if calls.is_empty() {
        let schema = request
            .tools
            .iter()
            .find(|t| t.name == report)
            .map(|t| t.schema.clone())
            .unwrap_or_else(|| json!({"type": "object"}));
        vec![Block::ToolUse {
            name: report.to_string(),
            input: report_input(&brief, &request.history, &schema),
        }]
    } else {
        calls
            .into_iter()
            .map(|(name, input)| Block::ToolUse {
                name: name.to_string(),
                input,
            })
            .collect()
    };
    Answer {
        blocks,
        hit_max_tokens: false,
    }
}

/// What the prompt says the agent is and may do.
#[derive(Debug, Default)]
struct Brief {
    task_id: String,
    description: String,
    writable: Vec<String>,
    commands: Vec<String>,
    tools: Vec<String>,
}

/// The `- item` lines after the line starting with `heading`.
fn bullets(system: &str, heading: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in system.lines() {
        if line.starts_with(heading) {
            inside = true;
            continue;
        }
        if inside {
            match line.strip_prefix("- ") {
                Some(item) => out.push(item.trim().to_string()),
                None => break,
            }
        }
    }
    out
}

impl Brief {
    fn parse(request: &Request) -> Brief {
        let brief = format!("{}\n{}", request.system, request.first_user_text());
        let system = &brief;
        let (task_id, description) = system
            .lines()
            .find_map(|line| {
                let rest = line.strip_prefix("Task ")?;
                let (id, description) = rest.split_once(": ")?;
                (!id.contains(' ')).then(|| (id.to_string(), description.to_string()))
            })
            .unwrap_or_else(|| {
                (
                    "agent".to_string(),
                    request.first_user_text().trim().to_string(),
                )
            });
        let tools: Vec<String> = request.tools.iter().map(|t| t.name.clone()).collect();
        // Files it may change but no tool to change them with: it is a reader.
        let can_write = tools
            .iter()
            .any(|t| matches!(t.as_str(), "write_file" | "edit_file" | "bash"));
        let writable = if can_write {
            bullets(system, "Files you may change")
        } else {
            Vec::new()
        };
        Brief {
            task_id,
            description,
            writable,
            commands: bullets(system, "Commands allowed in bash"),
            tools,
        }
    }

    fn has(&self, tool: &str) -> bool {
        self.tools.iter().any(|t| t == tool)
    }

    fn wants_tests(&self) -> bool {
        let lower = self.description.to_lowercase();
        lower.contains("test") || lower.contains("spec")
    }

    /// The allowlisted command to run, if the task asks for tests.
    fn test_command(&self) -> Option<&str> {
        if !self.has("bash") || !self.wants_tests() {
            return None;
        }
        self.commands
            .iter()
            .find(|c| self.description.contains(&format!("`{c}`")))
            .or_else(|| {
                self.commands
                    .iter()
                    .find(|c| c.split_whitespace().any(|w| w.contains("test")))
            })
            .map(String::as_str)
    }
}

fn is_glob(text: &str) -> bool {
    text.contains(['*', '?', '[', '{'])
}

/// A writable entry that is a directory or a glob, to be listed first.
fn needs_listing(entry: &str) -> bool {
    is_glob(entry) || !entry.rsplit('/').next().unwrap_or(entry).contains('.')
}

fn listing_pattern(entry: &str) -> String {
    if is_glob(entry) {
        entry.to_string()
    } else {
        format!("{}/**", entry.trim_end_matches('/'))
    }
}

fn succeeded(call: &PastCall) -> bool {
    call.result.is_some() && !call.is_error
}

fn input_str<'a>(call: &'a PastCall, key: &str) -> Option<&'a str> {
    call.input.get(key).and_then(Value::as_str)
}

fn find_call<'a>(
    history: &'a [PastCall],
    tool: &str,
    key: &str,
    value: &str,
) -> Option<&'a PastCall> {
    history
        .iter()
        .rev()
        .find(|c| c.name == tool && input_str(c, key) == Some(value))
}

/// Paths listed by a `list_files` result.
fn listed(result: &str) -> Vec<String> {
    result
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("...") && *l != "no files match")
        .map(str::to_string)
        .collect()
}

/// Files the agent will change: literal entries, and what listing the others found.
fn writable_files(brief: &Brief, history: &[PastCall]) -> Vec<String> {
    let mut files = Vec::new();
    for entry in &brief.writable {
        if needs_listing(entry) {
            if let Some(call) = find_call(history, "list_files", "pattern", &listing_pattern(entry))
                && succeeded(call)
            {
                files.extend(listed(call.result.as_deref().unwrap_or_default()));
            }
        } else {
            files.push(entry.clone());
        }
    }
    files.dedup();
    files.truncate(MAX_FILES);
    files
}

/// Path-like words of the task (`src/a.ts`, `README.md`).
fn named_paths(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in text.split(|c: char| c.is_whitespace() || c == ',') {
        let word = word
            .trim_start_matches(|c: char| "`'\"([<".contains(c))
            .trim_end_matches(|c: char| "`'\")]>:;!?.,".contains(c));
        let name = word.rsplit('/').next().unwrap_or(word);
        let has_ext = name.rfind('.').is_some_and(|dot| {
            dot > 0
                && dot + 1 < name.len()
                && name[dot + 1..].chars().all(|c| c.is_ascii_alphanumeric())
        });
        if has_ext && !is_glob(word) && !word.contains("..") && !out.iter().any(|w| w == word) {
            out.push(word.to_string());
        }
    }
    out
}

/// The batch of calls for this turn; empty when it is time to report.
fn next_calls(brief: &Brief, history: &[PastCall]) -> Vec<(&'static str, Value)> {
    // 1. Listings.
    if brief.has("list_files") {
        let listings: Vec<(&'static str, Value)> = brief
            .writable
            .iter()
            .filter(|e| needs_listing(e))
            .map(|e| listing_pattern(e))
            .filter(|p| find_call(history, "list_files", "pattern", p).is_none())
            .map(|p| ("list_files", json!({"pattern": p})))
            .collect();
        if !listings.is_empty() {
            return listings;
        }
    }
    let writable = writable_files(brief, history);

    // 2. Reads.
    if brief.has("read_file") {
        let mut to_read = writable.clone();
        if brief.writable.is_empty() {
            // A read-only agent is not told its read scope: it lists what it may read first
            // (when it can), then reads the files its task names among them, or a few.
            let named = named_paths(&brief.description);
            if brief.has("list_files") {
                let Some(listing) = history.iter().find(|c| c.name == "list_files") else {
                    return vec![("list_files", json!({}))];
                };
                let readable = listing
                    .result
                    .as_deref()
                    .filter(|_| succeeded(listing))
                    .map(listed)
                    .unwrap_or_default();
                to_read = named.into_iter().filter(|p| readable.contains(p)).collect();
                if to_read.is_empty() {
                    to_read = readable;
                    to_read.truncate(READ_ONLY_SAMPLE);
                }
            } else {
                to_read = named;
            }
        }
        let reads: Vec<(&'static str, Value)> = to_read
            .iter()
            .filter(|p| find_call(history, "read_file", "path", p).is_none())
            .take(BATCH)
            .map(|p| ("read_file", json!({"path": p})))
            .collect();
        if !reads.is_empty() {
            return reads;
        }
    }

    // 3. Edits.
    let mut edits = Vec::new();
    for path in &writable {
        if let Some(call) = edit(brief, history, path) {
            edits.push(call);
            if edits.len() == BATCH {
                break;
            }
        }
    }
    if !edits.is_empty() {
        return edits;
    }

    // 4. Tests.
    if let Some(command) = brief.test_command()
        && find_call(history, "bash", "command", command).is_none()
    {
        return vec![("bash", json!({"command": command}))];
    }
    Vec::new()
}

/// The file's lines as `read_file` showed them, when it showed all of them.
fn read_lines(result: &str) -> Option<Vec<String>> {
    let mut lines = result.lines();
    let header = lines.next()?;
    let of = header.rsplit(" of ").next()?.trim_end_matches("):");
    let total: usize = of.trim().parse().ok()?;
    let body: Vec<String> = lines
        .map_while(|line| {
            let (number, text) = line.split_once('\t')?;
            number.trim().parse::<usize>().ok()?;
            Some(text.to_string())
        })
        .collect();
    (body.len() == total).then_some(body)
}

/// The comment line for `path`, in its syntax; `None` when the format has none.
pub(crate) fn comment_line(path: &str, text: &str) -> Option<String> {
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    let ext = name.rsplit_once('.').map_or("", |(_, ext)| ext);
    let slashes = [
        "ts", "tsx", "js", "jsx", "mjs", "cjs", "rs", "go", "java", "kt", "kts", "scala", "c", "h",
        "cc", "cpp", "hpp", "cs", "swift", "dart", "php", "scss", "less", "proto", "zig", "v",
        "groovy", "gradle",
    ];
    let hashes = [
        "py",
        "rb",
        "sh",
        "bash",
        "zsh",
        "fish",
        "yaml",
        "yml",
        "toml",
        "r",
        "pl",
        "pm",
        "ex",
        "exs",
        "cfg",
        "conf",
        "ini",
        "tf",
        "nix",
        "cmake",
        "ps1",
        "mk",
        "dockerfile",
        "gitignore",
        "dockerignore",
        "editorconfig",
        "env",
    ];
    let dashes = ["sql", "lua", "hs", "elm", "ada"];
    let markup = [
        "md", "markdown", "html", "htm", "xml", "svg", "vue", "svelte",
    ];
    Some(if slashes.contains(&ext) {
        format!("// {text}")
    } else if hashes.contains(&ext)
        || matches!(
            name.as_str(),
            "makefile" | "dockerfile" | "gemfile" | "rakefile"
        )
    {
        format!("# {text}")
    } else if dashes.contains(&ext) {
        format!("-- {text}")
    } else if markup.contains(&ext) {
        format!("<!-- {text} -->")
    } else if ext == "css" {
        format!("/* {text} */")
    } else if matches!(ext, "txt" | "rst" | "adoc")
        || (ext.is_empty() && name.starts_with("readme"))
    {
        text.to_string()
    } else {
        return None;
    })
}

fn comment_text(brief: &Brief) -> String {
    format!(
        "fanout: reviewed by agent {} (simulated edit)",
        brief.task_id
    )
}

/// The write call for `path`, or `None` when it is done, cannot be done, or must wait.
fn edit(brief: &Brief, history: &[PastCall], path: &str) -> Option<(&'static str, Value)> {
    let comment = comment_line(path, &comment_text(brief))?;
    let edited = find_call(history, "edit_file", "path", path);
    let written = find_call(history, "write_file", "path", path);
    if written.is_some() || edited.is_some_and(succeeded) {
        return None;
    }
    let read = find_call(history, "read_file", "path", path);
    let read_text = read.and_then(|c| c.result.as_deref()).unwrap_or_default();
    let missing = read.is_some_and(|c| c.is_error) && read_text.contains("no such file");
    if read.is_some_and(|c| c.is_error) && !missing {
        return None;
    }
    if missing || (read.is_none() && !brief.has("read_file")) {
        return brief.has("write_file").then(|| {
            (
                "write_file",
                json!({"path": path, "content": format!("{comment}\n")}),
            )
        });
    }
    let lines = read_lines(read_text)?;
    let content = lines.join("\n");
    // Before the first line that occurs once (after a shebang or an XML/PHP opening line, which
    // must stay first), so `old_text` matches exactly once.
    let anchor = lines
        .iter()
        .position(|line| !line.trim().is_empty() && content.matches(line.as_str()).count() == 1);
    if brief.has("edit_file")
        && edited.is_none()
        && let Some(index) = anchor
    {
        let line = &lines[index];
        let keep_first = index == 0 && (line.starts_with("#!") || line.starts_with("<?"));
        let new_text = if keep_first {
            format!("{line}\n{comment}")
        } else {
            format!("{comment}\n{line}")
        };
        return Some((
            "edit_file",
            json!({"path": path, "old_text": line, "new_text": new_text}),
        ));
    }
    brief.has("write_file").then(|| {
        let mut text = content;
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&comment);
        text.push('\n');
        ("write_file", json!({"path": path, "content": text}))
    })
}

/// The report, shaped by the report tool's schema.
fn report_input(brief: &Brief, history: &[PastCall], schema: &Value) -> Value {
    let mut changed: Vec<String> = Vec::new();
    for call in history {
        if (call.name == "write_file" || call.name == "edit_file")
            && succeeded(call)
            && let Some(path) = input_str(call, "path")
            && !changed.iter().any(|c| c == path)
        {
            changed.push(path.trim_start_matches("./").to_string());
        }
    }
    let read = history
        .iter()
        .filter(|c| c.name == "read_file" && succeeded(c))
        .count();
    let failed: Vec<&PastCall> = history
        .iter()
        .filter(|c| c.is_error && c.name != "read_file")
        .collect();
    let mut summary = format!("{}: read {read} file(s)", brief.task_id);
    if changed.is_empty() {
        summary.push_str("; changed nothing");
    } else {
        summary.push_str(&format!(
            "; added a comment line to {} (a simulated edit)",
            changed.join(", ")
        ));
    }
    for call in history.iter().filter(|c| c.name == "bash") {
        let command = input_str(call, "command").unwrap_or_default();
        let verdict = if succeeded(call) {
            "ran"
        } else {
            "could not run"
        };
        summary.push_str(&format!("; {verdict} `{command}`"));
    }
    if !failed.is_empty() {
        summary.push_str(&format!(
            "; {} tool call(s) refused or failed",
            failed.len()
        ));
    }
    summary.push('.');
    let status_ok = failed.iter().all(|c| c.name == "bash");

    let mut known = Map::new();
    known.insert("summary".into(), json!(summary));
    known.insert("files_changed".into(), json!(changed));
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        let mut out = known;
        out.insert("status".into(), json!("success"));
        return Value::Object(out);
    };
    let mut out = Map::new();
    for (key, sub) in properties {
        let lower = key.to_ascii_lowercase();
        let value = if let Some(value) = known.get(key) {
            value.clone()
        } else if lower.contains("status") || lower == "outcome" || lower == "result" {
            status_value(sub, status_ok).unwrap_or_else(|| schema_gen::generate(sub, 0))
        } else if lower.contains("file") && sub.get("type") == Some(&json!("array")) {
            json!(changed)
        } else if sub.get("type") == Some(&json!("string"))
            && [
                "summary",
                "description",
                "notes",
                "message",
                "details",
                "findings",
            ]
            .iter()
            .any(|w| lower.contains(w))
        {
            json!(summary)
        } else if lower == "success" && sub.get("type") == Some(&json!("boolean")) {
            json!(status_ok)
        } else {
            schema_gen::generate(sub, 0)
        };
        out.insert(key.clone(), value);
    }
    Value::Object(out)
}

fn status_value(schema: &Value, ok: bool) -> Option<Value> {
    let choices = schema.get("enum").and_then(Value::as_array)?;
    let wanted: &[&str] = if ok {
        &[
            "success",
            "succeeded",
            "completed",
            "complete",
            "done",
            "ok",
        ]
    } else {
        &["partial", "success", "completed", "done"]
    };
    wanted
        .iter()
        .find_map(|w| choices.iter().find(|c| c.as_str() == Some(*w)))
        .or_else(|| choices.first())
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_reads() {
        assert_eq!(comment_line("src/a.ts", "x").as_deref(), Some("// x"));
        assert_eq!(comment_line("a/b.py", "x").as_deref(), Some("# x"));
        assert_eq!(
            comment_line("README.md", "x").as_deref(),
            Some("<!-- x -->")
        );
        assert_eq!(comment_line("Makefile", "x").as_deref(), Some("# x"));
        assert_eq!(comment_line("package.json", "x"), None);
        let shown = "src/a.ts (lines 1-2 of 2):\n     1\tfirst\n     2\tsecond\n";
        assert_eq!(
            read_lines(shown),
            Some(vec!["first".to_string(), "second".to_string()])
        );
        assert_eq!(
            read_lines("src/a.ts (lines 1-1 of 2):\n     1\tfirst\n"),
            None
        );
        assert_eq!(
            named_paths("Edit `src/a.ts` and README.md, not src/."),
            ["src/a.ts", "README.md"]
        );
        assert!(named_paths("Part of \"add unit tests.\". Once done.").is_empty());
    }
}
