//! The one signature verifier for the HTTP API: app lookup, `auth_key`, a timestamp within
//! the window, `auth_version`, and the HMAC of `METHOD\nPATH\nQUERY`, compared in constant
//! time — all before a byte of the body is read, since the signed query carries `body_md5`.
//! Only then is the body read (bounded in size here, in time and node-wide bytes by
//! [`crate::http::body_guard`]) and its MD5 compared, so an unsigned caller never makes the
//! server hold its body.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::web::{self, Bytes};
use actix_web::HttpRequest;
use bellhop_protocol::signing;
use futures_util::StreamExt;

use crate::apps::App;
use crate::http::ApiError;
use crate::state::ServerState;

/// How far `auth_timestamp` may be from the server's clock, either way.
pub const TIMESTAMP_WINDOW_SECS: i64 = 600;
/// Largest request body read; per-event limits are checked after parsing.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A verified request: the app it is for, its decoded query, and its body.
pub struct Signed {
    pub app: Arc<App>,
    pub query: Vec<(String, String)>,
    pub body: Bytes,
}

impl Signed {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn read_body(req: &HttpRequest, mut payload: web::Payload) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge(format!(
            "request body exceeds {MAX_BODY_BYTES} bytes"
        )));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("cannot read body: {e}")))?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge(format!(
                "request body exceeds {MAX_BODY_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Verifies the request for the app in its path and returns it with its body.
pub async fn verify(
    state: &ServerState,
    req: &HttpRequest,
    app_id: &str,
    payload: web::Payload,
) -> Result<Signed, ApiError> {
    let app = state
        .apps
        .by_id(app_id)
        .ok_or_else(|| ApiError::NotFound(format!("Unknown app {app_id:?}")))?;
    let query = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|_| ApiError::BadRequest("query string is not valid URL encoding".into()))?
        .into_inner();
    let mut signed = Signed {
        app,
        query,
        body: Bytes::new(),
    };
    check_query(&signed, req.method().as_str(), req.path(), now_secs())?;
    if !signed.app.enabled {
        return Err(ApiError::Forbidden("Application disabled"));
    }
    signed.body = read_body(req, payload).await?;
    check_body(&signed)?;
    Ok(signed)
}

#[cfg(test)]
fn check(signed: &Signed, method: &str, path: &str, now: i64) -> Result<(), ApiError> {
    check_query(signed, method, path, now)?;
    check_body(signed)
}

/// The body must be the one the signed query's `body_md5` names.
fn check_body(signed: &Signed) -> Result<(), ApiError> {
    let md5 = match signed.param("body_md5") {
        Some(md5) => md5,
        None if signed.body.is_empty() => return Ok(()),
        None => return Err(ApiError::Unauthorized("Missing body_md5 parameter".into())),
    };
    if md5 != signing::body_md5(&signed.body) {
        return Err(ApiError::Unauthorized(
            "body_md5 does not match the body".into(),
        ));
    }
    Ok(())
}

/// Everything that can be checked from the request line alone.
fn check_query(signed: &Signed, method: &str, path: &str, now: i64) -> Result<(), ApiError> {
    let missing = |p: &str| ApiError::Unauthorized(format!("Missing {p} parameter"));
    let key = signed
        .param("auth_key")
        .ok_or_else(|| missing("auth_key"))?;
    let ts = signed
        .param("auth_timestamp")
        .ok_or_else(|| missing("auth_timestamp"))?;
    let version = signed
        .param("auth_version")
        .ok_or_else(|| missing("auth_version"))?;
    let signature = signed
        .param("auth_signature")
        .ok_or_else(|| missing("auth_signature"))?;
    if key != signed.app.key.as_str() {
        return Err(ApiError::Unauthorized("Unknown auth_key".into()));
    }
    if version != "1.0" {
        return Err(ApiError::Unauthorized(format!(
            "Unsupported auth_version {version:?}; expected 1.0"
        )));
    }
    let ts: i64 = ts.parse().map_err(|_| {
        ApiError::Unauthorized("auth_timestamp must be a Unix time in seconds".into())
    })?;
    if now.abs_diff(ts) > TIMESTAMP_WINDOW_SECS.unsigned_abs() {
        return Err(ApiError::Unauthorized(format!(
            "Timestamp expired: Given timestamp ({ts}) not within {TIMESTAMP_WINDOW_SECS}s of server time ({now})"
        )));
    }
    let to_sign = signing::api_string_to_sign(
        method,
        path,
        signed.query.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    if !signing::verify_hex(&signed.app.secrets, to_sign.as_bytes(), signature) {
        return Err(ApiError::Unauthorized(format!(
            "Invalid signature: you should have sent HmacSHA256Hex({to_sign:?}, your_secret_key)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AppConfig;

    fn app() -> Arc<App> {
        Arc::new(
            App::from_config(&AppConfig::new(
                "3",
                "278d425bdf160c739803",
                "7ad3773142a6692b25b8",
            ))
            .unwrap(),
        )
    }

    fn signed(query: &[(&str, &str)], body: &'static [u8]) -> Signed {
        Signed {
            app: app(),
            query: query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Bytes::from_static(body),
        }
    }

    const BODY: &[u8] = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;

    fn docs_query(sig: &'static str) -> Vec<(&'static str, &'static str)> {
        vec![
            ("auth_key", "278d425bdf160c739803"),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
            ("auth_signature", sig),
        ]
    }

    const SIG: &str = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";

    #[test]
    fn accepts_the_docs_example_inside_the_window() {
        let s = signed(&docs_query(SIG), BODY);
        assert!(check(&s, "POST", "/apps/3/events", 1353088179 + 600).is_ok());
    }

    #[test]
    fn extreme_timestamps_are_refused_not_panics() {
        let mut q = docs_query(SIG);
        q[1].1 = "-9223372036854775808";
        let err = check(&signed(&q, BODY), "POST", "/apps/3/events", 1353088179).unwrap_err();
        assert!(err.to_string().starts_with("Timestamp expired"), "{err}");
    }

    #[test]
    fn refuses_what_pusher_refuses() {
        let s = signed(&docs_query(SIG), BODY);
        let err = check(&s, "POST", "/apps/3/events", 1353088179 + 601).unwrap_err();
        assert!(err.to_string().starts_with("Timestamp expired"), "{err}");
        let err = check(&s, "POST", "/apps/4/events", 1353088179).unwrap_err();
        assert!(err.to_string().starts_with("Invalid signature"), "{err}");
        let bad = signed(&docs_query(SIG), b"{}");
        let err = check(&bad, "POST", "/apps/3/events", 1353088179).unwrap_err();
        assert!(err.to_string().contains("body_md5"), "{err}");
        let mut q = docs_query(SIG);
        q.retain(|(k, _)| *k != "auth_key");
        let err = check(&signed(&q, BODY), "POST", "/apps/3/events", 1353088179).unwrap_err();
        assert!(err.to_string().contains("auth_key"), "{err}");
        let mut q = docs_query(SIG);
        q[0].1 = "other";
        let err = check(&signed(&q, BODY), "POST", "/apps/3/events", 1353088179).unwrap_err();
        assert_eq!(err.to_string(), "Unknown auth_key");
    }
}
