//! The OpenAPI document of every endpoint (`/api/v1/openapi.json`) and the docs page (`/docs`).

use crate::routes;
use actix_web::HttpResponse;
use std::sync::OnceLock;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{OpenApi, ToSchema};
use utoipa_scalar::{Scalar, Servable};

#[derive(OpenApi)]
#[openapi(
    info(title = "GatheRing API", description = "Collaborative multi-agent AI service"),
    paths(
        routes::health::live,
        routes::health::ready,
        routes::auth::register,
        routes::auth::login,
        routes::auth::refresh,
        routes::auth::logout,
        routes::auth::me,
        routes::auth::audit,
        routes::projects::create,
        routes::projects::list,
        routes::projects::get,
        routes::projects::file,
        routes::projects::tree,
    ),
    components(schemas(ErrorResponse, ErrorBody, FieldProblemSchema)),
    tags((name = "health"), (name = "auth"), (name = "admin"), (name = "projects"))
)]
struct CoreDoc;

/// The whole document: the core plus every route module's own document. Paths that modules
/// declare relative to the API root are prefixed with `/api/v1`.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = CoreDoc::openapi();
    let parts: Vec<utoipa::openapi::OpenApi> = vec![
        routes::tools::openapi(),
        routes::notifications::openapi(),
        routes::agents::openapi(),
        routes::circles::openapi(),
        routes::settings::openapi(),
        routes::pipelines::openapi(),
        routes::schedules::openapi(),
        routes::ws::openapi(),
    ];
    for part in parts {
        doc.merge(part);
    }
    let paths = std::mem::take(&mut doc.paths.paths);
    for (path, item) in paths {
        let path = if path.starts_with("/api/v1") || path.starts_with("/health") {
            path
        } else {
            format!("/api/v1{path}")
        };
        doc.paths.paths.insert(path, item);
    }
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("PASETO v4.local")
                .build(),
        ),
    );
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            add_common_errors(op);
        }
    }
    doc
}

/// The body of every error answer (`crate::error`).
#[derive(ToSchema)]
#[allow(dead_code, reason = "describes the error JSON for the OpenAPI document only")]
struct ErrorResponse {
    error: ErrorBody,
}

#[derive(ToSchema)]
#[allow(dead_code, reason = "describes the error JSON for the OpenAPI document only")]
struct ErrorBody {
    /// Stable machine-readable code, e.g. `validation_failed`.
    code: String,
    message: String,
    /// Field-level problems of a 422; empty otherwise.
    details: Vec<FieldProblemSchema>,
    request_id: Option<String>,
}

#[derive(ToSchema)]
#[schema(as = FieldProblem)]
#[allow(dead_code, reason = "describes the error JSON for the OpenAPI document only")]
struct FieldProblemSchema {
    /// JSON pointer of the offending value.
    field: String,
    problem: String,
}

/// The error answers every operation of a kind can give, whatever its handler: the annotations
/// list the handler's own outcomes, this adds what the shared extractors and middleware answer
/// (so a client, and the API fuzzer, find every status in the document), and gives each error
/// response the error body's schema.
fn add_common_errors(op: &mut Operation) {
    let authenticated = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let params = op.parameters.as_deref().unwrap_or_default();
    let has_query = params.iter().any(|p| match p {
        RefOr::T(p) => p.parameter_in == ParameterIn::Query,
        RefOr::Ref(_) => false,
    });
    let has_body = op.request_body.is_some();
    let mut add = |status: &str, description: &str| {
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::T(ResponseBuilder::new().description(description).build()));
    };
    if authenticated {
        add("401", "missing, malformed, expired or revoked bearer token");
        add("429", "rate limited (Retry-After)");
    }
    if has_body {
        add("400", "malformed JSON, wrong Content-Type or body too large");
        add("422", "validation_failed");
    }
    if has_query {
        add("400", "unparseable query parameter");
    }
    for (status, response) in op.responses.responses.iter_mut() {
        let is_error = status.starts_with('4') || status.starts_with('5');
        if let (true, RefOr::T(response)) = (is_error, response)
            && response.content.is_empty()
        {
            response.content.insert(
                "application/json".to_owned(),
                RefOr::T(
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorResponse")))
                        .build(),
                ),
            );
        }
    }
}

fn cached() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| serde_json::to_string(&document()).unwrap_or_else(|_| "{}".to_owned()))
}

pub async fn json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(cached())
}

pub fn docs() -> Scalar<utoipa::openapi::OpenApi> {
    Scalar::with_url("/docs", document())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc_json() -> serde_json::Value {
        serde_json::to_value(document()).unwrap()
    }

    #[test]
    fn dump() {
        let d = doc_json();
        for name in ["RunResponse", "NodeRunResponse", "ExecutionResponse"] {
            println!("{name}: {}", d["components"]["schemas"][name]);
        }
    }
}
