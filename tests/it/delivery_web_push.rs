//! Web Push end to end, against a local push service that does what a browser vendor's does:
//! it checks the VAPID JWT (ES256, signed by the key in `k`, for its own origin) and the
//! `aes128gcm` encoding, and the test, holding the browser's private key, decrypts the body.
//! Subscriptions come from the backend (signed) and from the browser (inbox token); a 410
//! deactivates one, a 429 is retried after its Retry-After.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use web_push_native::jwt_simple::algorithms::{
    ECDSAP256PublicKeyLike, ES256KeyPair, ES256PublicKey,
};
use web_push_native::jwt_simple::claims::NoCustomClaims;
use web_push_native::jwt_simple::common::VerificationOptions;
use web_push_native::p256;
use web_push_native::p256::elliptic_curve::sec1::ToEncodedPoint;

use crate::api::Api;
use crate::delivery::{deliveries, settled, state_of};
use crate::harness::{Setup, APP_ID, KEY, SECRET};
use crate::mock_http::{Mock, Request, Response};

/// A browser's subscription: what it sends bellhop, and what only it knows.
struct Browser {
    endpoint: String,
    secret: p256::SecretKey,
    auth: [u8; 16],
}

impl Browser {
    fn new(push_service: &Mock, path: &str) -> Browser {
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        Browser {
            endpoint: push_service.url(path),
            secret,
            auth: rand::random(),
        }
    }

    /// `PushSubscription.toJSON()`.
    fn subscription(&self) -> Value {
        let public = self.secret.public_key().to_encoded_point(false);
        json!({
            "endpoint": self.endpoint,
            "expirationTime": null,
            "keys": {
                "p256dh": URL_SAFE_NO_PAD.encode(public.as_bytes()),
                "auth": URL_SAFE_NO_PAD.encode(self.auth),
            }
        })
    }

    /// The push as the browser's service worker would see it.
    fn open(&self, push: &Request) -> Value {
        let auth = web_push_native::Auth::clone_from_slice(&self.auth);
        let clear = web_push_native::decrypt(push.raw.clone(), &self.secret, &auth)
            .expect("the push decrypts with the browser's key");
        serde_json::from_slice(&clear).unwrap()
    }
}

/// Checks what a push service checks; the failure, if any.
fn vapid_problem(req: &Request, origin: &str, server_key: &str) -> Option<String> {
    let h = &req.headers;
    if h.get("content-encoding").map(String::as_str) != Some("aes128gcm") {
        return Some("not aes128gcm".into());
    }
    if !h.contains_key("ttl") {
        return Some("no TTL".into());
    }
    let auth = h.get("authorization")?;
    let (token, k) = auth.strip_prefix("vapid t=")?.split_once(", k=")?;
    if k != server_key {
        return Some(format!("k is {k}, not the app's key"));
    }
    let key = ES256PublicKey::from_bytes(&URL_SAFE_NO_PAD.decode(k).ok()?).ok()?;
    let options = VerificationOptions {
        allowed_audiences: Some(HashSet::from([origin.to_owned()])),
        ..Default::default()
    };
    match key.verify_token::<NoCustomClaims>(token, Some(options)) {
        Ok(c) if c.subject.as_deref() == Some("mailto:ops@hotel.example") => None,
        Ok(c) => Some(format!("subject {:?}", c.subject)),
        Err(e) => Some(format!("JWT: {e}")),
    }
}

/// A push service: `/push/gone` answers 410, `/push/busy` a 429 (Retry-After 1) first, the
/// rest 201; a push whose VAPID fails is refused 403 as a real one would.
async fn push_service(server_key: Arc<Mutex<String>>) -> Mock {
    let sends: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let origin: Arc<Mutex<String>> = Arc::default();
    let origin_in = origin.clone();
    let mock = Mock::start(move |req| {
        let key = server_key.lock().unwrap().clone();
        if let Some(problem) = vapid_problem(req, &origin_in.lock().unwrap(), &key) {
            return Response::json(403, json!({"reason": problem}));
        }
        let mut sends = sends.lock().unwrap();
        let n = sends.entry(req.path.clone()).or_default();
        *n += 1;
        match (req.path.as_str(), *n) {
            ("/push/gone", _) => Response::json(410, json!({"reason": "unsubscribed"})),
            ("/push/busy", 1) => Response::json(429, json!({})).header("retry-after", "1"),
            _ => Response::json(201, json!({})),
        }
    })
    .await;
    *origin.lock().unwrap() = format!("http://{}", mock.addr);
    mock
}

fn inbox_token(user: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = now + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": user, "aud": "bellhop:inbox", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_web_push_reaches_each_browser_encrypted_and_signed_and_gone_ones_are_dropped() {
    let vapid = ES256KeyPair::generate();
    let server_key =
        URL_SAFE_NO_PAD.encode(vapid.public_key().public_key().to_bytes_uncompressed());
    let service = push_service(Arc::new(Mutex::new(server_key.clone()))).await;
    let toml = format!(
        "[[apps]]\nid = '{APP_ID}'\nkey = '{KEY}'\nsecret = '{SECRET}'\n\n\
         [apps.web_push]\nvapid_private_key = '{}'\nsubject = 'mailto:ops@hotel.example'\n\n\
         [[apps.rules]]\nname = 'pos-order'\nchannel = 'pos-{{till}}'\nevent = 'order.placed'\n\
         type = 'order'\nrecipients = [{{ user = '{{{{ till }}}}' }}]\n\n\
         [[apps.rules.deliver]]\nchannel = 'web_push'\ntitle = 'Order {{{{ order_id }}}}'\n\
         body = 'Table {{{{ table }}}}: KES {{{{ total }}}}'\ndata = {{ route = '/orders/{{{{ order_id }}}}' }}\n",
        URL_SAFE_NO_PAD.encode(vapid.to_bytes())
    );
    let server = Setup::default().toml(&toml).start();
    let api = Api::new(&server);
    let http = reqwest::Client::new();

    // The browser asks for the key to subscribe with.
    let key = http
        .get(server.http(&format!("/client/{KEY}/web-push/key")))
        .send()
        .await
        .unwrap();
    assert_eq!(key.json::<Value>().await.unwrap()["public_key"], server_key);

    // Till 1: two browsers, registered by the backend; one has since unsubscribed.
    let front = Browser::new(&service, "/push/front");
    let gone = Browser::new(&service, "/push/gone");
    for b in [&front, &gone] {
        let r = api.post("users/till-1/web-push", &b.subscription()).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    // Till 2 subscribes from the browser itself, with its inbox token.
    let busy = Browser::new(&service, "/push/busy");
    let r = http
        .post(server.http(&format!("/client/{KEY}/web-push")))
        .bearer_auth(inbox_token("till-2"))
        .json(&busy.subscription())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    for (till, order) in [("till-1", "A-17"), ("till-2", "A-18")] {
        let data = json!({"order_id": order, "table": 4, "total": "1,250"}).to_string();
        let r = api
            .trigger(&format!("pos-{till}"), "order.placed", &data)
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let d1 = settled(&api, "till-1", 1, 20).await;
    assert_eq!(
        state_of(&d1, "web_push"),
        ("sent".into(), "pushed to 1 browser(s)".into())
    );
    let d2 = settled(&api, "till-2", 1, 20).await;
    assert_eq!(state_of(&d2, "web_push").0, "sent", "{d2:?}");

    let pushes = service.requests();
    let to = |path: &str| pushes.iter().filter(|r| r.path == path).collect::<Vec<_>>();
    assert_eq!(to("/push/front").len(), 1);
    assert_eq!(to("/push/gone").len(), 1);
    assert_eq!(to("/push/busy").len(), 2, "a 429, then the retry");
    let mut opened = front.open(to("/push/front")[0]);
    assert!(opened["notification_id"].is_u64(), "{opened}");
    opened.as_object_mut().unwrap().remove("notification_id");
    assert_eq!(
        opened,
        json!({"title": "Order A-17", "body": "Table 4: KES 1,250",
               "data": {"route": "/orders/A-17"}, "type": "order"})
    );
    assert_eq!(busy.open(to("/push/busy")[1])["title"], "Order A-18");

    // The 410 deactivated that subscription: the next order reaches the front browser only.
    let user = api.get("/users/till-1", &[]).await;
    let devices = user.body["devices"].as_array().unwrap().clone();
    let gone_row = devices
        .iter()
        .find(|d| d["token"] == gone.endpoint)
        .unwrap();
    assert_eq!(gone_row["active"], false, "{devices:?}");
    assert!(gone_row.get("push_keys").is_none(), "keys are never shown");
    let data = json!({"order_id": "A-19", "table": 2, "total": "300"}).to_string();
    api.trigger("pos-till-1", "order.placed", &data).await;
    let d1 = settled(&api, "till-1", 2, 20).await;
    assert!(d1.iter().all(|d| d["state"] == "sent"), "{d1:?}");
    let pushes = service.requests();
    assert_eq!(pushes.iter().filter(|r| r.path == "/push/gone").count(), 1);
    assert_eq!(pushes.iter().filter(|r| r.path == "/push/front").count(), 2);
    assert_eq!(
        deliveries(&api, "till-1").await.len(),
        2,
        "one delivery per order"
    );
}

#[tokio::test]
async fn subscriptions_that_no_push_service_would_give_are_refused() {
    let vapid = ES256KeyPair::generate();
    let toml = format!(
        "[[apps]]\nid = '{APP_ID}'\nkey = '{KEY}'\nsecret = '{SECRET}'\n\n\
         [apps.web_push]\nvapid_private_key = '{}'\nsubject = 'mailto:ops@hotel.example'\n",
        URL_SAFE_NO_PAD.encode(vapid.to_bytes())
    );
    let server = Setup::default().toml(&toml).start();
    let api = Api::new(&server);
    let service = push_service(Arc::default()).await;
    let ok = Browser::new(&service, "/push/x").subscription();
    let mut plain = ok.clone();
    plain["endpoint"] = "http://push.example.com/x".into();
    let mut bad_keys = ok.clone();
    bad_keys["keys"]["auth"] = "c2hvcnQ".into();
    for (body, why) in [(plain, "https"), (bad_keys, "16 bytes")] {
        let r = api.post("users/u/web-push", &body).await;
        assert_eq!(r.status, 400, "{:?}", r.body);
        assert!(
            r.body["error"].as_str().unwrap().contains(why),
            "{:?}",
            r.body
        );
    }
    let r = reqwest::Client::new()
        .post(server.http(&format!("/client/{KEY}/web-push")))
        .json(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the browser route needs the inbox token");
}
