//! Server-rendered HTML: an escaping helper and the page skeleton. Every dynamic value goes
//! through [`esc`]; agent-written text is untrusted and never becomes markup.

use std::fmt::Write;

/// Escapes text for HTML element content and double-quoted attributes.
pub(super) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page skeleton: no inline script or style, one stylesheet from our own origin.
pub(super) fn page(title: &str, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 512);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · agent-vault</title><link rel=\"stylesheet\" href=\"/static/app.css\"></head>\
         <body><header><a class=\"brand\" href=\"/\">agent-vault</a></header><main>{}</main></body></html>\n",
        esc(title),
        body
    );
    out
}

/// The stylesheet (served from `/static/app.css` so the CSP needs no inline styles).
pub(super) const STYLESHEET: &str = r#"
:root { color-scheme: light; --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --warn-bg: #fff8c5; --warn: #7d4e00; --ok: #1a7f37; --bad: #cf222e; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: #f6f8fa; }
header { background: #24292f; padding: 10px 24px; }
header .brand { color: #fff; font-weight: 600; text-decoration: none; }
main { max-width: 860px; margin: 24px auto; background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 24px 32px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 24px 0 8px; }
.meta { color: var(--muted); margin: 0 0 16px; }
.message { white-space: pre-wrap; background: #f6f8fa; border-left: 4px solid var(--line); padding: 8px 12px; margin: 8px 0 16px; }
table { width: 100%; border-collapse: collapse; margin: 8px 0; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: 13px; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, monospace; background: #f6f8fa; padding: 1px 4px; border-radius: 4px; }
.risk { background: var(--warn-bg); color: var(--warn); border: 1px solid #eac54f; border-radius: 6px; padding: 8px 12px; margin: 6px 0; }
.notice { background: #ddf4ff; border: 1px solid #54aeff; border-radius: 6px; padding: 8px 12px; margin: 6px 0; }
.status { display: inline-block; padding: 2px 8px; border-radius: 12px; font-size: 13px; font-weight: 600; background: #eaeef2; }
.status.applied { background: #dafbe1; color: var(--ok); }
.status.rejected, .status.expired { background: #ffebe9; color: var(--bad); }
.error { background: #ffebe9; color: var(--bad); border: 1px solid #ff8182; border-radius: 6px; padding: 8px 12px; }
.success { background: #dafbe1; color: var(--ok); border: 1px solid #4ac26b; border-radius: 6px; padding: 8px 12px; }
form { margin: 12px 0; }
label { display: block; font-weight: 600; margin: 12px 0 4px; }
label.inline { display: inline; font-weight: 400; margin: 0; }
input[type=text], input[type=email], input[type=password], textarea { width: 100%; padding: 6px 8px; border: 1px solid var(--line); border-radius: 6px; font: inherit; }
.hint { color: var(--muted); font-size: 13px; margin: 2px 0 0; }
.actions { display: flex; gap: 12px; margin-top: 16px; }
button { font: inherit; font-weight: 600; padding: 6px 16px; border-radius: 6px; border: 1px solid var(--line); cursor: pointer; background: #f6f8fa; }
button.approve { background: #1f883d; color: #fff; border-color: #1a7f37; }
button.reject { background: #fff; color: var(--bad); border-color: var(--bad); }
details { margin: 8px 0; }
.agent-url { margin: 4px 0; }
.agent-url code { display: block; word-break: break-all; margin-top: 2px; }
.agent-warning { color: var(--warn); font-size: 13px; }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script>\"&"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;"
        );
        assert!(page("<t>", "").contains("&lt;t&gt;"));
    }
}
