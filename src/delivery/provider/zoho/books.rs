//! Invoices in Zoho Books or Zoho Invoice (the same v3 API under two paths): the customer
//! found by email or made, the invoice found by its reference number or made, and, for a
//! payment, the invoice marked sent if still a draft and the payment recorded against it —
//! unless the invoice is already paid. Looking before making is what makes a retry safe.

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{message, Call, Failure, InvoiceProduct, InvoicesConfig, SyncRecord, Zoho};
use crate::store::Store;

/// A rule's `zoho.invoice`: every field a template.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InvoiceSpec {
    /// The invoice's reference number (the booking reference): one invoice per reference.
    pub reference: String,
    pub customer_name: String,
    pub email: String,
    /// yyyy-mm-dd; Zoho's default (today) when absent.
    #[serde(default)]
    pub date: Option<String>,
    pub line_items: Vec<LineItemSpec>,
    /// Record this payment against the invoice (a payment event).
    #[serde(default)]
    pub paid: Option<PaymentSpec>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LineItemSpec {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub rate: String,
    #[serde(default = "d_quantity")]
    pub quantity: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentSpec {
    pub amount: String,
    /// Zoho's payment mode: cash, creditcard, banktransfer, …
    #[serde(default = "d_mode")]
    pub mode: String,
    #[serde(default)]
    pub reference: Option<String>,
    /// yyyy-mm-dd; today (UTC) when absent.
    #[serde(default)]
    pub date: Option<String>,
}

fn d_quantity() -> String {
    "1".into()
}

fn d_mode() -> String {
    "cash".into()
}

/// An invoice with its templates rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct Invoice {
    pub reference: String,
    pub customer_name: String,
    pub email: String,
    pub date: Option<String>,
    pub line_items: Vec<Value>,
    pub paid: Option<Payment>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Payment {
    pub amount: f64,
    pub mode: String,
    pub reference: Option<String>,
    pub date: String,
}

fn number(what: &str, text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .ok_or_else(|| format!("zoho.invoice {what} must be a number, got {text:?}"))
}

impl InvoiceSpec {
    /// Renders every template with `render`; a rate, quantity or amount that is not a
    /// number is an error, not a zero.
    pub fn render<E: ToString>(
        &self,
        render: impl Fn(&str) -> Result<String, E>,
    ) -> Result<Invoice, String> {
        let r = |t: &str| render(t).map_err(|e| e.to_string());
        let mut items = Vec::with_capacity(self.line_items.len());
        for l in &self.line_items {
            let mut item = json!({
                "name": r(&l.name)?,
                "rate": number("rate", &r(&l.rate)?)?,
                "quantity": number("quantity", &r(&l.quantity)?)?,
            });
            if let Some(d) = &l.description {
                item["description"] = Value::String(r(d)?);
            }
            items.push(item);
        }
        let paid = match &self.paid {
            Some(p) => Some(Payment {
                amount: number("paid.amount", &r(&p.amount)?)?,
                mode: r(&p.mode)?,
                reference: p.reference.as_deref().map(r).transpose()?,
                date: match &p.date {
                    Some(d) => r(d)?,
                    None => chrono::Utc::now().format("%Y-%m-%d").to_string(),
                },
            }),
            None => None,
        };
        Ok(Invoice {
            reference: r(&self.reference)?,
            customer_name: r(&self.customer_name)?,
            email: r(&self.email)?,
            date: self.date.as_deref().map(r).transpose()?,
            line_items: items,
            paid,
        })
    }
}

impl InvoicesConfig {
    /// A call to the product's v3 API for this organisation.
    fn call(&self, method: Method, path: &str) -> Call<'static> {
        match self.product {
            InvoiceProduct::Books => {
                let mut c = Call::new(method, format!("/books/v3{path}"));
                c.query
                    .push(("organization_id", self.organization_id.clone()));
                c
            }
            InvoiceProduct::Invoice => {
                let mut c = Call::new(method, format!("/invoice/v3{path}"));
                c.headers.push((
                    "X-com-zoho-invoice-organizationid",
                    self.organization_id.clone(),
                ));
                c
            }
        }
    }
}

/// An invoice as Zoho holds it.
struct FoundInvoice {
    id: String,
    status: String,
    customer: String,
}

impl Zoho {
    /// Sends a Books/Invoice call; success is a 2xx answer with `code` 0.
    async fn books(&self, store: &Store, call: &Call<'_>) -> Result<Value, Failure> {
        let (status, body) = self.send(store, call).await?;
        if (200..300).contains(&status) && body["code"].as_i64() == Some(0) {
            Ok(body)
        } else {
            Err(Failure::Rejected(format!("{status} {}", message(&body))))
        }
    }

    async fn customer(
        &self,
        store: &Store,
        cfg: &InvoicesConfig,
        invoice: &Invoice,
    ) -> Result<String, Failure> {
        let mut find = cfg.call(Method::GET, "/contacts");
        find.query.push(("email", invoice.email.clone()));
        let found = self.books(store, &find).await?;
        let same = |c: &&Value| {
            c["email"]
                .as_str()
                .is_some_and(|e| e.eq_ignore_ascii_case(&invoice.email))
        };
        if let Some(id) = found["contacts"]
            .as_array()
            .and_then(|cs| cs.iter().find(same))
            .and_then(|c| c["contact_id"].as_str())
        {
            return Ok(id.to_owned());
        }
        let mut make = cfg.call(Method::POST, "/contacts");
        make.body = Some(json!({
            "contact_name": invoice.customer_name,
            "contact_type": "customer",
            "contact_persons": [{"email": invoice.email, "is_primary_contact": true}],
        }));
        let made = self.books(store, &make).await?;
        made["contact"]["contact_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Failure::Rejected("Zoho answered a contact without contact_id".into()))
    }

    /// The invoice with this reference, made for `customer` if there is none.
    async fn invoice(
        &self,
        store: &Store,
        cfg: &InvoicesConfig,
        customer: &str,
        invoice: &Invoice,
    ) -> Result<FoundInvoice, Failure> {
        let mut find = cfg.call(Method::GET, "/invoices");
        find.query
            .push(("reference_number", invoice.reference.clone()));
        let found = self.books(store, &find).await?;
        let existing = found["invoices"].as_array().and_then(|is| {
            is.iter()
                .find(|i| i["reference_number"].as_str() == Some(invoice.reference.as_str()))
        });
        // A found invoice is paid for its own customer, whoever the e-mail finds now (the
        // guest may have changed it, or two contacts share it): Zoho refuses any other.
        let pick = |i: &Value| {
            Some(FoundInvoice {
                id: i["invoice_id"].as_str()?.to_owned(),
                status: i["status"].as_str().unwrap_or("draft").to_owned(),
                customer: i["customer_id"].as_str().unwrap_or(customer).to_owned(),
            })
        };
        if let Some(found) = existing.and_then(pick) {
            return Ok(found);
        }
        let mut make = cfg.call(Method::POST, "/invoices");
        let mut body = json!({
            "customer_id": customer,
            "reference_number": invoice.reference,
            "line_items": invoice.line_items,
        });
        if let Some(d) = &invoice.date {
            body["date"] = Value::String(d.clone());
        }
        make.body = Some(body);
        let made = self.books(store, &make).await?;
        pick(&made["invoice"])
            .ok_or_else(|| Failure::Rejected("Zoho answered an invoice without invoice_id".into()))
    }

    async fn record_payment(
        &self,
        store: &Store,
        cfg: &InvoicesConfig,
        customer: &str,
        invoice_id: &str,
        status: &str,
        payment: &Payment,
    ) -> Result<String, Failure> {
        if status == "draft" {
            let sent = cfg.call(Method::POST, &format!("/invoices/{invoice_id}/status/sent"));
            self.books(store, &sent).await?;
        }
        let mut pay = cfg.call(Method::POST, "/customerpayments");
        let mut body = json!({
            "customer_id": customer,
            "payment_mode": payment.mode,
            "amount": payment.amount,
            "date": payment.date,
            "invoices": [{"invoice_id": invoice_id, "amount_applied": payment.amount}],
        });
        if let Some(r) = &payment.reference {
            body["reference_number"] = Value::String(r.clone());
        }
        pay.body = Some(body);
        let paid = self.books(store, &pay).await?;
        paid["payment"]["payment_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Failure::Rejected("Zoho answered a payment without payment_id".into()))
    }

    /// The invoice (and its customer) made if missing, then marked paid when the event is a
    /// payment; one sync record per step.
    pub(super) async fn sync_invoice(
        &self,
        store: &Store,
        invoice: Invoice,
        records: &mut Vec<SyncRecord>,
    ) -> Result<(), Failure> {
        let Some(cfg) = self.config.invoices.clone() else {
            return Err(Failure::Rejected(
                "the app's [apps.zoho] has no [apps.zoho.invoices]".into(),
            ));
        };
        let customer = self.customer(store, &cfg, &invoice).await;
        records.push(SyncRecord::of("CONTACT_UPSERT", "Customers", &customer));
        let customer = customer?;
        let made = self.invoice(store, &cfg, &customer, &invoice).await;
        let as_id = made.as_ref().map(|f| f.id.clone()).map_err(Clone::clone);
        records.push(SyncRecord::of("INVOICE_CREATE", "Invoices", &as_id));
        let FoundInvoice {
            id: invoice_id,
            status,
            customer,
        } = made?;
        let Some(payment) = &invoice.paid else {
            return Ok(());
        };
        if status == "paid" {
            records.push(SyncRecord::success(
                "INVOICE_MARK_PAID",
                "Invoices",
                &invoice_id,
            ));
            return Ok(());
        }
        let paid = self
            .record_payment(store, &cfg, &customer, &invoice_id, &status, payment)
            .await;
        records.push(SyncRecord::of(
            "INVOICE_MARK_PAID",
            "CustomerPayments",
            &paid,
        ));
        paid.map(drop)
    }
}
