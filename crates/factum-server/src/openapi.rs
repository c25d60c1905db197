//! The API's routes and their OpenAPI description, declared together: each handler carries its
//! `#[utoipa::path]` (method, path, parameters, bodies, answers) and the router is built from
//! those, so the description served at `/openapi.json` cannot leave a route out.

use axum::body::Bytes;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder, Schema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ErrorBody;
use crate::{AppState, Config, admin, api, dashboard, dcb, groups};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Factum",
        description = "The HTTP API of a Factum event store: append to streams with an expected \
            revision, read streams and the log of every event ($all) in pages, follow them live \
            as server-sent events, and see processors and projections with their lag. Every \
            error answers with `{\"error\": \"…\"}` naming the input at fault, and writes nothing.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "streams", description = "Streams: append, read, follow, delete, metadata"),
        (name = "all", description = "$all: every event in commit order, for consumers that keep their own position"),
        (name = "consumers", description = "Event processors and projections, with their lag"),
        (name = "dcb", description = "Dynamic consistency boundaries: events with tags, reads by a query of types and tags, appends conditional on no matching event since a position"),
        (name = "subscriptions", description = "Persistent subscriptions: consumer groups kept by the server, with acks, retries, parking and replay"),
        (name = "server", description = "The server itself"),
    ),
    components(schemas(ErrorBody)),
    security(("token" = [])),
    modifiers(&BearerToken),
)]
struct ApiDoc;

/// Declares the `token` scheme the description's security requirements name.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "token",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "A token from the server's auth file (`factum serve --auth`), with \
                             read, write or admin rights on stream prefixes",
                        ))
                        .build(),
                ),
            );
    }
}

/// Every route of the API with its description.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(api::index))
        .routes(routes!(api::openapi))
        .routes(routes!(api::health))
        .routes(routes!(api::metrics))
        .routes(routes!(api::list_streams))
        .routes(routes!(api::read_stream, api::append, api::delete_stream))
        .routes(routes!(api::get_metadata, api::put_metadata))
        .routes(routes!(api::subscribe_stream))
        .routes(routes!(api::read_all))
        .routes(routes!(api::subscribe_all))
        .routes(routes!(api::processors))
        .routes(routes!(api::projections))
        .routes(routes!(dcb::read))
        .routes(routes!(dcb::append))
        .routes(routes!(dcb::subscribe))
        .routes(routes!(groups::list))
        .routes(routes!(
            groups::create,
            groups::update,
            groups::delete,
            groups::describe
        ))
        .routes(routes!(groups::messages))
        .routes(routes!(groups::ack))
        .routes(routes!(groups::nack))
        .routes(routes!(groups::replay_parked))
        .routes(routes!(admin::scavenge))
        .routes(routes!(admin::forget))
        .routes(routes!(dashboard::stats))
        .routes(routes!(dashboard::search))
        .routes(routes!(dashboard::replay_dead_letters))
        .routes(routes!(dashboard::rebuild_projection))
}

/// The description, rendered once, and the endpoint index at `/` made from it.
pub(crate) struct Docs {
    /// `/openapi.json`.
    pub(crate) openapi: Bytes,
    /// `/` for a client that is not a browser.
    pub(crate) index: Bytes,
}

impl Docs {
    pub(crate) fn new(openapi: &OpenApi) -> Docs {
        let mut endpoints = serde_json::Map::new();
        for (path, item) in &openapi.paths.paths {
            for (method, operation) in operations(item) {
                endpoints.insert(
                    format!("{method} {path}"),
                    operation.summary.clone().unwrap_or_default().into(),
                );
            }
        }
        let index = serde_json::json!({
            "name": "factum",
            "version": env!("CARGO_PKG_VERSION"),
            "openapi": "/openapi.json",
            "endpoints": endpoints,
        });
        Docs {
            openapi: Bytes::from(openapi.to_pretty_json().unwrap_or_default()),
            index: Bytes::from(index.to_string()),
        }
    }
}

/// Completes the description with what depends on the server's settings and what every
/// operation shares: the page limit, 400 for bad input everywhere, and 401 where a token is
/// needed — or, on a server without tokens, no security at all.
pub(crate) fn complete(openapi: &mut OpenApi, config: &Config) {
    let open = |op: &Operation| {
        op.security
            .as_ref()
            .is_some_and(|s| s.iter().all(|r| *r == SecurityRequirement::default()))
    };
    let tokens = config.auth.is_some();
    if !tokens {
        openapi.security = None;
        if let Some(components) = &mut openapi.components {
            components.security_schemes.clear();
        }
    }
    // The limit of a DCB read's body, as the query parameters' limit above.
    if let Some(components) = &mut openapi.components
        && let Some(RefOr::T(Schema::Object(read))) = components.schemas.get_mut("ReadRequest")
        && let Some(RefOr::T(Schema::Object(limit))) = read.properties.get_mut("limit")
    {
        limit.maximum = Some((config.max_page as f64).into());
        limit.description = Some(format!(
            "How many events at most (default 100); at most {} on this server.",
            config.max_page
        ));
    }
    for item in openapi.paths.paths.values_mut() {
        for operation in operations_mut(item) {
            for parameter in operation.parameters.iter_mut().flatten() {
                if parameter.name == "limit"
                    && let Some(RefOr::T(Schema::Object(schema))) = &mut parameter.schema
                {
                    schema.maximum = Some((config.max_page as f64).into());
                    schema.description =
                        Some(format!("At most {} on this server.", config.max_page));
                }
            }
            let needs_token = tokens && !open(operation);
            if !tokens {
                operation.security = None;
            }
            let responses = &mut operation.responses.responses;
            responses.entry("400".into()).or_insert_with(|| {
                error_response(
                    "Bad input (a parameter, a header or the body); the message names it and \
                     nothing was written",
                )
            });
            if needs_token {
                responses.entry("401".into()).or_insert_with(|| {
                    error_response("No bearer token, or one the server does not know")
                });
            }
        }
    }
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

fn operations(item: &PathItem) -> impl Iterator<Item = (&'static str, &Operation)> {
    [
        ("GET", &item.get),
        ("PUT", &item.put),
        ("POST", &item.post),
        ("DELETE", &item.delete),
    ]
    .into_iter()
    .filter_map(|(method, op)| op.as_ref().map(|op| (method, op)))
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}
