//! A strict JSON validator (RFC 8259): says whether bytes are one JSON value, without building
//! anything. Appends check every JSON event with it, so it is on the hot path; a property test
//! holds it to the same verdict as `serde_json`.

/// Deepest nesting accepted (as `serde_json`).
pub const DEPTH_MAX: usize = 127;

/// A whole number from 0 to `i64::MAX` — what JSON Schema calls a non-negative int64 — also
/// when written with a zero fraction (`56.0`), as some JSON writers do.
pub fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::Deserialize;
    const LIMIT: u64 = i64::MAX as u64;
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let whole = match (number.as_u64(), number.as_f64()) {
        (Some(n), _) => Some(n),
        // 2^63 is the first float past the limit.
        (None, Some(f)) if f.fract() == 0.0 && (0.0..9_223_372_036_854_775_808.0).contains(&f) => {
            Some(f as u64)
        }
        _ => None,
    };
    match whole {
        Some(n) if n <= LIMIT => Ok(Some(n)),
        _ => Err(serde::de::Error::custom(format!(
            "{number} is not a whole number from 0 to {LIMIT}"
        ))),
    }
}

/// Whether `bytes` is exactly one JSON value, optionally surrounded by white space.
pub fn is_valid(bytes: &[u8]) -> bool {
    if std::str::from_utf8(bytes).is_err() {
        return false;
    }
    let mut parser = Parser { bytes, at: 0 };
    parser.value(0).is_some() && {
        parser.skip_ws();
        parser.at == bytes.len()
    }
}

struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        self.skip_ws();
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        if depth > DEPTH_MAX {
            return None;
        }
        self.at += 1;
        self.skip_ws();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.skip_ws();
            self.string()?;
            self.skip_ws();
            self.eat(b':')?;
            self.value(depth)?;
            self.skip_ws();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth > DEPTH_MAX {
            return None;
        }
        self.at += 1;
        self.skip_ws();
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            self.value(depth)?;
            self.skip_ws();
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at.checked_add(word.len())?;
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }

    fn string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            // Plain bytes are most of a string: skip eight at a time while none of the eight
            // is a quote, a backslash or a control character.
            while let Some(word) = self.bytes.get(self.at..self.at + 8) {
                let mut eight = [0u8; 8];
                eight.copy_from_slice(word);
                if needs_attention(u64::from_le_bytes(eight)) {
                    break;
                }
                self.at += 8;
            }
            let b = self.peek()?;
            self.at += 1;
            match b {
                b'"' => return Some(()),
                b'\\' => match self.peek()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                    b'u' => self.unicode_escape()?,
                    _ => return None,
                },
                0x00..=0x1f => return None,
                _ => {}
            }
        }
    }

    /// `\uXXXX`, where a high surrogate must be followed by `\u` and a low one, and a low one
    /// must not stand alone (as `serde_json` requires).
    fn unicode_escape(&mut self) -> Option<()> {
        let first = self.hex4()?;
        match first {
            0xD800..=0xDBFF => {
                self.eat(b'\\')?;
                let second = self.hex4()?;
                (0xDC00..=0xDFFF).contains(&second).then_some(())
            }
            0xDC00..=0xDFFF => None,
            _ => Some(()),
        }
    }

    /// Consumes `u` and four hex digits.
    fn hex4(&mut self) -> Option<u32> {
        self.eat(b'u')?;
        let digits = self.bytes.get(self.at..self.at + 4)?;
        let mut value = 0u32;
        for &d in digits {
            value = value * 16 + (d as char).to_digit(16)?;
        }
        self.at += 4;
        Some(value)
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Option<()> {
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.eat(b'.').is_some() && self.digits() == 0 {
            return None;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(())
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of the word is below `n` (n <= 128). Exact as a yes/no answer.
fn has_byte_below(word: u64, n: u8) -> bool {
    word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS != 0
}

/// Whether any byte of the word equals `byte`.
fn has_byte(word: u64, byte: u8) -> bool {
    has_byte_below(word ^ (ONES * u64::from(byte)), 1)
}

/// Whether a string's next eight bytes hold a quote, a backslash or a control character.
fn needs_attention(word: u64) -> bool {
    has_byte(word, b'"') || has_byte(word, b'\\') || has_byte_below(word, 0x20)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    /// `serde_json` building a value checks everything JSON requires (UTF-8, escapes,
    /// surrogate pairs); it also refuses numbers beyond `f64`, which are valid JSON, so for
    /// those its grammar-only check decides.
    fn serde_says(bytes: &[u8]) -> bool {
        match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(_) => true,
            Err(e) if e.to_string().contains("number out of range") => {
                serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
            }
            Err(_) => false,
        }
    }

    #[test]
    fn word_tests_are_exact() {
        for special in [b'"', b'\\', 0x00, 0x1f] {
            for at in 0..8 {
                let mut bytes = *b"abcdefgh";
                bytes[at] = special;
                assert!(
                    needs_attention(u64::from_le_bytes(bytes)),
                    "{special} at {at}"
                );
            }
        }
        for bytes in [
            *b"abcdefgh",
            [0x20; 8],
            [0xff; 8],
            [0x7f; 8],
            *b"\x80 !#[]~\xff",
        ] {
            assert!(!needs_attention(u64::from_le_bytes(bytes)), "{bytes:?}");
        }
        for b in 0..=255u8 {
            let word = u64::from_le_bytes([b' ', b, b'a', 0xc3, 0xa9, b'z', b'~', b'0']);
            assert_eq!(
                needs_attention(word),
                b == b'"' || b == b'\\' || b < 0x20,
                "{b}"
            );
        }
    }

    #[test]
    fn agrees_with_serde_json_on_hand_picked_cases() {
        let cases: &[&str] = &[
            "{}",
            "[]",
            "0",
            "-0",
            "1.5e3",
            "1E+2",
            "-1.0e-2",
            "\"a\"",
            "true",
            "false",
            "null",
            " { \"a\" : [1, 2, {\"b\": null}] } ",
            "\"\\u00e9\\n\\\"\"",
            "\"\\ud83d\\ude00\"",
            "01",
            "1.",
            ".5",
            "1e",
            "-",
            "+1",
            "[1,]",
            "{\"a\":1,}",
            "{a:1}",
            "[1 2]",
            "tru",
            "nul",
            "\"\\x\"",
            "\"\\ud83d\"",
            "\"\\ude00\"",
            "\"\\u12\"",
            "\"a",
            "[",
            "{",
            "",
            " ",
            "1 2",
            "\"tab\there\"",
            "{\"a\"}",
            "[1]]",
            "\"é\"",
            "NaN",
            "Infinity",
            "[-]",
            "{\"a\":1 \"b\":2}",
            "\"\\/\"",
            "1e999",
            "-01",
        ];
        for case in cases {
            assert_eq!(
                is_valid(case.as_bytes()),
                serde_says(case.as_bytes()),
                "{case:?}"
            );
        }
        for depth in 125..=130 {
            for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
                let text = format!("{}1{}", open.repeat(depth), close.repeat(depth));
                assert_eq!(
                    is_valid(text.as_bytes()),
                    serde_says(text.as_bytes()),
                    "depth {depth} {open}"
                );
            }
        }
        assert!(!is_valid(b"\"\xff\""));
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            ".*".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::hash_map(".*", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn valid_json_is_accepted(value in json_value(), pretty in any::<bool>()) {
            let text = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) }.unwrap();
            prop_assert!(is_valid(text.as_bytes()), "{}", text);
        }

        #[test]
        fn damaged_json_gets_the_same_verdict(value in json_value(), cut in any::<prop::sample::Index>(), byte in any::<u8>(), mode in 0..3u8) {
            let mut bytes = serde_json::to_vec(&value).unwrap();
            let at = cut.index(bytes.len() + 1);
            match mode {
                0 => bytes.truncate(at),
                1 => bytes.insert(at, byte),
                _ => if at < bytes.len() { bytes[at] = byte },
            }
            prop_assert_eq!(is_valid(&bytes), serde_says(&bytes), "{:?}", String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn arbitrary_text_gets_the_same_verdict(text in "[\\[\\]{}\",:0-9eE.+\\-a-z\\\\ ]{0,24}") {
            prop_assert_eq!(is_valid(text.as_bytes()), serde_says(text.as_bytes()), "{:?}", text);
        }
    }
}
