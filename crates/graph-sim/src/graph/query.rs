//! OData query options as Graph reads them on directory objects: `$select`, `$top`,
//! `$skiptoken`, `$count`, a simple `$filter` of `eq` clauses, and the *advanced query*
//! parameters.
//!
//! <https://learn.microsoft.com/en-us/graph/aad-advanced-queries>: some queries on directory
//! objects (an OData cast on a transitive list, `$count`, `ne`, `endsWith`…) work only with the
//! `ConsistencyLevel: eventual` header *and* `$count=true`; without them Graph refuses the query
//! (400 `Request_UnsupportedQuery`), and a `$count=true` without the header is silently ignored.

use axum::http::HeaderMap;

use super::paths::decode;

/// The query options of one request, keys and values percent-decoded (`%24top` is `$top`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Query {
    pub(crate) pairs: Vec<(String, String)>,
    /// `ConsistencyLevel: eventual` was sent.
    pub(crate) eventual: bool,
}

impl Query {
    /// Parse the raw query string and the `ConsistencyLevel` header.
    pub(crate) fn parse(raw: &str, headers: &HeaderMap) -> Query {
        let pairs = raw
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(&v.replace('+', " ")))
            })
            .collect();
        let eventual = headers
            .get("consistencylevel")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("eventual"));
        Query { pairs, eventual }
    }

    /// The value of option `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// `$count=true` was asked.
    pub(crate) fn count(&self) -> bool {
        self.get("$count")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// Both advanced query parameters are there: `ConsistencyLevel: eventual` and `$count=true`.
    pub(crate) fn advanced(&self) -> bool {
        self.eventual && self.count()
    }

    /// Answer with `@odata.count`: `$count=true` with `ConsistencyLevel: eventual` (without the
    /// header Graph ignores `$count=true` on directory objects).
    pub(crate) fn wants_count(&self) -> bool {
        self.advanced()
    }

    /// The `$select` list, when given.
    pub(crate) fn select(&self) -> Option<Vec<String>> {
        self.get("$select")
            .map(|s| s.split(',').map(|f| f.trim().to_string()).collect())
    }

    /// `$filter` as `eq` clauses joined by `and`: `[(property, value)]`. `None` without a
    /// filter; `Err` with the clause Graph could not read.
    pub(crate) fn eq_filter(&self) -> Option<Result<Vec<(String, String)>, String>> {
        let filter = self.get("$filter")?;
        let mut clauses = Vec::new();
        for clause in split_and(filter) {
            let parsed = clause.split_once(" eq ").and_then(|(property, value)| {
                let value = value.trim();
                let value = value.strip_prefix('\'')?.strip_suffix('\'')?;
                Some((property.trim().to_string(), value.replace("''", "'")))
            });
            match parsed {
                Some(pair) => clauses.push(pair),
                None => return Some(Err(clause.trim().to_string())),
            }
        }
        Some(Ok(clauses))
    }
}

/// Split on ` and ` (any case), outside quotes.
fn split_and(filter: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let bytes = filter.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\'' {
            quoted = !quoted;
        } else if !quoted
            && i + 5 <= filter.len()
            && filter.is_char_boundary(i)
            && filter.is_char_boundary(i + 5)
            && filter[i..i + 5].eq_ignore_ascii_case(" and ")
        {
            parts.push(&filter[start..i]);
            start = i + 5;
            i += 5;
            continue;
        }
        i += 1;
    }
    parts.push(&filter[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn advanced_queries_need_the_header_and_count() {
        let mut headers = HeaderMap::new();
        let plain = Query::parse("%24count=true", &headers);
        headers.insert("ConsistencyLevel", HeaderValue::from_static("eventual"));
        let header_only = Query::parse("$top=5", &headers);
        let both = Query::parse("%24count=true&$top=5", &headers);

        assert!(!plain.advanced() && !plain.wants_count());
        assert!(!header_only.advanced());
        assert!(both.advanced() && both.wants_count());
    }

    #[test]
    fn eq_filters_are_read_clause_by_clause() {
        let q = Query::parse(
            "$filter=principalId%20eq%20'a-b'%20and%20roleDefinitionId+eq+'it''s'",
            &HeaderMap::new(),
        );
        assert_eq!(
            q.eq_filter().unwrap().unwrap(),
            vec![
                ("principalId".to_string(), "a-b".to_string()),
                ("roleDefinitionId".to_string(), "it's".to_string())
            ]
        );
        let bad = Query::parse("$filter=startswith(principalId,'a')", &HeaderMap::new());
        assert!(bad.eq_filter().unwrap().is_err());
        assert!(Query::parse("", &HeaderMap::new()).eq_filter().is_none());
    }
}
