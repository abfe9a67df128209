//! Client-credentials tokens. STUB — the graph helper completes it.

/// Gets and caches access tokens.
#[derive(Debug)]
pub struct TokenProvider {}
