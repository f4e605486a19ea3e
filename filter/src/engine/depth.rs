//! How deeply an expression nests, read from its text before the parser sees
//! it. The parser, the analysis and the interpreter all recurse along the
//! depth of the syntax tree, and a wasm VM's stack is small: an expression
//! nested too deeply is refused before anything recurses over it.

/// An upper bound of how deeply `source` nests, from its tokens alone.
///
/// Within one operand of `&&` / `||`, every operator, field selection,
/// index, call and bracket adds one level, and a bracketed sub-expression
/// adds its own depth. Chains of `&&` and `||` add the logarithm of their
/// length, as the parser balances them; each `?` adds one level to its
/// whole segment; a comma starts a sibling.
pub fn nesting_depth(source: &str) -> usize {
    let bytes = source.as_bytes();
    let mut levels = Levels(vec![Level::default()]);
    let mut i = 0;
    while i < bytes.len() {
        i = levels.token(bytes, i);
    }
    while levels.0.len() > 1 {
        levels.close();
    }
    levels.0.last().map_or(0, Level::depth)
}

/// One bracket level of the text read so far.
#[derive(Default)]
struct Level {
    /// Operators in the current operand of `&&` / `||`.
    chain: usize,
    /// Deepest bracketed sub-expression in the current operand.
    inner: usize,
    /// Deepest operand of `&&` / `||` already closed in this segment.
    operand: usize,
    /// `&&` and `||` in this segment: balanced, they add their logarithm.
    logic: usize,
    /// `?` in this segment: a conditional wraps its whole condition.
    ternary: usize,
    /// Deepest segment of this level already closed by a comma.
    best: usize,
}

impl Level {
    fn depth(&self) -> usize {
        let logic = (usize::BITS - self.logic.leading_zeros()) as usize;
        let operand = self.operand.max(self.chain + self.inner);
        self.best.max(self.ternary + logic + operand)
    }
}

/// The open bracket levels, innermost last (never empty).
struct Levels(Vec<Level>);

impl Levels {
    fn current(&mut self) -> &mut Level {
        if self.0.is_empty() {
            self.0.push(Level::default());
        }
        let last = self.0.len() - 1;
        &mut self.0[last]
    }

    /// Reads the token at `i`; returns the index after it.
    fn token(&mut self, bytes: &[u8], i: usize) -> usize {
        let c = bytes[i];
        let next = bytes.get(i + 1).copied();
        let mut step = 1;
        let mut ops = 0;
        match c {
            b'\'' | b'"' => return skip_string(bytes, i),
            b'(' | b'[' | b'{' => {
                self.current().chain += 1;
                self.0.push(Level::default());
            }
            b')' | b']' | b'}' if self.0.len() > 1 => self.close(),
            b',' => {
                let level = self.current();
                *level = Level {
                    best: level.depth(),
                    ..Level::default()
                };
            }
            b'&' | b'|' if next == Some(c) => {
                let level = self.current();
                level.operand = level.operand.max(level.chain + level.inner);
                (level.chain, level.inner) = (0, 0);
                level.logic += 1;
                step = 2;
            }
            b'.' => {
                let digit = |b: Option<&u8>| b.is_some_and(u8::is_ascii_digit);
                // `1.5` is a number, not a selection.
                if !(digit(bytes.get(i.wrapping_sub(1))) && digit(bytes.get(i + 1))) {
                    ops = 1;
                }
            }
            b'=' | b'!' | b'<' | b'>' => {
                ops = 1;
                if next == Some(b'=') {
                    step = 2;
                }
            }
            b'?' => self.current().ternary += 1,
            b'+' | b'-' | b'*' | b'/' | b'%' => ops = 1,
            b'i' if next == Some(b'n')
                && !bytes.get(i + 2).is_some_and(is_ident_byte)
                && !(i > 0 && is_ident_byte(&bytes[i - 1])) =>
            {
                ops = 1;
                step = 2;
            }
            _ if is_ident_byte(&c) => {
                // Skip the rest of the identifier or number.
                while bytes.get(i + step).is_some_and(is_ident_byte) {
                    step += 1;
                }
            }
            _ => {}
        }
        self.current().chain += ops;
        i + step
    }

    /// Ends the innermost bracket: its depth counts in the operand around it.
    fn close(&mut self) {
        if let Some(closed) = self.0.pop() {
            let level = self.current();
            level.inner = level.inner.max(closed.depth());
        }
    }
}

fn is_ident_byte(b: &u8) -> bool {
    b.is_ascii_alphanumeric() || *b == b'_'
}

/// The index just past the string literal that starts at `start` (a quote).
fn skip_string(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let raw = start > 0 && matches!(bytes[start - 1], b'r' | b'R');
    let triple = bytes.get(start..start + 3) == Some(&[quote, quote, quote][..]);
    let mut i = start + if triple { 3 } else { 1 };
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if !raw => i += 2,
            b if b == quote => {
                if !triple {
                    return i + 1;
                }
                if bytes.get(i..i + 3) == Some(&[quote, quote, quote][..]) {
                    return i + 3;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_chains_brackets_and_balanced_logic() {
        assert_eq!(nesting_depth("true"), 0);
        assert_eq!(nesting_depth("a.b.c.d"), 3);
        assert_eq!(nesting_depth("1 + 2 + 3"), 2);
        assert_eq!(nesting_depth("((((true))))"), 4);
        assert_eq!(nesting_depth("!!!!x"), 4);
        assert_eq!(nesting_depth("[[[[1]]]][0][0]"), 6);
        assert_eq!(nesting_depth("f(a.b.c, d)"), 3);
        // 1,024 alternatives balance to a depth of about 10.
        let alternatives = vec!["x == 'a'"; 1024].join(" || ");
        assert_eq!(nesting_depth(&alternatives), 10 + 1);
        assert_eq!(nesting_depth("a.b || c ? d : e.f.g"), 1 + 1 + 2);
        // Operators inside string literals do not count.
        assert_eq!(nesting_depth("'a.b.c(d)' == \"((\\\"))\""), 1);
        assert_eq!(nesting_depth("r'\\' == '''(()'''"), 1);
        assert_eq!(nesting_depth("1.5 + 2.25"), 1);
        assert_eq!(nesting_depth("'x' in request.headers"), 2);
        // Unbalanced closers and unterminated strings end, they do not panic.
        assert_eq!(nesting_depth(")))"), 0);
        assert_eq!(nesting_depth("'abc"), 0);
    }
}
