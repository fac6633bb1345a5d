//! The reviewer page: one HTML file, one script, one style sheet, compiled into the binary (no
//! CDN; it works offline). The script is served from this origin only, so the
//! Content-Security-Policy needs no `unsafe-inline`.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::problem::Problem;

const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const APP_CSS: &str = include_str!("../../web/app.css");

pub async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX_HTML).into_response()
}

pub async fn asset(Path(file): Path<String>) -> Result<Response, Problem> {
    let (media_type, body) = match file.as_str() {
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "app.css" => ("text/css; charset=utf-8", APP_CSS),
        _ => return Err(Problem::not_found(format!("no asset `{file}`"))),
    };
    Ok(([(header::CONTENT_TYPE, media_type)], body).into_response())
}
