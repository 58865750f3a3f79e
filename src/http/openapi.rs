//! The city node's public HTTP API as an OpenAPI 3.1 document, served at
//! `GET /openapi.json`.
//!
//! The document is generated from the code: each handler's `#[utoipa::path]` annotation
//! (method, path, parameters, every status it answers and the body of each) and the
//! `ToSchema` derives of the request and answer types. [`CommonAnswers`] adds the answers
//! every route may give before its handler runs (a malformed request, a slow head, an
//! over-long target or header section, a node at one of its connection bounds), all with
//! the error body of [`super::error`].
//!
//! [`city_endpoints`] is the one list of the public routes a city registers; the node
//! registers exactly these, and the tests check that the document describes exactly these,
//! so a route cannot be added without its description. The node-to-node `/internal/…`
//! routes are not part of it.

use std::sync::OnceLock;

use actix_web::http::Method;
use actix_web::{HttpResponse, web};
use utoipa::OpenApi;
use utoipa::openapi::path::Operation;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

use super::common::{self, Endpoint, register};
use super::{city_api, log_api};

/// The path the document is served at.
pub const PATH: &str = "/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "citychain city node",
        description = "The public HTTP API of a citychain city node (docs/API.md). Every error answer has the body `{\"error\":{\"code\",\"message\"}}`."
    ),
    paths(
        city_api::submit,
        city_api::get_tx,
        city_api::get_batch,
        city_api::get_object,
        city_api::nodes,
        city_api::all_rewards,
        city_api::node_rewards,
        city_api::inject_panic,
        log_api::head,
        log_api::status,
        log_api::inclusion,
        log_api::consistency,
        common::healthz,
        common::readyz,
        common::metrics_text,
        common::actors,
        common::uplink,
        document,
    ),
    modifiers(&CommonAnswers),
    tags(
        (name = "transactions", description = "Submit and read transactions, batches and objects."),
        (name = "storage", description = "The storage nodes the city writes to, and their rewards."),
        (name = "log", description = "The city's immutable log: signed heads and Merkle proofs."),
        (name = "federation", description = "The link to the continent."),
        (name = "operations", description = "Health, readiness, metrics, the supervision tree, this document."),
    )
)]
pub struct CityApi;

/// The answers every route may give before its handler runs (see [`super::server`] and
/// [`super::limits`]), added to each operation that does not document that status itself.
pub struct CommonAnswers;

/// Status and description of each answer [`CommonAnswers`] adds.
const COMMON: &[(&str, &str)] = &[
    (
        "400",
        "`bad_request`: not valid HTTP/1.1 (request line, headers or framing).",
    ),
    (
        "408",
        "`request_timeout`: the request head did not arrive within `[limits] request_head_timeout`.",
    ),
    ("414", "`uri_too_long`: the request target is over 8 KiB."),
    (
        "431",
        "`headers_too_large`: the header section is over 16 KiB.",
    ),
    (
        "503",
        "`overloaded` (with `Retry-After`): the address holds as many connections as one peer may.",
    ),
];

impl utoipa::Modify for CommonAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.post].into_iter().flatten() {
                add_common(op);
            }
        }
    }
}

fn add_common(op: &mut Operation) {
    for (status, description) in COMMON {
        op.responses
            .responses
            .entry((*status).to_string())
            .or_insert_with(|| {
                RefOr::T(
                    ResponseBuilder::new()
                        .description(*description)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("ErrorReply")))
                                .build(),
                        )
                        .build(),
                )
            });
    }
}

/// The document as JSON, built once.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        CityApi::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

/// This document: the city's public HTTP API.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of the city's public API.", body = Object, content_type = "application/json")))]
pub(crate) async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(json())
}

/// `GET /openapi.json`.
pub fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint::new(Method::GET, PATH, document)]
}

/// Every public route a city node registers: its own, its log's, the ones every role
/// serves, the supervision tree, the uplink and this document.
pub fn city_endpoints() -> Vec<Endpoint> {
    [
        city_api::endpoints(),
        log_api::endpoints(),
        common::endpoints(),
        common::actor_endpoints(),
        common::uplink_endpoints(),
        endpoints(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Registers [`city_endpoints`]. Expects the `app_data` each group names.
pub fn configure_city(cfg: &mut web::ServiceConfig) {
    register(cfg, city_endpoints());
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn document_value() -> Value {
        serde_json::from_str(json()).expect("the document is JSON")
    }

    /// `(METHOD, path)` of every operation of the document.
    fn operations(doc: &Value) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("a path item").keys() {
                if ["get", "post", "put", "delete", "patch", "head", "options"]
                    .contains(&method.as_str())
                {
                    out.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn the_document_is_openapi_3_and_describes_exactly_the_routes_the_city_registers() {
        let doc = document_value();
        let version = doc["openapi"].as_str().expect("an openapi version");
        assert!(version.starts_with("3."), "openapi {version}");
        let registered: BTreeSet<(String, String)> = city_endpoints()
            .iter()
            .map(|e| (e.method.to_string(), e.path.to_string()))
            .collect();
        let documented = operations(&doc);
        assert_eq!(
            documented,
            registered,
            "documented but not registered: {:?}; registered but not documented: {:?}",
            documented.difference(&registered).collect::<Vec<_>>(),
            registered.difference(&documented).collect::<Vec<_>>(),
        );
        assert!(
            registered
                .iter()
                .all(|(_, path)| !path.starts_with("/internal/")),
            "internal routes are not part of the public API"
        );
    }

    #[test]
    fn every_answer_has_a_json_body_and_every_error_the_error_shape() {
        let doc = document_value();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().expect("responses");
                for status in ["400", "408", "414", "431", "503"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} lacks {status}"
                    );
                }
                for (status, response) in responses {
                    let content = response["content"]
                        .as_object()
                        .unwrap_or_else(|| panic!("{method} {path} {status} has no body"));
                    if path == "/metrics" && status == "200" {
                        assert!(content.contains_key("text/plain"), "{content:?}");
                        continue;
                    }
                    let schema = &content
                        .get("application/json")
                        .unwrap_or_else(|| panic!("{method} {path} {status}: not JSON"))["schema"];
                    if status.starts_with('4') || status.starts_with('5') {
                        let text = schema.to_string();
                        assert!(
                            text.contains("#/components/schemas/ErrorReply")
                                || text.contains("#/components/schemas/OrError"),
                            "{method} {path} {status}: {text}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_error_schema_is_the_error_body_and_nothing_else() {
        let doc = document_value();
        let schemas = &doc["components"]["schemas"];
        let reply = &schemas["ErrorReply"];
        assert_eq!(reply["additionalProperties"], Value::Bool(false), "{reply}");
        assert_eq!(reply["required"], serde_json::json!(["error"]));
        let body = &schemas["ErrorBody"];
        assert_eq!(body["required"], serde_json::json!(["code", "message"]));
        let sample = serde_json::to_value(super::super::ApiError::not_found("x").body()).unwrap();
        assert_eq!(
            sample,
            serde_json::json!({"error":{"code":"not_found","message":"x"}})
        );
    }
}
