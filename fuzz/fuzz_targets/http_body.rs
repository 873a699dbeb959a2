//! Every JSON request body of the HTTP API, read as `api::JsonBody` reads it
//! (`serde_json::from_slice`, whatever the bytes), then checked as its handler checks it.
//!
//! Properties: no input panics; a body that parses re-serialises to JSON that parses to the
//! same body.

#![no_main]

use confab_protocol::{ChangePassword, CreateSession, CreateUser};
use confab_server::auth::{validate_password, validate_username};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// `data` read as the body `T`, if it is one, after checking that it round-trips.
fn body<T: DeserializeOwned + Serialize>(data: &[u8]) -> Option<T> {
    let body: T = serde_json::from_slice(data).ok()?;
    let value = serde_json::to_value(&body).expect("a body serialises");
    let back: T = serde_json::from_value(value.clone()).expect("a serialised body parses");
    assert_eq!(
        serde_json::to_value(&back).expect("a body serialises"),
        value,
        "a body parses back to another one"
    );
    Some(body)
}

fuzz_target!(|data: &[u8]| {
    // Each input is tried as every body type: one corpus serves them all.
    if let Some(req) = body::<CreateUser>(data) {
        let _ = validate_username(&req.username);
        let _ = validate_password(&req.password);
    }
    if let Some(req) = body::<CreateSession>(data) {
        let _ = validate_username(&req.username);
        // The handler keeps the first 64 characters of a device name.
        let _: Option<String> = req.device_name.map(|n| n.chars().take(64).collect());
    }
    if let Some(req) = body::<ChangePassword>(data) {
        let _ = validate_password(&req.new_password);
    }
});
