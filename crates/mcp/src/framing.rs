//! A bound on the size of one JSON-RPC message from the client. rmcp's own
//! bound drops an oversized line without a word, which leaves the client
//! waiting forever; here the line is discarded as it streams in (never held
//! in memory) and replaced by a tiny request with the same id, which the
//! server answers with an error naming the limit. The server keeps serving.

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// The method of the stand-in request for an oversized message.
pub const TOO_LARGE_METHOD: &str = "microagent/requestTooLarge";

/// Bytes kept from each end of an oversized line, to find its id.
const KEEP: usize = 1024;

/// Copies `input` to `output` line by line, replacing every line longer
/// than `limit` bytes. Returns when `input` ends or `output` closes.
pub async fn filter_lines(
    input: impl AsyncRead + Unpin,
    mut output: impl AsyncWrite + Unpin,
    limit: usize,
) -> std::io::Result<()> {
    let mut input = BufReader::with_capacity(64 * 1024, input);
    let mut line: Vec<u8> = Vec::new();
    let mut oversized: Option<Oversized> = None;
    loop {
        let buf = input.fill_buf().await?;
        if buf.is_empty() {
            return Ok(()); // EOF: an unterminated last line is dropped
        }
        let (piece, ends_line) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let used = piece.len();
        match &mut oversized {
            Some(big) => big.add(piece),
            None if line.len() + piece.len() > limit => {
                let mut big = Oversized::new(std::mem::take(&mut line));
                big.add(piece);
                oversized = Some(big);
            }
            None => line.extend_from_slice(piece),
        }
        input.consume(used);
        if ends_line {
            match oversized.take() {
                Some(big) => {
                    if let Some(stand_in) = big.stand_in(limit) {
                        output.write_all(stand_in.as_bytes()).await?;
                        output.write_all(b"\n").await?;
                    }
                }
                None => output.write_all(&line).await?,
            }
            output.flush().await?;
            line.clear();
        }
    }
}

/// What is kept of a line too long to keep.
struct Oversized {
    head: Vec<u8>,
    tail: Vec<u8>,
    total: u64,
}

impl Oversized {
    fn new(mut start: Vec<u8>) -> Oversized {
        let total = start.len() as u64;
        let tail = start[start.len().saturating_sub(KEEP)..].to_vec();
        start.truncate(KEEP);
        Oversized {
            head: start,
            tail,
            total,
        }
    }

    fn add(&mut self, piece: &[u8]) {
        self.total += piece.len() as u64;
        if self.head.len() < KEEP {
            let take = (KEEP - self.head.len()).min(piece.len());
            self.head.extend_from_slice(&piece[..take]);
        }
        self.tail.extend_from_slice(piece);
        if self.tail.len() > 2 * KEEP {
            self.tail.drain(..self.tail.len() - KEEP);
        }
    }

    /// The stand-in request, if the message had an id (a notification too
    /// large is just dropped: there is no one to answer).
    fn stand_in(&self, limit: usize) -> Option<String> {
        let id = find_id(&self.head).or_else(|| find_last_id(&self.tail))?;
        Some(
            serde_json::json!({
                "jsonrpc": "2.0",
                "id": id,
                "method": TOO_LARGE_METHOD,
                "params": {"bytes": self.total, "limit": limit},
            })
            .to_string(),
        )
    }
}

/// The value of the first top-level-looking `"id":` (a number or string).
fn find_id(bytes: &[u8]) -> Option<serde_json::Value> {
    id_positions(bytes).find_map(|at| id_value(&bytes[at..]))
}

fn find_last_id(bytes: &[u8]) -> Option<serde_json::Value> {
    let positions: Vec<usize> = id_positions(bytes).collect();
    positions
        .into_iter()
        .rev()
        .find_map(|at| id_value(&bytes[at..]))
}

fn id_positions(bytes: &[u8]) -> impl Iterator<Item = usize> + '_ {
    const KEY: &[u8] = b"\"id\":";
    bytes
        .windows(KEY.len())
        .enumerate()
        .filter(|(_, w)| *w == KEY)
        .map(|(i, _)| i + KEY.len())
}

fn id_value(rest: &[u8]) -> Option<serde_json::Value> {
    let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<serde_json::Value>();
    match values.next()? {
        Ok(v @ (serde_json::Value::Number(_) | serde_json::Value::String(_))) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn filtered(input: &[u8], limit: usize) -> String {
        let mut out = Vec::new();
        filter_lines(input, &mut out, limit).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn small_lines_pass_unchanged() {
        let input = b"{\"id\":1}\n{\"id\":2}\n";
        assert_eq!(filtered(input, 100).await, "{\"id\":1}\n{\"id\":2}\n");
    }

    #[tokio::test]
    async fn an_oversized_request_becomes_a_stand_in_with_its_id() {
        let big = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{{\"x\":\"{}\"}}}}\n{{\"id\":8}}\n",
            "a".repeat(10_000)
        );
        let out = filtered(big.as_bytes(), 1000).await;
        let mut lines = out.lines();
        let stand_in: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(stand_in["id"], 7);
        assert_eq!(stand_in["method"], TOO_LARGE_METHOD);
        assert_eq!(stand_in["params"]["limit"], 1000);
        assert!(stand_in["params"]["bytes"].as_u64().unwrap() > 10_000);
        assert_eq!(lines.next(), Some("{\"id\":8}"));
    }

    #[tokio::test]
    async fn the_id_may_come_last_or_be_a_string() {
        let big = format!("{{\"params\":\"{}\",\"id\":\"abc\"}}\n", "b".repeat(5000));
        let out = filtered(big.as_bytes(), 100).await;
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["id"], "abc");
    }

    /// Hands out its bytes in pieces of pseudo-random size.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        seed: u64,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            let n = (1 + self.seed % 700) as usize;
            let end = (self.at + n)
                .min(self.data.len())
                .min(self.at + buf.remaining());
            let piece = self.data[self.at..end].to_vec();
            buf.put_slice(&piece);
            self.at = end;
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn random_streams_keep_every_small_line_and_answer_every_big_request() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for round in 0..200 {
            let mut next = || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let limit = 64 + (next() % 2000) as usize;
            let mut input = Vec::new();
            let mut expected = Vec::new();
            for id in 0..(1 + next() % 12) {
                let pad = "x\\\"{}".repeat((next() % 900) as usize);
                let line = if next() % 4 == 0 {
                    format!("{{\"method\":\"n\",\"params\":\"{pad}\"}}")
                } else {
                    format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"params\":\"{pad}\"}}")
                };
                input.extend_from_slice(line.as_bytes());
                input.push(b'\n');
                expected.push((id, line.len() < limit, line.contains("\"id\"")));
            }
            let trickle = Trickle {
                data: input.clone(),
                at: 0,
                seed: next() | 1,
            };
            let mut out = Vec::new();
            filter_lines(trickle, &mut out, limit).await.unwrap();
            let out = String::from_utf8(out).unwrap();
            let mut lines = out.lines();
            let originals: Vec<&str> = std::str::from_utf8(&input).unwrap().lines().collect();
            for (i, (id, fits, has_id)) in expected.into_iter().enumerate() {
                if fits {
                    assert_eq!(lines.next(), Some(originals[i]), "round {round}");
                } else if has_id {
                    let v: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
                    assert_eq!(v["id"], id, "round {round}");
                    assert_eq!(v["method"], TOO_LARGE_METHOD);
                }
            }
            assert_eq!(lines.next(), None, "round {round}");
        }
    }

    #[tokio::test]
    async fn an_oversized_notification_is_dropped() {
        let big = format!(
            "{{\"method\":\"x\",\"params\":\"{}\"}}\n{{\"id\":1}}\n",
            "c".repeat(5000)
        );
        assert_eq!(filtered(big.as_bytes(), 100).await, "{\"id\":1}\n");
    }
}
