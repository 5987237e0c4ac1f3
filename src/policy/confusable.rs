//! Look-alike hosts. A service host reaches the approver in two forms that must both be seen: the
//! A-label (`xn--...`), which is what the proxy routes on, and the Unicode form a browser would
//! display. Hosts whose Unicode form mixes scripts or uses characters that UTS #39 lists as
//! confusable across scripts (`api.strіpe.com` with a Cyrillic і), and hosts whose UTS #39
//! skeleton equals that of a host the vault already binds (`api.stripe.corn` against
//! `api.stripe.com`), are flagged so a person confirms them explicitly.

use unicode_security::mixed_script::AugmentedScriptSet;
use unicode_security::{MixedScript, is_potential_mixed_script_confusable_char, skeleton};

use super::service::HostPattern;

/// A service host pattern in the two forms an approver must see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostForms {
    /// ASCII only: the canonical A-label host with its wildcard, port and path as written.
    pub ascii: String,
    /// The host decoded to Unicode (equal to `ascii` for plain ASCII names).
    pub unicode: String,
    /// The bare canonical host (A-labels, no `*.`, port or path), for comparisons.
    pub host: String,
}

impl HostForms {
    /// Both forms of a service's `host` pattern. A pattern that does not parse (never the case
    /// for stored or validated services) is shown with every non-ASCII character escaped.
    pub fn of(pattern: &str) -> Self {
        let Ok(p) = HostPattern::parse(pattern) else {
            let ascii = escape_non_ascii(pattern);
            return Self {
                host: ascii.clone(),
                ascii,
                unicode: pattern.to_owned(),
            };
        };
        let (decoded, ok) = idna::domain_to_unicode(&p.host);
        // A label that does not decode stays in its A-label form: never show a guess.
        let unicode_host = if ok.is_ok() { decoded } else { p.host.clone() };
        let dress = |host: &str| {
            let mut s = String::new();
            if p.wildcard {
                s.push_str("*.");
            }
            s.push_str(host);
            if let Some(port) = p.port {
                s.push_str(&format!(":{port}"));
            }
            if let Some(path) = &p.path {
                s.push_str(path);
            }
            s
        };
        Self {
            ascii: dress(&p.host),
            unicode: dress(&unicode_host),
            host: p.host,
        }
    }

    /// Whether the Unicode form differs from the A-label form.
    pub fn is_internationalized(&self) -> bool {
        self.ascii != self.unicode
    }

    /// One line for risk texts and the CLI: the A-label, and the Unicode form beside it when
    /// they differ.
    pub fn describe(&self) -> String {
        if self.is_internationalized() {
            format!("{} (displayed as {})", self.ascii, self.unicode)
        } else {
            self.ascii.clone()
        }
    }

    /// The bare host in Unicode (no `*.`, port or path).
    fn unicode_host(&self) -> String {
        let (decoded, ok) = idna::domain_to_unicode(&self.host);
        if ok.is_ok() {
            decoded
        } else {
            self.host.clone()
        }
    }
}

fn escape_non_ascii(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c.to_string()
            } else {
                format!("\\u{{{:04x}}}", u32::from(c))
            }
        })
        .collect()
}

/// A non-ASCII character of a host, named for a person: `і U+0456 (Cyrillic)`.
pub fn describe_char(c: char) -> String {
    format!(
        "{c} U+{:04X} ({})",
        u32::from(c),
        AugmentedScriptSet::for_char(c)
    )
}

/// What looks wrong about one host on its own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Confusables {
    /// Labels (Unicode form) whose characters come from more than one script.
    pub mixed_script_labels: Vec<String>,
    /// Non-ASCII characters that UTS #39 lists as confusable with a character of another script.
    pub confusable_chars: Vec<char>,
}

impl Confusables {
    /// Whether anything was found.
    pub fn is_empty(&self) -> bool {
        self.mixed_script_labels.is_empty() && self.confusable_chars.is_empty()
    }
}

/// Mixed scripts per label and cross-script confusable characters in a host's Unicode form.
/// ASCII names are never flagged here (their look-alikes are caught by [`lookalike_of`]).
pub fn confusables(forms: &HostForms) -> Confusables {
    let unicode = forms.unicode_host();
    let mut out = Confusables::default();
    for label in unicode.split('.') {
        if !label.is_ascii() && !label.is_single_script() {
            out.mixed_script_labels.push(label.to_owned());
        }
    }
    for c in unicode.chars() {
        // A combining mark (U+0307 after an `i`) renders as part of the letter before it, so
        // `stri\u{307}pe` reads as `stripe` while being neither mixed-script nor listed as
        // confusable: any mark in a host is flagged.
        let suspicious = is_potential_mixed_script_confusable_char(c)
            || unicode_normalization::char::is_combining_mark(c);
        if !c.is_ascii() && suspicious && !out.confusable_chars.contains(&c) {
            out.confusable_chars.push(c);
        }
    }
    out
}

/// The UTS #39 skeleton of a bare host's Unicode form with accents and other combining marks
/// removed: two hosts with equal skeletons read alike. UTS #39 keeps marks (`í` is not `i` to
/// it), but at a glance in an approval page `api.strípe.com` passes for `api.stripe.com`.
pub fn host_skeleton(forms: &HostForms) -> String {
    use unicode_normalization::UnicodeNormalization;
    let bare: String = forms
        .unicode_host()
        .nfd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .collect();
    skeleton(&bare).collect()
}

/// The first of `existing` that `candidate` is a look-alike of: an equal skeleton but another
/// host. Each entry of `existing` is (label for people, its forms).
pub fn lookalike_of<'a, T>(
    candidate: &HostForms,
    existing: &'a [(T, HostForms)],
) -> Option<&'a (T, HostForms)> {
    let skel = host_skeleton(candidate);
    existing
        .iter()
        .find(|(_, other)| other.host != candidate.host && host_skeleton(other) == skel)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CYRILLIC_I: &str = "api.str\u{0456}pe.com";

    #[test]
    fn forms_show_the_a_label_beside_the_unicode_form() {
        let f = HostForms::of(CYRILLIC_I);
        assert!(f.ascii.starts_with("api.xn--"), "{f:?}");
        assert!(f.ascii.is_ascii());
        assert_eq!(f.unicode, CYRILLIC_I);
        assert!(f.is_internationalized());
        assert!(f.describe().contains(&f.ascii) && f.describe().contains(CYRILLIC_I));
        // A stored A-label decodes to the same pair.
        assert_eq!(HostForms::of(&f.ascii), f);
        // Wildcards, ports and paths are kept around both forms.
        let w = HostForms::of("*.b\u{00FC}cher.example:8443/v1/*");
        assert_eq!(w.ascii, "*.xn--bcher-kva.example:8443/v1/*");
        assert_eq!(w.unicode, "*.b\u{00FC}cher.example:8443/v1/*");
        assert_eq!(w.host, "xn--bcher-kva.example");
        let plain = HostForms::of("API.Stripe.com");
        assert_eq!(plain.ascii, "api.stripe.com");
        assert!(!plain.is_internationalized());
        assert_eq!(plain.describe(), "api.stripe.com");
        // Never parsed: nothing non-ASCII reaches the ASCII form.
        let bad = HostForms::of("a\u{0456} b");
        assert!(bad.ascii.is_ascii(), "{bad:?}");
    }

    #[test]
    fn combining_marks_and_accents_do_not_hide_a_lookalike() {
        let dotted = HostForms::of("api.stri\u{0307}pe.com");
        assert!(
            confusables(&dotted).confusable_chars.contains(&'\u{0307}'),
            "{dotted:?}"
        );
        let existing = [("stripe", HostForms::of("api.stripe.com"))];
        for host in ["api.stri\u{0307}pe.com", "api.str\u{00ED}pe.com"] {
            assert!(
                lookalike_of(&HostForms::of(host), &existing).is_some(),
                "{host}"
            );
        }
        // An accented name with nothing like it in the vault is not a risk by itself.
        assert!(confusables(&HostForms::of("b\u{00FC}cher.example")).is_empty());
    }

    #[test]
    fn cyrillic_letter_in_a_latin_name_is_mixed_script_and_confusable() {
        let c = confusables(&HostForms::of(CYRILLIC_I));
        assert_eq!(c.mixed_script_labels, vec!["str\u{0456}pe".to_owned()]);
        assert_eq!(c.confusable_chars, vec!['\u{0456}']);
        assert_eq!(describe_char('\u{0456}'), "\u{0456} U+0456 (Cyrillic)");
        // A whole label in Cyrillic look-alikes is single-script but still confusable.
        let whole = confusables(&HostForms::of("\u{0430}\u{0440}\u{0440}.com"));
        assert!(whole.mixed_script_labels.is_empty());
        assert!(!whole.confusable_chars.is_empty());
        // Greek omicron inside a Latin label.
        assert!(!confusables(&HostForms::of("g\u{03BF}ogle.com")).is_empty());
    }

    #[test]
    fn ordinary_names_are_not_flagged() {
        for host in [
            "api.stripe.com",
            "*.github.com",
            "b\u{00FC}cher.example",
            "api.example.test:8443/v1/*",
            "xn--bcher-kva.example",
        ] {
            assert!(confusables(&HostForms::of(host)).is_empty(), "{host}");
        }
    }

    #[test]
    fn skeletons_catch_lookalikes_of_existing_bindings() {
        let existing: Vec<(&str, HostForms)> = ["api.stripe.com", "*.github.com"]
            .into_iter()
            .map(|h| (h, HostForms::of(h)))
            .collect();
        let hit = |h: &str| lookalike_of(&HostForms::of(h), &existing).map(|(n, _)| *n);
        // rn reads as m.
        assert_eq!(hit("api.stripe.corn"), Some("api.stripe.com"));
        assert_eq!(hit(CYRILLIC_I), Some("api.stripe.com"));
        assert_eq!(hit("*.g\u{0456}thub.com"), Some("*.github.com"));
        // The same host is not a look-alike of itself, in any spelling.
        assert_eq!(hit("API.stripe.com"), None);
        assert_eq!(hit("api.stripe.com:8443"), None);
        assert_eq!(hit("api.github.com"), None);
        assert_eq!(hit("api.stripe.org"), None);
    }
}
