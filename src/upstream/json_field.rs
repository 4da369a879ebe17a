//! Finds one top-level field of a JSON object line, reading no further than needed: the feed routes each line
//! by one configurable field (default `"topic"`) without parsing the whole line.
//!
//! [`find_top_level`] walks the members of the line's top-level object in order and stops at the first key
//! equal to the name asked for (so the first of duplicate keys wins). Keys are compared on their decoded text:
//! `"\u0074opic"` is `topic`. A key without a backslash is compared as raw bytes; only a key with escapes is
//! decoded, on the fly and without allocating. The values of other members are skipped and checked on the way:
//! strings (escape syntax; a raw control character below 0x20 is an error), numbers (the JSON number grammar:
//! no `01`, `1.`, `.5` or `+1`), `true`/`false`/`null`, and nested objects and arrays. Keys inside nested
//! values are never compared: only the top level counts.
//!
//! What it does not do:
//! - It is not a JSON validator. It stops as soon as the answer is known and never reads past that point. Once
//!   the key is found, its value is read only as far as its kind needs: a string to its closing quote, a number
//!   or `true`/`false`/`null` to the end of its token, an object or array not past its opening bracket. So
//!   `{"topic":"a",]` answers [`Field::String`] and `{"topic":[` answers [`Field::NotString`]. Only
//!   [`Field::Absent`] says the object is well-formed, up to its closing `}`; what follows the brace is not read.
//! - It does not check UTF-8: the caller passes lines it already holds as `&str` (the feed's line codec
//!   guarantees it). Invalid UTF-8 inside strings goes unnoticed.
//! - It does not decode the value: [`Field::String`] borrows the still-escaped text from the line. Call
//!   [`unescape`] when `escaped` is true; that is also where a lone surrogate (`"\ud800"`) is caught, since
//!   the scan checks only the syntax of escapes.
//!
//! Depth limit: the top-level object is depth 1, an array or object inside it depth 2, and so on. Nesting deeper
//! than [`MAX_DEPTH`] before the field is found makes the line [`Field::Invalid`]. Skipping is iterative (the
//! kinds of the open containers are bits of one `u64`), so hostile nesting cannot exhaust the stack.
//!
//! Cost: one forward pass, O(n) in the bytes read (a key with escapes costs O(its length) more to decode); no
//! allocation except in [`unescape`], which appends to the caller's `String`; no `unsafe`; no panic on any
//! input.

/// The result of looking for one top-level field; see [`find_top_level`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field<'a> {
    /// The field exists and its value is a string.
    String {
        /// The text between the quotes, still escaped, borrowed from the line. Its escapes are syntactically
        /// valid and it holds no raw control character; surrogate pairing is checked only by [`unescape`].
        raw: &'a [u8],
        /// Whether `raw` contains a backslash. When false, `raw` is the string's value as it is; when true,
        /// decode it with [`unescape`].
        escaped: bool,
    },
    /// The field exists and its value is not a string: a number, object, array, `true`, `false` or `null`.
    NotString,
    /// The object was read to its closing brace, well-formed, and has no such field.
    Absent,
    /// The line (after leading JSON whitespace) does not start with `{`; an empty line included.
    NotAnObject,
    /// A syntax error came before the field was found, or the line ended first, or nesting went deeper than
    /// [`MAX_DEPTH`]. Also a malformed string, number or literal value of the field itself.
    Invalid,
}

/// The deepest nesting [`find_top_level`] skips; the top-level object counts as depth 1.
pub const MAX_DEPTH: usize = 64;

// The open containers of a skipped value (at most `MAX_DEPTH - 1`) are tracked as the bits of one `u64`.
const _: () = assert!(MAX_DEPTH >= 2 && MAX_DEPTH - 1 <= u64::BITS as usize);

/// Looks for `name` among the top-level keys of the JSON object in `line`; stops at the first match (first
/// wins for duplicate keys).
///
/// `name` is compared with each key's decoded text, so it may contain any character, `"` and `\` included.
/// See the [module docs](self) for how far the line is read and what is checked on the way.
#[must_use]
pub fn find_top_level<'a>(line: &'a [u8], name: &str) -> Field<'a> {
    let mut scan = Scanner { buf: line, pos: 0 };
    scan.skip_ws();
    if !scan.eat(b'{') {
        return Field::NotAnObject;
    }
    scan.members(name.as_bytes()).unwrap_or(Field::Invalid)
}

/// The value of top-level field `name` when it is a JSON integer from 0 to `u64::MAX` (no sign, fraction or
/// exponent); `None` otherwise (absent, another kind of value, out of range, or a syntax error first). Reads no
/// further than the number, like [`find_top_level`].
#[must_use]
pub fn find_top_level_u64(line: &[u8], name: &str) -> Option<u64> {
    let mut scan = Scanner { buf: line, pos: 0 };
    scan.skip_ws();
    if !scan.eat(b'{') || !scan.locate(name.as_bytes()).ok()? {
        return None;
    }
    let start = scan.pos;
    let first = scan.bump().ok()?;
    scan.number(first).ok()?;
    let token = std::str::from_utf8(&line[start..scan.pos]).ok()?;
    token.parse().ok() // a fraction, exponent or sign does not parse as u64
}

/// Decodes the escaped contents of a JSON string (`\" \\ \/ \b \f \n \r \t \uXXXX`, surrogate pairs included)
/// and appends the text to `out`. Used by the caller when [`Field::String`] says `escaped`.
///
/// Returns `Err(())` on a bad or truncated escape, a lone or reversed surrogate, or bytes that are not UTF-8;
/// `out` is then left as it was. It does not re-check what [`find_top_level`] already did: a raw control
/// character or quote in `raw` is copied as it is.
#[allow(clippy::result_unit_err, reason = "the API is fixed: there is only one way to fail")]
pub fn unescape(raw: &[u8], out: &mut String) -> Result<(), ()> {
    let start = out.len();
    // Decoding never grows the text: each escape is at least as long as the UTF-8 it stands for.
    out.reserve(raw.len());
    for piece in (Pieces { rest: raw }) {
        let ok = match piece {
            Ok(Piece::Run(run)) => std::str::from_utf8(run).map(|s| out.push_str(s)).is_ok(),
            Ok(Piece::Char(c)) => {
                out.push(c);
                true
            }
            Err(()) => false,
        };
        if !ok {
            out.truncate(start);
            return Err(());
        }
    }
    Ok(())
}

/// A syntax error, the end of the line where more was needed, or nesting deeper than [`MAX_DEPTH`].
struct Bad;

type Scan<T> = Result<T, Bad>;

/// A cursor over the line.
struct Scanner<'a> {
    buf: &'a [u8],
    /// INVARIANT: `pos <= buf.len()`.
    pos: usize,
}

impl<'a> Scanner<'a> {
    /// The bytes not read yet.
    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// Reads one byte; the line ending here is an error.
    fn bump(&mut self) -> Scan<u8> {
        let b = self.peek().ok_or(Bad)?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads `b` if it comes next.
    fn eat(&mut self, b: u8) -> bool {
        let next = self.peek() == Some(b);
        self.pos += usize::from(next);
        next
    }

    fn expect(&mut self, b: u8) -> Scan<()> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(Bad)
        }
    }

    /// Skips JSON whitespace: space, tab, line feed, carriage return (nothing else).
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// The members of the top-level object, whose `{` was read: the answer for `name`.
    fn members(&mut self, name: &[u8]) -> Scan<Field<'a>> {
        if self.locate(name)? {
            self.field_value()
        } else {
            Ok(Field::Absent)
        }
    }

    /// Reads the members of the top-level object, whose `{` was read, up to the value of `name`: true when
    /// found (the scanner stands at its value), false when the object ended without it.
    fn locate(&mut self, name: &[u8]) -> Scan<bool> {
        self.skip_ws();
        if self.eat(b'}') {
            return Ok(false);
        }
        loop {
            self.expect(b'"')?;
            let (key, escaped) = self.string()?;
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            if key_is(key, escaped, name) {
                return Ok(true);
            }
            self.skip_value()?;
            self.skip_ws();
            match self.bump()? {
                b',' => self.skip_ws(),
                b'}' => return Ok(false),
                _ => return Err(Bad),
            }
        }
    }

    /// Classifies the value of the field, reading only as far as its kind needs.
    fn field_value(&mut self) -> Scan<Field<'a>> {
        match self.bump()? {
            b'"' => {
                let (raw, escaped) = self.string()?;
                Ok(Field::String { raw, escaped })
            }
            // Depth 2, within MAX_DEPTH; the container itself is not read.
            b'{' | b'[' => Ok(Field::NotString),
            first => self.scalar(first).map(|()| Field::NotString),
        }
    }

    /// Skips one value of a top-level member (the whitespace before it included), nested containers and all.
    fn skip_value(&mut self) -> Scan<()> {
        // Bit `i` of `objects` is set when the `i`-th open container (counting from 0) is an object.
        // INVARIANT: 1 (the top level) + `open` <= MAX_DEPTH, so the bits in use are below 63.
        let mut objects: u64 = 0;
        let mut open: usize = 0;
        'value: loop {
            self.skip_ws();
            match self.bump()? {
                first @ (b'{' | b'[') => {
                    // This container sits at depth 1 (the top level) + `open` + 1.
                    if open + 2 > MAX_DEPTH {
                        return Err(Bad);
                    }
                    let object = first == b'{';
                    objects = (objects & !(1 << open)) | (u64::from(object) << open);
                    open += 1;
                    self.skip_ws();
                    if !self.eat(if object { b'}' } else { b']' }) {
                        if object {
                            self.key_colon()?;
                        }
                        continue 'value;
                    }
                    open -= 1; // empty container: a complete value
                }
                first => self.scalar(first)?,
            }
            // A value ended: close containers until one continues with another element.
            while open > 0 {
                self.skip_ws();
                let object = (objects >> (open - 1)) & 1 == 1;
                match self.bump()? {
                    b',' => {
                        if object {
                            self.skip_ws();
                            self.key_colon()?;
                        }
                        continue 'value;
                    }
                    b'}' if object => open -= 1,
                    b']' if !object => open -= 1,
                    _ => return Err(Bad),
                }
            }
            return Ok(());
        }
    }

    /// Reads a nested object's key (not compared with anything) and the `:` after it.
    fn key_colon(&mut self) -> Scan<()> {
        self.expect(b'"')?;
        self.string()?;
        self.skip_ws();
        self.expect(b':')
    }

    /// Reads a string, number or literal whose first byte `first` was read.
    fn scalar(&mut self, first: u8) -> Scan<()> {
        match first {
            b'"' => self.string().map(drop),
            b't' => self.literal(b"rue"),
            b'f' => self.literal(b"alse"),
            b'n' => self.literal(b"ull"),
            b'-' | b'0'..=b'9' => self.number(first),
            _ => Err(Bad),
        }
    }

    /// Reads the rest of a string whose opening quote was read: its still-escaped contents and whether they hold
    /// a backslash. Checks escape syntax and rejects raw control characters.
    fn string(&mut self) -> Scan<(&'a [u8], bool)> {
        let start = self.pos;
        let mut escaped = false;
        loop {
            let rest = self.rest();
            let Some(i) = rest.iter().position(|&b| matches!(b, b'"' | b'\\' | 0..=0x1f)) else {
                self.pos = self.buf.len();
                return Err(Bad);
            };
            self.pos += i + 1;
            match rest[i] {
                b'"' => return Ok((&self.buf[start..self.pos - 1], escaped)),
                b'\\' => {
                    escaped = true;
                    match self.bump()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            for _ in 0..4 {
                                if !self.bump()?.is_ascii_hexdigit() {
                                    return Err(Bad);
                                }
                            }
                        }
                        _ => return Err(Bad),
                    }
                }
                _ => return Err(Bad), // a raw control character
            }
        }
    }

    /// Reads the rest of `true`, `false` or `null` after its first byte.
    fn literal(&mut self, tail: &[u8]) -> Scan<()> {
        if self.rest().starts_with(tail) {
            self.pos += tail.len();
            Ok(())
        } else {
            Err(Bad)
        }
    }

    /// Reads the rest of a number whose first byte (`-` or a digit) was read:
    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`. A digit right after a leading zero is an error,
    /// not the end of the token.
    fn number(&mut self, first: u8) -> Scan<()> {
        let lead = if first == b'-' { self.bump()? } else { first };
        match lead {
            b'0' => {
                if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    return Err(Bad);
                }
            }
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return Err(Bad),
        }
        if self.eat(b'.') {
            self.digits1()?;
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            self.digits1()?;
        }
        Ok(())
    }

    /// Reads a run of ASCII digits; returns how many.
    fn digits(&mut self) -> usize {
        let n = self.rest().iter().take_while(|b| b.is_ascii_digit()).count();
        self.pos += n;
        n
    }

    /// Reads a run of at least one ASCII digit.
    fn digits1(&mut self) -> Scan<()> {
        if self.digits() > 0 {
            Ok(())
        } else {
            Err(Bad)
        }
    }
}

/// Whether the key with contents `raw` (from [`Scanner::string`]) decodes to exactly `name`.
fn key_is(raw: &[u8], escaped: bool, name: &[u8]) -> bool {
    if !escaped {
        return raw == name;
    }
    // Decoding never grows the text, so a raw key shorter than the name cannot match.
    if raw.len() < name.len() {
        return false;
    }
    let mut want = name;
    for piece in (Pieces { rest: raw }) {
        let after = match piece {
            Ok(Piece::Run(run)) => want.strip_prefix(run),
            Ok(Piece::Char(c)) => want.strip_prefix(c.encode_utf8(&mut [0; 4]).as_bytes()),
            Err(()) => None, // a lone surrogate decodes to no string, so to no `&str` name
        };
        match after {
            Some(rest) => want = rest,
            None => return false,
        }
    }
    want.is_empty()
}

/// One step of decoding a string's escaped contents.
enum Piece<'a> {
    /// Bytes without a backslash, as they are.
    Run(&'a [u8]),
    /// The character one escape (or one surrogate pair of escapes) stands for.
    Char(char),
}

/// Decodes escaped string contents piece by piece; after an `Err` it yields nothing more.
struct Pieces<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Pieces<'a> {
    type Item = Result<Piece<'a>, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&first, after) = self.rest.split_first()?;
        if first != b'\\' {
            let n = self.rest.iter().position(|&b| b == b'\\').unwrap_or(self.rest.len());
            let (run, rest) = self.rest.split_at(n);
            self.rest = rest;
            return Some(Ok(Piece::Run(run)));
        }
        match escape(after) {
            Ok((c, rest)) => {
                self.rest = rest;
                Some(Ok(Piece::Char(c)))
            }
            Err(()) => {
                self.rest = &[];
                Some(Err(()))
            }
        }
    }
}

/// Decodes one escape whose backslash came just before `s`: the character and the bytes after the escape.
fn escape(s: &[u8]) -> Result<(char, &[u8]), ()> {
    let (&kind, rest) = s.split_first().ok_or(())?;
    let c = match kind {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let (unit, rest) = hex4(rest)?;
            if !(0xD800..=0xDBFF).contains(&unit) {
                // `from_u32` refuses a lone low surrogate.
                return Ok((char::from_u32(unit).ok_or(())?, rest));
            }
            let (low, rest) = hex4(rest.strip_prefix(b"\\u").ok_or(())?)?;
            if !(0xDC00..=0xDFFF).contains(&low) {
                return Err(());
            }
            let c = char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)).ok_or(())?;
            return Ok((c, rest));
        }
        _ => return Err(()),
    };
    Ok((c, rest))
}

/// Parses four hex digits (either case) at the start of `s`.
fn hex4(s: &[u8]) -> Result<(u32, &[u8]), ()> {
    let (digits, rest) = s.split_first_chunk::<4>().ok_or(())?;
    let mut unit = 0;
    for &d in digits {
        unit = (unit << 4) | char::from(d).to_digit(16).ok_or(())?;
    }
    Ok((unit, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn find<'a>(line: &'a str, name: &str) -> Field<'a> {
        find_top_level(line.as_bytes(), name)
    }

    fn string(raw: &'static str, escaped: bool) -> Field<'static> {
        Field::String { raw: raw.as_bytes(), escaped }
    }

    fn decoded(raw: &[u8]) -> Result<String, ()> {
        let mut out = String::new();
        unescape(raw, &mut out).map(|()| out)
    }

    #[test]
    fn each_variant() {
        let line = br#"{"topic":"BTC-USD","px":101.5,"book":{"bids":[[1,2]]}}"#;
        let got = find_top_level(line, "topic");
        assert_eq!(got, Field::String { raw: b"BTC-USD", escaped: false });
        let Field::String { raw, .. } = got else { unreachable!() };
        assert_eq!(raw.as_ptr(), line[10..].as_ptr(), "raw borrows the line");
        assert_eq!(find_top_level(line, "px"), Field::NotString);
        assert_eq!(find_top_level(line, "book"), Field::NotString);
        assert_eq!(find_top_level(line, "bids"), Field::Absent);
        assert_eq!(find(r#"{}"#, "topic"), Field::Absent);
        for not_object in ["", "   ", "[]", r#""topic""#, "1", "null", "\u{b}{}", "\u{a0}{}"] {
            assert_eq!(find(not_object, "topic"), Field::NotAnObject, "{not_object:?}");
        }
        assert_eq!(find(r#"{"a" 1}"#, "topic"), Field::Invalid);
    }

    #[test]
    fn every_value_kind_of_the_field() {
        for (value, want) in [
            (r#""""#, string("", false)),
            (r#""x y""#, string("x y", false)),
            ("0", Field::NotString),
            ("-1.5e3", Field::NotString),
            ("true", Field::NotString),
            ("false", Field::NotString),
            ("null", Field::NotString),
            ("{}", Field::NotString),
            ("[]", Field::NotString),
            (r#"{"topic":"inner"}"#, Field::NotString),
            (r#"["topic"]"#, Field::NotString),
        ] {
            assert_eq!(find(&format!(r#"{{"topic":{value}}}"#), "topic"), want, "{value}");
        }
    }

    #[test]
    fn whitespace_everywhere() {
        let line = " \t\r\n{ \n\"a\" \t: [ 1 , { \"b\" : null } , [ ] , { } ] ,\r\n \"topic\" \t:\r \"x\" } ";
        assert_eq!(find(line, "topic"), string("x", false));
        assert_eq!(find(" {\n\"a\"\t:\rtrue\n}\t", "topic"), Field::Absent);
        assert_eq!(find("{ }", "topic"), Field::Absent);
        // Only space, tab, LF and CR are JSON whitespace.
        assert_eq!(find("{\u{b}\"topic\":1}", "topic"), Field::Invalid);
        assert_eq!(find("{\"a\":1\u{c}}", "topic"), Field::Invalid);
    }

    #[test]
    fn escapes_in_keys() {
        assert_eq!(find(r#"{"\u0074opic":"x"}"#, "topic"), string("x", false));
        assert_eq!(find(r#"{"\u0074\u006F\u0070\u0069\u0063":1}"#, "topic"), Field::NotString);
        assert_eq!(find(r#"{"t\\opic":1}"#, "topic"), Field::Absent);
        assert_eq!(find(r#"{"topic\u0000":1}"#, "topic"), Field::Absent);
        assert_eq!(find(r#"{"\u0074opi":1}"#, "topic"), Field::Absent);
        assert_eq!(find(r#"{"a\"b":1}"#, "a\"b"), Field::NotString);
        assert_eq!(find(r#"{"a\\b":1}"#, "a\\b"), Field::NotString);
        assert_eq!(find(r#"{"a\/b":1}"#, "a/b"), Field::NotString);
        assert_eq!(find(r#"{"\n":1}"#, "\n"), Field::NotString);
        assert_eq!(find(r#"{"\u00e9\ud83d\ude00":1}"#, "\u{e9}\u{1f600}"), Field::NotString);
        assert_eq!(find("{\"\u{e9}\u{1f600}\":1}", "\u{e9}\u{1f600}"), Field::NotString);
        // A lone surrogate decodes to no string, so it equals no name (and the scan goes on).
        assert_eq!(find(r#"{"\ud800":1,"topic":2}"#, "\u{fffd}"), Field::Absent);
        assert_eq!(find(r#"{"\ud800":1,"topic":2}"#, "topic"), Field::NotString);
        // Raw bytes equal to the name do not match when the key has escapes: `a\\b` decodes to `a\b`.
        assert_eq!(find(r#"{"a\\b":1}"#, "a\\\\b"), Field::Absent);
        // A bad escape in a key is a syntax error.
        assert_eq!(find(r#"{"\x":1,"topic":2}"#, "topic"), Field::Invalid);
    }

    #[test]
    fn escapes_in_values() {
        let line = r#"{"topic":"a\"b\\c\/d\b\f\n\r\t\u00e9\u20AC\ud83d\ude00"}"#;
        let got = find(line, "topic");
        let Field::String { raw, escaped: true } = got else { panic!("{got:?}") };
        assert_eq!(decoded(raw).unwrap(), "a\"b\\c/d\u{8}\u{c}\n\r\t\u{e9}\u{20ac}\u{1f600}");
        // Skipped strings with escapes, then the field.
        assert_eq!(find(r#"{"a":"\"}\\","b":["\u005D"],"topic":"x"}"#, "topic"), string("x", false));
        // Bad escapes and raw control characters, in a skipped value or in the field's.
        for bad in [r#""\x""#, r#""\u12""#, r#""\u12g4""#, r#""\"#, "\"a\nb\"", "\"\u{0}\"", "\"\u{1f}\""] {
            assert_eq!(find(&format!(r#"{{"a":{bad},"topic":"x"}}"#), "topic"), Field::Invalid, "{bad:?}");
            assert_eq!(find(&format!(r#"{{"topic":{bad}}}"#), "topic"), Field::Invalid, "{bad:?}");
        }
        // DEL and non-ASCII need no escaping.
        assert_eq!(find("{\"topic\":\"\u{7f}\u{e9}\"}", "topic"), string("\u{7f}\u{e9}", false));
        // The scan checks escape syntax only; a lone surrogate is caught by `unescape`.
        let got = find(r#"{"topic":"\ud800"}"#, "topic");
        assert_eq!(got, string(r"\ud800", true));
        let Field::String { raw, .. } = got else { unreachable!() };
        assert_eq!(decoded(raw), Err(()));
    }

    #[test]
    fn nested_keys_of_the_same_name_do_not_match() {
        let line = r#"{"book":{"topic":"no"},"list":[{"topic":"no"},"topic"],"s":"\"topic\":\"no\"","topic":"yes"}"#;
        assert_eq!(find(line, "topic"), string("yes", false));
        assert_eq!(find(r#"{"book":{"topic":"no","x":{"topic":1}},"l":[[{"topic":2}]]}"#, "topic"), Field::Absent);
    }

    #[test]
    fn first_of_duplicate_keys_wins() {
        assert_eq!(find(r#"{"topic":"first","topic":"second"}"#, "topic"), string("first", false));
        assert_eq!(find(r#"{"topic":1,"topic":"second"}"#, "topic"), Field::NotString);
        assert_eq!(find(r#"{"\u0074opic":"first","topic":"second"}"#, "topic"), string("first", false));
    }

    #[test]
    fn numbers() {
        let valid = ["0", "-0", "7", "-12", "1e5", "1E5", "1.5E-3", "1e+5", "0.0", "-0.5e-0", "123.456e789"];
        for n in valid {
            assert_eq!(find(&format!(r#"{{"n":{n},"topic":"x"}}"#), "topic"), string("x", false), "{n}");
            assert_eq!(find(&format!(r#"{{"n":[{n}],"m":{n} }}"#), "topic"), Field::Absent, "{n}");
            assert_eq!(find(&format!(r#"{{"topic":{n}}}"#), "topic"), Field::NotString, "{n}");
        }
        let invalid = [
            "01",
            "-01",
            "00",
            "1.",
            ".5",
            "+1",
            "-",
            "--1",
            "1e",
            "1e+",
            "1E-",
            "1.e5",
            "-a",
            "0x1",
            "1.5.3",
            "1e5e5",
            "NaN",
            "Infinity",
            "-Infinity",
            "1_000",
        ];
        for n in invalid {
            assert_eq!(find(&format!(r#"{{"n":{n},"topic":"x"}}"#), "topic"), Field::Invalid, "{n}");
        }
        // As the field's value, a malformed number token is Invalid; what follows a complete token is not read.
        for n in ["01", "-01", "1.", ".5", "+1", "-", "1e", "1e+", "1.e5", "-a"] {
            assert_eq!(find(&format!(r#"{{"topic":{n}}}"#), "topic"), Field::Invalid, "{n}");
        }
        assert_eq!(find(r#"{"topic":1.5.3}"#, "topic"), Field::NotString);
    }

    #[test]
    fn literals() {
        for bad in ["tru", "True", "nul", "nulll", "falsey", "f", "t rue"] {
            assert_eq!(find(&format!(r#"{{"a":{bad},"topic":"x"}}"#), "topic"), Field::Invalid, "{bad}");
        }
        for bad in ["tru", "True", "nul", "f"] {
            assert_eq!(find(&format!(r#"{{"topic":{bad}}}"#), "topic"), Field::Invalid, "{bad}");
        }
    }

    #[test]
    fn absent_needs_a_well_formed_object() {
        for bad in [
            r#"{"a":1,}"#,
            r#"{,}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":[1 2]}"#,
            r#"{"a":[,1]}"#,
            r#"{"a":{"b"}}"#,
            r#"{"a":{"b":}}"#,
            r#"{"a":{1:2}}"#,
            r#"{"a":{"b":1,}}"#,
            r#"{"a":[}"#,
            r#"{"a":[1}"#,
            r#"{"a":{"b":1]}"#,
            r#"{"a":1]"#,
            r#"{"a"}"#,
            r#"{a:1}"#,
            r#"{'a':1}"#,
            r#"{"a":1"#,
            r#"{"a":"#,
            r#"{"#,
        ] {
            assert_eq!(find(bad, "topic"), Field::Invalid, "{bad}");
        }
    }

    #[test]
    fn depth_limit() {
        let arrays = |n: usize| format!(r#"{{"a":{}{},"topic":"x"}}"#, "[".repeat(n), "]".repeat(n));
        assert_eq!(find(&arrays(MAX_DEPTH - 1), "topic"), string("x", false), "depth MAX_DEPTH is allowed");
        assert_eq!(find(&arrays(MAX_DEPTH), "topic"), Field::Invalid);
        let objects = |n: usize| format!(r#"{{"a":{}1{},"topic":"x"}}"#, r#"{"a":"#.repeat(n), "}".repeat(n));
        assert_eq!(find(&objects(MAX_DEPTH - 1), "topic"), string("x", false));
        assert_eq!(find(&objects(MAX_DEPTH), "topic"), Field::Invalid);
        let mixed = |n: usize| format!(r#"{{"a":{}1{},"topic":"x"}}"#, r#"[{"b":"#.repeat(n / 2), r"}]".repeat(n / 2));
        assert_eq!(find(&mixed(MAX_DEPTH - 2), "topic"), string("x", false));
        assert_eq!(find(&mixed(MAX_DEPTH), "topic"), Field::Invalid);
        // Hostile nesting: no stack growth, an early answer.
        assert_eq!(find(&format!(r#"{{"a":{}"#, "[".repeat(1_000_000)), "topic"), Field::Invalid);
        // Nesting after the answer is not read.
        assert_eq!(find(&format!(r#"{{"topic":"x","a":{}"#, "[".repeat(1000)), "topic"), string("x", false));
        assert_eq!(find(&format!(r#"{{"topic":{}"#, "[".repeat(1000)), "topic"), Field::NotString);
    }

    #[test]
    fn truncated_input() {
        let line = r#" {"a":[1,{"b":"c\"d"}],"px":-1.5e3,"t":true,"topic":"BTC","z":0}"#;
        let found = line.find("BTC\"").unwrap() + 4; // just past the value's closing quote
        for cut in 0..=line.len() {
            let want = match cut {
                0..=1 => Field::NotAnObject,
                _ if cut >= found => string("BTC", false),
                _ => Field::Invalid,
            };
            assert_eq!(find(&line[..cut], "topic"), want, "{:?}", &line[..cut]);
        }
        let line = r#"{"a":[1,{"b":null}],"c":"d"}"#;
        for cut in 1..line.len() {
            assert_eq!(find(&line[..cut], "topic"), Field::Invalid, "{:?}", &line[..cut]);
        }
        assert_eq!(find(line, "topic"), Field::Absent);
        // A number at the very end is a complete token; a literal cut short is not.
        assert_eq!(find(r#"{"topic":12"#, "topic"), Field::NotString);
        assert_eq!(find(r#"{"topic":tr"#, "topic"), Field::Invalid);
        assert_eq!(find(r#"{"topic":"BT"#, "topic"), Field::Invalid);
        assert_eq!(find(r#"{"topic":"BT\"#, "topic"), Field::Invalid);
        assert_eq!(find(r#"{"topic":"BT\u00"#, "topic"), Field::Invalid);
    }

    #[test]
    fn answer_found_before_garbage() {
        assert_eq!(
            find_top_level(b"{\"topic\":\"BTC\",\x00\xff}}]", "topic"),
            Field::String { raw: b"BTC", escaped: false }
        );
        assert_eq!(find(r#"{"topic":"BTC"]]]"#, "topic"), string("BTC", false));
        assert_eq!(find(r#"{"topic":5 garbage"#, "topic"), Field::NotString);
        assert_eq!(find(r#"{"topic":null,,,"#, "topic"), Field::NotString);
        assert_eq!(find(r#"{"topic":{"unclosed":[ ,"#, "topic"), Field::NotString);
        assert_eq!(find(r#"{"topic":[}"#, "topic"), Field::NotString);
        assert_eq!(find(r#"{"a":1} trailing {"#, "topic"), Field::Absent);
        assert_eq!(find(r#"{}}"#, "topic"), Field::Absent);
        // Garbage before the answer is not skipped over.
        assert_eq!(find(r#"{"a":1 x,"topic":"BTC"}"#, "topic"), Field::Invalid);
    }

    #[test]
    fn unescape_decodes_and_rejects() {
        let mut out = String::from("kept:");
        unescape(br#"plain \"\\\/\b\f\n\r\t\u0041\u00e9\u20ac\uD83D\uDE00 end"#, &mut out).unwrap();
        assert_eq!(out, "kept:plain \"\\/\u{8}\u{c}\n\r\t\u{41}\u{e9}\u{20ac}\u{1f600} end");
        assert_eq!(decoded(b""), Ok(String::new()));
        assert_eq!(decoded("\u{e9}".as_bytes()), Ok("\u{e9}".to_owned()));
        for bad in [
            &br"\x"[..],
            br"\",
            br"ab\",
            br"\u",
            br"\u12",
            br"\u12g4",
            br"\u+123",
            br"\ud800",
            br"\ud800x",
            br"\ud800\n",
            br"\ud800\u0041",
            br"\ud800\ud800",
            br"\udc00",
            br"\ude00\ud83d",
            br"\ud800\u",
            b"\xff",
            b"\xc3",
            b"ok\\n\xff",
        ] {
            let mut out = String::from("kept");
            assert_eq!(unescape(bad, &mut out), Err(()), "{:?}", String::from_utf8_lossy(bad));
            assert_eq!(out, "kept", "out is untouched on error");
        }
    }

    // ---- Property tests: serde_json is the oracle. ----

    /// A JSON value as generated: objects keep their members in order, duplicates included.
    #[derive(Debug, Clone)]
    enum J {
        Null,
        Bool(bool),
        /// Valid JSON number text.
        Num(String),
        Str(String),
        Arr(Vec<J>),
        Obj(Vec<(String, J)>),
    }

    /// The names looked up; the key strategy makes each of them frequent.
    const NAMES: [&str; 3] = ["topic", "", "\"\u{e9}\\\u{1f600}/"];

    fn text() -> impl Strategy<Value = String> {
        let special = vec!['"', '\\', '/', '\u{0}', '\n', '\t', '\u{1f}', '\u{7f}', '\u{e9}', '\u{20ac}', '\u{1f600}'];
        let ch = prop_oneof![4 => prop::char::range('a', 'z'), 1 => prop::sample::select(special)];
        prop::collection::vec(ch, 0..8).prop_map(|v| v.into_iter().collect())
    }

    fn key() -> impl Strategy<Value = String> {
        let near = vec!["topi", "topicx", "Topic", "a", NAMES[1], NAMES[2]];
        prop_oneof![
            3 => Just(NAMES[0].to_owned()),
            2 => prop::sample::select(near).prop_map(str::to_owned),
            2 => text(),
        ]
    }

    fn json() -> impl Strategy<Value = J> {
        let number = "-?(0|[1-9][0-9]{0,5})(\\.[0-9]{1,4})?([eE][+-]?[0-9]{1,2})?";
        let leaf = prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::Bool),
            number.prop_map(J::Num),
            text().prop_map(J::Str),
        ];
        leaf.prop_recursive(4, 48, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(J::Arr),
                prop::collection::vec((key(), inner), 0..5).prop_map(J::Obj),
            ]
        })
    }

    fn top() -> impl Strategy<Value = Vec<(String, J)>> {
        prop::collection::vec((key(), json()), 0..6)
    }

    /// Writes JSON with random whitespace in every slot and random (valid) escaping of every character.
    struct Writer {
        out: String,
        rng: u64,
    }

    impl Writer {
        fn roll(&mut self, n: u64) -> u64 {
            // xorshift64*; the seed is made odd so it is never zero.
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % n
        }

        fn ws(&mut self) {
            let ws = [" ", "\n", "\t ", "\r\n  ", "", "", "", ""][self.roll(8) as usize];
            self.out.push_str(ws);
        }

        fn string(&mut self, s: &str) {
            self.out.push('"');
            for c in s.chars() {
                let short = match c {
                    '"' => Some("\\\""),
                    '\\' => Some("\\\\"),
                    '/' => Some("\\/"),
                    '\u{8}' => Some("\\b"),
                    '\u{c}' => Some("\\f"),
                    '\n' => Some("\\n"),
                    '\r' => Some("\\r"),
                    '\t' => Some("\\t"),
                    _ => None,
                };
                let must = c < ' ' || c == '"' || c == '\\';
                match self.roll(4) {
                    0 => {
                        let upper = self.roll(2) == 0;
                        for unit in c.encode_utf16(&mut [0; 2]) {
                            let hex = if upper { format!("\\u{unit:04X}") } else { format!("\\u{unit:04x}") };
                            self.out.push_str(&hex);
                        }
                    }
                    1 | 2 if short.is_some() => self.out.push_str(short.unwrap_or_default()),
                    _ if must => {
                        let hex = format!("\\u{:04x}", u32::from(c));
                        self.out.push_str(short.unwrap_or(&hex));
                    }
                    _ => self.out.push(c),
                }
            }
            self.out.push('"');
        }

        fn object(&mut self, members: &[(String, J)]) {
            self.out.push('{');
            self.ws();
            for (i, (k, v)) in members.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                    self.ws();
                }
                self.string(k);
                self.ws();
                self.out.push(':');
                self.ws();
                self.value(v);
                self.ws();
            }
            self.out.push('}');
        }

        fn value(&mut self, v: &J) {
            match v {
                J::Null => self.out.push_str("null"),
                J::Bool(b) => self.out.push_str(if *b { "true" } else { "false" }),
                J::Num(n) => self.out.push_str(n),
                J::Str(s) => self.string(s),
                J::Arr(items) => {
                    self.out.push('[');
                    self.ws();
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            self.out.push(',');
                            self.ws();
                        }
                        self.value(item);
                        self.ws();
                    }
                    self.out.push(']');
                }
                J::Obj(members) => self.object(members),
            }
        }
    }

    fn write(members: &[(String, J)], seed: u64) -> String {
        let mut w = Writer { out: String::new(), rng: seed | 1 };
        w.ws();
        w.object(members);
        w.ws();
        w.out
    }

    fn to_value(j: &J) -> Value {
        match j {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Num(n) => serde_json::from_str(n).expect("generated numbers are valid"),
            J::Str(s) => Value::String(s.clone()),
            J::Arr(items) => Value::Array(items.iter().map(to_value).collect()),
            J::Obj(members) => Value::Object(members.iter().map(|(k, v)| (k.clone(), to_value(v))).collect()),
        }
    }

    /// serde_json's view of the first top-level `name` member of `text`, which serde_json accepts as an object.
    /// serde_json parses every key and value; this only steps over the top level's `{ : , }`.
    fn serde_first(text: &str, name: &str) -> Option<Value> {
        let b = text.as_bytes();
        let ws = |mut i: usize| {
            while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                i += 1;
            }
            i
        };
        let mut i = ws(0);
        assert_eq!(b[i], b'{');
        i = ws(i + 1);
        if b[i] == b'}' {
            return None;
        }
        loop {
            let mut keys = serde_json::Deserializer::from_str(&text[i..]).into_iter::<String>();
            let key = keys.next().expect("a key").expect("a valid key");
            i = ws(i + keys.byte_offset());
            assert_eq!(b[i], b':');
            i += 1;
            let mut values = serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>();
            let value = values.next().expect("a value").expect("a valid value");
            if key == name {
                return Some(value);
            }
            i = ws(i + values.byte_offset());
            match b[i] {
                b',' => i = ws(i + 1),
                b'}' => return None,
                other => panic!("unexpected {:?} in {text:?}", char::from(other)),
            }
        }
    }

    /// Panics unless `got` is the answer for serde_json's view `want` of the field.
    fn assert_agrees(got: Field<'_>, want: Option<&Value>, text: &str) {
        match (got, want) {
            (Field::String { raw, escaped }, Some(Value::String(s))) => {
                assert_eq!(escaped, raw.contains(&b'\\'), "{text:?}");
                assert_eq!(decoded(raw).as_ref(), Ok(s), "{text:?}");
            }
            (Field::NotString, Some(v)) if !v.is_string() => {}
            (Field::Absent, None) => {}
            (got, want) => panic!("{got:?} but serde_json says {want:?} in {text:?}"),
        }
    }

    /// What must hold on any input, valid or not.
    fn assert_consistent<'a>(line: &'a [u8], name: &str) -> Field<'a> {
        let got = find_top_level(line, name);
        let first = line.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        assert_eq!(got == Field::NotAnObject, first != Some(&b'{'));
        if let Field::String { raw, escaped } = got {
            let start = raw.as_ptr().addr() - line.as_ptr().addr();
            assert_eq!(line.get(start + raw.len()), Some(&b'"'), "raw ends at a quote");
            assert_eq!(escaped, raw.contains(&b'\\'));
            assert!(!raw.iter().any(|&b| b < 0x20));
            let _ = decoded(raw);
        }
        // The answer never depends on bytes past the end: a NUL continues no token.
        let mut longer = line.to_vec();
        longer.push(0);
        assert_eq!(find_top_level(&longer, name), got);
        got
    }

    proptest! {
        #[test]
        fn agrees_with_serde_json_on_random_layouts(
            members in top(),
            seed in any::<u64>(),
            name in prop::sample::select(NAMES.to_vec()),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 3),
        ) {
            let text = write(&members, seed);
            let parsed: Value = serde_json::from_str(&text).expect("the writer writes valid JSON");
            prop_assert!(parsed.is_object());
            let want = serde_first(&text, name);
            let got = assert_consistent(text.as_bytes(), name);
            assert_agrees(got, want.as_ref(), &text);
            // Garbage after the object changes nothing.
            let garbage = format!("{text}]}}\"\\{{,x\u{1}");
            prop_assert_eq!(find_top_level(garbage.as_bytes(), name), got);
            // A prefix answers the same, or Invalid, or NotAnObject before the `{`.
            for cut in cuts {
                let prefix = &text.as_bytes()[..cut.index(text.len() + 1)];
                let short = find_top_level(prefix, name);
                let before_brace = !prefix.contains(&b'{');
                prop_assert!(
                    short == got || short == Field::Invalid || (before_brace && short == Field::NotAnObject),
                    "{:?} gives {:?}, the whole gives {:?}", String::from_utf8_lossy(prefix), short, got
                );
            }
        }

        #[test]
        fn agrees_with_serde_json_serializer(members in top(), name in prop::sample::select(NAMES.to_vec())) {
            let value = to_value(&J::Obj(members));
            let want = value.get(name);
            for text in [serde_json::to_string(&value).unwrap(), serde_json::to_string_pretty(&value).unwrap()] {
                assert_agrees(find_top_level(text.as_bytes(), name), want, &text);
                // The two views of serde_json agree (on kinds: floats need not round-trip exactly).
                let first = serde_first(&text, name);
                prop_assert_eq!(first.as_ref().map(Value::as_str), want.map(Value::as_str));
            }
        }

        #[test]
        fn never_panics_on_what_serde_json_rejects(
            bytes in prop::collection::vec(
                prop_oneof![
                    3 => prop::sample::select(b"{}[]\":,\\ \n0123456789-+.eEtrufalsn\x00\x1f\xc3\xa9".to_vec()),
                    1 => any::<u8>(),
                ],
                0..64,
            ),
            members in top(),
            seed in any::<u64>(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
            name in prop::sample::select(NAMES.to_vec()),
        ) {
            // Random bytes from a JSON alphabet, and a valid object with a few bytes changed, inserted or removed.
            let mut mutated = write(&members, seed).into_bytes();
            for (at, byte, op) in edits {
                let i = at.index(mutated.len() + 1);
                match op {
                    0 if i < mutated.len() => mutated[i] = byte,
                    1 if i < mutated.len() => { mutated.remove(i); }
                    _ => mutated.insert(i, byte),
                }
            }
            for line in [bytes, mutated] {
                let got = assert_consistent(&line, name);
                match serde_json::from_slice::<Value>(&line) {
                    Err(_) => {}
                    Ok(v) if v.is_object() => {
                        let text = std::str::from_utf8(&line).unwrap();
                        assert_agrees(got, serde_first(text, name).as_ref(), text);
                    }
                    Ok(_) => prop_assert_eq!(got, Field::NotAnObject),
                }
            }
        }
    }

    #[test]
    fn integer_fields_are_read_as_u64() {
        let find = |line: &str, name| find_top_level_u64(line.as_bytes(), name);
        assert_eq!(find(r#"{"topic":"a","seq":42,"px":1}"#, "seq"), Some(42));
        assert_eq!(find(r#"{"seq":18446744073709551615}"#, "seq"), Some(u64::MAX));
        assert_eq!(find(r#" { "nested":{"seq":1}, "seq" : 7 }"#, "seq"), Some(7), "top level only");
        assert_eq!(find(r#"{"\u0073eq":3}"#, "seq"), Some(3), "escaped key");
        for bad in [
            r#"{"seq":18446744073709551616}"#,
            r#"{"seq":-1}"#,
            r#"{"seq":1.5}"#,
            r#"{"seq":1e3}"#,
            r#"{"seq":"7"}"#,
            r#"{"seq":01}"#,
            r#"{"seq":}"#,
            r#"{"other":1}"#,
            r#"[1]"#,
            "",
        ] {
            assert_eq!(find(bad, "seq"), None, "{bad}");
        }
    }
}
