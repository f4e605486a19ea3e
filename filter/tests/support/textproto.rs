//! Protocol buffer text format, read into a tree of fields without a schema:
//! enough for the CEL specification's conformance test files.

use std::fmt;

/// One field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// A quoted string, as bytes (escapes resolved; adjacent strings joined).
    Str(Vec<u8>),
    /// A number, an enum name, `true`, `false`, `inf` or `nan`, as written.
    Word(String),
    /// A nested message: its fields in order, repeated names repeated.
    Message(Vec<(String, Node)>),
    /// `[a, b]`: the values of a repeated field.
    List(Vec<Node>),
}

impl Node {
    /// The fields named `name` of a message.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        let fields: &[(String, Node)] = match self {
            Node::Message(fields) => fields,
            _ => &[],
        };
        fields
            .iter()
            .filter(move |(n, _)| n == name)
            .flat_map(|(_, v)| match v {
                Node::List(items) => items.iter().collect::<Vec<_>>(),
                other => vec![other],
            })
    }

    /// The first field named `name` of a message.
    pub fn get(&self, name: &str) -> Option<&Node> {
        self.fields()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| match v {
                Node::List(items) => items.first().unwrap_or(v),
                other => other,
            })
    }

    /// The field `name` as text, when it is a string.
    pub fn text(&self, name: &str) -> Option<String> {
        match self.get(name)? {
            Node::Str(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        }
    }

    /// The fields of a message, in order.
    pub fn fields(&self) -> &[(String, Node)] {
        match self {
            Node::Message(fields) => fields,
            _ => &[],
        }
    }
}

/// A syntax error, with its 1-based line.
#[derive(Debug)]
pub struct Error {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Parses a whole file into its top-level message.
pub fn parse(text: &str) -> Result<Node, Error> {
    let mut parser = Parser {
        bytes: text.as_bytes(),
        at: 0,
    };
    let fields = parser.fields(None)?;
    Ok(Node::Message(fields))
}

struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn line(&self) -> usize {
        1 + self.bytes[..self.at]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
    }

    fn fail<T>(&self, message: impl Into<String>) -> Result<T, Error> {
        Err(Error {
            line: self.line(),
            message: message.into(),
        })
    }

    fn skip_space(&mut self) {
        while let Some(&b) = self.bytes.get(self.at) {
            if b == b'#' {
                while self.bytes.get(self.at).is_some_and(|b| *b != b'\n') {
                    self.at += 1;
                }
            } else if b.is_ascii_whitespace() {
                self.at += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// Fields up to `close` (or the end of the text when `None`).
    fn fields(&mut self, close: Option<u8>) -> Result<Vec<(String, Node)>, Error> {
        let mut fields = Vec::new();
        loop {
            match (self.peek(), close) {
                (None, None) => return Ok(fields),
                (None, Some(c)) => return self.fail(format!("missing '{}'", c as char)),
                (Some(b), Some(c)) if b == c => {
                    self.at += 1;
                    return Ok(fields);
                }
                _ => {}
            }
            let name = self.field_name()?;
            let colon = self.eat(b':');
            let value = match self.peek() {
                Some(b'{') | Some(b'<') => {
                    let open = self.bytes[self.at];
                    self.at += 1;
                    Node::Message(self.fields(Some(if open == b'{' { b'}' } else { b'>' }))?)
                }
                Some(b'[') if colon => {
                    self.at += 1;
                    let mut items = Vec::new();
                    while !self.eat(b']') {
                        items.push(self.value()?);
                        self.eat(b',');
                    }
                    Node::List(items)
                }
                _ if colon => self.value()?,
                _ => return self.fail(format!("expected ':' or '{{' after '{name}'")),
            };
            fields.push((name, value));
            if !self.eat(b',') {
                self.eat(b';');
            }
        }
    }

    fn field_name(&mut self) -> Result<String, Error> {
        self.skip_space();
        if self.eat(b'[') {
            let start = self.at;
            while self.bytes.get(self.at).is_some_and(|b| *b != b']') {
                self.at += 1;
            }
            let name = String::from_utf8_lossy(&self.bytes[start..self.at]).into_owned();
            if !self.eat(b']') {
                return self.fail("unclosed '[' in a field name");
            }
            return Ok(format!("[{name}]"));
        }
        let word = self.word();
        if word.is_empty() {
            return self.fail("expected a field name");
        }
        Ok(word)
    }

    fn word(&mut self) -> String {
        let start = self.at;
        while self
            .bytes
            .get(self.at)
            .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'+'))
        {
            self.at += 1;
        }
        String::from_utf8_lossy(&self.bytes[start..self.at]).into_owned()
    }

    fn value(&mut self) -> Result<Node, Error> {
        match self.peek() {
            Some(b'"') | Some(b'\'') => {
                let mut bytes = Vec::new();
                while let Some(q @ (b'"' | b'\'')) = self.peek() {
                    self.at += 1;
                    self.string(q, &mut bytes)?;
                }
                Ok(Node::Str(bytes))
            }
            Some(b'{') | Some(b'<') => {
                let open = self.bytes[self.at];
                self.at += 1;
                Ok(Node::Message(self.fields(Some(if open == b'{' {
                    b'}'
                } else {
                    b'>'
                }))?))
            }
            _ => {
                let word = self.word();
                if word.is_empty() {
                    return self.fail("expected a value");
                }
                Ok(Node::Word(word))
            }
        }
    }

    /// The rest of a string opened by `quote`, escapes resolved.
    fn string(&mut self, quote: u8, out: &mut Vec<u8>) -> Result<(), Error> {
        loop {
            let Some(&b) = self.bytes.get(self.at) else {
                return self.fail("unterminated string");
            };
            self.at += 1;
            if b == quote {
                return Ok(());
            }
            if b == b'\n' {
                return self.fail("newline in a string");
            }
            if b != b'\\' {
                out.push(b);
                continue;
            }
            let Some(&e) = self.bytes.get(self.at) else {
                return self.fail("unterminated escape");
            };
            self.at += 1;
            match e {
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                b'a' => out.push(7),
                b'b' => out.push(8),
                b'f' => out.push(12),
                b'v' => out.push(11),
                b'?' => out.push(b'?'),
                b'\\' | b'\'' | b'"' => out.push(e),
                b'0'..=b'7' => {
                    let mut value = u32::from(e - b'0');
                    for _ in 0..2 {
                        match self.bytes.get(self.at) {
                            Some(d @ b'0'..=b'7') => {
                                value = value * 8 + u32::from(d - b'0');
                                self.at += 1;
                            }
                            _ => break,
                        }
                    }
                    out.push(value as u8);
                }
                b'x' | b'X' => {
                    let value = self.hex(2, false)?;
                    out.push(value as u8);
                }
                b'u' => self.code_point(4, out)?,
                b'U' => self.code_point(8, out)?,
                _ => return self.fail(format!("unknown escape '\\{}'", e as char)),
            }
        }
    }

    fn hex(&mut self, max: usize, exact: bool) -> Result<u32, Error> {
        let mut value = 0u32;
        let mut digits = 0;
        while digits < max {
            match self
                .bytes
                .get(self.at)
                .and_then(|b| (*b as char).to_digit(16))
            {
                Some(d) => {
                    value = value.wrapping_mul(16).wrapping_add(d);
                    self.at += 1;
                    digits += 1;
                }
                None => break,
            }
        }
        if digits == 0 || (exact && digits != max) {
            return self.fail("bad hexadecimal escape");
        }
        Ok(value)
    }

    fn code_point(&mut self, digits: usize, out: &mut Vec<u8>) -> Result<(), Error> {
        let value = self.hex(digits, true)?;
        let Some(c) = char::from_u32(value) else {
            return self.fail(format!("'{value:x}' is not a Unicode scalar value"));
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nested_messages_strings_and_lists() {
        let node = parse(
            "name: \"a\" # comment\n test { expr: 'x\\'y' \"z\" value: { int64_value: -3 } }\n list: [1, 2]\n [type.googleapis.com/x.Y] { seconds: 1 }",
        )
        .unwrap();
        assert_eq!(node.text("name").as_deref(), Some("a"));
        let test = node.get("test").unwrap();
        assert_eq!(test.text("expr").as_deref(), Some("x'yz"));
        assert_eq!(
            test.get("value").unwrap().get("int64_value"),
            Some(&Node::Word("-3".into()))
        );
        assert_eq!(node.all("list").count(), 2);
        assert!(node.get("[type.googleapis.com/x.Y]").is_some());
        assert_eq!(
            parse("s: '\\101\\x42\\u00e9'").unwrap().get("s"),
            Some(&Node::Str("AB\u{e9}".as_bytes().to_vec()))
        );
        assert_eq!(parse("a { b: 1").unwrap_err().line, 1);
    }
}
