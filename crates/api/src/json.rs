//! The JSON body extractor of every route: [`Json<T>`].
//!
//! It reads the body exactly as `web::Json` does (the app's `web::JsonConfig`: size limit,
//! content type, 400 on malformed JSON), then refuses — before any handler or store sees it —
//! a body holding the NUL character (U+0000) in any string or object key, anywhere: PostgreSQL
//! cannot store NUL in `text` nor `\u0000` in `jsonb`, so such a value could only ever fail
//! later, as a 500. The answer is 422 `validation_failed` with the JSON pointer of the first
//! offending value. Only then is the body deserialized into `T` (a type error is a 422 naming
//! the field, as before).
//!
//! Routes take `Json<T>`, never `web::Json<T>`; a unit test keeps it that way.

use crate::error::ApiError;
use actix_web::dev::Payload;
use actix_web::error::JsonPayloadError;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use gathering_domain::FieldProblem;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;

/// A JSON request body free of NUL characters, deserialized into `T`.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Json<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// What a refused NUL says.
pub const NUL_PROBLEM: &str = "must not contain the NUL character (U+0000)";

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        // Reading through `web::Json<Value>` applies the app's `JsonConfig` (limit, content
        // type and its error handler) exactly as before.
        let body = web::Json::<Value>::from_request(req, payload);
        Box::pin(async move {
            let web::Json(value) = body.await?;
            checked(value).map(Json).map_err(Into::into)
        })
    }
}

/// What every parsed JSON body goes through: a NUL anywhere is refused (422 naming it), then
/// the value is deserialized into `T` (a type error is a 422 naming the field). Routes that read
/// their body themselves (under their own size limit) call this too.
pub(crate) fn checked<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    if let Some(pointer) = find_nul(&value) {
        return Err(ApiError::validation(vec![FieldProblem::new(
            pointer,
            NUL_PROBLEM,
        )]));
    }
    T::deserialize(value).map_err(|e| crate::json_error(JsonPayloadError::Deserialize(e)))
}

/// An optional JSON body: `None` when the request has no body at all, else exactly
/// [`Json<T>`] (so a NUL or a malformed body is refused, never silently dropped — which
/// `Option<Json<T>>` would do, as actix turns any extraction error into `None`).
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

impl<T> OptionalJson<T> {
    pub fn into_inner(self) -> Option<T> {
        self.0
    }
}

/// Whether the request announces a body (a non-zero length, or a chunked one).
fn has_body(req: &HttpRequest) -> bool {
    let headers = req.headers();
    match headers.get(header::CONTENT_LENGTH) {
        Some(len) => len
            .to_str()
            .ok()
            .and_then(|l| l.trim().parse::<u64>().ok())
            .is_none_or(|l| l > 0),
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for OptionalJson<T> {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        if !has_body(req) {
            return Box::pin(async { Ok(OptionalJson(None)) });
        }
        let body = Json::<T>::from_request(req, payload);
        Box::pin(async move { body.await.map(|b| OptionalJson(Some(b.0))) })
    }
}

/// The JSON pointer (RFC 6901) of the first string or object key holding U+0000.
pub fn find_nul(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\0') => Some(String::new()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_nul(v).map(|rest| format!("/{i}{rest}"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                return Some(format!("/{}", escape_token(k)));
            }
            find_nul(v).map(|rest| format!("/{}{rest}", escape_token(k)))
        }),
        _ => None,
    }
}

/// A reference token of a JSON pointer: `~` → `~0`, `/` → `~1`.
fn escape_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// `true` when a percent-encoded URL part (path or query string) decodes to a NUL: `%00`.
pub fn encodes_nul(raw: &str) -> bool {
    raw.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0')
        || raw.contains('\0')
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;
    use serde::Deserialize;
    use serde_json::json;

    #[test]
    fn nul_is_found_in_strings_keys_and_nested_values_with_its_pointer() {
        assert_eq!(
            find_nul(&json!({"name": "a\u{0}b"})).as_deref(),
            Some("/name")
        );
        assert_eq!(
            find_nul(&json!({"nodes": [{"config": {"x": "ok"}}, {"config": {"y": ["\u{0}"]}}]}))
                .as_deref(),
            Some("/nodes/1/config/y/0")
        );
        assert_eq!(
            find_nul(&json!({"input": {"k\u{0}": 1}})).as_deref(),
            Some("/input/k\u{0}")
        );
        assert_eq!(
            find_nul(&json!({"a/b~c": "\u{0}"})).as_deref(),
            Some("/a~1b~0c")
        );
        assert_eq!(find_nul(&json!("\u{0}")).as_deref(), Some(""));
        assert_eq!(
            find_nul(&json!({"a": ["x", 1, null, {"b": "\\u0000"}]})),
            None
        );
    }

    #[test]
    fn percent_encoded_nul_is_recognised() {
        assert!(encodes_nul("name=a%00b"));
        assert!(encodes_nul("/api/v1/agents/%00"));
        assert!(!encodes_nul("limit=100&cursor=0190"));
        assert!(
            !encodes_nul("a=%2500"),
            "an encoded percent sign followed by 00 is not NUL"
        );
    }

    #[derive(Deserialize, Debug)]
    struct Body {
        name: String,
    }

    #[actix_web::test]
    async fn a_body_with_nul_is_refused_before_deserialization() {
        let (req, mut pl) = TestRequest::post()
            .insert_header(("content-type", "application/json"))
            .set_payload(r#"{"name": "a\u0000b"}"#)
            .to_http_parts();
        let err = Json::<Body>::from_request(&req, &mut pl).await.unwrap_err();
        let api = err.as_error::<ApiError>().expect("an ApiError");
        assert_eq!(api.status().as_u16(), 422);
        assert_eq!(api.code, "validation_failed");
        assert_eq!(api.details[0].field, "/name");

        let (req, mut pl) = TestRequest::post()
            .insert_header(("content-type", "application/json"))
            .set_payload(r#"{"name": "fine"}"#)
            .to_http_parts();
        let ok = Json::<Body>::from_request(&req, &mut pl).await.unwrap();
        assert_eq!(ok.name, "fine");
    }

    #[actix_web::test]
    async fn an_optional_body_is_none_only_when_absent() {
        let (req, mut pl) = TestRequest::post().to_http_parts();
        let none = OptionalJson::<Body>::from_request(&req, &mut pl)
            .await
            .unwrap();
        assert!(none.into_inner().is_none());
        let (req, mut pl) = TestRequest::post()
            .insert_header(("content-type", "application/json"))
            .set_payload(r#"{"name": "\u0000"}"#)
            .to_http_parts();
        assert!(
            OptionalJson::<Body>::from_request(&req, &mut pl)
                .await
                .is_err()
        );
        let (req, mut pl) = TestRequest::post()
            .insert_header(("content-type", "application/json"))
            .set_payload(r#"{"name": "n"}"#)
            .to_http_parts();
        let some = OptionalJson::<Body>::from_request(&req, &mut pl)
            .await
            .unwrap();
        assert_eq!(some.into_inner().map(|b| b.name).as_deref(), Some("n"));
    }

    /// By construction: no route reads a body with `web::Json`, which would let NUL through.
    #[test]
    fn every_route_uses_the_nul_refusing_extractor() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/routes");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                !text.contains("web::Json<") && !text.contains("web::Json("),
                "{} reads a body with web::Json; use crate::json::Json",
                path.display()
            );
            // actix turns any extraction error of an `Option<_>` into `None`: a refused body
            // would be silently ignored.
            assert!(
                !text.contains("Option<Json<"),
                "{} reads an optional body with Option<Json<_>>; use crate::json::OptionalJson",
                path.display()
            );
            checked += 1;
        }
        assert!(checked > 5);
    }
}
