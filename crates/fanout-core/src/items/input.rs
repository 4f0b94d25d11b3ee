//! Reading items: JSONL, CSV with a header row, or a directory / glob of text and Markdown
//! files (one item per file).
//!
//! Every item gets an id, from a field of the record ([`IdSource::Field`]) or from its position
//! ([`IdSource::Position`]). Ids must be unique: a duplicate is an error naming both lines, since
//! the whole point of item work is that every input item can be accounted for by its id.
//! Errors name the file and the line. Reading is synchronous (plain `std::fs`); an async caller
//! runs it on a blocking thread.
//!
//! Item values: a JSONL line is its JSON value; a CSV row is an object of header → cell text; a
//! file is `{"path": <relative path, '/'-separated>, "text": <contents>}`.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

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
}

/// Read all items of `source`, ids assigned by `id`, in input order.
pub fn load(source: &InputSource, id: &IdSource) -> Result<Vec<Item>, InputError> {
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

/// Read JSONL from any reader; `path` is used in errors.
pub fn read_jsonl(
    reader: impl BufRead,
    path: &Path,
    id: &IdSource,
) -> Result<Vec<Item>, InputError> {
    let mut records = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line_number = index as u64 + 1;
        let line = line.map_err(|source| InputError::Io {
            path: path.to_owned(),
            source,
        })?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(text).map_err(|error| InputError::Malformed {
            path: path.to_owned(),
            line: line_number,
            message: format!("not valid JSON: {error}"),
        })?;
        records.push((line_number, value));
    }
    assign_ids(records, path, id)
}

/// Read CSV with a header row from any reader; `path` is used in errors.
pub fn read_csv(reader: impl Read, path: &Path, id: &IdSource) -> Result<Vec<Item>, InputError> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
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
    for row in csv.records() {
        let row = row.map_err(csv_error)?;
        let line = row.position().map_or(0, csv::Position::line);
        let object: Map<String, Value> = headers
            .iter()
            .zip(row.iter())
            .map(|(name, cell)| (name.to_owned(), Value::String(cell.to_owned())))
            .collect();
        records.push((line, Value::Object(object)));
    }
    assign_ids(records, path, id)
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

/// Read the text files under `root` matching `pattern`, sorted by relative path.
pub fn read_files(
    root: &Path,
    pattern: Option<&str>,
    id: &IdSource,
) -> Result<Vec<Item>, InputError> {
    let pattern = pattern.unwrap_or(DEFAULT_FILES_PATTERN);
    let matcher = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|error| InputError::Pattern {
            pattern: pattern.to_owned(),
            message: error.to_string(),
        })?
        .compile_matcher();
    let mut relative_paths = Vec::new();
    walk(root, root, &mut |relative| {
        if matcher.is_match(relative) {
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
    for (index, (name, relative)) in paths.into_iter().enumerate() {
        let full = root.join(&relative);
        let bytes = fs::read(&full).map_err(|source| InputError::Io {
            path: full.clone(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|error| InputError::Malformed {
            path: full.clone(),
            line: 0,
            message: format!("not valid UTF-8: {}", error.utf8_error()),
        })?;
        let mut object = Map::new();
        object.insert("path".into(), Value::String(name));
        object.insert("text".into(), Value::String(text));
        records.push((index as u64 + 1, Value::Object(object)));
    }
    // For files the "line" in id errors is the position in sorted order; the path is the root.
    assign_ids(records, root, id)
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

fn assign_ids(
    records: Vec<(u64, Value)>,
    path: &Path,
    id: &IdSource,
) -> Result<Vec<Item>, InputError> {
    let width = match id {
        IdSource::Position { zero_pad: true } => records.len().to_string().len(),
        _ => 0,
    };
    let mut first_lines: HashMap<String, u64> = HashMap::with_capacity(records.len());
    let mut items = Vec::with_capacity(records.len());
    for (position, (line, value)) in records.into_iter().enumerate() {
        let item_id = match id {
            IdSource::Position { .. } => format!("{:0width$}", position + 1),
            IdSource::Field(field) => {
                id_from_field(&value, field).map_err(|found| match found {
                    None => InputError::MissingId {
                        path: path.to_owned(),
                        line,
                        field: field.clone(),
                    },
                    Some(found) => InputError::BadId {
                        path: path.to_owned(),
                        line,
                        field: field.clone(),
                        found,
                    },
                })?
            }
        };
        if let Some(first_line) = first_lines.insert(item_id.clone(), line) {
            return Err(InputError::DuplicateId {
                path: path.to_owned(),
                line,
                id: item_id,
                first_line,
            });
        }
        items.push(Item::new(item_id, value));
    }
    Ok(items)
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

    fn jsonl(text: &str, id: &IdSource) -> Result<Vec<Item>, InputError> {
        read_jsonl(text.as_bytes(), Path::new("tickets.jsonl"), id)
    }

    fn ids(items: &[Item]) -> Vec<&str> {
        items.iter().map(|item| item.id.as_str()).collect()
    }

    #[test]
    fn jsonl_ids_from_a_field_or_from_position() {
        let text = "{\"ticket\": \"T-1\", \"body\": \"a\"}\n\n{\"ticket\": 7, \"body\": \"b\"}\n";
        let items = jsonl(text, &IdSource::Field("ticket".into())).unwrap();
        assert_eq!(ids(&items), ["T-1", "7"]);
        assert_eq!(*items[1].value, json!({"ticket": 7, "body": "b"}));

        let items = jsonl(text, &IdSource::Position { zero_pad: false }).unwrap();
        assert_eq!(ids(&items), ["1", "2"]);
        let many: String = (0..12).map(|i| format!("{{\"n\": {i}}}\n")).collect();
        let items = jsonl(&many, &IdSource::Position { zero_pad: true }).unwrap();
        assert_eq!(items[0].id, "01");
        assert_eq!(items[11].id, "12");
    }

    #[test]
    fn jsonl_errors_name_the_file_and_line() {
        let error = jsonl(
            "{\"a\": 1}\n{\"a\": \n",
            &IdSource::Position { zero_pad: false },
        )
        .unwrap_err();
        assert!(
            matches!(error, InputError::Malformed { line: 2, .. }),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .starts_with("tickets.jsonl:2: not valid JSON")
        );

        let error = jsonl(
            "{\"id\": \"a\"}\n{\"id\": \"b\"}\n\n{\"id\": \"a\"}\n",
            &IdSource::Field("id".into()),
        )
        .unwrap_err();
        assert!(
            matches!(&error, InputError::DuplicateId { line: 4, first_line: 1, id, .. } if id == "a"),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "tickets.jsonl:4: duplicate id `a` (first seen on line 1)"
        );

        let error = jsonl(
            "{\"id\": \"a\"}\n{\"x\": 1}\n",
            &IdSource::Field("id".into()),
        )
        .unwrap_err();
        assert!(
            matches!(error, InputError::MissingId { line: 2, .. }),
            "{error:?}"
        );
        let error = jsonl("{\"id\": [1]}\n", &IdSource::Field("id".into())).unwrap_err();
        assert!(
            matches!(error, InputError::BadId { line: 1, .. }),
            "{error:?}"
        );
        let error = jsonl("{\"id\": 1.5}\n", &IdSource::Field("id".into())).unwrap_err();
        assert!(matches!(error, InputError::BadId { .. }), "{error:?}");
    }

    #[test]
    fn csv_rows_become_objects_and_errors_have_lines() {
        let text = "id,subject,body\n1,Login,\"cannot log in,\nsince Monday\"\n2,Refund,late\n";
        let items = read_csv(
            text.as_bytes(),
            Path::new("t.csv"),
            &IdSource::Field("id".into()),
        )
        .unwrap();
        assert_eq!(ids(&items), ["1", "2"]);
        assert_eq!(
            *items[0].value,
            json!({"id": "1", "subject": "Login", "body": "cannot log in,\nsince Monday"})
        );

        let bad = "id,subject\n1,a\n2,b,extra\n";
        let error = read_csv(
            bad.as_bytes(),
            Path::new("t.csv"),
            &IdSource::Field("id".into()),
        )
        .unwrap_err();
        assert!(
            matches!(error, InputError::Malformed { line: 3, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("t.csv:3"), "{error}");

        let dup = "id,subject\n1,a\n1,b\n";
        let error = read_csv(
            dup.as_bytes(),
            Path::new("t.csv"),
            &IdSource::Field("id".into()),
        )
        .unwrap_err();
        assert!(
            matches!(
                error,
                InputError::DuplicateId {
                    line: 3,
                    first_line: 2,
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn files_are_items_with_relative_path_ids() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("papers/2024")).unwrap();
        fs::create_dir_all(root.join(".git")).unwrap();
        fs::write(root.join("b.md"), "# B").unwrap();
        fs::write(root.join("papers/2024/a.txt"), "A").unwrap();
        fs::write(root.join("image.png"), [0u8, 1, 2]).unwrap();
        fs::write(root.join(".git/x.md"), "hidden").unwrap();

        let source = InputSource::Files {
            root: root.to_owned(),
            pattern: None,
        };
        let items = load(&source, &IdSource::default_for(&source)).unwrap();
        assert_eq!(ids(&items), ["b.md", "papers/2024/a.txt"]);
        assert_eq!(
            *items[1].value,
            json!({"path": "papers/2024/a.txt", "text": "A"})
        );

        let source = InputSource::Files {
            root: root.to_owned(),
            pattern: Some("papers/**/*.txt".into()),
        };
        let items = load(&source, &IdSource::Position { zero_pad: false }).unwrap();
        assert_eq!(ids(&items), ["1"]);

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
