//! Server-sent events: an incremental parser and a stream over an HTTP response body.

use crate::error::LlmError;
use crate::model::{DeltaStream, StreamDelta};
use futures::{Stream, StreamExt};
use std::collections::VecDeque;

/// The longest event we accept; a provider sending more is broken.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    pending: usize,
}

impl SseParser {
    /// Feeds bytes; returns every event completed by them.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, String> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line).map_err(|_| "event is not UTF-8".to_owned())?;
            if line.is_empty() {
                if !self.data.is_empty() || self.event.is_some() {
                    out.push(SseEvent {
                        event: self.event.take(),
                        data: std::mem::take(&mut self.data).join("\n"),
                    });
                }
                self.pending = 0;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            self.pending += value.len();
            match field {
                "event" => self.event = Some(value.to_owned()),
                "data" => self.data.push(value.to_owned()),
                _ => {}
            }
        }
        if self.buf.len() + self.pending > MAX_EVENT_BYTES {
            return Err("event too large".to_owned());
        }
        Ok(out)
    }

    /// At end of input: an event not terminated by a blank line still counts.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            let _ = self.push(&rest);
            let _ = self.push(b"\n");
        }
        if self.data.is_empty() && self.event.is_none() {
            return None;
        }
        Some(SseEvent {
            event: self.event.take(),
            data: std::mem::take(&mut self.data).join("\n"),
        })
    }
}

/// What a provider's decoder makes of one event: deltas, and whether the answer is complete.
pub type Decoded = Result<(Vec<StreamDelta>, bool), LlmError>;

struct DecodeState<S, F> {
    body: S,
    parser: SseParser,
    decode: F,
    queue: VecDeque<StreamDelta>,
    events: VecDeque<SseEvent>,
    done: bool,
    failed: bool,
    provider: String,
}

/// Turns a response body into deltas with a provider-specific `decode` of each event. A body
/// that ends before the provider's completion marker is an error, not a silent truncation.
pub fn decode_stream<S, F>(body: S, provider: String, decode: F) -> DeltaStream
where
    S: Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send + Unpin + 'static,
    F: FnMut(SseEvent) -> Decoded + Send + 'static,
{
    let state = DecodeState {
        body,
        parser: SseParser::default(),
        decode,
        queue: VecDeque::new(),
        events: VecDeque::new(),
        done: false,
        failed: false,
        provider,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.failed {
                return None;
            }
            if let Some(d) = st.queue.pop_front() {
                return Some((Ok(d), st));
            }
            if st.done {
                return None;
            }
            if let Some(ev) = st.events.pop_front() {
                match (st.decode)(ev) {
                    Ok((deltas, done)) => {
                        st.queue.extend(deltas);
                        if done {
                            st.done = true;
                            st.events.clear();
                        }
                    }
                    Err(e) => {
                        st.failed = true;
                        return Some((Err(e), st));
                    }
                }
                continue;
            }
            match st.body.next().await {
                Some(Ok(chunk)) => match st.parser.push(&chunk) {
                    Ok(evs) => st.events.extend(evs),
                    Err(m) => {
                        st.failed = true;
                        let e = LlmError::malformed(st.provider.clone(), m);
                        return Some((Err(e), st));
                    }
                },
                Some(Err(e)) => {
                    st.failed = true;
                    let err = if e.is_timeout() {
                        LlmError::Timeout {
                            provider: st.provider.clone(),
                        }
                    } else {
                        LlmError::Connect {
                            provider: st.provider.clone(),
                            message: format!("stream interrupted: {e}"),
                        }
                    };
                    return Some((Err(err), st));
                }
                None => {
                    if let Some(ev) = st.parser.finish() {
                        st.events.push_back(ev);
                        continue;
                    }
                    st.failed = true;
                    let e = LlmError::malformed(
                        st.provider.clone(),
                        "the event stream ended before the answer was complete",
                    );
                    return Some((Err(e), st));
                }
            }
        }
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_across_chunks_and_crlf() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: message_start\r\nda").unwrap().is_empty());
        let evs = p
            .push(b"ta: {\"a\":1}\r\n\r\n: comment\n\ndata: x\ndata: y\n\n")
            .unwrap();
        assert_eq!(
            evs,
            vec![
                SseEvent {
                    event: Some("message_start".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: None,
                    data: "x\ny".into()
                }
            ]
        );
    }

    #[test]
    fn unterminated_last_event_is_kept_at_end() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: [DONE]").unwrap().is_empty());
        assert_eq!(p.finish().unwrap().data, "[DONE]");
    }

    #[test]
    fn oversized_event_is_refused() {
        let mut p = SseParser::default();
        let big = vec![b'a'; MAX_EVENT_BYTES + 1];
        assert!(p.push(&big).is_err());
    }
}
