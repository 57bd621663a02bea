//! Email attachments built from the event: an `.ics` calendar invite (RFC 5545) for a booking's
//! start and end, and a QR code (PNG) of a ticket or booking reference.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::provider::email::File;
use super::rules::field;
use super::templates::{render, TemplateError};

/// `attach_ics = { summary = "{{ title }}", start = "start_at", end = "end_at" }`: templates
/// for the text, payload fields for the times.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IcsSpec {
    pub summary: String,
    pub start: String,
    #[serde(default)]
    pub end: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Stable per booking, so that a calendar replaces the event on a reschedule.
    #[serde(default)]
    pub uid: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AttachmentError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("attach_ics: field {0:?} is not a time (RFC 3339, or Unix seconds or ms)")]
    Time(String),
    #[error("attach_qr: {0}")]
    Qr(String),
}

fn time_of(ctx: &Map<String, Value>, name: &str) -> Result<DateTime<Utc>, AttachmentError> {
    let v = field(&Value::Object(ctx.clone()), name).cloned();
    let bad = || AttachmentError::Time(name.to_owned());
    match v {
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| bad()),
        Some(Value::Number(n)) => {
            let n = n.as_i64().ok_or_else(bad)?;
            let ms = if n < 100_000_000_000 { n * 1000 } else { n };
            DateTime::from_timestamp_millis(ms).ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

/// RFC 5545 text: backslash, comma, semicolon and newlines escaped.
fn text(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace(';', "\\;")
        .replace(',', "\\,")
        .replace("\r\n", "\\n")
        .replace('\n', "\\n")
}

/// Lines longer than 75 octets continue on the next line after a space (RFC 5545 3.1).
fn fold(line: &str) -> String {
    let mut out = String::new();
    let mut len = 0;
    for c in line.chars() {
        if len + c.len_utf8() > 75 {
            out.push_str("\r\n ");
            len = 1;
        }
        out.push(c);
        len += c.len_utf8();
    }
    out.push_str("\r\n");
    out
}

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

pub fn ics(
    spec: &IcsSpec,
    ctx: &Map<String, Value>,
    fallback_uid: &str,
) -> Result<File, AttachmentError> {
    let start = time_of(ctx, &spec.start)?;
    let end = match &spec.end {
        Some(e) => time_of(ctx, e)?,
        None => start + chrono::Duration::hours(1),
    };
    let uid = match &spec.uid {
        Some(u) => render("attach_ics.uid", u, ctx, false)?,
        None => fallback_uid.to_owned(),
    };
    let mut lines = vec![
        "BEGIN:VCALENDAR".to_owned(),
        "VERSION:2.0".to_owned(),
        "PRODID:-//bellhop//notifications//EN".to_owned(),
        "METHOD:PUBLISH".to_owned(),
        "BEGIN:VEVENT".to_owned(),
        format!("UID:{}", text(&uid)),
        format!("DTSTAMP:{}", stamp(Utc::now())),
        format!("DTSTART:{}", stamp(start)),
        format!("DTEND:{}", stamp(end)),
        format!(
            "SUMMARY:{}",
            text(&render("attach_ics.summary", &spec.summary, ctx, false)?)
        ),
    ];
    if let Some(l) = &spec.location {
        lines.push(format!(
            "LOCATION:{}",
            text(&render("attach_ics.location", l, ctx, false)?)
        ));
    }
    if let Some(d) = &spec.description {
        lines.push(format!(
            "DESCRIPTION:{}",
            text(&render("attach_ics.description", d, ctx, false)?)
        ));
    }
    lines.push("END:VEVENT".into());
    lines.push("END:VCALENDAR".into());
    let body: String = lines.iter().map(|l| fold(l)).collect();
    Ok(File {
        name: "invite.ics".into(),
        content_type: "text/calendar; charset=utf-8; method=PUBLISH".into(),
        bytes: body.into_bytes(),
    })
}

/// A QR code of `content` as a PNG: 8 pixels a module, a 4-module quiet zone.
pub fn qr_png(content: &str) -> Result<File, AttachmentError> {
    const SCALE: usize = 8;
    const QUIET: usize = 4;
    let code =
        qrcode::QrCode::new(content.as_bytes()).map_err(|e| AttachmentError::Qr(e.to_string()))?;
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, c) in colors.iter().enumerate() {
        if *c == qrcode::Color::Dark {
            let (mx, my) = (i % modules + QUIET, i / modules + QUIET);
            for y in my * SCALE..(my + 1) * SCALE {
                pixels[y * side + mx * SCALE..y * side + (mx + 1) * SCALE].fill(0);
            }
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, side as u32, side as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc
            .write_header()
            .map_err(|e| AttachmentError::Qr(e.to_string()))?;
        w.write_image_data(&pixels)
            .map_err(|e| AttachmentError::Qr(e.to_string()))?;
    }
    Ok(File {
        name: "qr.png".into(),
        content_type: "image/png".into(),
        bytes: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_invite_for_the_booking_times_with_escaped_text() {
        let ctx = json!({"title": "Spa, sauna; pool", "start_at": "2026-12-24T18:00:00+03:00",
            "end_at": 1_798_131_600, "venue": "Level 2\nEast wing"});
        let spec = IcsSpec {
            summary: "{{ title }}".into(),
            start: "start_at".into(),
            end: Some("end_at".into()),
            location: Some("{{ venue }}".into()),
            description: None,
            uid: Some("booking-{{ title | length }}@grand".into()),
        };
        let f = ics(&spec, ctx.as_object().unwrap(), "x").unwrap();
        let s = String::from_utf8(f.bytes).unwrap();
        assert!(s.contains("DTSTART:20261224T150000Z\r\n"), "{s}");
        assert!(s.contains("DTEND:20261224T170000Z\r\n"), "{s}");
        assert!(s.contains("SUMMARY:Spa\\, sauna\\; pool\r\n"), "{s}");
        assert!(s.contains("LOCATION:Level 2\\nEast wing\r\n"), "{s}");
        assert!(s.contains("UID:booking-16@grand\r\n"), "{s}");
        assert!(s.starts_with("BEGIN:VCALENDAR\r\n") && s.ends_with("END:VCALENDAR\r\n"));
        let missing = ics(&spec, json!({"title": "x"}).as_object().unwrap(), "x");
        assert!(matches!(missing, Err(AttachmentError::Time(_))));
    }

    #[test]
    fn long_lines_fold_at_75_octets() {
        let f = fold(&format!("SUMMARY:{}", "é".repeat(60)));
        for line in f.split("\r\n").filter(|l| !l.is_empty()) {
            assert!(line.len() <= 75, "{} octets", line.len());
        }
    }

    #[test]
    fn qr_codes_are_png_images() {
        let f = qr_png("BOOKING B-77").unwrap();
        assert_eq!(&f.bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(f.content_type, "image/png");
    }
}
