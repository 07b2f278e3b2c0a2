//! `text/event-stream`: an incremental parser for what upstreams send and a writer for what
//! the gateway sends to clients.

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// `event:` field; empty means the default type `message`.
    pub event: String,
    /// `data:` lines joined with `\n`.
    pub data: String,
    /// `id:` field, if any.
    pub id: Option<String>,
    /// `retry:` field in milliseconds, if any.
    pub retry: Option<u64>,
}

impl Event {
    /// A `message` event carrying one JSON-RPC message.
    pub fn message(data: impl Into<String>) -> Event {
        Event { data: data.into(), ..Event::default() }
    }

    /// The wire form, ending with the blank line that dispatches the event.
    pub fn to_wire(&self) -> String {
        let mut out = String::with_capacity(self.data.len() + 32);
        if !self.event.is_empty() {
            out.push_str("event: ");
            out.push_str(&self.event);
            out.push('\n');
        }
        if let Some(id) = &self.id {
            out.push_str("id: ");
            out.push_str(id);
            out.push('\n');
        }
        if let Some(retry) = self.retry {
            out.push_str(&format!("retry: {retry}\n"));
        }
        for line in self.data.split('\n') {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
        out
    }
}

/// Feeds bytes in, takes complete events out. Handles `\n`, `\r\n` and `\r` line ends, and
/// chunks split anywhere (including inside a UTF-8 sequence).
#[derive(Debug, Default)]
pub struct Parser {
    buffer: Vec<u8>,
    current: Event,
    has_data: bool,
    /// Upper bound on one event, so a hostile upstream cannot make the gateway buffer forever.
    limit: usize,
}

/// The stream carried an event larger than the parser's limit.
#[derive(Debug, thiserror::Error)]
#[error("an event in the stream is larger than {0} bytes")]
pub struct TooLarge(pub usize);

impl Parser {
    pub fn new(limit: usize) -> Parser {
        Parser { limit, ..Parser::default() }
    }

    /// Add bytes and return every event they complete.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Event>, TooLarge> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        let mut index = 0;
        while index < self.buffer.len() {
            let byte = self.buffer[index];
            if byte == b'\n' || byte == b'\r' {
                // A lone '\r' at the very end may be the first half of "\r\n": wait for more.
                if byte == b'\r' && index + 1 == self.buffer.len() {
                    break;
                }
                let line = String::from_utf8_lossy(&self.buffer[start..index]).into_owned();
                let mut next = index + 1;
                if byte == b'\r' && self.buffer.get(next) == Some(&b'\n') {
                    next += 1;
                }
                self.line(&line, &mut events);
                start = next;
                index = next;
                continue;
            }
            index += 1;
        }
        self.buffer.drain(..start);
        if self.buffer.len() + self.current.data.len() > self.limit {
            return Err(TooLarge(self.limit));
        }
        Ok(events)
    }

    fn line(&mut self, line: &str, events: &mut Vec<Event>) {
        if line.is_empty() {
            if self.has_data {
                events.push(std::mem::take(&mut self.current));
            } else if self.current.id.is_some() || self.current.retry.is_some() {
                // An event with only id/retry (a "priming" event) still matters to clients.
                events.push(std::mem::take(&mut self.current));
            }
            self.current = Event::default();
            self.has_data = false;
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.current.event = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.current.id = Some(value.to_owned()),
            "retry" => self.current.retry = value.parse().ok(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_split_chunks_and_line_endings() {
        let mut parser = Parser::new(1 << 20);
        let mut events = parser.push(b"event: message\r\nid: 7\r\nda").unwrap();
        assert!(events.is_empty());
        events.extend(parser.push(b"ta: {\"a\":1}\r").unwrap());
        events.extend(parser.push(b"\n\r\n: comment\n\ndata: x\ndata: y\n\n").unwrap());
        assert_eq!(
            events,
            vec![
                Event { event: "message".into(), data: "{\"a\":1}".into(), id: Some("7".into()), retry: None },
                Event { event: String::new(), data: "x\ny".into(), id: None, retry: None },
            ]
        );
        let wire = events[1].to_wire();
        assert_eq!(wire, "data: x\ndata: y\n\n");
    }

    #[test]
    fn refuses_oversized_events() {
        let mut parser = Parser::new(16);
        assert!(parser.push(b"data: 0123456789012345678901234567890").is_err());
    }
}
