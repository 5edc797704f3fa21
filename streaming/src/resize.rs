//! Terminal resize events: the client sends a stream of JSON objects such as
//! `{"Width":80,"Height":24}` (field names matched without regard to case, as Go does).
//! Runs in cairnd (its streaming server).

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::TerminalSize;

/// Most bytes of an unfinished JSON object kept; a longer one ends the stream.
const MAX_PENDING: usize = 64 * 1024;

#[derive(Deserialize)]
struct Wire {
    #[serde(default, alias = "Width", alias = "WIDTH")]
    width: u16,
    #[serde(default, alias = "Height", alias = "HEIGHT")]
    height: u16,
}

/// Splits a byte stream into resize events.
#[derive(Default)]
pub struct ResizeDecoder {
    pending: Vec<u8>,
}

impl ResizeDecoder {
    /// Feeds bytes; returns the complete events, or `Err` once the stream is not valid
    /// JSON (the caller then stops, as kubelet does).
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<TerminalSize>, String> {
        self.pending.extend_from_slice(data);
        let mut events = Vec::new();
        let mut consumed = 0;
        {
            let mut iter = serde_json::Deserializer::from_slice(&self.pending).into_iter::<Wire>();
            loop {
                match iter.next() {
                    Some(Ok(w)) => {
                        events.push(TerminalSize {
                            width: w.width,
                            height: w.height,
                        });
                        consumed = iter.byte_offset();
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => {
                        consumed = self.pending.len();
                        break;
                    }
                }
            }
        }
        self.pending.drain(..consumed);
        if self.pending.len() > MAX_PENDING {
            return Err("resize event too large".into());
        }
        Ok(events)
    }
}

/// Reads resize events from `stream` into `tx` until the stream ends, breaks, or nobody
/// listens any more.
pub async fn pump<R: AsyncRead + Unpin>(mut stream: R, tx: mpsc::Sender<TerminalSize>) {
    let mut decoder = ResizeDecoder::default();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let Ok(events) = decoder.feed(&buf[..n]) else {
            return;
        };
        for size in events {
            if tx.send(size).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_a_stream_of_objects() {
        let mut d = ResizeDecoder::default();
        assert_eq!(d.feed(b"{\"Width\":80,").unwrap(), vec![]);
        assert_eq!(
            d.feed(b"\"Height\":24}\n{\"width\":100,\"height\":40} {\"Wid")
                .unwrap(),
            vec![
                TerminalSize {
                    width: 80,
                    height: 24
                },
                TerminalSize {
                    width: 100,
                    height: 40
                }
            ]
        );
        assert_eq!(
            d.feed(b"th\":1}").unwrap(),
            vec![TerminalSize {
                width: 1,
                height: 0
            }]
        );
        assert!(d.feed(b"not json").is_err());
    }

    #[tokio::test]
    async fn pump_forwards_events() {
        let (tx, mut rx) = mpsc::channel(4);
        let input: &[u8] = b"{\"Width\":3,\"Height\":4}";
        pump(input, tx).await;
        assert_eq!(
            rx.recv().await,
            Some(TerminalSize {
                width: 3,
                height: 4
            })
        );
        assert_eq!(rx.recv().await, None);
    }
}
