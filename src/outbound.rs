//! What every request bellhop makes to someone else's server shares: the client settings, one
//! reading of `Retry-After` (seconds or an HTTP date), answers read only as far as they are
//! needed, errors that never carry a URL's credentials, and the exchange that tells a failure
//! before the request left (safe to retry) from one after (the other side may have acted).

use std::time::Duration;

use reqwest::header::HeaderMap;

/// The longest pause a `Retry-After` may ask for: a confused server cannot park a job for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A client with `timeout` for the whole exchange and at most 5 s to connect; no redirects
/// (a provider or receiver that moved is configured again, not followed blindly).
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        // unwrap: a client with these options always builds (rustls, no system config).
        .unwrap()
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3), capped at an hour.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let wait = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
            let ms = at.timestamp_millis() - chrono::Utc::now().timestamp_millis();
            Duration::from_millis(ms.max(0) as u64)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The error without the URL (whose query may carry credentials): the kind of failure is what
/// matters in a log or an attempt record.
pub fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "<target>");
    }
    s
}

/// At most `limit` bytes of an answer: the other side cannot make us buffer megabytes.
pub async fn read_prefix(mut resp: reqwest::Response, limit: usize) -> String {
    let mut buf = Vec::new();
    while buf.len() < limit {
        match resp.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk[..chunk.len().min(limit - buf.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The first `max` characters of `s`.
pub fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// An answer: status, headers, body (at most 64 KB of it).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

/// Why no answer came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoAnswer {
    /// Nothing reached the other side (the connection was refused or never made): safe to
    /// send again.
    NotSent(String),
    /// The request went out and the answer did not come back (a timeout, a cut connection):
    /// the other side may have acted on it.
    Unknown(String),
}

/// Sends `req` and reads its answer, telling a failure before the request left from one after.
pub async fn exchange(req: reqwest::RequestBuilder) -> Result<Answer, NoAnswer> {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => {
            return Err(NoAnswer::NotSent(format!(
                "could not connect: {}",
                without_url(&e)
            )))
        }
        Err(e) if e.is_timeout() => {
            return Err(NoAnswer::Unknown("no answer within the timeout".into()))
        }
        Err(e) => {
            return Err(NoAnswer::Unknown(format!(
                "the connection failed after the request was sent: {}",
                without_url(&e)
            )))
        }
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = read_prefix(resp, 64 * 1024).await;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn with(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        assert_eq!(retry_after(&with("30")), Some(Duration::from_secs(30)));
        assert_eq!(retry_after(&with(" 7 ")), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&with("999999")), Some(MAX_RETRY_AFTER));
        assert_eq!(
            retry_after(&with("Sun, 06 Nov 1994 08:49:37 GMT")),
            Some(Duration::ZERO),
            "a date in the past: now"
        );
        let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_str(&later).unwrap(),
        );
        let got = retry_after(&h).unwrap();
        assert!(
            got > Duration::from_secs(110) && got <= Duration::from_secs(120),
            "{got:?}"
        );
        assert_eq!(retry_after(&with("soon")), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn truncate_counts_characters() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("hi", 10), "hi");
    }
}
