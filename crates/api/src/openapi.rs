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
#[allow(
    dead_code,
    reason = "describes the error JSON for the OpenAPI document only"
)]
struct ErrorResponse {
    error: ErrorBody,
}

#[derive(ToSchema)]
#[allow(
    dead_code,
    reason = "describes the error JSON for the OpenAPI document only"
)]
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
#[allow(
    dead_code,
    reason = "describes the error JSON for the OpenAPI document only"
)]
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
        add(
            "400",
            "malformed JSON, wrong Content-Type or body too large",
        );
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn operations() -> Vec<(String, Value)> {
        let doc = serde_json::to_value(document()).unwrap();
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                out.push((format!("{} {path}", method.to_uppercase()), op.clone()));
            }
        }
        assert!(out.len() > 40, "{} operations", out.len());
        out
    }

    fn documents(op: &Value, status: &str) -> bool {
        op["responses"].get(status).is_some()
    }

    #[test]
    fn every_authenticated_operation_documents_401_and_429() {
        for (name, op) in operations() {
            if op["security"].as_array().is_some_and(|s| !s.is_empty()) {
                assert!(documents(&op, "401"), "{name} lacks 401");
                assert!(documents(&op, "429"), "{name} lacks 429");
            }
        }
    }

    #[test]
    fn credential_endpoints_document_their_per_address_429() {
        for (name, op) in operations() {
            if ["register", "login", "refresh"]
                .iter()
                .any(|e| name == format!("POST /api/v1/auth/{e}"))
            {
                assert!(documents(&op, "429"), "{name} lacks 429");
            }
        }
    }

    #[test]
    fn operations_taking_a_body_or_a_query_document_400_and_422() {
        for (name, op) in operations() {
            let query = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
            if op.get("requestBody").is_some() {
                assert!(documents(&op, "400"), "{name} lacks 400");
                assert!(documents(&op, "422"), "{name} lacks 422");
            }
            if query {
                assert!(documents(&op, "400"), "{name} lacks 400");
            }
        }
    }

    #[test]
    fn every_error_answer_is_described_by_the_error_body() {
        let doc = serde_json::to_value(document()).unwrap();
        let body = &doc["components"]["schemas"]["ErrorResponse"];
        assert_eq!(body["required"], serde_json::json!(["error"]), "{body}");
        for (name, op) in operations() {
            for (status, response) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"];
                    assert_eq!(
                        schema["$ref"], "#/components/schemas/ErrorResponse",
                        "{name} {status}: {response}"
                    );
                }
            }
        }
    }

    #[test]
    fn node_outputs_and_execution_results_may_be_any_json_value() {
        let doc = serde_json::to_value(document()).unwrap();
        let schemas = &doc["components"]["schemas"];
        for (schema, field) in [
            ("NodeRunResponse", "output"),
            ("ExecutionResponse", "result"),
        ] {
            let f = &schemas[schema]["properties"][field];
            assert!(f.is_object(), "{schema}.{field} missing");
            assert!(f.get("type").is_none(), "{schema}.{field} is typed: {f}");
        }
        let run_output = &schemas["RunResponse"]["properties"]["output"]["type"];
        assert_eq!(*run_output, serde_json::json!(["object", "null"]));
    }
}
