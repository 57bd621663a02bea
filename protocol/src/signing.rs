//! Every HMAC-SHA256 signature Pusher defines: channel authorisation, user sign-in, the signed
//! HTTP API, and webhooks. Verification always compares in constant time (through
//! `Mac::verify_slice`), and accepts any of several secrets so a secret can be rotated.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::ids::{AppKey, Secret, SocketId};

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &Secret) -> HmacSha256 {
    // unwrap: HMAC accepts keys of any length.
    HmacSha256::new_from_slice(secret.expose().as_bytes()).unwrap()
}

/// Lower-case hex HMAC-SHA256 of `message` under `secret`.
pub fn hmac_hex(secret: &Secret, message: &[u8]) -> String {
    let mut m = mac(secret);
    m.update(message);
    hex::encode(m.finalize().into_bytes())
}

/// Whether `signature_hex` is the HMAC of `message` under any of `secrets`, in constant time.
pub fn verify_hex<'a>(
    secrets: impl IntoIterator<Item = &'a Secret>,
    message: &[u8],
    signature_hex: &str,
) -> bool {
    let Ok(sig) = hex::decode(signature_hex) else {
        return false;
    };
    secrets.into_iter().any(|secret| {
        let mut m = mac(secret);
        m.update(message);
        m.verify_slice(&sig).is_ok()
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("auth must be \"<key>:<signature>\"")]
    Malformed,
    #[error("auth key does not match the app key")]
    WrongKey,
    #[error("invalid signature")]
    BadSignature,
}

fn channel_string(socket_id: SocketId, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(d) => format!("{socket_id}:{channel}:{d}"),
        None => format!("{socket_id}:{channel}"),
    }
}

fn user_string(socket_id: SocketId, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// The `auth` value a backend returns for a private or presence subscription.
pub fn sign_channel(
    key: &AppKey,
    secret: &Secret,
    socket_id: SocketId,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    let sig = hmac_hex(
        secret,
        channel_string(socket_id, channel, channel_data).as_bytes(),
    );
    format!("{key}:{sig}")
}

fn verify_key_and_sig<'a>(
    key: &AppKey,
    secrets: impl IntoIterator<Item = &'a Secret>,
    message: &str,
    auth: &str,
) -> Result<(), AuthError> {
    let (auth_key, sig) = auth.split_once(':').ok_or(AuthError::Malformed)?;
    if auth_key != key.as_str() {
        return Err(AuthError::WrongKey);
    }
    if verify_hex(secrets, message.as_bytes(), sig) {
        Ok(())
    } else {
        Err(AuthError::BadSignature)
    }
}

/// Checks a subscription's `auth` against `socket_id:channel[:channel_data]`.
pub fn verify_channel<'a>(
    key: &AppKey,
    secrets: impl IntoIterator<Item = &'a Secret>,
    socket_id: SocketId,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> Result<(), AuthError> {
    verify_key_and_sig(
        key,
        secrets,
        &channel_string(socket_id, channel, channel_data),
        auth,
    )
}

/// The `auth` value a backend returns for `pusher:signin`.
pub fn sign_user(key: &AppKey, secret: &Secret, socket_id: SocketId, user_data: &str) -> String {
    let sig = hmac_hex(secret, user_string(socket_id, user_data).as_bytes());
    format!("{key}:{sig}")
}

/// Checks a sign-in's `auth` against `socket_id::user::user_data`.
pub fn verify_user<'a>(
    key: &AppKey,
    secrets: impl IntoIterator<Item = &'a Secret>,
    socket_id: SocketId,
    user_data: &str,
    auth: &str,
) -> Result<(), AuthError> {
    verify_key_and_sig(key, secrets, &user_string(socket_id, user_data), auth)
}

/// Lower-case hex MD5 of a request body, as sent in `body_md5`.
pub fn body_md5(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// The string an HTTP API request signs: `METHOD\nPATH\nQUERY`, where QUERY is every parameter
/// but `auth_signature`, keys lower-cased, sorted by key, joined as `k=v` with `&`, values
/// as decoded from the URL.
pub fn api_string_to_sign<'a>(
    method: &str,
    path: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut pairs: Vec<(String, &str)> = params
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .filter(|(k, _)| k != "auth_signature")
        .collect();
    pairs.sort();
    let query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    format!("{}\n{path}\n{query}", method.to_ascii_uppercase())
}

/// The `auth_signature` of an HTTP API request.
pub fn sign_api<'a>(
    secret: &Secret,
    method: &str,
    path: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    hmac_hex(secret, api_string_to_sign(method, path, params).as_bytes())
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
fn query_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The complete signed query string for an HTTP API request, as the official SDKs send it:
/// `auth_key`, `auth_timestamp`, `auth_version`, `body_md5` (when there is a body), the
/// caller's `params`, and `auth_signature` last.
pub fn signed_query(
    key: &AppKey,
    secret: &Secret,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: &[u8],
    timestamp: u64,
) -> String {
    let ts = timestamp.to_string();
    let md5 = body_md5(body);
    let mut all: Vec<(&str, &str)> = vec![
        ("auth_key", key.as_str()),
        ("auth_timestamp", &ts),
        ("auth_version", "1.0"),
    ];
    if !body.is_empty() {
        all.push(("body_md5", &md5));
    }
    all.extend_from_slice(params);
    let sig = sign_api(secret, method, path, all.iter().copied());
    let mut query: Vec<String> = all
        .iter()
        .map(|(k, v)| format!("{k}={}", query_encode(v)))
        .collect();
    query.push(format!("auth_signature={sig}"));
    query.join("&")
}

/// `X-Pusher-Signature` of a webhook body.
/// Twilio's `X-Twilio-Signature`: base64 of HMAC-SHA1 (keyed with the auth token) over the
/// full URL Twilio called followed by every POST parameter's name and value, sorted by name.
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    use base64::Engine;
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    // unwrap: HMAC takes keys of any length.
    let mut m = Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes()).unwrap();
    m.update(url.as_bytes());
    for (k, v) in sorted {
        m.update(k.as_bytes());
        m.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
}

/// Checks `X-Twilio-Signature` in constant time.
pub fn verify_twilio(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    given: &str,
) -> bool {
    let want = twilio_signature(auth_token, url, params);
    want.len() == given.len() && bool::from(want.as_bytes().ct_eq(given.as_bytes()))
}

/// Checks Meta's `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>` in constant time.
pub fn verify_hub_signature(app_secret: &str, body: &[u8], header: &str) -> bool {
    let Some(given) = header.strip_prefix("sha256=") else {
        return false;
    };
    // unwrap: HMAC takes keys of any length.
    let mut m = HmacSha256::new_from_slice(app_secret.as_bytes()).unwrap();
    m.update(body);
    let want = hex::encode(m.finalize().into_bytes());
    want.len() == given.len()
        && bool::from(want.as_bytes().ct_eq(given.to_ascii_lowercase().as_bytes()))
}

/// A Standard Webhooks secret (`whsec_` + base64) as the key bytes it stands for.
pub fn standard_webhook_key(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .filter(|k| !k.is_empty())
}

/// The `webhook-signature` header of Standard Webhooks: `v1,` + base64 of HMAC-SHA256 over
/// `{id}.{timestamp}.{body}`.
pub fn sign_standard_webhook(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine;
    // unwrap: HMAC takes keys of any length.
    let mut m = HmacSha256::new_from_slice(key).unwrap();
    m.update(id.as_bytes());
    m.update(b".");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    let sig = base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes());
    format!("v1,{sig}")
}

pub fn sign_webhook(secret: &Secret, body: &[u8]) -> String {
    hmac_hex(secret, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_docs_example_signature() {
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            twilio_signature("12345", url, &params),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        assert!(verify_twilio(
            "12345",
            url,
            &params,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        assert!(!verify_twilio(
            "12346",
            url,
            &params,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
    }

    #[test]
    fn meta_hub_signatures() {
        let body = br#"{"object":"whatsapp_business_account"}"#;
        let mut m = HmacSha256::new_from_slice(b"app-secret").unwrap();
        m.update(body);
        let good = format!("sha256={}", hex::encode(m.finalize().into_bytes()));
        assert!(verify_hub_signature("app-secret", body, &good));
        assert!(!verify_hub_signature("other", body, &good));
        assert!(!verify_hub_signature("app-secret", body, "sha1=00"));
    }

    #[test]
    fn standard_webhooks_example_signature() {
        // The worked example of the Standard Webhooks specification.
        let key = standard_webhook_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign_standard_webhook(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(standard_webhook_key("whsec_").is_none());
        assert!(standard_webhook_key("whsec_not base64!").is_none());
    }

    // The worked examples from Pusher's "Authentication signatures" and "HTTP API" docs.
    fn key() -> AppKey {
        AppKey::parse("278d425bdf160c739803").unwrap()
    }
    fn secret() -> Secret {
        Secret::parse("7ad3773142a6692b25b8").unwrap()
    }
    fn sid() -> SocketId {
        SocketId::parse("1234.1234").unwrap()
    }

    #[test]
    fn private_channel_example() {
        let auth = sign_channel(&key(), &secret(), sid(), "private-foobar", None);
        assert_eq!(
            auth,
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert_eq!(
            verify_channel(&key(), [&secret()], sid(), "private-foobar", None, &auth),
            Ok(())
        );
        assert_eq!(
            verify_channel(&key(), [&secret()], sid(), "private-other", None, &auth),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn presence_channel_example() {
        // The docs print the signature made when the example user was still "Mr. Pusher".
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Pusher"}}"#;
        let auth = sign_channel(&key(), &secret(), sid(), "presence-foobar", Some(data));
        assert_eq!(
            auth,
            "278d425bdf160c739803:afaed3695da2ffd16931f457e338e6c9f2921fa133ce7dac49f529792be6304c"
        );
    }

    #[test]
    fn http_api_example() {
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let md5 = body_md5(body);
        assert_eq!(md5, "ec365a775a4cd0599faeb73354201b6f");
        let params = [
            ("auth_key", "278d425bdf160c739803"),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("body_md5", md5.as_str()),
        ];
        assert_eq!(
            sign_api(&secret(), "POST", "/apps/3/events", params),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }

    #[test]
    fn signed_query_reproduces_the_docs_example() {
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(
            signed_query(
                &key(),
                &secret(),
                "POST",
                "/apps/3/events",
                &[],
                body,
                1353088179
            ),
            "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
             &body_md5=ec365a775a4cd0599faeb73354201b6f\
             &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
        let q = signed_query(
            &key(),
            &secret(),
            "GET",
            "/apps/3/channels",
            &[("info", "user_count,subscription_count")],
            b"",
            1,
        );
        assert!(
            q.contains("info=user_count%2Csubscription_count&auth_signature="),
            "{q}"
        );
        assert!(!q.contains("body_md5"));
    }

    #[test]
    fn string_to_sign_sorts_lowercases_and_drops_signature() {
        assert_eq!(
            api_string_to_sign(
                "get",
                "/apps/1/channels",
                [("b", "2"), ("A", "1"), ("auth_signature", "x")]
            ),
            "GET\n/apps/1/channels\na=1&b=2"
        );
    }

    #[test]
    fn wrong_key_malformed_and_rotated_secrets() {
        let auth = sign_channel(&key(), &secret(), sid(), "private-a", None);
        let other = AppKey::parse("other").unwrap();
        assert_eq!(
            verify_channel(&other, [&secret()], sid(), "private-a", None, &auth),
            Err(AuthError::WrongKey)
        );
        assert_eq!(
            verify_channel(&key(), [&secret()], sid(), "private-a", None, "nocolon"),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            verify_channel(
                &key(),
                [&secret()],
                sid(),
                "private-a",
                None,
                "278d425bdf160c739803:zz"
            ),
            Err(AuthError::BadSignature)
        );
        let new = Secret::parse("new-secret").unwrap();
        assert_eq!(
            verify_channel(&key(), [&new, &secret()], sid(), "private-a", None, &auth),
            Ok(())
        );
    }

    #[test]
    fn user_signin_example() {
        let auth = sign_user(&key(), &secret(), sid(), r#"{"id":"12345"}"#);
        assert_eq!(
            auth,
            "278d425bdf160c739803:4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"
        );
    }

    #[test]
    fn user_signin_string() {
        let auth = sign_user(&key(), &secret(), sid(), r#"{"id":"1"}"#);
        assert_eq!(
            verify_user(&key(), [&secret()], sid(), r#"{"id":"1"}"#, &auth),
            Ok(())
        );
        let expected = hmac_hex(&secret(), br#"1234.1234::user::{"id":"1"}"#);
        assert!(auth.ends_with(&expected));
    }
}
