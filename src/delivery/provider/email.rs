//! Email over SMTP (lettre): STARTTLS or implicit TLS, AUTH, an extra root CA for a private
//! relay, and a timeout on the whole send so a stalled server cannot hold a worker. A 4xx
//! answer or a dropped connection is retried; a 5xx is permanent.

use std::time::Duration;

use bellhop_protocol::Secret;
use futures_util::future::BoxFuture;
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::{Deserialize, Serialize};

use super::{Message, Outcome, Provider, Services};
use crate::delivery::attachments;
use crate::delivery::templates::render;
use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Plain connection upgraded with STARTTLS (required), port 587.
    #[default]
    Starttls,
    /// TLS from the first byte, port 465.
    Tls,
    /// No TLS (a relay on the same host).
    None,
}

/// `[apps.email]` in the config file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub host: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub security: Security,
    #[serde(default)]
    pub username: Option<String>,
    /// Kept in the store with the app; Debug and the admin API's answers leave it out.
    #[serde(default)]
    pub password: Option<Secret>,
    /// `Name <address>` the mail comes from.
    pub from: String,
    #[serde(default = "d_timeout")]
    pub timeout_secs: u64,
    /// A PEM root certificate to trust besides the public ones.
    #[serde(default)]
    pub ca_file: Option<String>,
}

fn d_timeout() -> u64 {
    30
}

#[derive(Debug, thiserror::Error)]
pub enum EmailSetupError {
    #[error("email from {0:?} is not a valid mailbox")]
    From(String),
    #[error("cannot read the SMTP CA file {0}")]
    Ca(String),
    #[error("SMTP TLS setup: {0}")]
    Tls(String),
}

pub struct File {
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

pub struct Mail {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
    pub attachments: Vec<File>,
    /// Stable per delivery, so a resend after a crash is recognisable as the same message.
    pub message_id: String,
}

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: Duration,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl EmailConfig {
    /// The sender must be a mailbox (`Grand Hotel <bookings@grandhotel.example>`).
    pub fn validate(&self) -> Result<(), EmailSetupError> {
        self.from
            .parse::<Mailbox>()
            .map(drop)
            .map_err(|_| EmailSetupError::From(self.from.clone()))
    }
}

impl Mailer {
    pub fn new(c: &EmailConfig) -> Result<Self, EmailSetupError> {
        let from: Mailbox = c
            .from
            .parse()
            .map_err(|_| EmailSetupError::From(c.from.clone()))?;
        let tls = || -> Result<TlsParameters, EmailSetupError> {
            let mut b = TlsParameters::builder(c.host.clone());
            if let Some(path) = &c.ca_file {
                let pem = std::fs::read(path).map_err(|_| EmailSetupError::Ca(path.clone()))?;
                let cert =
                    Certificate::from_pem(&pem).map_err(|_| EmailSetupError::Ca(path.clone()))?;
                b = b.add_root_certificate(cert);
            }
            b.build_rustls()
                .map_err(|e| EmailSetupError::Tls(e.to_string()))
        };
        let (tls, port) = match c.security {
            Security::Starttls => (Tls::Required(tls()?), 587),
            Security::Tls => (Tls::Wrapper(tls()?), 465),
            Security::None => (Tls::None, 25),
        };
        let timeout = Duration::from_secs(c.timeout_secs.max(1));
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&c.host)
            .port(c.port.unwrap_or(port))
            .tls(tls)
            .timeout(Some(timeout));
        if let (Some(u), Some(p)) = (&c.username, &c.password) {
            b = b.credentials(Credentials::new(u.clone(), p.expose().to_owned()));
        }
        Ok(Self {
            transport: b.build(),
            from,
            timeout,
        })
    }

    /// Sends `mail`: a 4xx answer, a dropped connection or a stall retry; a 5xx is permanent.
    pub async fn send_mail(&self, mail: Mail) -> Outcome {
        let to: Mailbox = match mail.to.parse() {
            Ok(m) => m,
            Err(_) => {
                return Outcome::RecipientGone(format!("{:?} is not an email address", mail.to))
            }
        };
        let text = SinglePart::plain(mail.text);
        let body = match mail.html {
            Some(html) => MultiPart::alternative()
                .singlepart(text)
                .singlepart(SinglePart::html(html)),
            None => MultiPart::mixed().singlepart(text),
        };
        let body = mail
            .attachments
            .into_iter()
            .fold(MultiPart::mixed().multipart(body), |m, f| {
                let ct = ContentType::parse(&f.content_type).unwrap_or(ContentType::TEXT_PLAIN);
                m.singlepart(Attachment::new(f.name).body(f.bytes, ct))
            });
        let message = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject)
            .message_id(Some(mail.message_id.clone()))
            .multipart(body);
        let message = match message {
            Ok(m) => m,
            Err(e) => return Outcome::Permanent(format!("cannot build the message: {e}")),
        };
        // The transport's own timeout covers each command; this covers the whole exchange.
        match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
            Err(_) => Outcome::Retry {
                after: None,
                reason: format!(
                    "the SMTP server did not finish within {} s",
                    self.timeout.as_secs()
                ),
            },
            Ok(Ok(response)) => {
                let text: Vec<&str> = response.message().collect();
                Outcome::Sent {
                    detail: format!("{} {}", response.code(), text.join(" ")),
                    provider_id: None,
                }
            }
            Ok(Err(e)) if e.is_permanent() => Outcome::Permanent(e.to_string()),
            Ok(Err(e)) => Outcome::Retry {
                after: None,
                reason: e.to_string(),
            },
        }
    }

    /// The message for a delivery: the address from the notification or the directory, the
    /// rendered subject, text and HTML, and the `.ics` and QR attachments the entry asks for.
    fn mail(&self, m: &Message<'_>) -> Result<Mail, Outcome> {
        let row = m.row;
        let to = row
            .address
            .clone()
            .or_else(|| m.profile.and_then(|p| p.email.clone()))
            .ok_or_else(|| Outcome::RecipientGone("no email address".into()))?;
        let mut files = Vec::new();
        if let Some(spec) = &m.spec.attach_ics {
            let uid = format!("notification-{}@bellhop", row.notification_id);
            let ics = attachments::ics(spec, m.vars, &uid)
                .map_err(|e| Outcome::Permanent(e.to_string()))?;
            files.push(ics);
        }
        if let Some(t) = &m.spec.attach_qr {
            let qr = render("attach_qr", t, m.vars, false)
                .map_err(attachments::AttachmentError::from)
                .and_then(|content| attachments::qr_png(&content))
                .map_err(|e| Outcome::Permanent(e.to_string()))?;
            files.push(qr);
        }
        Ok(Mail {
            to,
            subject: m.rendered.subject.clone(),
            text: m.rendered.body.clone(),
            html: m.rendered.html.clone(),
            attachments: files,
            message_id: format!("<delivery-{}-{}@bellhop>", row.id, row.created_at),
        })
    }
}

impl Provider for Mailer {
    fn name(&self) -> &'static str {
        "email"
    }

    fn send<'a>(
        &'a self,
        m: &'a Message<'a>,
        _: &'a Services<'a>,
    ) -> BoxFuture<'a, Result<Outcome, StoreError>> {
        Box::pin(async move {
            Ok(match self.mail(m) {
                Ok(mail) => self.send_mail(mail).await,
                Err(outcome) => outcome,
            })
        })
    }
}
