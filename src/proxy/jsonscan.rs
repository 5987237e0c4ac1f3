//! A small JSON scanner for substitution: it finds string tokens with their byte spans, decoded
//! values and JSON Pointer paths, so a placeholder is replaced in place (everything else in the
//! document stays byte for byte as the agent sent it) and only at the pointer a service declares.
//! Re-serializing a parsed value instead would reorder keys and round large numbers.

use std::ops::Range;

/// Documents nested deeper than this are not inspected (and so get no substitution).
const MAX_DEPTH: usize = 128;

/// A string token that the caller asked about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Found {
    /// Bytes of the token, quotes included.
    pub span: Range<usize>,
    /// The decoded text.
    pub value: String,
    /// The JSON Pointer tokens of the value (for a key: of the object holding it).
    pub pointer: Vec<String>,
    /// The string is an object key, not a value.
    pub is_key: bool,
}

/// The document is not JSON this scanner reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Malformed;

/// Every string (key or value) for which `interesting` holds, in document order.
pub(super) fn scan(
    doc: &[u8],
    interesting: &dyn Fn(&str) -> bool,
) -> Result<Vec<Found>, Malformed> {
    let text = std::str::from_utf8(doc).map_err(|_| Malformed)?;
    let mut p = Parser {
        b: text.as_bytes(),
        text,
        i: 0,
        path: Vec::new(),
        out: Vec::new(),
        interesting,
    };
    p.value(0)?;
    p.ws();
    if p.i != p.b.len() {
        return Err(Malformed);
    }
    Ok(p.out)
}

struct Parser<'a> {
    b: &'a [u8],
    text: &'a str,
    i: usize,
    path: Vec<String>,
    out: Vec<Found>,
    interesting: &'a dyn Fn(&str) -> bool,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Result<u8, Malformed> {
        self.b.get(self.i).copied().ok_or(Malformed)
    }

    fn expect(&mut self, c: u8) -> Result<(), Malformed> {
        self.ws();
        if self.peek()? != c {
            return Err(Malformed);
        }
        self.i += 1;
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<(), Malformed> {
        if depth > MAX_DEPTH {
            return Err(Malformed);
        }
        self.ws();
        match self.peek()? {
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b'"' => {
                let start = self.i;
                let value = self.string()?;
                if (self.interesting)(&value) {
                    self.out.push(Found {
                        span: start..self.i,
                        value,
                        pointer: self.path.clone(),
                        is_key: false,
                    });
                }
                Ok(())
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(Malformed),
        }
    }

    /// A number as RFC 8259 writes it: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    /// A looser reading (`01`, `1.`, `-.5`) would take as JSON what the upstream's parser refuses.
    fn number(&mut self) -> Result<(), Malformed> {
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits()?,
            _ => return Err(Malformed),
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            self.digits()?;
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.digits()?;
        }
        Ok(())
    }

    /// One or more digits.
    fn digits(&mut self) -> Result<(), Malformed> {
        let start = self.i;
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        if self.i == start {
            return Err(Malformed);
        }
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Malformed> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), Malformed> {
        self.i += 1;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.peek()? != b'"' {
                return Err(Malformed);
            }
            let start = self.i;
            let key = self.string()?;
            if (self.interesting)(&key) {
                self.out.push(Found {
                    span: start..self.i,
                    value: key.clone(),
                    pointer: self.path.clone(),
                    is_key: true,
                });
            }
            self.expect(b':')?;
            self.path.push(key);
            self.value(depth + 1)?;
            self.path.pop();
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Malformed),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), Malformed> {
        self.i += 1;
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            return Ok(());
        }
        let mut index = 0usize;
        loop {
            self.path.push(index.to_string());
            self.value(depth + 1)?;
            self.path.pop();
            index += 1;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Malformed),
            }
        }
    }

    /// Reads a string token starting at its opening quote and returns its decoded text.
    fn string(&mut self) -> Result<String, Malformed> {
        self.i += 1;
        let mut out = String::new();
        loop {
            let run = self.i;
            while self.i < self.b.len() && !matches!(self.b[self.i], b'"' | b'\\' | 0..=0x1f) {
                self.i += 1;
            }
            // The document is valid UTF-8 and the run stops only at ASCII bytes.
            out.push_str(&self.text[run..self.i]);
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Ok(out);
                }
                b'\\' => {
                    self.i += 1;
                    let c = self.peek()?;
                    self.i += 1;
                    match c {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if !self.b[self.i..].starts_with(b"\\u") {
                                    return Err(Malformed);
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(Malformed);
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            out.push(char::from_u32(code).ok_or(Malformed)?);
                        }
                        _ => return Err(Malformed),
                    }
                }
                _ => return Err(Malformed),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, Malformed> {
        let digits = self.text.get(self.i..self.i + 4).ok_or(Malformed)?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Malformed);
        }
        self.i += 4;
        u32::from_str_radix(digits, 16).map_err(|_| Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(doc: &str) -> Result<Vec<Found>, Malformed> {
        scan(doc.as_bytes(), &|_| true)
    }

    #[test]
    fn strings_get_spans_values_and_pointers() {
        let doc =
            r#" {"a": {"b~/": ["x", "y\u005f\ud83d\ude00"]}, "n": -1.5e3, "t": [true, null]} "#;
        let found = all(doc).unwrap();
        let values: Vec<(&str, bool, String)> = found
            .iter()
            .map(|f| (f.value.as_str(), f.is_key, f.pointer.join("/")))
            .collect();
        assert_eq!(
            values,
            [
                ("a", true, String::new()),
                ("b~/", true, "a".into()),
                ("x", false, "a/b~//0".into()),
                ("y_\u{1F600}", false, "a/b~//1".into()),
                ("n", true, String::new()),
                ("t", true, String::new()),
            ]
        );
        let y = &found[3];
        assert_eq!(&doc[y.span.clone()], r#""y\u005f\ud83d\ude00""#);
    }

    #[test]
    fn malformed_documents_are_refused() {
        for bad in [
            "",
            "{",
            r#"{"a" 1}"#,
            r#"{"a":1,}"#,
            "[1 2]",
            r#""\ud800""#,
            r#""\x""#,
            "\"a\nb\"",
            "{} {}",
            "tru",
            "--",
            "01",
            "1.",
            "-.5",
            ".5",
            "1e",
            "1e+",
            "-",
            "[01]",
            "1.e3",
            "+1",
            "0x1",
        ] {
            assert_eq!(all(bad), Err(Malformed), "{bad:?}");
        }
        for good in ["0", "-0", "1.5", "-0.0e-0", "10E+2", "[1e5, -12.25]"] {
            assert_eq!(all(good), Ok(Vec::new()), "{good:?}");
        }
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        assert_eq!(all(&deep), Err(Malformed));
    }

    fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            serde_json::Value::Object(o) => o.iter().for_each(|(k, v)| {
                out.push(k.clone());
                strings(v, out);
            }),
            _ => {}
        }
    }

    /// JSON values with escapes, surrogates, numbers and nesting, printed by serde_json.
    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            r#"[a-c_\\"\x00-\x1F\u{e9}\u{1F600}/ ]{0,8}"#.prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(r#"[a-c_\\"]{0,4}"#, inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Every document serde_json writes (compact, pretty, with `\u` escapes), the scanner
        /// reads with exactly the same strings in the same order.
        #[test]
        fn agrees_with_serde_json(value in json_value(), style in 0usize..3) {
            let text = match style {
                0 => serde_json::to_string(&value).unwrap(),
                1 => serde_json::to_string_pretty(&value).unwrap(),
                // Every non-ASCII character and `_` escaped, as some encoders do.
                _ => serde_json::to_string(&value)
                    .unwrap()
                    .chars()
                    .map(|c| match c {
                        '_' => "\\u005f".to_owned(),
                        c if !c.is_ascii() => c
                            .encode_utf16(&mut [0; 2])
                            .iter()
                            .map(|u| format!("\\u{u:04x}"))
                            .collect(),
                        c => c.to_string(),
                    })
                    .collect(),
            };
            let ours = scan(text.as_bytes(), &|_| true);
            proptest::prop_assert!(ours.is_ok(), "{text}");
            let ours: Vec<String> = ours.unwrap_or_default().into_iter().map(|f| f.value).collect();
            let mut theirs = Vec::new();
            strings(&value, &mut theirs);
            proptest::prop_assert_eq!(ours, theirs, "{}", text);
        }

        /// Printable text: the scanner accepts exactly what serde_json accepts.
        #[test]
        fn accepts_what_serde_json_accepts(text in "[\\[\\]{}\",:a-c0-9.eE+\\-\\\\u ]{0,40}") {
            let theirs = serde_json::from_str::<serde_json::Value>(&text);
            let ours = scan(text.as_bytes(), &|_| true).is_ok();
            // serde_json also refuses numbers an f64 cannot hold (`9e999`); the grammar allows
            // them, and the scanner does not need their value.
            let out_of_range = theirs
                .as_ref()
                .is_err_and(|e| e.to_string().contains("number out of range"));
            proptest::prop_assert!(ours == theirs.is_ok() || (ours && out_of_range), "{}", text);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = scan(&bytes, &|_| true);
        }
    }
}
