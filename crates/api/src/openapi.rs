//! The OpenAPI document of every endpoint (`/api/v1/openapi.json`) and the docs page (`/docs`).

use crate::routes;
use actix_web::HttpResponse;
use std::sync::OnceLock;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
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
    doc
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
