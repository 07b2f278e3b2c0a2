//! Typed page building for the console: every value put into a page goes through [`esc`] (or
//! is [`Html`] built here), so nothing a person or an identity provider typed becomes markup.

use std::fmt::Write;

/// Markup that is safe to put into a page as it is.
#[derive(Debug, Clone, Default)]
pub struct Html(String);

impl Html {
    pub fn new() -> Html {
        Html(String::new())
    }

    /// Markup written by this module's callers as literals (never data).
    pub fn raw(markup: &'static str) -> Html {
        Html(markup.to_owned())
    }

    /// Markup produced by a trusted renderer (the QR code's SVG).
    pub(crate) fn trusted(markup: String) -> Html {
        Html(markup)
    }

    pub fn push(&mut self, more: Html) -> &mut Html {
        self.0.push_str(&more.0);
        self
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Escape text for HTML element content and double-quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// `<tag>text</tag>` with the text escaped.
pub fn text(tag: &'static str, content: &str) -> Html {
    Html(format!("<{tag}>{}</{tag}>", esc(content)))
}

/// A paragraph of escaped text with a CSS class.
pub fn note(class: &'static str, content: &str) -> Html {
    Html(format!("<p class=\"{class}\">{}</p>", esc(content)))
}

/// A table with escaped header and cell texts.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> Html {
    let rows: Vec<Vec<Html>> = rows.iter().map(|row| row.iter().map(|text| cell(text)).collect()).collect();
    rich_table(headers, &rows)
}

/// A link with an escaped address and label.
pub fn link(href: &str, label: &str) -> Html {
    Html(format!("<a href=\"{}\">{}</a>", esc(href), esc(label)))
}

/// A link that looks like a button (an action that is a plain GET, such as leaving for the
/// identity provider).
pub fn button_link(href: &str, label: &str) -> Html {
    Html(format!("<p><a class=\"button\" href=\"{}\">{}</a></p>", esc(href), esc(label)))
}

/// Escaped text as a table cell's content.
pub fn cell(content: &str) -> Html {
    Html(esc(content))
}

/// A table whose cells are built markup (links, forms) rather than plain text.
pub fn rich_table(headers: &[&str], rows: &[Vec<Html>]) -> Html {
    let mut out = String::from("<table><thead><tr>");
    for header in headers {
        let _ = write!(out, "<th scope=\"col\">{}</th>", esc(header));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", cell.0);
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    Html(out)
}

/// A definition list of escaped labels and values.
pub fn facts(items: &[(&str, String)]) -> Html {
    let mut out = String::from("<dl class=\"facts\">");
    for (label, value) in items {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", esc(label), esc(value));
    }
    out.push_str("</dl>");
    Html(out)
}

/// One control of a GET filter form: a text input, or a select of `options` (with "any").
pub struct Filter<'a> {
    pub name: &'static str,
    pub label: &'static str,
    pub value: &'a str,
    pub options: &'a [&'a str],
}

/// A GET form of filters that narrows the list on the page.
pub fn filters(action: &str, controls: &[Filter<'_>]) -> Html {
    let mut out = format!("<form method=\"get\" action=\"{}\" class=\"filters\">", esc(action));
    for control in controls {
        let _ = write!(out, "<label for=\"{name}\">{}</label>", esc(control.label), name = control.name);
        if control.options.is_empty() {
            let _ = write!(
                out,
                "<input id=\"{name}\" name=\"{name}\" value=\"{}\">",
                esc(control.value),
                name = control.name
            );
        } else {
            let _ = write!(
                out,
                "<select id=\"{name}\" name=\"{name}\"><option value=\"\">any</option>",
                name = control.name
            );
            for option in control.options {
                let selected = if *option == control.value { " selected" } else { "" };
                let _ = write!(out, "<option{selected}>{}</option>", esc(option));
            }
            out.push_str("</select>");
        }
    }
    out.push_str("<button type=\"submit\">Filter</button></form>");
    Html(out)
}

/// One input of a form.
pub struct Field<'a> {
    pub name: &'static str,
    pub label: &'static str,
    pub kind: &'static str,
    pub value: &'a str,
    pub autocomplete: &'static str,
}

/// A POST form with a CSRF token, labelled inputs and one submit button.
pub fn form(action: &str, csrf: &str, fields: &[Field<'_>], submit: &'static str) -> Html {
    form_with(action, csrf, &[], fields, submit)
}

/// [`form`] with hidden values carried along.
pub fn form_with(
    action: &str,
    csrf: &str,
    hidden: &[(&'static str, &str)],
    fields: &[Field<'_>],
    submit: &'static str,
) -> Html {
    let mut out = format!("<form method=\"post\" action=\"{}\">", esc(action));
    let _ = write!(out, "<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(csrf));
    for (name, value) in hidden {
        let _ = write!(out, "<input type=\"hidden\" name=\"{name}\" value=\"{}\">", esc(value));
    }
    for field in fields {
        let _ = write!(
            out,
            "<label for=\"{name}\">{label}</label><input id=\"{name}\" name=\"{name}\" type=\"{kind}\" value=\"{value}\" autocomplete=\"{autocomplete}\" required>",
            name = field.name,
            label = esc(field.label),
            kind = field.kind,
            value = esc(field.value),
            autocomplete = field.autocomplete,
        );
    }
    let _ = write!(out, "<button type=\"submit\">{}</button></form>", esc(submit));
    Html(out)
}

/// Who is looking at a page, for its navigation.
pub struct Viewer<'a> {
    pub email: &'a str,
    pub admin: bool,
    /// Reads everyone's audit events.
    pub auditor: bool,
    /// Sees deployment settings.
    pub super_admin: bool,
    pub csrf: &'a str,
}

/// A whole page: title, navigation (when signed in) and content.
pub fn page(title: &str, viewer: Option<&Viewer<'_>>, content: Html) -> String {
    let mut out = String::from("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    let _ = write!(out, "<title>{} · Portcullis</title>", esc(title));
    out.push_str("<link rel=\"stylesheet\" href=\"/console/style.css\"></head><body>");
    out.push_str("<header><a class=\"brand\" href=\"/console\">Portcullis</a>");
    if let Some(viewer) = viewer {
        out.push_str("<nav aria-label=\"Main\"><a href=\"/console\">My servers</a>");
        out.push_str(if viewer.auditor {
            "<a href=\"/console/audit\">Audit log</a>"
        } else {
            "<a href=\"/console/audit\">My activity</a>"
        });
        out.push_str("<a href=\"/console/catalog\">Catalog</a>");
        out.push_str("<a href=\"/console/requests\">Requests</a><a href=\"/console/inbox\">Inbox</a>");
        out.push_str("<a href=\"/console/mfa\">Two-step sign-in</a>");
        if viewer.admin {
            out.push_str("<a href=\"/console/servers\">Servers</a>");
            out.push_str("<a href=\"/console/users\">Users</a><a href=\"/console/groups\">Groups</a>");
            out.push_str("<a href=\"/console/policies\">Policies</a>");
            // Sections that arrive with later parts of Portcullis: named, not yet links.
            for (section, arrives) in
                [("Agents", "agent accounts"), ("Analytics", "analytics"), ("Alerts", "security alerts")]
            {
                let _ = write!(
                    out,
                    "<span class=\"later\" aria-disabled=\"true\" title=\"Not available yet: arrives with {arrives}\">{section}</span>"
                );
            }
        }
        if viewer.super_admin {
            out.push_str("<a href=\"/console/settings\">Settings</a>");
        }
        out.push_str("</nav>");
        let _ = write!(
            out,
            "<form class=\"signout\" method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><span>{}</span><button type=\"submit\">Sign out</button></form>",
            esc(viewer.csrf),
            esc(viewer.email)
        );
    }
    out.push_str("</header><main>");
    let _ = write!(out, "<h1>{}</h1>", esc(title));
    out.push_str(&content.0);
    out.push_str("</main></body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_never_becomes_markup() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        let rendered = table(&["name"], &[vec!["<img src=x onerror=alert(1)>".into()]]).into_string();
        assert!(!rendered.contains("<img"), "{rendered}");
        let page = page("<b>", None, text("p", "\"><script>")).to_string();
        assert!(!page.contains("<script>") && !page.contains("<b>"), "{page}");
    }
}
