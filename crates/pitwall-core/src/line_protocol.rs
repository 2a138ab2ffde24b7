//! InfluxDB line protocol: `measurement,tag=v field=1.0,n=2i,ok=t,s="x" 1700000000000000000`.
//!
//! The grammar as InfluxData's reference decoder (`github.com/influxdata/line-protocol`,
//! package `lineprotocol`) reads it: `\,` and `\ ` escape in measurements, `\,` `\=`
//! and `\ ` in tag keys, tag values and field keys, and any other backslash is literal
//! (so in `two\\ words` the first backslash is kept and the second escapes the space);
//! ASCII control characters (0x00-0x1F, 0x7F) are refused in names and comments;
//! double-quoted string fields decode `\"`, `\\`, `\n`, `\r` and `\t`; `i`/`u`
//! integer suffixes, every boolean spelling, comment and blank lines, CRLF line ends,
//! spaces (not tabs) as separators and indentation, and an optional timestamp in h/m/s/
//! ms/us/ns precision. A tag key given twice is an error, as in InfluxDB. A bad line
//! yields an error naming its line, column and what was expected, and parsing goes on
//! with the next line so one bad line loses nothing else.

use std::fmt::Write as _;

use crate::{Error, FieldValue, Name, Point, Precision, Result, SortedMap};

/// Parses every point in `input`, one result per non-empty, non-comment line.
///
/// `default_time` (ns) is used for lines without a timestamp.
pub fn parse(input: &str, precision: Precision, default_time: i64) -> Parser<'_> {
    Parser {
        src: input.as_bytes(),
        text: input,
        pos: 0,
        line: 1,
        line_start: 0,
        point_line: 0,
        precision,
        default_time,
    }
}

/// Parses `input`, which must hold exactly one point.
pub fn parse_one(input: &str, precision: Precision, default_time: i64) -> Result<Point> {
    let mut parser = parse(input, precision, default_time);
    let first = parser.next().ok_or_else(|| Error::LineProtocol {
        line: 1,
        column: 1,
        message: "expected a point, found no line".into(),
    })?;
    let point = first?;
    let line = parser.line;
    if parser.next().is_some() {
        return Err(Error::LineProtocol {
            line,
            column: 1,
            message: "expected a single point, found another line".into(),
        });
    }
    Ok(point)
}

/// Iterator over the points of a line-protocol document; see [`parse`].
#[derive(Debug)]
pub struct Parser<'a> {
    src: &'a [u8],
    text: &'a str,
    pos: usize,
    line: usize,
    line_start: usize,
    /// The line the last point (or error) began on.
    point_line: usize,
    precision: Precision,
    default_time: i64,
}

impl Parser<'_> {
    /// The line on which the item last returned began (1-based).
    pub fn point_line(&self) -> usize {
        self.point_line
    }
}

impl Iterator for Parser<'_> {
    type Item = Result<Point>;

    fn next(&mut self) -> Option<Self::Item> {
        // Skip blank lines, leading spaces and comment lines.
        let mut result = None;
        while self.pos < self.src.len() {
            match self.src[self.pos] {
                b' ' => self.pos += 1,
                b'\r' if self.src.get(self.pos + 1) == Some(&b'\n') => self.pos += 1,
                b'\n' => self.newline(),
                b'#' => {
                    if let Err(e) = self.comment() {
                        result = Some(Err(e));
                        break;
                    }
                }
                _ => break,
            }
        }
        if result.is_none() && self.pos >= self.src.len() {
            return None;
        }
        self.point_line = self.line;
        let result = result.unwrap_or_else(|| self.parse_line());
        if result.is_err() {
            self.skip_line();
        }
        Some(result)
    }
}

/// Bytes that can end or change a name: a stop (`,` ` ` `=`), an escape, a control
/// character (line ends among them).
static NAME_SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b',' as usize] = true;
    t[b' ' as usize] = true;
    t[b'=' as usize] = true;
    t[b'\\' as usize] = true;
    let mut c = 0;
    while c < 32 {
        t[c] = true;
        c += 1;
    }
    t[0x7f] = true;
    t
};

/// What a backslash escapes in a measurement name.
const MEASUREMENT_ESCAPES: &[u8] = b", ";
/// What a backslash escapes in tag keys, tag values and field keys.
const KEY_ESCAPES: &[u8] = b",= ";

fn is_control(b: u8) -> bool {
    b < 32 || b == 0x7f
}

impl<'a> Parser<'a> {
    fn newline(&mut self) {
        self.pos += 1;
        self.line += 1;
        self.line_start = self.pos;
    }

    /// Skips a comment line, which may hold no control character but its line end.
    fn comment(&mut self) -> Result<()> {
        while let Some(b) = self.peek() {
            match b {
                b'\n' => break,
                b'\r' if self.src.get(self.pos + 1) == Some(&b'\n') => {
                    self.pos += 1;
                    break;
                }
                b if is_control(b) => {
                    return Err(self.err(
                        self.pos,
                        format!("control character {} in a comment line", show_byte(b)),
                    ));
                }
                _ => self.pos += 1,
            }
        }
        if self.peek() == Some(b'\n') {
            self.newline();
        }
        Ok(())
    }

    fn skip_line(&mut self) {
        while self.pos < self.src.len() && self.src[self.pos] != b'\n' {
            self.pos += 1;
        }
        if self.pos < self.src.len() {
            self.newline();
        }
    }

    fn err(&self, at: usize, message: impl Into<String>) -> Error {
        Error::LineProtocol {
            line: self.line,
            column: at - self.line_start + 1,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    /// What stands at the cursor, for "found ..." in messages.
    fn found(&self) -> String {
        match self.peek() {
            None => "end of input".into(),
            Some(b'\n') | Some(b'\r') => "end of line".into(),
            Some(b' ') => "a space".into(),
            Some(_) => {
                let rest = &self.text[self.pos..];
                let c = rest.chars().next().unwrap_or(' ');
                format!("{c:?}")
            }
        }
    }

    fn parse_line(&mut self) -> Result<Point> {
        let measurement = self.name(b", ", MEASUREMENT_ESCAPES, "measurement")?;
        if measurement.is_empty() {
            return Err(self.err(self.pos, "expected a measurement name"));
        }
        let mut tags = SortedMap::new();
        while self.peek() == Some(b',') {
            self.pos += 1;
            let key_at = self.pos;
            let key = self.name(b"=", KEY_ESCAPES, "tag key")?;
            if key.is_empty() {
                return Err(self.err(key_at, "expected a tag key after ','"));
            }
            if self.peek() != Some(b'=') {
                return Err(self.err(
                    self.pos,
                    format!("expected '=' after tag key {key:?}, found {}", self.found()),
                ));
            }
            self.pos += 1;
            let value_at = self.pos;
            let value = self.name(b", ", KEY_ESCAPES, "tag value")?;
            if value.is_empty() {
                return Err(self.err(value_at, format!("tag {key:?} has an empty value")));
            }
            if tags.contains_key(key.as_str()) {
                return Err(self.err(key_at, format!("tag key {key:?} appears twice")));
            }
            tags.insert(key, value);
        }
        if self.peek() != Some(b' ') {
            return Err(self.err(
                self.pos,
                format!(
                    "expected a space and then fields after the measurement and tags, found {}",
                    self.found()
                ),
            ));
        }
        // Only spaces separate tags from fields: a field key may begin with a tab.
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
        let mut fields = SortedMap::new();
        loop {
            let key_at = self.pos;
            let key = self.name(b"=", KEY_ESCAPES, "field key")?;
            if key.is_empty() {
                return Err(self.err(key_at, "expected a field key"));
            }
            if self.peek() != Some(b'=') {
                return Err(self.err(
                    self.pos,
                    format!(
                        "expected '=' after field key {key:?}, found {}",
                        self.found()
                    ),
                ));
            }
            self.pos += 1;
            let value = self.field_value(&key)?;
            fields.insert(key, value);
            match self.peek() {
                Some(b',') => self.pos += 1,
                _ => break,
            }
        }
        let mut time = self.default_time;
        let had_space = self.peek() == Some(b' ');
        self.skip_spaces();
        if had_space && !self.at_line_end() {
            time = self.timestamp()?;
            self.skip_spaces();
        }
        if !self.at_line_end() {
            return Err(self.err(
                self.pos,
                format!(
                    "expected ',' and another field, a timestamp or the end of the line, found {}",
                    self.found()
                ),
            ));
        }
        // Consume the line end.
        if self.peek() == Some(b'\r') {
            self.pos += 1;
        }
        if self.peek() == Some(b'\n') {
            self.newline();
        }
        Ok(Point {
            measurement: measurement.into_string(),
            tags,
            fields,
            time,
        })
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    fn at_line_end(&self) -> bool {
        match self.peek() {
            None | Some(b'\n') => true,
            Some(b'\r') => self.src.get(self.pos + 1).is_none_or(|&b| b == b'\n'),
            _ => false,
        }
    }

    /// Reads an escaped name up to one of `stops` (unescaped), a space or the line end.
    /// `\` before one of `escapes` stands for that character; before anything else it
    /// is literal, and what follows it is read as usual.
    fn name(&mut self, stops: &[u8], escapes: &[u8], what: &str) -> Result<Name> {
        let start = self.pos;
        let mut out: Option<Name> = None;
        let mut run_start = start;
        loop {
            // Skip the plain bytes in one go; only the few that mean something stop it.
            let rest = &self.src[self.pos..];
            self.pos += rest
                .iter()
                .position(|&b| NAME_SPECIAL[b as usize])
                .unwrap_or(rest.len());
            let Some(b) = self.peek() else { break };
            if stops.contains(&b) {
                break;
            }
            match b {
                b'\\' => match self.src.get(self.pos + 1) {
                    Some(&e) if escapes.contains(&e) => {
                        let s = out.get_or_insert_with(Name::default);
                        s.push_str(&self.text[run_start..self.pos]);
                        s.push(e as char);
                        self.pos += 2;
                        run_start = self.pos;
                    }
                    _ => self.pos += 1,
                },
                b'\n' | b'\r' => {
                    return Err(self.err(
                        self.pos,
                        format!("unexpected end of line in {what}; a point needs fields"),
                    ));
                }
                b' ' | b',' => {
                    return Err(self.err(
                        self.pos,
                        format!(
                            "expected '=' after {what} {:?}, found {}",
                            &self.text[start..self.pos],
                            self.found()
                        ),
                    ));
                }
                b if is_control(b) => {
                    return Err(self.err(
                        self.pos,
                        format!("control character {} in {what}", show_byte(b)),
                    ));
                }
                _ => self.pos += 1,
            }
        }
        Ok(match out {
            Some(mut s) => {
                s.push_str(&self.text[run_start..self.pos]);
                s
            }
            None => Name::from(&self.text[start..self.pos]),
        })
    }

    fn field_value(&mut self, key: &str) -> Result<FieldValue> {
        let start = self.pos;
        if self.peek() == Some(b'"') {
            // A string may span lines: report a missing quote where the string began.
            let (open_line, open_column) = (self.line, start - self.line_start + 1);
            self.pos += 1;
            let mut s = String::new();
            let mut run_start = self.pos;
            loop {
                match self.peek() {
                    None => {
                        return Err(Error::LineProtocol {
                            line: open_line,
                            column: open_column,
                            message: format!("string value of field {key:?} has no closing '\"'"),
                        });
                    }
                    Some(b'"') => {
                        s.push_str(&self.text[run_start..self.pos]);
                        self.pos += 1;
                        return Ok(FieldValue::Str(s));
                    }
                    Some(b'\\') => match self.src.get(self.pos + 1) {
                        Some(&e @ (b'"' | b'\\' | b'n' | b'r' | b't')) => {
                            s.push_str(&self.text[run_start..self.pos]);
                            s.push(match e {
                                b'n' => '\n',
                                b'r' => '\r',
                                b't' => '\t',
                                other => other as char,
                            });
                            self.pos += 2;
                            run_start = self.pos;
                        }
                        _ => self.pos += 1,
                    },
                    Some(b'\n') => {
                        // Strings may span lines; keep line numbers right for later errors.
                        self.pos += 1;
                        self.line += 1;
                        self.line_start = self.pos;
                    }
                    Some(_) => self.pos += 1,
                }
            }
        }
        while let Some(b) = self.peek() {
            if matches!(b, b',' | b' ' | b'\n' | b'\r') {
                break;
            }
            self.pos += 1;
        }
        let token = &self.text[start..self.pos];
        if token.is_empty() {
            return Err(self.err(start, format!("field {key:?} has no value after '='")));
        }
        let bad = |expected: &str| {
            self.err(
                start,
                format!("field {key:?}: expected {expected}, found {token:?}"),
            )
        };
        match token {
            "t" | "T" | "true" | "True" | "TRUE" => return Ok(FieldValue::Bool(true)),
            "f" | "F" | "false" | "False" | "FALSE" => return Ok(FieldValue::Bool(false)),
            _ => {}
        }
        // The suffix is one ASCII byte, so cutting it keeps a char boundary; the token may
        // end in any character (found by the any-text property test).
        let digits = || &token[..token.len() - 1];
        match token.as_bytes()[token.len() - 1] {
            b'i' => digits()
                .parse::<i64>()
                .map(FieldValue::I64)
                .map_err(|_| bad("a signed 64-bit integer before the 'i' suffix")),
            b'u' => digits()
                .parse::<u64>()
                .map(FieldValue::U64)
                .map_err(|_| bad("an unsigned 64-bit integer before the 'u' suffix")),
            _ => {
                // Rust also parses "inf" and "NaN"; line protocol has no such floats.
                let first = token.as_bytes()[0];
                if !(first.is_ascii_digit() || matches!(first, b'-' | b'.')) {
                    return Err(bad(
                        "a number (1.5, 2i, 3u), a boolean (t, false) or a quoted string",
                    ));
                }
                match token.parse::<f64>() {
                    Ok(v) if v.is_finite() => Ok(FieldValue::F64(v)),
                    _ => Err(bad(
                        "a number (1.5, 2i, 3u), a boolean (t, false) or a quoted string",
                    )),
                }
            }
        }
    }

    fn timestamp(&mut self) -> Result<i64> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.pos += 1;
        }
        let token = &self.text[start..self.pos];
        let digits = token.strip_prefix('-').unwrap_or(token);
        let value: i64 = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| token.parse().ok())
            .flatten()
            .ok_or(())
            .map_err(|()| {
                self.err(
                    start,
                    format!("expected an integer timestamp, found {token:?}"),
                )
            })?;
        self.precision.to_nanos(value).ok_or_else(|| {
            self.err(
                start,
                format!(
                    "timestamp {value} in {:?} precision is out of range for nanoseconds",
                    self.precision
                ),
            )
        })
    }
}

/// Why a point cannot be written as line protocol.
fn unrepresentable(what: &str) -> Error {
    Error::Invalid(format!("cannot be written as line protocol: {what}"))
}

fn check_name(name: &str, what: &str) -> Result<()> {
    if name.is_empty() {
        return Err(unrepresentable(&format!("{what} is empty")));
    }
    if name.bytes().any(is_control) {
        return Err(unrepresentable(&format!(
            "{what} {name:?} holds a control character"
        )));
    }
    // A backslash is literal unless an escapable character follows; at the end of a
    // name the separator would follow and be read as escaped.
    if name.ends_with('\\') {
        return Err(unrepresentable(&format!(
            "{what} {name:?} ends with a backslash"
        )));
    }
    Ok(())
}

fn escape(out: &mut String, s: &str, specials: &[char]) {
    for c in s.chars() {
        if specials.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

/// A byte for a message: `0x09`.
fn show_byte(b: u8) -> String {
    format!("0x{b:02x}")
}

/// Appends `point` as one line (with a trailing `\n`), timestamp in nanoseconds.
pub fn encode(point: &Point, out: &mut String) -> Result<()> {
    check_name(&point.measurement, "the measurement")?;
    if point.measurement.starts_with('#') {
        return Err(unrepresentable(
            "a measurement starting with '#' reads as a comment",
        ));
    }
    if point.fields.is_empty() {
        return Err(unrepresentable("a point needs at least one field"));
    }
    escape(out, &point.measurement, &[',', ' ']);
    for (k, v) in &point.tags {
        check_name(k, "a tag key")?;
        check_name(v, "a tag value")?;
        out.push(',');
        escape(out, k, &[',', '=', ' ']);
        out.push('=');
        escape(out, v, &[',', '=', ' ']);
    }
    let mut sep = ' ';
    for (k, v) in &point.fields {
        check_name(k, "a field key")?;
        out.push(sep);
        sep = ',';
        escape(out, k, &[',', '=', ' ']);
        out.push('=');
        match v {
            // Debug gives the shortest representation that parses back to the same bits.
            FieldValue::F64(f) if f.is_finite() => {
                let _ = write!(out, "{f:?}");
            }
            FieldValue::F64(f) => return Err(unrepresentable(&format!("field {k:?} is {f}"))),
            FieldValue::I64(i) => {
                let _ = write!(out, "{i}i");
            }
            FieldValue::U64(u) => {
                let _ = write!(out, "{u}u");
            }
            FieldValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            FieldValue::Str(s) => {
                out.push('"');
                for c in s.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
        }
    }
    let _ = writeln!(out, " {}", point.time);
    Ok(())
}

/// Encodes many points into one document.
pub fn encode_all<'a>(points: impl IntoIterator<Item = &'a Point>) -> Result<String> {
    let mut out = String::new();
    for p in points {
        encode(p, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Point {
        parse_one(s, Precision::Ns, 42).unwrap()
    }

    fn err(s: &str) -> String {
        parse(s, Precision::Ns, 0)
            .find_map(|r| r.err())
            .expect("expected an error")
            .to_string()
    }

    #[test]
    fn parses_the_seed_example() {
        let p = one("measurement,host=foo,tag=measure val1=5,val2=3234.34 1609459200000000000");
        assert_eq!(p.measurement, "measurement");
        assert_eq!(p.tags["host"], "foo");
        assert_eq!(p.tags["tag"], "measure");
        assert_eq!(p.fields["val1"], FieldValue::F64(5.0));
        assert_eq!(p.fields["val2"], FieldValue::F64(3234.34));
        assert_eq!(p.time, 1_609_459_200_000_000_000);
    }

    #[test]
    fn parses_types_and_escapes() {
        let p = one(
            r#"my\ meas\,x,t\=k=v\ 1\,2\x i=-3i,u=7u,b=TRUE,f=F,s="say \"hi\"\\ and \n\q",e=1e3"#,
        );
        assert_eq!(p.measurement, "my meas,x");
        assert_eq!(p.tags["t=k"], "v 1,2\\x");
        assert_eq!(p.fields["i"], FieldValue::I64(-3));
        assert_eq!(p.fields["u"], FieldValue::U64(7));
        assert_eq!(p.fields["b"], FieldValue::Bool(true));
        assert_eq!(p.fields["f"], FieldValue::Bool(false));
        assert_eq!(
            p.fields["s"],
            FieldValue::Str("say \"hi\"\\ and \n\\q".into())
        );
        assert_eq!(p.fields["e"], FieldValue::F64(1000.0));
        assert_eq!(p.time, 42, "no timestamp takes the default");
    }

    // The rules of InfluxData's reference decoder, one test each.

    #[test]
    fn reference_a_backslash_escapes_only_its_contexts_characters() {
        // In tag values only `\,` `\=` `\ ` escape; `\\` is two literal backslashes,
        // so here the first is kept and the second escapes the space.
        let p = one(r"cpu,host=two\\ words v=1");
        assert_eq!(p.tags["host"], r"two\ words");
        // In measurements `\=` is no escape: the backslash stays; `=` needs none.
        let p = one(r"a\=b=c v=1");
        assert_eq!(p.measurement, r"a\=b=c");
        // A backslash before anything else is literal.
        assert_eq!(one(r"m,k=a\b v=1").tags["k"], r"a\b");
        assert_eq!(one(r"m\x v=1").measurement, r"m\x");
    }

    #[test]
    fn reference_string_fields_decode_n_r_t() {
        let p = one(r#"m s="a\tb\nc\rd\\n""#);
        assert_eq!(p.fields["s"], FieldValue::Str("a\tb\nc\rd\\n".into()));
    }

    #[test]
    fn reference_control_characters_are_refused_in_names_and_comments() {
        assert_eq!(
            err("c\u{1}pu v=1"),
            "line 1, column 2: control character 0x01 in measurement"
        );
        assert_eq!(
            err("cpu,h\u{7f}=a v=1"),
            "line 1, column 6: control character 0x7f in tag key"
        );
        assert_eq!(
            err("cpu,h=a\tb v=1"),
            "line 1, column 8: control character 0x09 in tag value"
        );
        assert_eq!(
            err("cpu v\u{0}=1"),
            "line 1, column 6: control character 0x00 in field key"
        );
        assert_eq!(
            err("# a\u{1b}[31m comment\nm v=1"),
            "line 1, column 4: control character 0x1b in a comment line"
        );
        // The line after a bad comment still counts.
        let results: Vec<_> = parse("# bad\u{7}\nm v=1 1\n", Precision::Ns, 0).collect();
        assert!(results[0].is_err());
        assert_eq!(results[1].as_ref().unwrap().time, 1);
        // Strings may hold them.
        assert_eq!(
            one("m s=\"\u{1}\"").fields["s"],
            FieldValue::Str("\u{1}".into())
        );
    }

    #[test]
    fn reference_a_tag_key_given_twice_rejects_the_point() {
        assert_eq!(
            err("cpu,host=a,host=b v=1"),
            "line 1, column 12: tag key \"host\" appears twice"
        );
    }

    #[test]
    fn reference_tabs_are_no_separators_or_indentation() {
        assert_eq!(
            err("\tcpu v=1"),
            "line 1, column 1: control character 0x09 in measurement"
        );
        assert!(err("cpu v=1\t5").contains("column 7"));
        assert!(err("cpu v=1 5\t").contains("column 10"));
        assert!(
            err("cpu v=1¥").contains("expected a number"),
            "a multi-byte last character is no panic"
        );
        // Spaces are.
        assert_eq!(one("   cpu v=1   5  ").time, 5);
        // A solitary carriage return is no line end.
        assert!(parse("m v=1\rm v=2", Precision::Ns, 0).any(|r| r.is_err()));
    }

    #[test]
    fn reference_numbers_and_timestamps_have_no_plus_sign() {
        assert!(err("cpu v=+1").contains("expected a number"));
        assert!(err("cpu v=1 +5").contains("expected an integer timestamp"));
        assert_eq!(one("cpu v=-1.5 -5").time, -5);
    }

    #[test]
    fn precision_scales_timestamps() {
        let p = parse_one("m v=1 1700000000", Precision::S, 0).unwrap();
        assert_eq!(p.time, 1_700_000_000_000_000_000);
        let p = parse_one("m v=1 1700000000123", Precision::Ms, 0).unwrap();
        assert_eq!(p.time, 1_700_000_000_123_000_000);
        let p = parse_one("m v=1 -5", Precision::Us, 0).unwrap();
        assert_eq!(p.time, -5_000);
        assert!(err_with("m v=1 99999999999999999", Precision::S).contains("out of range"));
    }

    fn err_with(s: &str, precision: Precision) -> String {
        parse(s, precision, 0)
            .find_map(|r| r.err())
            .unwrap()
            .to_string()
    }

    #[test]
    fn skips_comments_blank_lines_and_crlf() {
        let doc = "# header\r\n\r\nm,a=b v=1 1\r\n  # indented comment\nm v=2i 2\n\n";
        let pts: Vec<Point> = parse(doc, Precision::Ns, 0).map(Result::unwrap).collect();
        assert_eq!(pts.len(), 2);
        assert_eq!(pts[1].fields["v"], FieldValue::I64(2));
        assert_eq!(pts[1].time, 2);
    }

    #[test]
    fn multi_line_strings_keep_line_numbers() {
        let doc = "m s=\"a\nb\" 1\nm v=oops 2\n";
        let results: Vec<_> = parse(doc, Precision::Ns, 0).collect();
        assert_eq!(
            results[0].as_ref().unwrap().fields["s"],
            FieldValue::Str("a\nb".into())
        );
        assert_eq!(
            results[1].as_ref().unwrap_err().to_string(),
            "line 3, column 5: field \"v\": expected a number (1.5, 2i, 3u), a boolean (t, false) or a quoted string, found \"oops\""
        );
    }

    #[test]
    fn errors_name_line_column_and_expectation() {
        assert_eq!(
            err("cpu"),
            "line 1, column 4: expected a space and then fields after the measurement and tags, found end of input"
        );
        assert_eq!(
            err("cpu,host"),
            "line 1, column 9: expected '=' after tag key \"host\", found end of input"
        );
        assert_eq!(
            err("cpu,host= v=1"),
            "line 1, column 10: tag \"host\" has an empty value"
        );
        assert_eq!(
            err("cpu v=1.2.3"),
            "line 1, column 7: field \"v\": expected a number (1.5, 2i, 3u), a boolean (t, false) or a quoted string, found \"1.2.3\""
        );
        assert_eq!(
            err("cpu v=12x4i"),
            "line 1, column 7: field \"v\": expected a signed 64-bit integer before the 'i' suffix, found \"12x4i\""
        );
        assert_eq!(
            err("cpu v=-1u"),
            "line 1, column 7: field \"v\": expected an unsigned 64-bit integer before the 'u' suffix, found \"-1u\""
        );
        assert_eq!(
            err("ok v=1\ncpu v=1 12:00"),
            "line 2, column 9: expected an integer timestamp, found \"12:00\""
        );
        assert_eq!(
            err("cpu v=\"open"),
            "line 1, column 7: string value of field \"v\" has no closing '\"'"
        );
        assert_eq!(
            err("cpu v="),
            "line 1, column 7: field \"v\" has no value after '='"
        );
        assert_eq!(
            err("cpu v=1 5 6"),
            "line 1, column 11: expected ',' and another field, a timestamp or the end of the line, found '6'"
        );
        assert_eq!(
            err("cpu v=NaN"),
            "line 1, column 7: field \"v\": expected a number (1.5, 2i, 3u), a boolean (t, false) or a quoted string, found \"NaN\""
        );
        assert_eq!(
            err("cpu v=inf"),
            "line 1, column 7: field \"v\": expected a number (1.5, 2i, 3u), a boolean (t, false) or a quoted string, found \"inf\""
        );
    }

    #[test]
    fn a_bad_line_loses_nothing_else() {
        let doc = "m v=1 1\nm v=bad 2\nm v=3 3\n";
        let results: Vec<_> = parse(doc, Precision::Ns, 0).collect();
        assert_eq!(results.len(), 3);
        // An unclosed string spanning lines is reported where it opened.
        assert_eq!(
            err("m v=1\nm s=\"open\nstill open"),
            "line 2, column 5: string value of field \"s\" has no closing '\"'"
        );
        assert!(results[0].is_ok() && results[1].is_err() && results[2].is_ok());
        assert_eq!(results[2].as_ref().unwrap().time, 3);
    }

    #[test]
    fn encode_refuses_what_cannot_round_trip() {
        let p = Point::new("m", 0)
            .tag("a", "x\ny")
            .field("v", FieldValue::F64(1.0));
        assert!(encode(&p, &mut String::new()).is_err());
        let p = Point::new("#m", 0).field("v", FieldValue::F64(1.0));
        assert!(encode(&p, &mut String::new()).is_err());
        let p = Point::new("m", 0)
            .tag("a", "x\\")
            .field("v", FieldValue::F64(1.0));
        assert!(
            encode(&p, &mut String::new()).is_err(),
            "a trailing backslash would escape the separator"
        );
        let p = Point::new("m\t", 0).field("v", FieldValue::F64(1.0));
        assert!(encode(&p, &mut String::new()).is_err());
        let p = Point::new("m", 0).field("v", FieldValue::F64(f64::NAN));
        assert!(encode(&p, &mut String::new()).is_err());
    }
}
