//! Message templates: minijinja with `{{ customerName }}`-style variables from the event's
//! payload, the rule's captures and the recipient's profile. A missing variable is an error
//! recorded on the delivery, never a blank in a message; HTML is auto-escaped.

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde_json::{Map, Value};

use super::rules::Content;

#[derive(Debug, thiserror::Error)]
#[error("template {what}: {message}")]
pub struct TemplateError {
    pub what: &'static str,
    pub message: String,
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    env
}

/// Renders one template; `html` auto-escapes what the variables put in.
pub fn render(
    what: &'static str,
    source: &str,
    ctx: &Map<String, Value>,
    html: bool,
) -> Result<String, TemplateError> {
    let env = environment();
    let name = if html { "t.html" } else { "t.txt" };
    let err = |e: minijinja::Error| TemplateError {
        what,
        message: match e.detail() {
            Some(d) => format!("{}: {d}", e.kind()),
            None => e.kind().to_string(),
        },
    };
    let tmpl = env.template_from_named_str(name, source).map_err(err)?;
    tmpl.render(ctx).map_err(err)
}

/// The content for a recipient's locale: the exact locale (`pt-BR`), then its language
/// (`pt`), then the default.
pub fn for_locale<'a>(
    default: &'a Content,
    locales: &'a std::collections::BTreeMap<String, Content>,
    locale: Option<&str>,
) -> &'a Content {
    let Some(locale) = locale else {
        return default;
    };
    let lower = |s: &str| s.to_ascii_lowercase().replace('_', "-");
    let want = lower(locale);
    let language = want.split('-').next().unwrap_or("").to_owned();
    locales
        .iter()
        .find(|(k, _)| lower(k) == want)
        .or_else(|| locales.iter().find(|(k, _)| lower(k) == language))
        .map_or(default, |(_, c)| c)
}

/// What one channel sends, rendered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rendered {
    pub title: String,
    pub body: String,
    pub subject: String,
    pub html: Option<String>,
    pub data: Map<String, Value>,
}

pub fn render_content(c: &Content, ctx: &Map<String, Value>) -> Result<Rendered, TemplateError> {
    let opt = |what, s: &Option<String>| -> Result<String, TemplateError> {
        s.as_deref()
            .map_or(Ok(String::new()), |s| render(what, s, ctx, false))
    };
    let title = opt("title", &c.title)?;
    let body = opt("body", &c.body)?;
    let subject = match &c.subject {
        Some(s) => render("subject", s, ctx, false)?,
        None => title.clone(),
    };
    let html = c
        .html
        .as_deref()
        .map(|h| render("html", h, ctx, true))
        .transpose()?;
    let mut data = Map::new();
    for (k, v) in &c.data {
        data.insert(k.clone(), Value::String(render("data", v, ctx, false)?));
    }
    Ok(Rendered {
        title,
        body,
        subject,
        html,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn ctx(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn variables_render_and_a_missing_one_is_an_error() {
        let c = ctx(json!({"customerName": "Ana", "room_number": 101}));
        assert_eq!(
            render(
                "body",
                "Hello {{ customerName }}, room {{ room_number }}",
                &c,
                false
            )
            .unwrap(),
            "Hello Ana, room 101"
        );
        let e = render("body", "Hi {{ customer_name }}", &c, false).unwrap_err();
        assert_eq!(e.what, "body");
        assert!(e.message.contains("undefined"), "{}", e.message);
    }

    #[test]
    fn html_is_escaped_and_text_is_not() {
        let c = ctx(json!({"name": "<b>Ana</b> & co"}));
        assert_eq!(
            render("html", "<p>{{ name }}</p>", &c, true).unwrap(),
            "<p>&lt;b&gt;Ana&lt;&#x2f;b&gt; &amp; co</p>"
        );
        assert_eq!(
            render("body", "{{ name }}", &c, false).unwrap(),
            "<b>Ana</b> & co"
        );
    }

    #[test]
    fn locale_falls_back_to_language_then_default() {
        let default = Content {
            title: Some("en".into()),
            ..Default::default()
        };
        let fr = Content {
            title: Some("fr".into()),
            ..Default::default()
        };
        let pt_br = Content {
            title: Some("pt-BR".into()),
            ..Default::default()
        };
        let locales = BTreeMap::from([("fr".to_string(), fr), ("pt-BR".to_string(), pt_br)]);
        let pick = |l| for_locale(&default, &locales, l).title.clone().unwrap();
        assert_eq!(pick(Some("fr-CA")), "fr");
        assert_eq!(pick(Some("pt_br")), "pt-BR");
        assert_eq!(pick(Some("de")), "en");
        assert_eq!(pick(None), "en");
    }

    #[test]
    fn content_renders_every_part() {
        let c = Content {
            title: Some("Order {{ id }}".into()),
            body: None,
            subject: None,
            html: Some("<i>{{ id }}</i>".into()),
            data: BTreeMap::from([("order_id".to_string(), "{{ id }}".to_string())]),
        };
        let r = render_content(&c, &ctx(json!({"id": 7}))).unwrap();
        assert_eq!(r.subject, "Order 7");
        assert_eq!(r.html.as_deref(), Some("<i>7</i>"));
        assert_eq!(r.data["order_id"], "7");
    }
}
