//! The `before` and `limit` query of `GET /v1/conversations/{c}/messages` (and of the
//! conversation list), read as the handler reads it: axum's `Query` into `api::PageQuery`,
//! then `PageQuery::bounds`.
//!
//! Properties: no query panics; a `before` that reads is a canonical decimal of at most 2^63-1
//! (PROTOCOL.md: it never wraps around), so it re-serialises to exactly what was sent.

#![no_main]

use axum::extract::Query;
use axum::http::Uri;
use confab_server::api::PageQuery;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    // What is not a URI never reaches the handler: hyper refuses the request line.
    let Ok(uri) = format!("/v1/conversations/1-2/messages?{query}").parse::<Uri>() else {
        return;
    };
    let Ok(Query(page)) = Query::<PageQuery>::try_from_uri(&uri) else {
        return;
    };
    let Ok((before, limit)) = page.bounds() else {
        return;
    };
    assert!((1..=200).contains(&limit), "a page of {limit}");
    if let Some(before) = before {
        // Compared as text, whatever type `before` is read into.
        let before = before.to_string();
        let sent: Vec<String> = form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .filter(|(k, _)| k == "before")
            .map(|(_, v)| v.into_owned())
            .collect();
        assert_eq!(sent, [before.clone()], "`before` reads as {before}");
        assert!(
            before.parse::<u64>().is_ok_and(|n| n <= i64::MAX as u64),
            "`before` past 2^63-1 reads as {before}"
        );
    }
});
