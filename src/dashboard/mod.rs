//! The dashboard: one page and its assets, compiled into the binary so it
//! works offline. The page reads `/-/streams`, `/-/api/aggregates` and the
//! live feed `/-/api/live`; this module only serves the files.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");
const LOGIN: &str = include_str!("login.html");

pub async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response()
}

pub async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

pub async fn app_css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}

/// The login page, served at `/-/` while hydrant has keys and the browser no
/// session.
pub async fn login() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], LOGIN).into_response()
}
