//! The pure hot paths: decoding a client frame, parsing a channel name, verifying a channel
//! signature and an API signature, encoding a published event.

use bellhop_protocol::{server, signing, AppKey, ChannelName, ClientEvent, Secret, SocketId};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn benches(c: &mut Criterion) {
    let subscribe = r#"{"event":"pusher:subscribe","data":{"auth":"app-key:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4","channel":"private-grand-hotel-staff-42-porter"}}"#;
    let client_event = r#"{"event":"client-typing","channel":"private-hotel-1-room-204-chat","data":{"user":"guest","typing":true}}"#;
    c.bench_function("decode subscribe frame", |b| {
        b.iter(|| ClientEvent::decode(black_box(subscribe)).unwrap())
    });
    c.bench_function("decode client event frame", |b| {
        b.iter(|| ClientEvent::decode(black_box(client_event)).unwrap())
    });
    c.bench_function("parse channel name", |b| {
        b.iter(|| ChannelName::parse(black_box("presence-grand-hotel-staff-42-porter")).unwrap())
    });

    let key = AppKey::parse("app-key").unwrap();
    let secret = Secret::parse("app-secret").unwrap();
    let sid = SocketId::parse("123456.654321").unwrap();
    let auth = signing::sign_channel(&key, &secret, sid, "private-a", None);
    c.bench_function("verify channel auth", |b| {
        b.iter(|| {
            signing::verify_channel(&key, [&secret], sid, black_box("private-a"), None, &auth)
                .unwrap()
        })
    });
    let body = br#"{"name":"new-order","channel":"hotel-1","data":"{\"room\":204}"}"#;
    c.bench_function("sign API request (md5 + hmac)", |b| {
        b.iter(|| {
            let md5 = signing::body_md5(black_box(body));
            signing::sign_api(
                &secret,
                "POST",
                "/apps/1/events",
                [
                    ("auth_key", "app-key"),
                    ("auth_timestamp", "1700000000"),
                    ("auth_version", "1.0"),
                    ("body_md5", md5.as_str()),
                ],
            )
        })
    });
    let data = format!(r#"{{"room":204,"items":"{}"}}"#, "x".repeat(100));
    c.bench_function("encode channel event (100 B data)", |b| {
        b.iter(|| server::channel_event("new-order", "hotel-1", black_box(&data)))
    });
}

criterion_group!(hot, benches);
criterion_main!(hot);
