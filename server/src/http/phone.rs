//! The built-in web phone at `/phone`: a page, its script and style, and the SIP.js bundle
//! (vendored by `scripts/vendor-sipjs.sh`), all compiled into the binary so running the server
//! needs no Node.js. The page signs in to the API, fetches SIP credentials and registers over
//! `/sip`. Not part of the OpenAPI document: these are files, not API.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::AppState;

/// Only the page's own files run; media may come from the peer connection's streams.
const CSP: &str = "default-src 'self'; connect-src 'self'; media-src 'self' blob: mediastream:; \
                   img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// The files: path, content type, contents.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "/phone/",
        "text/html; charset=utf-8",
        include_bytes!("../../static/phone/index.html"),
    ),
    (
        "/phone/phone.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/phone/phone.js"),
    ),
    (
        "/phone/phone.css",
        "text/css; charset=utf-8",
        include_bytes!("../../static/phone/phone.css"),
    ),
    (
        "/phone/vendor/sip-0.21.2.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/phone/vendor/sip-0.21.2.min.js"),
    ),
    (
        "/phone/vendor/LICENSE-sip.js.md",
        "text/markdown; charset=utf-8",
        include_bytes!("../../static/phone/vendor/LICENSE-sip.js.md"),
    ),
];

/// The phone's routes.
pub(super) fn routes() -> Router<AppState> {
    let mut router =
        Router::new().route("/phone", get(|| async { Redirect::permanent("/phone/") }));
    for &(path, content_type, body) in FILES {
        router = router.route(path, get(move || async move { file(content_type, body) }));
    }
    router
}

fn file(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Revalidated on every load, so an upgraded server serves its own phone.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}
