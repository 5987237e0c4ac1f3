//! The web pages as a browser without JavaScript uses them: a client that shows redirects
//! instead of following them, the login form, form bodies and the values of hidden fields.

use super::{OWNER_EMAIL, OWNER_PASSWORD, TestApp};

/// A client for the web pages: no proxy, redirects returned rather than followed.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Logs the owner in through the web form with `origin` and returns the whole `Set-Cookie`
/// header.
pub(crate) async fn login(app: &TestApp, origin: &str) -> String {
    let resp = client()
        .post(format!("{}/login", app.admin))
        .header("origin", origin)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("email", OWNER_EMAIL),
            ("password", OWNER_PASSWORD),
            ("next", "/"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    resp.headers()["set-cookie"].to_str().unwrap().to_owned()
}

/// Logs the owner in through the web form (same origin) and returns the `name=value` pair to
/// send back in a `Cookie` header.
pub(crate) async fn login_cookie(app: &TestApp) -> String {
    let set_cookie = login(app, &app.admin).await;
    set_cookie.split(';').next().unwrap_or_default().to_owned()
}

/// An `application/x-www-form-urlencoded` body of these pairs.
pub(crate) fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The value of the input named `name` in `html` (panics, showing the page, when it has none).
pub(crate) fn attr(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in page: {html}"))
        + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}
