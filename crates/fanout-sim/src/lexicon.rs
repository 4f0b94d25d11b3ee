//! Words that stand for common categories, so simulated workers and planners classify by
//! meaning a little, not only by the literal category name ("invoice" → `billing`).

/// `(category, words that suggest it)`; the category name itself always counts.
pub(crate) const CATEGORIES: &[(&str, &[&str])] = &[
    (
        "billing",
        &[
            "bill",
            "invoice",
            "charged",
            "charge",
            "payment",
            "price",
            "subscription",
            "plan",
        ],
    ),
    ("refund", &["refund", "money back", "reimburse"]),
    (
        "login",
        &[
            "log in",
            "sign in",
            "password",
            "two-factor",
            "2fa",
            "locked out",
            "sso",
        ],
    ),
    (
        "bug",
        &[
            "error", "crash", "broken", "fails", "failing", "freezes", "garbled", "wrong",
        ],
    ),
    (
        "performance",
        &[
            "slow",
            "timeout",
            "timeouts",
            "latency",
            "lag",
            "takes ages",
        ],
    ),
    (
        "shipping",
        &["shipping", "delivery", "parcel", "tracking", "shipped"],
    ),
    (
        "account",
        &[
            "account",
            "profile",
            "add a user",
            "delete my data",
            "email address",
        ],
    ),
    (
        "feature_request",
        &[
            "feature",
            "would like",
            "wish",
            "could you add",
            "dark mode",
            "suggestion",
        ],
    ),
    (
        "security",
        &["security", "breach", "phishing", "vulnerability"],
    ),
    // Priorities and tones, for the usual enums.
    (
        "urgent",
        &[
            "asap",
            "immediately",
            "right away",
            "losing money",
            "cannot operate",
        ],
    ),
    (
        "low",
        &["wondering", "curious", "suggestion", "just a question"],
    ),
    (
        "negative",
        &[
            "frustrated",
            "frustrating",
            "angry",
            "disappointed",
            "unacceptable",
            "annoyed",
        ],
    ),
    (
        "positive",
        &["thanks", "thank you", "love", "great", "appreciate"],
    ),
];

/// The words that suggest `category` (lowercase), its own name first.
pub(crate) fn words_for(category: &str) -> Vec<String> {
    let name = category.to_lowercase().replace('_', " ");
    let mut words = vec![name.clone()];
    if let Some((_, more)) = CATEGORIES.iter().find(|(c, _)| c.replace('_', " ") == name) {
        words.extend(more.iter().map(|w| (*w).to_string()));
    }
    words
}
