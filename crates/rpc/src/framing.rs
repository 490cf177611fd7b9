//! Finding where one JSON value ends in a byte stream.
//!
//! JSON-RPC over a stream socket has no length prefix: SPDK and rpc.py send
//! JSON values back to back (optionally separated by whitespace) and find the
//! end of each by parsing. Re-parsing the whole buffer on every read would be
//! quadratic for a request trickling in byte by byte, so [`FrameScanner`] is
//! a small resumable state machine that only tracks nesting depth and string
//! state; the complete frame is then parsed by serde_json, which does the
//! real validation.

/// Result of scanning a buffer for the next complete JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// No complete value yet; scan again when more bytes arrive. `start` is
    /// where the value begins (after leading whitespace), or the buffer
    /// length if only whitespace was seen.
    Incomplete {
        /// Offset of the first non-whitespace byte.
        start: usize,
    },
    /// A complete value occupies `start..end`.
    Complete {
        /// Offset of the first byte of the value.
        start: usize,
        /// Offset one past the last byte of the value.
        end: usize,
    },
    /// The bytes cannot begin a JSON value (e.g. a stray `}`); the stream
    /// cannot be resynchronised.
    Invalid {
        /// Offset of the offending byte.
        at: usize,
    },
}

/// What kind of top-level token is being scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Token {
    /// Only whitespace so far.
    #[default]
    None,
    /// An object or array: ends when depth returns to zero.
    Nested,
    /// A top-level string: ends at its closing quote.
    String,
    /// A top-level number or literal (`true`, `null`, `12`): ends at the
    /// first byte that cannot belong to it.
    Bare,
}

/// Resumable scanner: call [`FrameScanner::scan`] with the same (growing)
/// buffer until it returns [`Frame::Complete`] or [`Frame::Invalid`], then
/// [`FrameScanner::reset`] before scanning the bytes after the frame.
#[derive(Debug, Clone, Default)]
pub struct FrameScanner {
    /// Bytes before this offset have been scanned already.
    pos: usize,
    start: usize,
    token: Token,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

fn is_json_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

fn is_bare_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'+' | b'.')
}

impl FrameScanner {
    /// A scanner positioned at the start of a buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget all state; the next scan starts at offset 0 of the buffer.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Scan `buf` (which must extend the buffer given to previous calls since
    /// the last reset) for the end of the first JSON value.
    pub fn scan(&mut self, buf: &[u8]) -> Frame {
        while self.pos < buf.len() {
            let byte = buf[self.pos];
            match self.token {
                Token::None => {
                    if is_json_whitespace(byte) {
                        self.pos += 1;
                        continue;
                    }
                    self.start = self.pos;
                    match byte {
                        b'{' | b'[' => {
                            self.token = Token::Nested;
                            self.depth = 1;
                        }
                        b'"' => {
                            self.token = Token::String;
                            self.in_string = true;
                        }
                        b if is_bare_token_byte(b) => self.token = Token::Bare,
                        _ => return Frame::Invalid { at: self.pos },
                    }
                    self.pos += 1;
                }
                Token::Bare => {
                    if !is_bare_token_byte(byte) {
                        return Frame::Complete {
                            start: self.start,
                            end: self.pos,
                        };
                    }
                    self.pos += 1;
                }
                Token::String | Token::Nested => {
                    self.pos += 1;
                    if self.in_string {
                        if self.escaped {
                            self.escaped = false;
                        } else if byte == b'\\' {
                            self.escaped = true;
                        } else if byte == b'"' {
                            self.in_string = false;
                            if self.token == Token::String {
                                return Frame::Complete {
                                    start: self.start,
                                    end: self.pos,
                                };
                            }
                        }
                        continue;
                    }
                    match byte {
                        b'"' => self.in_string = true,
                        b'{' | b'[' => self.depth += 1,
                        b'}' | b']' => {
                            self.depth -= 1;
                            if self.depth == 0 {
                                return Frame::Complete {
                                    start: self.start,
                                    end: self.pos,
                                };
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        let start = if self.token == Token::None {
            buf.len()
        } else {
            self.start
        };
        Frame::Incomplete { start }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut offset = 0;
        let mut scanner = FrameScanner::new();
        loop {
            match scanner.scan(&input[offset..]) {
                Frame::Complete { start, end } => {
                    out.push(Frame::Complete {
                        start: start + offset,
                        end: end + offset,
                    });
                    offset += end;
                    scanner.reset();
                }
                other => {
                    out.push(other);
                    return out;
                }
            }
        }
    }

    #[test]
    fn back_to_back_objects_without_separator() {
        let input = br#"{"a":"}"}[1,{"b":"\"]"}] {}"#;
        assert_eq!(
            frames(input),
            vec![
                Frame::Complete { start: 0, end: 9 },
                Frame::Complete { start: 9, end: 24 },
                Frame::Complete { start: 25, end: 27 },
                Frame::Incomplete { start: 0 },
            ]
        );
    }

    #[test]
    fn resumes_across_one_byte_feeds() {
        let input = br#"  {"method":"x\\","id":[1,{}]}  "#;
        let mut scanner = FrameScanner::new();
        for len in 0..input.len() - 2 {
            assert!(matches!(
                scanner.scan(&input[..len]),
                Frame::Incomplete { .. }
            ));
        }
        assert_eq!(
            scanner.scan(&input[..input.len() - 1]),
            Frame::Complete { start: 2, end: 30 }
        );
    }

    #[test]
    fn stray_closer_is_invalid_and_bare_values_end_at_delimiter() {
        assert_eq!(frames(b" }"), vec![Frame::Invalid { at: 1 }]);
        assert_eq!(
            frames(b"12 true"),
            vec![
                Frame::Complete { start: 0, end: 2 },
                Frame::Incomplete { start: 1 },
            ]
        );
    }
}
