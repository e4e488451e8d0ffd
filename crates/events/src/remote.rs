//! Wire format of cross-instance fan-out over PostgreSQL `NOTIFY`.
//!
//! One notification on [`EVENTS_CHANNEL`] carries `{"origin": "<instance id>", "events": [...]}`
//! with as many events as fit under [`MAX_PAYLOAD_BYTES`]. An event whose JSON alone does not fit
//! is replaced by a stub: same `user_id`, `type` and `at`, and `data` holding
//! `{"truncated": true, "bytes": <original size>}` plus the original's small scalar top-level
//! fields (ids, statuses), so clients can reload the full object.

use gathering_domain::events::Event;
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// The PostgreSQL channel every instance LISTENs on for events.
pub const EVENTS_CHANNEL: &str = "gathering_events";
/// PostgreSQL refuses payloads of 8000 bytes or more.
pub const MAX_PAYLOAD_BYTES: usize = 7999;
/// Longest string kept in a truncation stub.
const STUB_MAX_STRING: usize = 200;
/// Most fields kept in a truncation stub.
const STUB_MAX_FIELDS: usize = 16;

/// What [`encode`] produced.
#[derive(Debug, Default)]
pub struct Encoded {
    pub payloads: Vec<String>,
    /// Events replaced by a stub.
    pub truncated: u64,
    /// Events that did not fit even as a stub (an absurdly long `type`), not sent.
    pub dropped: u64,
}

/// Packs events into as few payloads as possible, each at most `limit` bytes, in order.
pub fn encode<'a>(
    origin: Uuid,
    events: impl IntoIterator<Item = &'a Event>,
    limit: usize,
) -> Encoded {
    let prefix = format!("{{\"origin\":\"{origin}\",\"events\":[");
    const SUFFIX: &str = "]}";
    let overhead = prefix.len() + SUFFIX.len();
    let mut out = Encoded::default();
    let mut current = String::new();
    for event in events {
        let Some(json) = event_json(event, limit.saturating_sub(overhead), &mut out) else {
            continue;
        };
        if !current.is_empty() && current.len() + 1 + json.len() + SUFFIX.len() > limit {
            current.push_str(SUFFIX);
            out.payloads.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            current.push_str(&prefix);
        } else {
            current.push(',');
        }
        current.push_str(&json);
    }
    if !current.is_empty() {
        current.push_str(SUFFIX);
        out.payloads.push(current);
    }
    out
}

/// The event's JSON if it fits in `room` bytes, else its stub's, else `None`.
fn event_json(event: &Event, room: usize, out: &mut Encoded) -> Option<String> {
    let json = match serde_json::to_string(&wire(event)) {
        Ok(j) => j,
        Err(e) => {
            tracing::warn!(error = %e, kind = %event.kind, "event cannot be serialized; not sent to other instances");
            out.dropped += 1;
            return None;
        }
    };
    if json.len() <= room {
        return Some(json);
    }
    let stub = stub(event, json.len());
    match serde_json::to_string(&stub) {
        Ok(s) if s.len() <= room => {
            out.truncated += 1;
            Some(s)
        }
        _ => {
            out.dropped += 1;
            None
        }
    }
}

/// Other instances never de-duplicate again: the key stays home.
fn wire(event: &Event) -> Event {
    Event {
        user_id: event.user_id,
        kind: event.kind.clone(),
        at: event.at,
        data: event.data.clone(),
        dedup_key: None,
    }
}

/// A small stand-in for an event too large for one notification.
pub fn stub(event: &Event, original_bytes: usize) -> Event {
    let mut data = Map::new();
    if let Value::Object(fields) = &event.data {
        for (k, v) in fields
            .iter()
            .filter(|(k, v)| k.len() <= 64 && is_small_scalar(v))
            .take(STUB_MAX_FIELDS)
        {
            data.insert(k.clone(), v.clone());
        }
    }
    data.insert("truncated".to_owned(), Value::Bool(true));
    data.insert("bytes".to_owned(), Value::from(original_bytes));
    Event {
        user_id: event.user_id,
        kind: event.kind.clone(),
        at: event.at,
        data: Value::Object(data),
        dedup_key: None,
    }
}

fn is_small_scalar(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => true,
        Value::String(s) => s.len() <= STUB_MAX_STRING,
        Value::Array(_) | Value::Object(_) => false,
    }
}

#[derive(Debug, Deserialize)]
pub struct Envelope {
    pub origin: Uuid,
    pub events: Vec<Event>,
}

pub fn decode(payload: &str) -> Result<Envelope, serde_json::Error> {
    serde_json::from_str(payload)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(n: usize, filler: usize) -> Event {
        Event::new(
            Uuid::now_v7(),
            "node.succeeded",
            json!({ "n": n, "run_id": "r-1", "output": "x".repeat(filler) }),
        )
    }

    #[test]
    fn small_events_share_one_payload_and_round_trip() {
        let origin = Uuid::now_v7();
        let events: Vec<Event> = (0..10).map(|n| ev(n, 10)).collect();
        let enc = encode(origin, &events, MAX_PAYLOAD_BYTES);
        assert_eq!(enc.payloads.len(), 1);
        let env = decode(&enc.payloads[0]).unwrap();
        assert_eq!(env.origin, origin);
        assert_eq!(env.events, events);
    }

    #[test]
    fn payloads_never_exceed_the_limit_and_keep_order() {
        let origin = Uuid::now_v7();
        let events: Vec<Event> = (0..100).map(|n| ev(n, 50 + n * 7)).collect();
        let enc = encode(origin, &events, MAX_PAYLOAD_BYTES);
        assert!(enc.payloads.len() > 1);
        assert_eq!(enc.truncated, 0);
        let mut back = Vec::new();
        for p in &enc.payloads {
            assert!(p.len() <= MAX_PAYLOAD_BYTES, "payload of {} bytes", p.len());
            back.extend(decode(p).unwrap().events);
        }
        assert_eq!(back, events);
    }

    #[test]
    fn an_oversized_event_becomes_a_stub_with_its_small_fields() {
        let origin = Uuid::now_v7();
        let big = ev(7, 20_000);
        let enc = encode(origin, [&big], MAX_PAYLOAD_BYTES);
        assert_eq!(enc.truncated, 1);
        assert_eq!(enc.payloads.len(), 1);
        assert!(enc.payloads[0].len() <= MAX_PAYLOAD_BYTES);
        let got = decode(&enc.payloads[0]).unwrap().events.remove(0);
        assert_eq!(got.user_id, big.user_id);
        assert_eq!(got.kind, big.kind);
        assert_eq!(got.at, big.at);
        assert_eq!(got.data["truncated"], json!(true));
        assert_eq!(got.data["n"], json!(7));
        assert_eq!(got.data["run_id"], json!("r-1"));
        assert!(got.data.get("output").is_none());
        assert!(got.data["bytes"].as_u64().unwrap() > 20_000);
    }

    #[test]
    fn an_event_that_cannot_fit_even_as_a_stub_is_dropped_and_counted() {
        let origin = Uuid::now_v7();
        let absurd = Event::new(Uuid::now_v7(), "k".repeat(10_000), json!({}));
        let fine = ev(1, 1);
        let enc = encode(origin, [&absurd, &fine], MAX_PAYLOAD_BYTES);
        assert_eq!(enc.dropped, 1);
        let back: Vec<Event> = enc
            .payloads
            .iter()
            .flat_map(|p| decode(p).unwrap().events)
            .collect();
        assert_eq!(back, vec![fine]);
    }

    #[test]
    fn multibyte_text_is_measured_in_bytes() {
        let origin = Uuid::now_v7();
        let events: Vec<Event> = (0..20)
            .map(|n| Event::new(Uuid::now_v7(), "t", json!({ "n": n, "s": "é".repeat(900) })))
            .collect();
        let enc = encode(origin, &events, MAX_PAYLOAD_BYTES);
        for p in &enc.payloads {
            assert!(p.len() <= MAX_PAYLOAD_BYTES);
        }
        let n: usize = enc
            .payloads
            .iter()
            .map(|p| decode(p).unwrap().events.len())
            .sum();
        assert_eq!(n, 20);
    }

    #[test]
    fn dedup_keys_stay_on_the_origin_instance() {
        let e = ev(1, 1).with_dedup_key("k");
        let enc = encode(Uuid::now_v7(), [&e], MAX_PAYLOAD_BYTES);
        assert!(!enc.payloads[0].contains("dedup_key"));
    }
}
