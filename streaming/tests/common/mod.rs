//! Shared by the protocol tests: a fake runtime and a TCP echo server.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_streaming::{AsyncStream, Runtime, StreamError, Streams};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// The fake container runtime: commands are interpreted, not run.
#[derive(Default)]
pub struct FakeRuntime {
    /// Set when an exec future was dropped before finishing (client went away).
    pub cancelled: Arc<AtomicBool>,
}

struct DropFlag(Arc<AtomicBool>, bool);

impl Drop for DropFlag {
    fn drop(&mut self) {
        if !self.1 {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

async fn write(stream: &mut Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>, data: &[u8]) {
    if let Some(s) = stream.as_mut() {
        s.write_all(data).await.unwrap();
    }
}

async fn cat(streams: &mut Streams) -> std::io::Result<()> {
    let (Some(stdin), Some(stdout)) = (streams.stdin.as_mut(), streams.stdout.as_mut()) else {
        return Ok(());
    };
    tokio::io::copy(stdin, stdout).await?;
    Ok(())
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    async fn exec(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        mut streams: Streams,
    ) -> Result<i32, StreamError> {
        assert_eq!(container_id, "c1");
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        match args.as_slice() {
            ["echo", rest @ ..] => {
                let line = format!("{}\n", rest.join(" "));
                write(&mut streams.stdout, line.as_bytes()).await;
                Ok(0)
            }
            ["stderr", text] => {
                write(&mut streams.stderr, text.as_bytes()).await;
                Ok(0)
            }
            ["cat"] => {
                cat(&mut streams).await?;
                Ok(0)
            }
            ["false3"] => Ok(3),
            ["fail"] => Err(StreamError::other("boom")),
            ["tty"] => {
                let size = match streams.resize.as_mut() {
                    Some(rx) => rx.recv().await.map(|s| format!("{}x{}", s.width, s.height)),
                    None => None,
                };
                let line = format!("tty={} size={}\n", streams.tty, size.unwrap_or_default());
                write(&mut streams.stdout, line.as_bytes()).await;
                Ok(0)
            }
            ["sleep"] => {
                let mut flag = DropFlag(self.cancelled.clone(), false);
                tokio::time::sleep(Duration::from_secs(3600)).await;
                flag.1 = true;
                Ok(0)
            }
            _ => Err(StreamError::not_found(format!("no command {cmd:?}"))),
        }
    }

    async fn attach(&self, container_id: &str, mut streams: Streams) -> Result<(), StreamError> {
        if container_id != "c1" {
            return Err(StreamError::not_found(format!(
                "container {container_id} not found"
            )));
        }
        write(&mut streams.stdout, b"attached\n").await;
        cat(&mut streams).await?;
        Ok(())
    }

    async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
        mut stream: Box<dyn AsyncStream>,
    ) -> Result<(), StreamError> {
        assert_eq!(pod_sandbox_id, "pod1");
        let mut conn = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| StreamError::other(format!("connecting to port {port}: {e}")))?;
        tokio::io::copy_bidirectional(&mut stream, &mut conn)
            .await
            .map_err(|e| StreamError::io("copying", e))?;
        Ok(())
    }
}

/// A TCP echo server on a free port; echoes until the peer half-closes.
pub async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    port
}

/// RUST_LOG=cairn_streaming=debug shows the server's side of a failing test.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
