//! SIP transports: one UDP socket, or one TCP connection to the upper platform.
//!
//! Readers run as their own tasks and hand parsed messages to the platform loop, which owns the
//! write side. Over TCP the upper sends its requests on our connection (GB/T 28181-2022 §9.1.1 f:
//! lower platforms behind NAT keep one long connection), so a closed connection means offline.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::sip::{Message, ParseError};

/// What the readers report.
#[derive(Debug)]
pub(crate) enum Inbound {
    Message(Message, SocketAddr),
    /// The TCP connection with this generation number is gone.
    Closed(u64),
}

/// The send side of the current transport.
#[derive(Debug)]
pub(crate) enum Link {
    Udp(Arc<UdpSocket>),
    Tcp(OwnedWriteHalf),
    /// TCP, not connected.
    Down,
}

impl Link {
    pub(crate) async fn send(&mut self, bytes: &[u8], to: SocketAddr) -> io::Result<()> {
        match self {
            Link::Udp(s) => s.send_to(bytes, to).await.map(|_| ()),
            Link::Tcp(write) => write.write_all(bytes).await,
            Link::Down => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "SIP TCP link down",
            )),
        }
    }

    /// Reliable transports do not retransmit (RFC 3261 §17.1.2.2).
    pub(crate) fn reliable(&self) -> bool {
        !matches!(self, Link::Udp(_))
    }

    pub(crate) fn is_up(&self) -> bool {
        !matches!(self, Link::Down)
    }
}

/// Bind the UDP socket and start its reader.
pub(crate) async fn bind_udp(
    listen: SocketAddr,
    tx: mpsc::Sender<Inbound>,
) -> io::Result<(Arc<UdpSocket>, JoinHandle<()>)> {
    let sock = Arc::new(UdpSocket::bind(listen).await?);
    let reader = sock.clone();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            let (n, from) = match reader.recv_from(&mut buf).await {
                Ok(v) => v,
                // ICMP port unreachable from an earlier send surfaces here on Linux; not fatal.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "gb28181 UDP receive failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            match Message::parse(&buf[..n], false) {
                Ok((m, _)) => {
                    if tx.send(Inbound::Message(m, from)).await.is_err() {
                        return;
                    }
                }
                // Stray CRLF keep-alives and garbage are dropped, as RFC 3261 §16.3 allows.
                Err(e) => {
                    tracing::debug!(%from, error = %e, "gb28181 dropped an unparsable datagram")
                }
            }
        }
    });
    Ok((sock, task))
}

/// Connect to the upper platform and start the reader for this connection.
pub(crate) async fn connect_tcp(
    server: SocketAddr,
    generation: u64,
    tx: mpsc::Sender<Inbound>,
) -> io::Result<(OwnedWriteHalf, SocketAddr, JoinHandle<()>)> {
    let stream = TcpStream::connect(server).await?;
    stream.set_nodelay(true)?;
    let local = stream.local_addr()?;
    let (mut read, write) = stream.into_split();
    let task = tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::with_capacity(8192);
        let mut chunk = vec![0u8; 16_384];
        loop {
            let n = match read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            loop {
                match Message::parse(&buf, true) {
                    Ok((m, used)) => {
                        buf.drain(..used);
                        if tx.send(Inbound::Message(m, server)).await.is_err() {
                            return;
                        }
                    }
                    Err(ParseError::Incomplete) => break,
                    Err(e) => {
                        // A stream cannot resynchronise after a framing error: drop the link.
                        tracing::warn!(error = %e, "gb28181 TCP framing error, closing");
                        let _ = tx.send(Inbound::Closed(generation)).await;
                        return;
                    }
                }
            }
            if buf.len() > 1 << 20 {
                tracing::warn!("gb28181 TCP message over 1 MiB, closing");
                break;
            }
        }
        let _ = tx.send(Inbound::Closed(generation)).await;
    });
    Ok((write, local, task))
}
