//! Zoho CRM as Zoho expects it: the refresh-token flow (the API domain from the token
//! answer), `Zoho-oauthtoken` on every call, the contact upserted with a duplicate check on
//! email, the deal upserted on its booking reference and linked to the contact; a token that
//! expires in the middle is refreshed once; each operation lands in the delivery's record.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::api::Api;
use crate::delivery::{deliveries, put, settled, state_of};
use crate::harness::Setup;
use crate::mock_http::{Mock, Response};

#[tokio::test]
async fn a_booking_upserts_the_contact_and_its_deal_and_survives_a_token_expiry() {
    let tokens = Arc::new(AtomicUsize::new(0));
    let expire_next = Arc::new(Mutex::new(false));
    let base = Arc::new(Mutex::new(String::new()));
    let (t, e, b) = (tokens.clone(), expire_next.clone(), base.clone());
    let zoho = Mock::start(move |req| {
        if req.path == "/oauth/v2/token" {
            for want in ["refresh_token=1000.refresh", "client_id=1000.CLIENT", "client_secret=secret", "grant_type=refresh_token"] {
                if !req.body.contains(want) {
                    return Response::json(200, json!({"error": "invalid_client"}));
                }
            }
            let n = t.fetch_add(1, Ordering::SeqCst) + 1;
            return Response::json(200, json!({"access_token": format!("1000.token{n}"),
                "api_domain": b.lock().unwrap().clone(), "token_type": "Bearer", "expires_in": 3600}));
        }
        let current = format!("Zoho-oauthtoken 1000.token{}", t.load(Ordering::SeqCst));
        let mut expire = e.lock().unwrap();
        if req.headers.get("authorization") != Some(&current) || *expire {
            *expire = false;
            return Response::json(401, json!({"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token", "status": "error"}));
        }
        let body: Value = serde_json::from_str(&req.body).unwrap();
        match req.path.as_str() {
            "/crm/v2/Contacts/upsert" => {
                assert_eq!(body["duplicate_check_fields"], json!(["Email"]));
                Response::json(200, json!({"data": [{"code": "SUCCESS", "duplicate_field": "Email", "action": "insert",
                    "details": {"id": "4150868000001234001"}, "message": "record added", "status": "success"}]}))
            }
            "/crm/v2/Deals/upsert" => {
                assert_eq!(body["duplicate_check_fields"], json!(["Booking_Reference"]));
                assert_eq!(body["data"][0]["Contact_Name"], json!({"id": "4150868000001234001"}));
                Response::json(200, json!({"data": [{"code": "SUCCESS", "duplicate_field": null, "action": "insert",
                    "details": {"id": "4150868000005678001"}, "message": "record added", "status": "success"}]}))
            }
            _ => Response::json(404, json!({"code": "INVALID_URL_PATTERN", "message": "Please check if the URL trying to access is a correct one", "status": "error"})),
        }
    })
    .await;
    *base.lock().unwrap() = zoho.url("");
    let toml = format!(
        r#"
[[apps]]
id = '100'
key = 'test-key'
secret = 'test-secret'

[apps.zoho]
client_id = '1000.CLIENT'
client_secret = 'secret'
refresh_token = '1000.refresh'
accounts_url = '{}'

[[apps.rules]]
name = 'crm'
channel = 'bookings'
event = 'booking.created'
type = 'CRM_SYNC'
recipients = [{{ users_field = 'customer_id' }}]

[[apps.rules.deliver]]
channel = 'zoho'
zoho = {{ contact = {{ Email = '{{{{ email }}}}', Last_Name = '{{{{ last_name }}}}', First_Name = '{{{{ first_name }}}}' }}, deal = {{ Deal_Name = 'Booking {{{{ booking_id }}}}', Amount = '{{{{ amount }}}}', Stage = 'Closed Won', Booking_Reference = '{{{{ booking_id }}}}' }} }}
"#,
        zoho.url("")
    );
    let server = Setup::default().toml(&toml).start();
    let api = Api::new(&server);
    put(&api, "/users/z1", json!({})).await;
    let booking = |id: &str| {
        json!({"customer_id": "z1", "booking_id": id, "email": "ana@example.com",
            "first_name": "Ana", "last_name": "Silva", "amount": "120.00"})
        .to_string()
    };
    api.trigger("bookings", "booking.created", &booking("B-1"))
        .await;
    let ds = settled(&api, "z1", 1, 15).await;
    let (state, reason) = state_of(&ds, "zoho");
    assert_eq!(state, "sent", "{ds:?}");
    assert_eq!(
        reason,
        "CONTACT_UPSERT Contacts 4150868000001234001 SUCCESS; DEAL_CREATE Deals 4150868000005678001 SUCCESS"
    );
    let deal: Value = zoho
        .requests()
        .iter()
        .find(|r| r.path == "/crm/v2/Deals/upsert")
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .unwrap();
    assert_eq!(deal["data"][0]["Deal_Name"], "Booking B-1");
    assert_eq!(deal["data"][0]["Booking_Reference"], "B-1");

    // The token expires before the next booking's first call: one refresh, then success.
    *expire_next.lock().unwrap() = true;
    api.trigger("bookings", "booking.created", &booking("B-2"))
        .await;
    let ds = settled(&api, "z1", 2, 15).await;
    assert!(ds.iter().all(|d| d["state"] == "sent"), "{ds:?}");
    assert_eq!(
        tokens.load(Ordering::SeqCst),
        2,
        "one refresh for the expired token"
    );
}

/// One invoice the local Zoho holds.
#[derive(Debug, Clone)]
struct Inv {
    reference: String,
    id: String,
    status: String,
    customer_id: String,
}

/// The Books side of a local Zoho: customers by email, invoices by reference, payments; it
/// checks each call's organisation and token and keeps state, so a retry shows whether
/// bellhop looks before it makes. A payment must name the invoice's own customer, as Zoho
/// requires.
#[derive(Default)]
struct Books {
    tokens: usize,
    customers: Vec<(String, String)>,
    invoices: Vec<Inv>,
    payments: Vec<Value>,
    invoice_posts: usize,
    /// Every `POST /customerpayments`, answered or refused.
    payment_posts: usize,
    /// Answer 401 to the next call (the token expired between two calls).
    expire_next: bool,
    /// Answer 500 to the next payment (Zoho's side failed; bellhop retries).
    fail_next_payment: bool,
    /// `books` or `invoice`: the product whose API this is.
    product: &'static str,
    /// Answer the first API call with Zoho's 429 (calls per minute exceeded).
    rate_limit_first: bool,
}

fn books_answer(state: &Mutex<Books>, base: &str, req: &crate::mock_http::Request) -> Response {
    let mut s = state.lock().unwrap();
    if req.path == "/oauth/v2/token" {
        s.tokens += 1;
        return Response::json(
            200,
            json!({"access_token": format!("1000.books{}", s.tokens),
            "api_domain": base, "token_type": "Bearer", "expires_in": 3600}),
        );
    }
    let url = reqwest::Url::parse(&format!("http://x{}", req.path)).unwrap();
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    // Books takes the organisation in the query, Invoice in a header.
    let prefix = format!("/{}/v3", s.product);
    let org = match s.product {
        "books" => q.get("organization_id"),
        _ => req.headers.get("x-com-zoho-invoice-organizationid"),
    };
    let Some(rest) = url.path().strip_prefix(&prefix) else {
        return Response::json(404, json!({"code": 5, "message": "Invalid URL Passed"}));
    };
    if org.map(String::as_str) != Some("60012345678") {
        return Response::json(
            400,
            json!({"code": 6041, "message": "This user is not associated with the organization."}),
        );
    }
    let current = format!("Zoho-oauthtoken 1000.books{}", s.tokens);
    if req.headers.get("authorization") != Some(&current) || s.expire_next {
        s.expire_next = false;
        return Response::json(
            401,
            json!({"code": 57, "message": "You are not authorized to perform this operation"}),
        );
    }
    if std::mem::take(&mut s.rate_limit_first) {
        return Response::json(
            429,
            json!({"code": 44, "message": "You have made too many requests. Please try after some time."}),
        )
        .header("Retry-After", "1");
    }
    let body: Value = serde_json::from_str(&req.body).unwrap_or(Value::Null);
    match (req.method.as_str(), rest) {
        ("GET", "/contacts") => {
            let found: Vec<Value> = s
                .customers
                .iter()
                .filter(|(e, _)| Some(e) == q.get("email"))
                .map(|(e, id)| json!({"contact_id": id, "email": e, "contact_type": "customer"}))
                .collect();
            Response::json(
                200,
                json!({"code": 0, "message": "success", "contacts": found}),
            )
        }
        ("POST", "/contacts") => {
            assert_eq!(body["contact_type"], "customer");
            let email = body["contact_persons"][0]["email"]
                .as_str()
                .unwrap()
                .to_owned();
            let id = format!("46000000{}", 100 + s.customers.len());
            s.customers.push((email, id.clone()));
            Response::json(
                201,
                json!({"code": 0, "message": "The contact has been added.", "contact": {"contact_id": id, "contact_name": body["contact_name"]}}),
            )
        }
        ("GET", "/invoices") => {
            let found: Vec<Value> = s
                .invoices
                .iter()
                .filter(|i| Some(&i.reference) == q.get("reference_number"))
                .map(|i| {
                    json!({"invoice_id": i.id, "reference_number": i.reference, "status": i.status,
                        "customer_id": i.customer_id})
                })
                .collect();
            Response::json(
                200,
                json!({"code": 0, "message": "success", "invoices": found}),
            )
        }
        ("POST", "/invoices") => {
            s.invoice_posts += 1;
            assert!(
                s.customers.iter().any(|(_, id)| body["customer_id"] == *id),
                "{body}"
            );
            assert_eq!(
                body["line_items"],
                json!([{"name": "Deluxe room, 2 nights", "rate": 240.0, "quantity": 1.0}])
            );
            let id = format!("46000000{}", 900 + s.invoices.len());
            let reference = body["reference_number"].as_str().unwrap().to_owned();
            s.invoices.push(Inv {
                reference: reference.clone(),
                id: id.clone(),
                status: "draft".into(),
                customer_id: body["customer_id"].as_str().unwrap().to_owned(),
            });
            // The token expires right after: the next call (marking it sent) is refused.
            s.expire_next = true;
            Response::json(
                201,
                json!({"code": 0, "message": "The invoice has been created.",
                "invoice": {"invoice_id": id, "invoice_number": "INV-000001", "reference_number": reference, "status": "draft", "total": 240.0, "balance": 240.0}}),
            )
        }
        ("POST", p) if p.ends_with("/status/sent") => {
            let id = p
                .trim_start_matches("/invoices/")
                .trim_end_matches("/status/sent");
            match s.invoices.iter_mut().find(|i| i.id == id) {
                Some(inv) => {
                    inv.status = "sent".into();
                    Response::json(
                        200,
                        json!({"code": 0, "message": "Invoice status has been changed to Sent."}),
                    )
                }
                None => Response::json(
                    404,
                    json!({"code": 1002, "message": "Invoice does not exist."}),
                ),
            }
        }
        ("POST", "/customerpayments") => {
            s.payment_posts += 1;
            if std::mem::take(&mut s.fail_next_payment) {
                return Response::json(500, json!({"code": 9999, "message": "Internal error"}));
            }
            let id = body["invoices"][0]["invoice_id"]
                .as_str()
                .unwrap()
                .to_owned();
            let inv = s
                .invoices
                .iter_mut()
                .find(|i| i.id == id)
                .expect("an existing invoice");
            assert_eq!(inv.status, "sent", "a draft cannot be paid");
            // Zoho refuses a payment whose customer is not the invoice's (the code and message
            // here are the fake's own).
            if body["customer_id"] != inv.customer_id.as_str() {
                return Response::json(
                    400,
                    json!({"code": 24016, "message": "The invoice does not belong to the customer of this payment."}),
                );
            }
            inv.status = "paid".into();
            s.payments.push(body.clone());
            Response::json(
                201,
                json!({"code": 0, "message": "The payment has been created.",
                "payment": {"payment_id": "4600000077001", "amount": body["amount"]}}),
            )
        }
        _ => Response::json(404, json!({"code": 5, "message": "Invalid URL Passed"})),
    }
}

#[tokio::test]
async fn a_payment_makes_one_paid_invoice_through_a_token_expiry_and_a_failed_payment() {
    invoice_flow("books").await;
}

/// Zoho Invoice, and a 429 on the first call: paused, retried, then the same flow.
#[tokio::test]
async fn zoho_invoice_takes_the_organisation_header_and_a_429_pauses_then_retries() {
    invoice_flow("invoice").await;
}

async fn invoice_flow(product: &'static str) {
    let state = Arc::new(Mutex::new(Books {
        product,
        rate_limit_first: product == "invoice",
        ..Books::default()
    }));
    let base = Arc::new(Mutex::new(String::new()));
    let (s, b) = (state.clone(), base.clone());
    let zoho = Mock::start(move |req| books_answer(&s, &b.lock().unwrap(), req)).await;
    *base.lock().unwrap() = zoho.url("");
    let toml = format!(
        r#"
[[apps]]
id = '100'
key = 'test-key'
secret = 'test-secret'

[apps.zoho]
client_id = '1000.CLIENT'
client_secret = 'secret'
refresh_token = '1000.refresh'
accounts_url = '{}'
invoices = {{ product = '{product}', organization_id = '60012345678' }}

[[apps.rules]]
name = 'invoice'
channel = 'payments'
event = 'booking.paid'
type = 'INVOICE'
recipients = [{{ users_field = 'customer_id' }}]

[[apps.rules.deliver]]
channel = 'zoho'

[apps.rules.deliver.zoho.invoice]
reference = '{{{{ booking_id }}}}'
customer_name = '{{{{ name }}}}'
email = '{{{{ email }}}}'
line_items = [{{ name = '{{{{ room }}}}, {{{{ nights }}}} nights', rate = '{{{{ amount }}}}' }}]
paid = {{ amount = '{{{{ amount }}}}', mode = 'creditcard', reference = '{{{{ payment_id }}}}', date = '2026-12-02' }}
"#,
        zoho.url("")
    );
    let server = Setup::default().toml(&toml).start();
    let api = Api::new(&server);
    put(&api, "/users/z1", json!({})).await;
    {
        let mut s = state.lock().unwrap();
        // The customer exists already (made by the CRM sync); the first payment fails on
        // Zoho's side.
        s.customers
            .push(("ana@example.com".into(), "46000000042".into()));
        s.tokens = 0;
        s.fail_next_payment = true;
    }
    let paid = json!({"customer_id": "z1", "booking_id": "B-7", "name": "Ana Silva",
        "email": "ana@example.com", "room": "Deluxe room", "nights": 2, "amount": "240.00",
        "payment_id": "pi_3Q"});
    api.trigger("payments", "booking.paid", &paid.to_string())
        .await;
    let ds = settled(&api, "z1", 1, 30).await;
    let (st, reason) = state_of(&ds, "zoho");
    assert_eq!(st, "sent", "{ds:?}");
    assert_eq!(
        reason,
        "CONTACT_UPSERT Customers 46000000042 SUCCESS; INVOICE_CREATE Invoices 46000000900 SUCCESS; \
         INVOICE_MARK_PAID CustomerPayments 4600000077001 SUCCESS"
    );
    {
        let s = state.lock().unwrap();
        assert_eq!(
            s.invoice_posts, 1,
            "the retry found the invoice instead of making another"
        );
        assert_eq!(s.payments.len(), 1);
        assert_eq!(s.customers.len(), 1, "the existing customer was used");
        assert_eq!(s.invoices[0].status, "paid");
        assert_eq!(s.tokens, 2, "one refresh for the expired token");
        let p = &s.payments[0];
        assert_eq!(p["customer_id"], "46000000042");
        assert_eq!(p["payment_mode"], "creditcard");
        assert_eq!(p["amount"], 240.0);
        assert_eq!(p["date"], "2026-12-02");
        assert_eq!(p["reference_number"], "pi_3Q");
        assert_eq!(
            p["invoices"],
            json!([{"invoice_id": "46000000900", "amount_applied": 240.0}])
        );
    }

    // The sync log: the failed attempt and the one that succeeded, newest first.
    let r = api.get("/zoho/sync_logs", &[("reference", "B-7")]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let ops: Vec<String> = r.body["sync_logs"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|l| {
            format!(
                "{} {} {}",
                l["operation"].as_str().unwrap(),
                l["status"].as_str().unwrap(),
                l["remote_id"].as_str().unwrap_or("-")
            )
        })
        .collect();
    let rate_limited: &[&str] = match product {
        "invoice" => &["CONTACT_UPSERT FAILED -"],
        _ => &[],
    };
    assert_eq!(ops[..rate_limited.len()], *rate_limited);
    assert_eq!(
        ops[rate_limited.len()..],
        [
            "CONTACT_UPSERT SUCCESS 46000000042",
            "INVOICE_CREATE SUCCESS 46000000900",
            "INVOICE_MARK_PAID FAILED -",
            "CONTACT_UPSERT SUCCESS 46000000042",
            "INVOICE_CREATE SUCCESS 46000000900",
            "INVOICE_MARK_PAID SUCCESS 4600000077001",
        ]
    );
    if product == "invoice" {
        let first = r.body["sync_logs"].as_array().unwrap().last().unwrap();
        assert!(first["error"].as_str().unwrap().contains("429"), "{first}");
    }
    let failed = &r.body["sync_logs"][3];
    assert_eq!(failed["entity"], "CustomerPayments");
    assert!(
        failed["error"].as_str().unwrap().contains("500"),
        "{failed}"
    );

    // The same payment event again (a webhook retried by the payment provider): the same
    // event, accepted as the notification it already is (committed at the 200).
    let r = api
        .trigger("payments", "booking.paid", &paid.to_string())
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(deliveries(&api, "z1").await.len(), 1);

    // The provider's next retry carries a new delivery id: a new event for the same invoice.
    // Zoho says the invoice is paid, so no second payment is recorded.
    let mut again = paid.clone();
    again["webhook_delivery"] = json!("whd_2");
    let r = api
        .trigger("payments", "booking.paid", &again.to_string())
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let ds = settled(&api, "z1", 2, 30).await;
    assert_eq!(ds.len(), 2, "{ds:?}");
    assert!(ds.iter().all(|d| d["state"] == "sent"), "{ds:?}");
    let repeat = ds.iter().max_by_key(|d| d["id"].as_i64().unwrap()).unwrap();
    assert_eq!(
        repeat["reason"],
        "CONTACT_UPSERT Customers 46000000042 SUCCESS; INVOICE_CREATE Invoices 46000000900 SUCCESS; \
         INVOICE_MARK_PAID Invoices 46000000900 SUCCESS",
        "the invoice was found paid, not paid again: {repeat}"
    );
    {
        let s = state.lock().unwrap();
        assert_eq!(
            s.payment_posts, 2,
            "the failed payment and the one recorded"
        );
        assert_eq!(s.invoice_posts, 1);
        assert_eq!(s.invoices.len(), 1);
        assert_eq!(s.payments.len(), 1);
        // The one payment: this invoice, its amount, its own customer.
        let p = &s.payments[0];
        let inv = &s.invoices[0];
        assert_eq!(
            (inv.reference.as_str(), inv.id.as_str(), inv.status.as_str()),
            ("B-7", "46000000900", "paid")
        );
        assert_eq!(p["invoices"][0]["invoice_id"], inv.id.as_str());
        assert_eq!(p["invoices"][0]["amount_applied"], 240.0);
        assert_eq!(p["amount"], 240.0);
        assert_eq!(p["customer_id"], inv.customer_id.as_str());
        assert_eq!(inv.customer_id, "46000000042");
    }
    // The repeat's sync log: the invoice found already paid (recorded against the invoice,
    // with no payment id), on top of the rows above.
    let r = api.get("/zoho/sync_logs", &[("reference", "B-7")]).await;
    let logs = r.body["sync_logs"].as_array().unwrap();
    assert_eq!(logs.len(), ops.len() + 3, "{logs:?}");
    let newest: Vec<String> = logs[..3]
        .iter()
        .rev()
        .map(|l| {
            format!(
                "{} {} {} {}",
                l["operation"].as_str().unwrap(),
                l["entity"].as_str().unwrap(),
                l["status"].as_str().unwrap(),
                l["remote_id"].as_str().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(
        newest,
        [
            "CONTACT_UPSERT Customers SUCCESS 46000000042",
            "INVOICE_CREATE Invoices SUCCESS 46000000900",
            "INVOICE_MARK_PAID Invoices SUCCESS 46000000900",
        ]
    );
    assert!(logs[..3].iter().all(|l| l["error"].is_null()), "{logs:?}");
}

/// An invoice made in Zoho by someone else (the front desk, for the travel agency that
/// booked) and found by its reference: the payment is recorded against that invoice's own
/// customer, not the contact that the guest's email finds.
#[tokio::test]
async fn a_found_invoice_is_paid_for_its_own_customer() {
    let state = Arc::new(Mutex::new(Books {
        product: "books",
        ..Books::default()
    }));
    let base = Arc::new(Mutex::new(String::new()));
    let (s, b) = (state.clone(), base.clone());
    let zoho = Mock::start(move |req| books_answer(&s, &b.lock().unwrap(), req)).await;
    *base.lock().unwrap() = zoho.url("");
    {
        let mut s = state.lock().unwrap();
        s.customers
            .push(("ana@example.com".into(), "46000000042".into()));
        s.customers
            .push(("billing@agency.example".into(), "46000000077".into()));
        s.invoices.push(Inv {
            reference: "B-9".into(),
            id: "46000000955".into(),
            status: "sent".into(),
            customer_id: "46000000077".into(),
        });
    }
    let toml = format!(
        r#"
[[apps]]
id = '100'
key = 'test-key'
secret = 'test-secret'

[apps.zoho]
client_id = '1000.CLIENT'
client_secret = 'secret'
refresh_token = '1000.refresh'
accounts_url = '{}'
invoices = {{ product = 'books', organization_id = '60012345678' }}

[[apps.rules]]
name = 'invoice'
channel = 'payments'
event = 'booking.paid'
type = 'INVOICE'
recipients = [{{ users_field = 'customer_id' }}]

[[apps.rules.deliver]]
channel = 'zoho'

[apps.rules.deliver.zoho.invoice]
reference = '{{{{ booking_id }}}}'
customer_name = '{{{{ name }}}}'
email = '{{{{ email }}}}'
line_items = [{{ name = '{{{{ room }}}}', rate = '{{{{ amount }}}}' }}]
paid = {{ amount = '{{{{ amount }}}}', mode = 'creditcard', reference = '{{{{ payment_id }}}}', date = '2026-12-02' }}
"#,
        zoho.url("")
    );
    let server = Setup::default().toml(&toml).start();
    let api = Api::new(&server);
    put(&api, "/users/z9", json!({})).await;
    let paid = json!({"customer_id": "z9", "booking_id": "B-9", "name": "Ana Silva",
        "email": "ana@example.com", "room": "Deluxe room", "amount": "240.00",
        "payment_id": "pi_9"});
    let r = api
        .trigger("payments", "booking.paid", &paid.to_string())
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let ds = settled(&api, "z9", 1, 30).await;
    let (st, reason) = state_of(&ds, "zoho");
    assert_eq!(st, "sent", "{ds:?}");
    assert_eq!(
        reason,
        "CONTACT_UPSERT Customers 46000000042 SUCCESS; INVOICE_CREATE Invoices 46000000955 SUCCESS; \
         INVOICE_MARK_PAID CustomerPayments 4600000077001 SUCCESS"
    );
    let s = state.lock().unwrap();
    assert_eq!(s.invoice_posts, 0, "the invoice was found, not made");
    assert_eq!(s.payments.len(), 1);
    let p = &s.payments[0];
    assert_eq!(
        p["customer_id"], "46000000077",
        "the invoice's own customer"
    );
    assert_eq!(p["invoices"][0]["invoice_id"], "46000000955");
    assert_eq!(p["amount"], 240.0);
    assert_eq!(s.invoices[0].status, "paid");
}
