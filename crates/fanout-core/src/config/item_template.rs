//! The worker prompt template's language: `{{ name }}` placeholders and which names exist,
//! and the check a workflow file's template must pass when the file is loaded. The item
//! worker renders templates with [`render_template`].

/// A prompt template that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "unknown placeholder `{{{{{name}}}}}` in the prompt template (known: instructions, items, count, chunk_id, tool, answer_with)"
    )]
    Unknown { name: String },
    #[error("unclosed `{{{{` in the prompt template at byte {at}")]
    Unclosed { at: usize },
    #[error(
        "the prompt template has no `{{{{items}}}}` placeholder, so workers would never see their items"
    )]
    NoItems,
}

/// Check a template before any chunk is sent.
pub fn check_template(template: &str) -> Result<(), TemplateError> {
    let mut saw_items = false;
    render_template(template, &mut |name, _| {
        saw_items |= name == "items";
        known(name)
    })?;
    if saw_items {
        Ok(())
    } else {
        Err(TemplateError::NoItems)
    }
}

fn known(name: &str) -> bool {
    matches!(
        name,
        "instructions" | "items" | "count" | "chunk_id" | "tool" | "answer_with"
    )
}

/// Replace each `{{ name }}` by what `value(name, out)` appends to `out`; `false` means an
/// unknown name.
pub(crate) fn render_template(
    template: &str,
    value: &mut dyn FnMut(&str, &mut String) -> bool,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(TemplateError::Unclosed {
                at: template.len() - rest.len() + start,
            });
        };
        let name = after[..end].trim();
        if !value(name, &mut out) {
            return Err(TemplateError::Unknown {
                name: name.to_owned(),
            });
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}
