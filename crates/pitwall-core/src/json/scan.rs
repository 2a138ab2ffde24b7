//! The JSON payload's fast paths: a decoder for payloads written the usual way and an
//! encoder, both without serde's visitors.
//!
//! The decoder takes the common shape (the keys of [`super::Wire`], strings without
//! escapes, numbers, booleans) and gives up on anything else, for which the caller runs
//! serde_json: anything it accepts, serde_json accepts and decodes to the same value, so
//! every error, and every unusual payload, still goes through serde_json and reads the
//! same. The encoder writes what serializing [`super::Wire`]'s fields with serde_json
//! writes, byte for byte (tests compare the two).

use super::Wire;
use crate::{FieldValue, Name, Point, SortedMap};

/// Decodes `bytes`, or `None` when the payload is not in the common shape.
pub(super) fn decode(bytes: &[u8]) -> Option<Wire> {
    // One UTF-8 check for the whole payload (outside strings only ASCII is valid JSON
    // anyway); strings are then cut from it at their quotes, which are char boundaries.
    let text = std::str::from_utf8(bytes).ok()?;
    let mut c = Cursor {
        s: text,
        b: bytes,
        i: 0,
    };
    c.eat(b'{')?;
    let mut wire = Wire::default();
    let mut seen = 0u8;
    if c.peek()? == b'}' {
        c.i += 1;
    } else {
        loop {
            let key = c.string()?;
            c.eat(b':')?;
            let bit = match key {
                "measurement" => 1,
                "name" => 2,
                "tags" => 4,
                "fields" => 8,
                "time" => 16,
                "timestamp" => 32,
                "unsigned" => 64,
                _ => return None,
            };
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            match bit {
                1 => wire.measurement = Some(c.string()?.to_owned()),
                2 => wire.name = Some(c.string()?.to_owned()),
                4 => {
                    wire.tags = TAGS
                        .with_borrow_mut(|scratch| c.map(scratch, |c| c.string().map(Name::from)))?
                }
                8 => {
                    wire.fields =
                        Some(FIELDS.with_borrow_mut(|scratch| c.map(scratch, Cursor::value))?)
                }
                16 => wire.time = Some(c.integer()?),
                32 => wire.timestamp = Some(c.integer()?),
                _ => wire.unsigned = c.strings()?,
            }
            if !c.next_or_end(b'}')? {
                break;
            }
        }
    }
    c.skip_ws();
    (c.i == bytes.len()).then_some(wire)
}

thread_local! {
    /// Where an object's members are read before they go into a vector of their size.
    static TAGS: std::cell::RefCell<Vec<(Name, Name)>> = const { std::cell::RefCell::new(Vec::new()) };
    static FIELDS: std::cell::RefCell<Vec<(Name, FieldValue)>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct Cursor<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    /// Skips JSON whitespace.
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.b.get(self.i).copied()
    }

    /// Consumes `byte` (after whitespace) or gives up.
    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.i += 1)
    }

    /// After a member: `Some(true)` on a comma (more follow), `Some(false)` on `close`.
    fn next_or_end(&mut self, close: u8) -> Option<bool> {
        match self.peek()? {
            b',' => {
                self.i += 1;
                Some(true)
            }
            b if b == close => {
                self.i += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let len = self.b[start..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if self.b[start + len] != b'"' {
            return None;
        }
        self.i += len + 1;
        self.s.get(start..start + len)
    }

    /// `[ "a", "b" ]`.
    fn strings(&mut self) -> Option<Vec<String>> {
        self.eat(b'[')?;
        let mut out = Vec::new();
        if self.peek()? == b']' {
            self.i += 1;
            return Some(out);
        }
        loop {
            out.push(self.string()?.to_owned());
            if !self.next_or_end(b']')? {
                return Some(out);
            }
        }
    }

    /// An object whose values `value` reads; a repeated key keeps its last value.
    /// `entries` is scratch space, empty before and after.
    fn map<V>(
        &mut self,
        entries: &mut Vec<(Name, V)>,
        value: impl Fn(&mut Self) -> Option<V>,
    ) -> Option<SortedMap<Name, V>> {
        entries.clear();
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
        } else {
            loop {
                let key = Name::from(self.string()?);
                self.eat(b':')?;
                entries.push((key, value(self)?));
                if !self.next_or_end(b'}')? {
                    break;
                }
            }
        }
        // Into a vector of about the right size: the point keeps it until the lake
        // commit, and room for 24 entries would more than double what a point holds. Two
        // spare places for what enrichment adds (a lap and a sector field, dimension
        // tags) without moving the rest.
        let mut exact = Vec::with_capacity(entries.len() + 2);
        exact.append(entries);
        Some(exact.into_iter().collect())
    }

    /// A field value: number, boolean or string.
    fn value(&mut self) -> Option<FieldValue> {
        match self.peek()? {
            b'"' => Some(FieldValue::Str(self.string()?.to_owned())),
            b't' => self.literal(b"true").map(|()| FieldValue::Bool(true)),
            b'f' => self.literal(b"false").map(|()| FieldValue::Bool(false)),
            _ => self.number(),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.i..]
            .starts_with(word)
            .then(|| self.i += word.len())
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.b.get(self.i) {
            self.i += 1;
        }
        self.i - start
    }

    /// A number in JSON's grammar. Integers are signed unless above `i64::MAX`; the
    /// cases serde_json turns into floats (`-0`, integers beyond 64 bits) give up.
    fn number(&mut self) -> Option<FieldValue> {
        self.skip_ws();
        let start = self.i;
        let negative = self.b.get(self.i) == Some(&b'-');
        if negative {
            self.i += 1;
        }
        let int_start = self.i;
        match self.b.get(self.i)? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        let int_end = self.i;
        let mut float = false;
        let mut decimals = 0;
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            decimals = self.digits();
            if decimals == 0 {
                return None;
            }
            float = true;
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return None;
            }
            float = true;
        }
        if float {
            if self.i == int_end + 1 + decimals
                && let Some(v) = short_decimal(&self.b[int_start..self.i], decimals)
            {
                return Some(FieldValue::F64(if negative { -v } else { v }));
            }
            // ASCII by construction; Rust's parser rounds correctly, as serde_json's
            // float_roundtrip does.
            let v: f64 = self.s.get(start..self.i)?.parse().ok()?;
            return v.is_finite().then_some(FieldValue::F64(v));
        }
        let digits = &self.b[int_start..int_end];
        if digits.len() > 20 {
            return None;
        }
        let magnitude = digits.iter().try_fold(0u64, |m, &d| {
            m.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })?;
        if negative {
            if magnitude == 0 || magnitude > i64::MIN.unsigned_abs() {
                return None;
            }
            return Some(FieldValue::I64(0i64.wrapping_sub_unsigned(magnitude)));
        }
        Some(match i64::try_from(magnitude) {
            Ok(i) => FieldValue::I64(i),
            Err(_) => FieldValue::U64(magnitude),
        })
    }

    /// A JSON integer that fits an `i64`.
    fn integer(&mut self) -> Option<i64> {
        match self.number()? {
            FieldValue::I64(i) => Some(i),
            _ => None,
        }
    }
}

/// `digits.decimals` (no sign, no exponent, `decimals` digits after the point) with at
/// most 15 digits: read as a whole number they are below 2^53, so that number and the
/// power of ten are exact doubles and one division rounds correctly (Clinger's fast
/// path), giving the value the full parser gives.
#[inline]
fn short_decimal(text: &[u8], decimals: usize) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    if text.len() > 16 {
        return None;
    }
    let whole = text
        .iter()
        .filter(|&&c| c != b'.')
        .fold(0u64, |m, &d| m * 10 + u64::from(d - b'0'));
    Some(whole as f64 / POW10[decimals])
}

/// Appends `point` as the payload JSON; `point`'s floats must be finite.
pub(super) fn encode(point: &Point, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"measurement\":");
    string(&point.measurement, out);
    out.extend_from_slice(b",\"tags\":{");
    for (i, (k, v)) in point.tags.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(k, out);
        out.push(b':');
        string(v, out);
    }
    out.extend_from_slice(b"},\"fields\":{");
    let mut unsigned = false;
    for (i, (k, v)) in point.fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(k, out);
        out.push(b':');
        match v {
            FieldValue::F64(f) => float(*f, out),
            FieldValue::I64(n) => integer(*n, out),
            FieldValue::U64(n) => {
                unsigned = true;
                integer(*n, out);
            }
            FieldValue::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            FieldValue::Str(s) => string(s, out),
        }
    }
    out.extend_from_slice(b"},\"time\":");
    integer(point.time, out);
    if unsigned {
        out.extend_from_slice(b",\"unsigned\":[");
        let names = point
            .fields
            .iter()
            .filter(|(_, v)| matches!(v, FieldValue::U64(_)));
        for (i, (k, _)) in names.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(k, out);
        }
        out.push(b']');
    }
    out.push(b'}');
}

/// Appends `s` as a JSON string, escaped as serde_json escapes it.
pub(crate) fn string(s: &str, out: &mut Vec<u8>) {
    if s.bytes().any(|c| c == b'"' || c == b'\\' || c < 0x20) {
        serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Appends `v` as serde_json writes an `f64`: `null` when it is not finite.
pub(crate) fn float(v: f64, out: &mut Vec<u8>) {
    if v.is_finite() {
        if !one_decimal(v, out) {
            out.extend_from_slice(zmij::Buffer::new().format_finite(v).as_bytes());
        }
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Writes `v` as `[-]digits.digit` if that is its shortest form, as it is for the
/// one-decimal readings most telemetry carries: then `v` is the double nearest to
/// (10·v)/10 with 10·v a whole number, and below 10⁹ no shorter decimal rounds to
/// it. Same text as the general path (a unit test compares them), at a fraction of
/// the cost. Returns false, writing nothing, for any other value.
#[inline]
fn one_decimal(v: f64, out: &mut Vec<u8>) -> bool {
    let tenths = v * 10.0;
    if !(tenths.abs() < 1e10 && tenths.abs() >= 1.0) {
        return false;
    }
    let whole = tenths as i64;
    if whole as f64 != tenths || tenths / 10.0 != v {
        return false;
    }
    if whole < 0 {
        out.push(b'-');
    }
    let magnitude = whole.unsigned_abs();
    integer(magnitude / 10, out);
    out.push(b'.');
    out.push(b'0' + (magnitude % 10) as u8);
    true
}

/// Appends an integer.
pub(crate) fn integer(v: impl itoa::Integer, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    fn general(v: f64) -> String {
        zmij::Buffer::new().format_finite(v).to_owned()
    }

    fn fast(v: f64) -> Option<String> {
        let mut out = Vec::new();
        super::one_decimal(v, &mut out).then(|| String::from_utf8(out).unwrap())
    }

    #[test]
    fn one_decimal_values_are_written_as_the_general_path_writes_them() {
        for v in [
            0.1,
            -0.1,
            0.5,
            1.0,
            -1.0,
            9.9,
            10.0,
            287.3,
            -40.7,
            99.95 * 10.0,
            123_456_789.9,
            999_999_999.9,
        ] {
            assert_eq!(fast(v).as_deref(), Some(general(v).as_str()), "{v}");
        }
        // Not one decimal, or outside the range: the general path writes them.
        for v in [
            0.0,
            -0.0,
            0.05,
            0.123,
            1.0 / 3.0,
            1e9 + 0.5,
            1e10,
            1e300,
            5e-324,
            287.31,
        ] {
            assert_eq!(fast(v), None, "{v}");
        }
    }

    /// What the scanner reads for `text` as a field value.
    fn read(text: &str) -> Option<f64> {
        let json = format!("{{\"measurement\":\"m\",\"fields\":{{\"v\":{text}}},\"time\":1}}");
        match super::decode(json.as_bytes())?.fields?.get("v") {
            Some(crate::FieldValue::F64(v)) => Some(*v),
            _ => None,
        }
    }

    #[test]
    fn short_decimals_read_as_the_full_parser_reads_them() {
        for text in [
            "0.0",
            "-0.0",
            "0.1",
            "-287.3",
            "99.95",
            "123456789.012345",
            "9007199254740.99",
            "1.000000000000001",
            "0.30000000000000004",
            "1234567890123456.7",
            "1.5e3",
        ] {
            let want: f64 = text.parse().unwrap();
            let got = read(text).unwrap();
            assert_eq!(got.to_bits(), want.to_bits(), "{text}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn decimals_read_as_the_full_parser_reads_them(whole in 0u64..10_000_000_000_000_000, point in 1usize..19, negative in any::<bool>()) {
            let digits = whole.to_string();
            let point = point.min(digits.len());
            let (a, b) = digits.split_at(digits.len() - point);
            let text = format!("{}{}.{}", if negative { "-" } else { "" }, if a.is_empty() { "0" } else { a }, b);
            let want: f64 = text.parse().unwrap();
            prop_assert_eq!(read(&text).map(f64::to_bits), Some(want.to_bits()), "{}", text);
        }
        #[test]
        fn tenths_are_written_as_the_general_path_writes_them(tenths in -20_000_000_000i64..20_000_000_000) {
            let v = tenths as f64 / 10.0;
            if let Some(text) = fast(v) {
                prop_assert_eq!(text, general(v));
            }
        }

        #[test]
        fn any_double_is_written_as_the_general_path_writes_it_or_left_to_it(bits in any::<u64>()) {
            let v = f64::from_bits(bits);
            if v.is_finite()
                && let Some(text) = fast(v)
            {
                prop_assert_eq!(text, general(v));
            }
        }

        #[test]
        fn rounded_readings_take_the_fast_path(x in -1e6f64..1e6) {
            let v = (x * 10.0).round() / 10.0;
            if v.abs() >= 0.1 {
                prop_assert_eq!(fast(v), Some(general(v)));
            }
        }
    }
}
