//! The simulator's routes: the `/_sim` inspection endpoints, the token endpoint and Graph
//! (`/v1.0`, `/beta`), each behind the pipeline stages it goes through ([`crate::pipeline`]).
//! Anything else is an empty 404, as before any of Graph's own answers.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::Response;
use axum::routing::{any, get, post};
use axum::Router;
use tower::ServiceBuilder;

use crate::pipeline;
use crate::reply::empty;
use crate::{auth, graph, inspect, oidc, Shared};

/// Every route of the simulator, with its state.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    // Outermost first: the order in which a request meets the stages.
    let graph_stages = ServiceBuilder::new()
        .layer(from_fn_with_state(shared.clone(), pipeline::graph_request))
        .layer(from_fn_with_state(shared.clone(), pipeline::outage))
        .layer(from_fn_with_state(shared.clone(), pipeline::authenticate))
        .layer(from_fn_with_state(shared.clone(), pipeline::throttle))
        .layer(from_fn_with_state(shared.clone(), pipeline::faults));
    let mut graph_routes = Router::new();
    for version in ["v1.0", "beta"] {
        // Graph's own path grammar takes over below the version (see `graph::paths`).
        graph_routes = graph_routes
            .route(&format!("/{version}"), any(graph::handle))
            .route(&format!("/{version}/"), any(graph::handle))
            .route(&format!("/{version}/{{*path}}"), any(graph::handle));
    }
    let graph_routes = graph_routes.route_layer(graph_stages);

    let token_stages = ServiceBuilder::new()
        .layer(from_fn_with_state(shared.clone(), pipeline::token_request))
        .layer(from_fn_with_state(shared.clone(), pipeline::outage));
    let token_route = Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(auth::token))
        .route_layer(token_stages);

    // Sign-in (OpenID Connect) for web apps such as mfa-reset's console: not throttled or
    // faulted, like Entra's sign-in pages are not part of Graph's budget.
    let oidc_routes = Router::new()
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(oidc::discovery),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(oidc::keys))
        .route(
            "/{tenant}/oauth2/v2.0/authorize",
            get(oidc::authorize_form).post(oidc::authorize_submit),
        );

    Router::new()
        .nest("/_sim", inspect::routes())
        .merge(oidc_routes)
        .merge(graph_routes)
        .merge(token_route)
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .with_state(shared)
}

async fn not_found() -> Response {
    empty(StatusCode::NOT_FOUND)
}
