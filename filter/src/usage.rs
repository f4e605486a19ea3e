//! Token usage read from an inference response as it passes: the `usage`
//! object of an OpenAI-style JSON response, or of the last server-sent event
//! of a stream that carries one. The response is never buffered: chunks are
//! scanned as they come, whatever their boundaries, in constant memory (a
//! few counters and a key of at most [`KEY_CAPACITY`] bytes).

/// Longest object key kept while scanning; longer keys are none of ours.
const KEY_CAPACITY: usize = 24;
/// Containers deeper than this are skipped (their kind is not tracked).
const MAX_DEPTH: u32 = 64;

/// Tokens a response reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON document (`application/json`).
    Json,
    /// Server-sent events (`text/event-stream`): JSON in `data:` lines.
    EventStream,
}

impl Framing {
    /// The framing of a response with this `content-type`, if it is one
    /// that can carry usage.
    pub fn of(content_type: &[u8]) -> Option<Framing> {
        let essence = content_type
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        if essence.eq_ignore_ascii_case(b"text/event-stream") {
            Some(Framing::EventStream)
        } else if essence.eq_ignore_ascii_case(b"application/json") {
            Some(Framing::Json)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// At the start of an event-stream line, matching `data:` so far.
    Prefix(u8),
    /// In a `data:` line: JSON is scanned.
    Data,
    /// In any other line (`event:`, `id:`, a comment): skipped.
    Other,
}

/// Which usage field a number is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Prompt,
    Completion,
}

/// The scanner: feed it every chunk of a response body, then ask for
/// [`UsageScanner::usage`].
#[derive(Debug, Clone)]
pub struct UsageScanner {
    framing: Framing,
    line: Line,
    /// Open containers; bit `d` of `objects` is set when the container at
    /// depth `d + 1` is an object.
    depth: u32,
    objects: u64,
    in_string: bool,
    escaped: bool,
    /// The next string in the current object is a key.
    expect_key: bool,
    key: [u8; KEY_CAPACITY],
    key_len: usize,
    /// The key is longer than [`KEY_CAPACITY`] or has escapes.
    key_unusable: bool,
    /// The last complete key: its length in `key`, if usable.
    last_key: Option<usize>,
    /// Depth of the `usage` object being read, if inside one.
    usage_depth: Option<u32>,
    current: Usage,
    current_seen: bool,
    /// The usage field whose number is being read.
    number: Option<(Field, u64)>,
    /// The value after a `:` has not started yet: its key decides what it is.
    value_key: Option<usize>,
    last: Option<Usage>,
}

impl UsageScanner {
    pub fn new(framing: Framing) -> UsageScanner {
        UsageScanner {
            framing,
            line: Line::Prefix(0),
            depth: 0,
            objects: 0,
            in_string: false,
            escaped: false,
            expect_key: false,
            key: [0; KEY_CAPACITY],
            key_len: 0,
            key_unusable: false,
            last_key: None,
            usage_depth: None,
            current: Usage::default(),
            current_seen: false,
            number: None,
            value_key: None,
            last: None,
        }
    }

    /// The usage of the last complete `usage` object seen, if any.
    pub fn usage(&self) -> Option<Usage> {
        self.last
    }

    /// Scans the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if self.framing == Framing::EventStream && !self.event_stream_byte(b) {
                continue;
            }
            self.json_byte(b);
        }
    }

    /// Event-stream framing: whether `b` is JSON to scan. A line ends any
    /// JSON it held (an event's data is one line in this API).
    fn event_stream_byte(&mut self, b: u8) -> bool {
        if b == b'\n' || b == b'\r' {
            self.end_number();
            self.reset_json();
            self.line = Line::Prefix(0);
            return false;
        }
        match self.line {
            Line::Prefix(n) => {
                const DATA: &[u8] = b"data:";
                self.line = if DATA.get(usize::from(n)) == Some(&b) {
                    if usize::from(n) + 1 == DATA.len() {
                        Line::Data
                    } else {
                        Line::Prefix(n + 1)
                    }
                } else {
                    Line::Other
                };
                false
            }
            Line::Data => true,
            Line::Other => false,
        }
    }

    fn reset_json(&mut self) {
        self.depth = 0;
        self.objects = 0;
        self.in_string = false;
        self.escaped = false;
        self.expect_key = false;
        self.key_len = 0;
        self.key_unusable = false;
        self.last_key = None;
        self.usage_depth = None;
        self.current_seen = false;
        self.number = None;
        self.value_key = None;
    }

    fn in_object(&self) -> bool {
        self.depth > 0 && self.depth <= MAX_DEPTH && self.objects & (1 << (self.depth - 1)) != 0
    }

    fn key_is(&self, key: Option<usize>, name: &[u8]) -> bool {
        key.is_some_and(|len| self.key.get(..len) == Some(name))
    }

    fn json_byte(&mut self, b: u8) {
        if self.in_string {
            self.string_byte(b);
            return;
        }
        if let Some((field, n)) = self.number {
            if b.is_ascii_digit() {
                let n = n.saturating_mul(10).saturating_add(u64::from(b - b'0'));
                self.number = Some((field, n));
                return;
            }
            self.end_number();
        }
        if b.is_ascii_whitespace() {
            return;
        }
        // The first byte of a value decides what its key meant.
        let value_key = self.value_key.take();
        match b {
            b'"' => {
                self.in_string = true;
                self.key_len = 0;
                self.key_unusable = false;
            }
            b'{' | b'[' => {
                self.depth = self.depth.saturating_add(1);
                if self.depth <= MAX_DEPTH {
                    let bit = 1u64 << (self.depth - 1);
                    if b == b'{' {
                        self.objects |= bit;
                    } else {
                        self.objects &= !bit;
                    }
                }
                self.expect_key = b == b'{';
                if b == b'{' && self.usage_depth.is_none() && self.key_is(value_key, b"usage") {
                    self.usage_depth = Some(self.depth);
                    self.current = Usage::default();
                    self.current_seen = false;
                }
            }
            b'}' | b']' => {
                if Some(self.depth) == self.usage_depth {
                    self.usage_depth = None;
                    if self.current_seen {
                        self.last = Some(self.current);
                    }
                }
                self.depth = self.depth.saturating_sub(1);
                self.expect_key = false;
            }
            b':' => {
                self.value_key = self.last_key.take();
                self.expect_key = false;
            }
            b',' => self.expect_key = self.in_object(),
            b'0'..=b'9' if self.usage_depth == Some(self.depth) => {
                let field = if self.key_is(value_key, b"prompt_tokens") {
                    Some(Field::Prompt)
                } else if self.key_is(value_key, b"completion_tokens") {
                    Some(Field::Completion)
                } else {
                    None
                };
                self.number = field.map(|f| (f, u64::from(b - b'0')));
            }
            _ => {}
        }
    }

    fn string_byte(&mut self, b: u8) {
        if self.escaped {
            self.escaped = false;
            self.key_unusable = true;
            return;
        }
        match b {
            b'\\' => self.escaped = true,
            b'"' => {
                self.in_string = false;
                if self.expect_key && self.in_object() {
                    self.last_key = (!self.key_unusable).then_some(self.key_len);
                    self.expect_key = false;
                }
            }
            _ if self.expect_key => match self.key.get_mut(self.key_len) {
                Some(slot) => {
                    *slot = b;
                    self.key_len += 1;
                }
                None => self.key_unusable = true,
            },
            _ => {}
        }
    }

    fn end_number(&mut self) {
        if let Some((field, n)) = self.number.take() {
            match field {
                Field::Prompt => self.current.prompt_tokens = n,
                Field::Completion => self.current.completion_tokens = n,
            }
            self.current_seen = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(framing: Framing, body: &[u8]) -> Option<Usage> {
        let mut s = UsageScanner::new(framing);
        s.feed(body);
        s.usage()
    }

    fn usage(prompt: u64, completion: u64) -> Option<Usage> {
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
        })
    }

    const COMPLETION: &str = r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,
        "message":{"role":"assistant","content":"the \"usage\": {\"prompt_tokens\": 999}"},
        "finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":34,
        "total_tokens":46,"prompt_tokens_details":{"cached_tokens":5}}}"#;

    const STREAM: &str = concat!(
        ": keep-alive {\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"usage: {\\\"prompt_tokens\\\":1}\"}}]}\n\n",
        "event: message\n",
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":21,\"total_tokens\":28}}\n\n",
        "data: [DONE]\n\n"
    );

    #[test]
    fn reads_the_usage_of_a_json_response_not_of_its_text() {
        assert_eq!(scan(Framing::Json, COMPLETION.as_bytes()), usage(12, 34));
    }

    #[test]
    fn reads_the_usage_of_the_last_event_of_a_stream() {
        assert_eq!(scan(Framing::EventStream, STREAM.as_bytes()), usage(7, 21));
        let crlf = STREAM.replace('\n', "\r\n");
        assert_eq!(scan(Framing::EventStream, crlf.as_bytes()), usage(7, 21));
    }

    #[test]
    fn any_chunk_boundaries_give_the_same_usage() {
        for (framing, body) in [
            (Framing::Json, COMPLETION.as_bytes()),
            (Framing::EventStream, STREAM.as_bytes()),
        ] {
            let whole = scan(framing, body);
            for at in 0..body.len() {
                let mut s = UsageScanner::new(framing);
                s.feed(&body[..at]);
                s.feed(&body[at..]);
                assert_eq!(s.usage(), whole, "split at {at}");
            }
            let mut s = UsageScanner::new(framing);
            body.chunks(1).for_each(|c| s.feed(c));
            assert_eq!(s.usage(), whole, "byte by byte");
        }
    }

    #[test]
    fn a_response_without_usage_has_none() {
        assert_eq!(scan(Framing::Json, br#"{"usage":null,"x":1}"#), None);
        assert_eq!(scan(Framing::Json, br#"{"data":[{"usage":{}}]}"#), None);
        assert_eq!(scan(Framing::EventStream, b"data: [DONE]\n\n"), None);
        assert_eq!(scan(Framing::Json, b""), None);
    }

    #[test]
    fn garbage_and_huge_numbers_never_panic() {
        let huge =
            br#"{"usage":{"prompt_tokens":99999999999999999999999999,"completion_tokens":1}}"#;
        assert_eq!(scan(Framing::Json, huge), usage(u64::MAX, 1));
        let deep = "[".repeat(10_000) + "{\"usage\":{\"prompt_tokens\":1}}";
        assert_eq!(
            scan(Framing::Json, deep.as_bytes()),
            None,
            "beyond the tracked depth"
        );
        for junk in [
            &b"}}}]]]{{{"[..],
            b"\"\\",
            b":::,,,",
            b"data:data:{",
            b"\xff\xfe{\"\xff\":1}",
        ] {
            let _ = scan(Framing::Json, junk);
            let _ = scan(Framing::EventStream, junk);
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(
            Framing::of(b"text/event-stream; charset=utf-8"),
            Some(Framing::EventStream)
        );
        assert_eq!(Framing::of(b"Application/JSON"), Some(Framing::Json));
        assert_eq!(Framing::of(b"text/plain"), None);
    }
}
