//! `fanout schema` (print the workflow file's JSON Schema) and `fanout init` (write a
//! commented starter workflow file). The file model itself lives in `fanout_core::config`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use fanout_core::config;

#[derive(Args, Debug)]
pub struct SchemaArgs {}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Where to write the starter file.
    #[arg(default_value = config::DEFAULT_CONFIG_FILE)]
    pub path: PathBuf,
    /// Overwrite the file if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Print the JSON Schema of workflow files to stdout.
pub fn run_schema(_args: SchemaArgs) -> anyhow::Result<ExitCode> {
    let schema = serde_json::to_string_pretty(&config::json_schema())
        .context("cannot render the JSON Schema")?;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{schema}").and_then(|()| stdout.flush()) {
        // `fanout schema | head` closing the pipe early is not an error.
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).context("cannot write to stdout")
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Write the commented starter file; refuse to replace an existing file without `--force`.
pub fn run_init(args: InitArgs) -> anyhow::Result<ExitCode> {
    write_template(&args.path, args.force)?;
    // Without a key the dry run's planning call would fail: suggest the simulator instead
    // (the starter file's models are Anthropic's).
    let sim = if fanout_core::env::var(fanout_core::env::ANTHROPIC_API_KEY).is_some() {
        ""
    } else {
        " --sim"
    };
    eprintln!(
        "wrote {}; edit `name` and `task`, then check it with `fanout run {} --dry-run{sim}`",
        args.path.display(),
        crate::live::shell_word(&args.path.display().to_string())
    );
    Ok(ExitCode::SUCCESS)
}

fn write_template(path: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        // create_new: no window between checking for the file and creating it.
        options.create_new(true);
    }
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            anyhow::bail!(
                "{} already exists; pass --force to overwrite it",
                path.display()
            );
        }
        Err(err) => {
            return Err(err).with_context(|| format!("cannot create {}", path.display()));
        }
    };
    file.write_all(config::INIT_TEMPLATE.as_bytes())
        .and_then(|()| file.flush())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn init_writes_a_loadable_file_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fanout.yaml");
        write_template(&path, false).unwrap();
        let loaded = config::Config::from_path(&path).unwrap();
        assert_eq!(loaded.name, "my-workflow");

        std::fs::write(&path, "workflow:\n  name: mine\n").unwrap();
        let err = write_template(&path, false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "workflow:\n  name: mine\n"
        );

        write_template(&path, true).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            config::INIT_TEMPLATE
        );
    }
}
