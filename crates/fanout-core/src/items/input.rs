//! Reading items: JSONL, CSV with a header row, or a directory / glob of text and Markdown
//! files (one item per file).
//!
//! Every item gets an id, from a field of the record ([`IdSource::Field`]) or from its position
//! ([`IdSource::Position`]). Ids must be unique, since the whole point of item work is that
//! every input item can be accounted for by its id.
//!
//! Real inputs have bad lines. [`load`] never stops at one: a line that is not JSON (or a CSV
//! row of the wrong width), a record without a usable id, a repeated id (every occurrence
//! after the first) and an unreadable or binary file each become an [`InputProblem`] naming
//! the file and line (or path), and the good items are returned with them. The runner puts
//! every problem in `failed.jsonl` (never sent to a model); `items.input.on_invalid: fail`
//! makes them fatal instead. Only what stops reading altogether (a missing file, a bad
//! pattern, a broken CSV header) is an [`InputError`]. Reading is synchronous (plain
//! `std::fs`); an async caller runs it on a blocking thread.
//!
//! Item values: a JSONL line is its JSON value; a CSV row is an object of header → cell text; a
//! file is `{"path": <relative path, '/'-separated>, "text": <contents>}`.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Item;

/// Where items come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    /// One JSON value per line; blank lines are skipped.
    Jsonl(PathBuf),
    /// Comma-separated, first row is the header.
    Csv(PathBuf),
    /// Every file under `root` whose path relative to `root` matches `pattern` (a glob, e.g.
    /// `**/*.md`); [`DEFAULT_FILES_PATTERN`] when `None`. Hidden files and directories are
    /// skipped.
    Files {
        root: PathBuf,
        pattern: Option<String>,
    },
}

/// The text and Markdown files taken from a directory when no pattern is given.
pub const DEFAULT_FILES_PATTERN: &str = "**/*.{txt,md,markdown}";

/// How items get their ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdSource {
    /// The value of this top-level field (a string, or an integer written as text). For files
    /// the field `path` is the relative path.
    Field(String),
    /// The 1-based position: `"1"`, `"2"`… or, with `zero_pad`, padded to the width of the
    /// largest position (`"001"` … `"300"`), so ids sort like positions.
    Position { zero_pad: bool },
}

impl IdSource {
    /// The usual choice for a source: the relative path for files, the position otherwise.
    pub fn default_for(source: &InputSource) -> IdSource {
        match source {
            InputSource::Files { .. } => IdSource::Field("path".to_owned()),
            _ => IdSource::Position { zero_pad: false },
        }
    }
}

/// What is wrong with one input line or file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// Not JSON (JSONL), a row of the wrong width (CSV), not text (files).
    InvalidInput,
    /// No id field, or a null, empty or non-scalar id.
    MissingId,
    /// The id of an earlier item.
    DuplicateId,
    /// A file that could not be read.
    Unreadable,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::InvalidInput => "invalid_input",
            ProblemKind::MissingId => "missing_id",
            ProblemKind::DuplicateId => "duplicate_id",
            ProblemKind::Unreadable => "unreadable",
        }
    }
}

/// One input line (or file) that is not an item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputProblem {
    pub kind: ProblemKind,
    /// The file the line is in (the root for a directory input).
    pub path: PathBuf,
    /// The 1-based line (CSV: the record's first line); for a directory input, the file's
    /// path relative to the root goes in `file` and this is 0.
    pub line: u64,
    pub file: Option<String>,
    /// What is wrong, for people.
    pub message: String,
    /// The id the record had, when it had one (a duplicate).
    pub id: Option<String>,
    /// The line as read (cut to 2,000 characters), or the record; `null` for files.
    pub input: Value,
}

impl InputProblem {
    /// A key unique among a job's items and problems: `line:N`, `file:PATH`, or `ID@line:N`
    /// for a repeated id.
    pub fn key(&self) -> String {
        match (&self.file, &self.id) {
            (Some(file), _) => format!("file:{file}"),
            (None, Some(id)) => format!("{id}@line:{}", self.line),
            (None, None) => format!("line:{}", self.line),
        }
    }

    /// `tickets.jsonl:12: not valid JSON: …`
    pub fn describe(&self) -> String {
        match &self.file {
            Some(file) => format!("{}/{file}: {}", self.path.display(), self.message),
            None => format!("{}:{}: {}", self.path.display(), self.line, self.message),
        }
    }
}

/// The items of an input, and the lines that are not items.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub items: Vec<Item>,
    pub problems: Vec<InputProblem>,
}

impl Loaded {
    /// The items, or the first problem as an error (for callers that accept no bad line).
    pub fn strict(self) -> Result<Vec<Item>, InputError> {
        match self.problems.into_iter().next() {
            None => Ok(self.items),
            Some(problem) => Err(InputError::Problem(Box::new(problem))),
        }
    }
}

/// Why items could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Malformed {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{}:{line}: the item has no `{field}` field to take its id from", path.display())]
    MissingId {
        path: PathBuf,
        line: u64,
        field: String,
    },
    #[error("{}:{line}: the id field `{field}` must be a non-empty string or an integer, found {found}", path.display())]
    BadId {
        path: PathBuf,
        line: u64,
        field: String,
        found: String,
    },
    #[error("{}:{line}: duplicate id `{id}` (first seen on line {first_line})", path.display())]
    DuplicateId {
        path: PathBuf,
        line: u64,
        id: String,
        first_line: u64,
    },
    #[error("invalid file pattern `{pattern}`: {message}")]
    Pattern { pattern: String, message: String },
    #[error("{}", .0.describe())]
    Problem(Box<InputProblem>),
}

/// Read all items of `source`, ids assigned by `id`, in input order, and every line or file
/// that is not an item.
pub fn load(source: &InputSource, id: &IdSource) -> Result<Loaded, InputError> {
    match source {
        InputSource::Jsonl(path) => {
            let file = open(path)?;
            read_jsonl(BufReader::new(file), path, id)
        }
        InputSource::Csv(path) => {
            let file = open(path)?;
            read_csv(file, path, id)
        }
        InputSource::Files { root, pattern } => read_files(root, pattern.as_deref(), id),
    }
}

fn open(path: &Path) -> Result<fs::File, InputError> {
    fs::File::open(path).map_err(|source| InputError::Io {
        path: path.to_owned(),
        source,
    })
}

/// A line as it is kept in a problem: its text, cut.
fn raw_line(text: &str) -> Value {
    Value::String(crate::provider::http::cut(text, 2000))
}

/// Read JSONL from any reader; `path` is used in problems and errors.
pub fn read_jsonl(reader: impl BufRead, path: &Path, id: &IdSource) -> Result<Loaded, InputError> {
    let mut records = Vec::new();
    let mut problems = Vec::new();
    for (index, line) in reader.split(b'\n').enumerate() {
        let line_number = index as u64 + 1;
        let bytes = line.map_err(|source| InputError::Io {
            path: path.to_owned(),
            source,
        })?;
        let line = String::from_utf8_lossy(&bytes);
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(text) {
            Ok(value) => records.push((line_number, value)),
            Err(error) => problems.push(InputProblem {
                kind: ProblemKind::InvalidInput,
                path: path.to_owned(),
                line: line_number,
                file: None,
                message: format!("not valid JSON: {error}"),
                id: None,
                input: raw_line(text),
            }),
        }
    }
    Ok(assign_ids(records, problems, path, id))
}

/// Read CSV with a header row from any reader; `path` is used in problems and errors.
pub fn read_csv(reader: impl Read, path: &Path, id: &IdSource) -> Result<Loaded, InputError> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(reader);
    let csv_error = |error: csv::Error| {
        let line = error.position().map_or(0, csv::Position::line);
        match error.into_kind() {
            csv::ErrorKind::Io(source) => InputError::Io {
                path: path.to_owned(),
                source,
            },
            kind => InputError::Malformed {
                path: path.to_owned(),
                line,
                message: csv_message(&kind),
            },
        }
    };
    let headers = csv.headers().map_err(csv_error)?.clone();
    let mut seen = HashMap::new();
    for (column, name) in headers.iter().enumerate() {
        if let Some(first) = seen.insert(name.to_owned(), column) {
            return Err(InputError::Malformed {
                path: path.to_owned(),
                line: 1,
                message: format!(
                    "the header names column `{name}` twice (columns {} and {})",
                    first + 1,
                    column + 1
                ),
            });
        }
    }
    let mut records = Vec::new();
    let mut problems = Vec::new();
    let mut raw = csv::ByteRecord::new();
    loop {
        let line = csv.position().line();
        match csv.read_byte_record(&mut raw) {
            Ok(false) => break,
            Ok(true) => {}
            Err(error) => {
                // A broken quote or an I/O error: nothing after it can be trusted.
                return Err(csv_error(error));
            }
        }
        let line = raw.position().map_or(line, csv::Position::line);
        let cells: Vec<String> = raw
            .iter()
            .map(|cell| String::from_utf8_lossy(cell).into_owned())
            .collect();
        let problem = if cells.len() != headers.len() {
            Some(format!(
                "the row has {} fields, the header has {}",
                cells.len(),
                headers.len()
            ))
        } else if raw.iter().any(|cell| std::str::from_utf8(cell).is_err()) {
            Some("not valid UTF-8".to_owned())
        } else {
            None
        };
        if let Some(message) = problem {
            problems.push(InputProblem {
                kind: ProblemKind::InvalidInput,
                path: path.to_owned(),
                line,
                file: None,
                message,
                id: None,
                input: raw_line(&cells.join(",")),
            });
            continue;
        }
        let object: Map<String, Value> = headers
            .iter()
            .zip(cells)
            .map(|(name, cell)| (name.to_owned(), Value::String(cell)))
            .collect();
        records.push((line, Value::Object(object)));
    }
    Ok(assign_ids(records, problems, path, id))
}

fn csv_message(kind: &csv::ErrorKind) -> String {
    match kind {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("the row has {len} fields, the header has {expected_len}"),
        csv::ErrorKind::Utf8 { err, .. } => format!("not valid UTF-8: {err}"),
        other => format!("{other:?}"),
    }
}

/// Read the files under `root` matching `pattern`, sorted by relative path. Without a
/// pattern every (non-hidden) file is a candidate: text files are items, and a file that is
/// not text (binary, not UTF-8) or cannot be read is a problem rather than silently skipped.
pub fn read_files(root: &Path, pattern: Option<&str>, id: &IdSource) -> Result<Loaded, InputError> {
    let matcher = match pattern {
        Some(pattern) => Some(
            globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|error| InputError::Pattern {
                    pattern: pattern.to_owned(),
                    message: error.to_string(),
                })?
                .compile_matcher(),
        ),
        None => None,
    };
    let mut relative_paths = Vec::new();
    walk(root, root, &mut |relative| {
        if matcher.as_ref().is_none_or(|m| m.is_match(relative)) {
            relative_paths.push(relative.to_owned());
        }
    })?;
    let mut paths: Vec<(String, PathBuf)> = relative_paths
        .into_iter()
        .map(|relative| {
            let name = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            (name, relative)
        })
        .collect();
    paths.sort();
    let mut records = Vec::with_capacity(paths.len());
    let mut problems = Vec::new();
    for (index, (name, relative)) in paths.into_iter().enumerate() {
        let full = root.join(&relative);
        let problem = |kind, message: String| InputProblem {
            kind,
            path: root.to_owned(),
            line: 0,
            file: Some(name.clone()),
            message,
            id: None,
            input: Value::Null,
        };
        let bytes = match fs::read(&full) {
            Ok(bytes) => bytes,
            Err(error) => {
                problems.push(problem(
                    ProblemKind::Unreadable,
                    format!("cannot read: {error}"),
                ));
                continue;
            }
        };
        let text = match String::from_utf8(bytes) {
            Ok(text) if !text.contains('\0') => text,
            Ok(_) => {
                problems.push(problem(
                    ProblemKind::Unreadable,
                    "a binary file (it contains NUL bytes), not text".to_owned(),
                ));
                continue;
            }
            Err(error) => {
                problems.push(problem(
                    ProblemKind::Unreadable,
                    format!("not text (not valid UTF-8: {})", error.utf8_error()),
                ));
                continue;
            }
        };
        let mut object = Map::new();
        object.insert("path".into(), Value::String(name));
        object.insert("text".into(), Value::String(text));
        records.push((index as u64 + 1, Value::Object(object)));
    }
    // For files the "line" in id problems is the position in sorted order.
    Ok(assign_ids(records, problems, root, id))
}

fn walk(root: &Path, dir: &Path, found: &mut dyn FnMut(&Path)) -> Result<(), InputError> {
    let io = |source| InputError::Io {
        path: dir.to_owned(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().map_err(io)?;
        if kind.is_dir() {
            walk(root, &path, found)?;
        } else if (kind.is_file() || kind.is_symlink())
            && let Ok(relative) = path.strip_prefix(root)
        {
            found(relative);
        }
    }
    Ok(())
}

/// Give each record its id; records without a usable id, and repeated ids after the first,
/// join `problems`. Problems come back in input order.
fn assign_ids(
    records: Vec<(u64, Value)>,
    mut problems: Vec<InputProblem>,
    path: &Path,
    id: &IdSource,
) -> Loaded {
    let width = match id {
        IdSource::Position { zero_pad: true } => records.len().to_string().len(),
        _ => 0,
    };
    let mut first_lines: HashMap<String, u64> = HashMap::with_capacity(records.len());
    let mut items = Vec::with_capacity(records.len());
    let problem = |kind, line, message: String, id: Option<String>, input: Value| InputProblem {
        kind,
        path: path.to_owned(),
        line,
        file: None,
        message,
        id,
        input,
    };
    for (position, (line, value)) in records.into_iter().enumerate() {
        let item_id = match id {
            IdSource::Position { .. } => format!("{:0width$}", position + 1),
            IdSource::Field(field) => match id_from_field(&value, field) {
                Ok(item_id) => item_id,
                Err(None) => {
                    let message = if value.get(field).is_some() {
                        format!("the id field `{field}` is null")
                    } else {
                        format!("the item has no `{field}` field to take its id from")
                    };
                    problems.push(problem(ProblemKind::MissingId, line, message, None, value));
                    continue;
                }
                Err(Some(found)) => {
                    problems.push(problem(
                        ProblemKind::MissingId,
                        line,
                        format!(
                            "the id field `{field}` must be a non-empty string or an integer, found {found}"
                        ),
                        None,
                        value,
                    ));
                    continue;
                }
            },
        };
        if let Some(first_line) = first_lines.get(&item_id) {
            problems.push(problem(
                ProblemKind::DuplicateId,
                line,
                format!("duplicate id `{item_id}` (first seen on line {first_line})"),
                Some(item_id),
                value,
            ));
            continue;
        }
        first_lines.insert(item_id.clone(), line);
        items.push(Item::new(item_id, value));
    }
    problems.sort_by(|a, b| (a.line, &a.file).cmp(&(b.line, &b.file)));
    Loaded { items, problems }
}

/// The id in `field`: `Err(None)` when absent, `Err(Some(description))` when unusable.
fn id_from_field(value: &Value, field: &str) -> Result<String, Option<String>> {
    match value.get(field) {
        None | Some(Value::Null) => Err(None),
        Some(Value::String(text)) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
        Some(Value::String(_)) => Err(Some("an empty string".to_owned())),
        Some(Value::Number(number)) if number.is_i64() || number.is_u64() => Ok(number.to_string()),
        Some(other) => Err(Some(crate::provider::http::cut(&other.to_string(), 60))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jsonl(text: &str, id: &IdSource) -> Loaded {
        read_jsonl(text.as_bytes(), Path::new("tickets.jsonl"), id).unwrap()
    }

    fn ids(items: &[Item]) -> Vec<&str> {
        items.iter().map(|item| item.id.as_str()).collect()
    }

    fn kinds(loaded: &Loaded) -> Vec<(ProblemKind, u64)> {
        loaded.problems.iter().map(|p| (p.kind, p.line)).collect()
    }

    #[test]
    fn jsonl_ids_from_a_field_or_from_position() {
        let text = "{\"ticket\": \"T-1\", \"body\": \"a\"}\n\n{\"ticket\": 7, \"body\": \"b\"}\n";
        let loaded = jsonl(text, &IdSource::Field("ticket".into()));
        assert_eq!(ids(&loaded.items), ["T-1", "7"]);
        assert_eq!(*loaded.items[1].value, json!({"ticket": 7, "body": "b"}));
        assert!(loaded.problems.is_empty());

        let loaded = jsonl(text, &IdSource::Position { zero_pad: false });
        assert_eq!(ids(&loaded.items), ["1", "2"]);
        let many: String = (0..12).map(|i| format!("{{\"n\": {i}}}\n")).collect();
        let loaded = jsonl(&many, &IdSource::Position { zero_pad: true });
        assert_eq!(loaded.items[0].id, "01");
        assert_eq!(loaded.items[11].id, "12");
    }

    /// Two bad JSON lines took two runs to find, id problems five more: every bad line of a
    /// file is found in one pass, named by file and line, and the good items are kept.
    #[test]
    fn every_bad_line_is_a_problem_and_the_rest_are_items() {
        let text = "{\"id\": \"a\"}\n{\"id\": \n{\"id\": \"b\"}\n\n{\"x\": 1}\n{\"id\": null}\n{\"id\": [1]}\n{\"id\": 1.5}\n{\"id\": \"a\"}\nnot json\n{\"id\": \"c\"}\n";
        let loaded = jsonl(text, &IdSource::Field("id".into()));
        assert_eq!(ids(&loaded.items), ["a", "b", "c"]);
        assert_eq!(
            kinds(&loaded),
            vec![
                (ProblemKind::InvalidInput, 2),
                (ProblemKind::MissingId, 5),
                (ProblemKind::MissingId, 6),
                (ProblemKind::MissingId, 7),
                (ProblemKind::MissingId, 8),
                (ProblemKind::DuplicateId, 9),
                (ProblemKind::InvalidInput, 10),
            ]
        );
        let described: Vec<String> = loaded.problems.iter().map(InputProblem::describe).collect();
        assert!(
            described[0].starts_with("tickets.jsonl:2: not valid JSON"),
            "{described:?}"
        );
        assert_eq!(described[2], "tickets.jsonl:6: the id field `id` is null");
        assert_eq!(
            described[5],
            "tickets.jsonl:9: duplicate id `a` (first seen on line 1)"
        );
        // Keys are unique among items and problems, so failed.jsonl can hold every line.
        assert_eq!(loaded.problems[5].key(), "a@line:9");
        assert_eq!(loaded.problems[0].key(), "line:2");
        assert_eq!(loaded.problems[6].input, json!("not json"));
        // `strict` is the old contract: the first problem is an error.
        let error = jsonl(text, &IdSource::Field("id".into()))
            .strict()
            .unwrap_err();
        assert!(error.to_string().starts_with("tickets.jsonl:2:"), "{error}");
    }

    /// Any mix of good lines, bad lines, blank lines and repeated ids: every non-blank line
    /// is exactly one item or one problem, and no two have the same key.
    #[test]
    fn every_line_is_accounted_for_exactly_once() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for _ in 0..200 {
            let mut text = String::new();
            let mut lines = 0;
            for _ in 0..next(40) {
                let line = match next(6) {
                    0 => String::new(),
                    1 => "{broken".to_owned(),
                    2 => "{\"other\": 1}".to_owned(),
                    3 => "{\"id\": null}".to_owned(),
                    _ => format!("{{\"id\": \"i{}\"}}", next(15)),
                };
                if !line.is_empty() {
                    lines += 1;
                }
                text.push_str(&line);
                text.push('\n');
            }
            let loaded = jsonl(&text, &IdSource::Field("id".into()));
            assert_eq!(loaded.items.len() + loaded.problems.len(), lines, "{text}");
            let mut keys: Vec<String> = loaded.items.iter().map(|i| i.id.clone()).collect();
            keys.extend(loaded.problems.iter().map(InputProblem::key));
            let count = keys.len();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), count, "a key twice: {text}");
        }
    }

    #[test]
    fn csv_rows_become_objects_and_bad_rows_are_problems() {
        let text = "id,subject,body\n1,Login,\"cannot log in,\nsince Monday\"\n2,Refund,late\n";
        let loaded = read_csv(
            text.as_bytes(),
            Path::new("t.csv"),
            &IdSource::Field("id".into()),
        )
        .unwrap();
        assert_eq!(ids(&loaded.items), ["1", "2"]);
        assert_eq!(
            *loaded.items[0].value,
            json!({"id": "1", "subject": "Login", "body": "cannot log in,\nsince Monday"})
        );

        let bad = "id,subject\n1,a\n2,b,extra\n1,c\n3,d\n";
        let loaded = read_csv(
            bad.as_bytes(),
            Path::new("t.csv"),
            &IdSource::Field("id".into()),
        )
        .unwrap();
        assert_eq!(ids(&loaded.items), ["1", "3"]);
        assert_eq!(
            kinds(&loaded),
            vec![
                (ProblemKind::InvalidInput, 3),
                (ProblemKind::DuplicateId, 4)
            ]
        );
        assert!(
            loaded.problems[0]
                .describe()
                .starts_with("t.csv:3: the row has 3 fields"),
            "{}",
            loaded.problems[0].describe()
        );
    }

    #[test]
    fn files_are_items_with_relative_path_ids_and_non_text_files_are_problems() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("papers/2024")).unwrap();
        fs::create_dir_all(root.join(".git")).unwrap();
        fs::write(root.join("b.md"), "# B").unwrap();
        fs::write(root.join("papers/2024/a.txt"), "A").unwrap();
        fs::write(root.join("image.png"), [0u8, 1, 2, 0xff]).unwrap();
        fs::write(root.join(".git/x.md"), "hidden").unwrap();

        let source = InputSource::Files {
            root: root.to_owned(),
            pattern: None,
        };
        let loaded = load(&source, &IdSource::default_for(&source)).unwrap();
        assert_eq!(ids(&loaded.items), ["b.md", "papers/2024/a.txt"]);
        assert_eq!(
            *loaded.items[1].value,
            json!({"path": "papers/2024/a.txt", "text": "A"})
        );
        // The .png was skipped without a word; now it is an `unreadable` problem.
        assert_eq!(loaded.problems.len(), 1);
        assert_eq!(loaded.problems[0].kind, ProblemKind::Unreadable);
        assert_eq!(loaded.problems[0].key(), "file:image.png");

        let source = InputSource::Files {
            root: root.to_owned(),
            pattern: Some("papers/**/*.txt".into()),
        };
        let loaded = load(&source, &IdSource::Position { zero_pad: false }).unwrap();
        assert_eq!(ids(&loaded.items), ["1"]);
        assert!(loaded.problems.is_empty());

        let source = InputSource::Files {
            root: root.to_owned(),
            pattern: Some("[".into()),
        };
        assert!(matches!(
            load(&source, &IdSource::Position { zero_pad: false }),
            Err(InputError::Pattern { .. })
        ));
    }

    #[test]
    fn a_missing_file_is_an_io_error_naming_it() {
        let error = load(
            &InputSource::Jsonl(PathBuf::from("/nonexistent/items.jsonl")),
            &IdSource::Position { zero_pad: false },
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/items.jsonl"),
            "{error}"
        );
    }
}
