//! One MQTT client connection: connect, subscribe, and a read buffer that frames packets.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::mqtt::{self, Version};

pub const KEEP_ALIVE_SECS: u16 = 60;
/// A PINGREQ goes out after this long without other traffic from the client.
pub const PING_EVERY: Duration = Duration::from_secs(20);

/// A read buffer: bytes `start..end` of `data` are received and not yet consumed.
pub struct ReadBuf {
    pub data: Vec<u8>,
    pub start: usize,
    pub end: usize,
}

impl ReadBuf {
    pub fn new(capacity: usize) -> ReadBuf {
        ReadBuf { data: vec![0; capacity], start: 0, end: 0 }
    }

    /// Makes room for at least one more read, and for the whole frame at the front.
    pub fn prepare(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            return;
        }
        let len = self.data.len();
        let need = mqtt::frame_len(&self.data[self.start..self.end]).unwrap_or(0);
        if self.start > 0 && (len - self.end < len / 4 || len - self.start < need) {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if need > self.data.len() - self.start {
            self.data.resize(self.start + need, 0);
        }
        if self.end == self.data.len() {
            self.data.resize(self.data.len() * 2, 0);
        }
    }

    pub async fn read_from<R: AsyncReadExt + Unpin>(&mut self, r: &mut R) -> Result<usize> {
        self.prepare();
        let n = r.read(&mut self.data[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Reads until one whole packet is buffered, then returns its header and body (copied:
    /// only used during setup).
    pub async fn next_packet<R: AsyncReadExt + Unpin>(&mut self, r: &mut R) -> Result<(u8, Vec<u8>)> {
        loop {
            if let Some((f, used)) = mqtt::parse_frame(&self.data[self.start..self.end])? {
                let out = (f.header, f.body.to_vec());
                self.start += used;
                return Ok(out);
            }
            if self.read_from(r).await? == 0 {
                bail!("connection closed by the broker");
            }
        }
    }
}

/// An open, connected MQTT session.
pub struct Client {
    pub stream: TcpStream,
    pub rbuf: ReadBuf,
    /// 5.0 Receive Maximum from CONNACK (65535 when absent).
    pub receive_maximum: u16,
}

/// TCP connect, CONNECT, and wait for a successful CONNACK. `sndbuf` fixes the socket's send
/// buffer (SO_SNDBUF) instead of letting the kernel grow it; `session_expiry` asks for a
/// session the broker keeps (see [`mqtt::encode_connect`]).
pub async fn connect(
    addr: SocketAddr,
    version: Version,
    client_id: &str,
    read_capacity: usize,
    sndbuf: Option<u32>,
    session_expiry: Option<u32>,
    timeout: Duration,
) -> Result<Client> {
    let fut = async {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        if let Some(n) = sndbuf {
            socket.set_send_buffer_size(n)?;
        }
        let mut stream: TcpStream = socket.connect(addr).await.with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut out = Vec::with_capacity(64);
        mqtt::encode_connect(&mut out, version, client_id, KEEP_ALIVE_SECS, session_expiry);
        stream.write_all(&out).await?;
        let mut rbuf = ReadBuf::new(read_capacity);
        let (header, body) = rbuf.next_packet(&mut stream).await.context("waiting for CONNACK")?;
        if header >> 4 != mqtt::CONNACK {
            bail!("expected CONNACK, got packet type {}", header >> 4);
        }
        let ack = mqtt::decode_connack(version, &body)?;
        if ack.code != 0 {
            bail!("CONNACK refused the connection with code 0x{:02x}", ack.code);
        }
        Ok(Client { stream, rbuf, receive_maximum: ack.receive_maximum.unwrap_or(u16::MAX) })
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| anyhow::anyhow!("CONNECT to {addr} timed out"))?
}

impl Client {
    /// SUBSCRIBE and wait for the SUBACK.
    pub async fn subscribe(&mut self, version: Version, filter: &str, qos: u8, timeout: Duration) -> Result<()> {
        let fut = async {
            let mut out = Vec::with_capacity(64);
            mqtt::encode_subscribe(&mut out, version, 1, filter, qos);
            self.stream.write_all(&out).await?;
            loop {
                let (header, body) = self.rbuf.next_packet(&mut self.stream).await.context("waiting for SUBACK")?;
                match header >> 4 {
                    mqtt::SUBACK => {
                        let (_, code) = mqtt::decode_suback(version, &body)?;
                        if code >= 0x80 {
                            bail!("SUBACK refused {filter:?} with code 0x{code:02x}");
                        }
                        return Ok(());
                    }
                    // Topics are fresh per run and nothing publishes before every
                    // subscriber is ready, so a PUBLISH here is not ours: ignore it.
                    mqtt::PUBLISH => {}
                    t => bail!("expected SUBACK, got packet type {t}"),
                }
            }
        };
        tokio::time::timeout(timeout, fut).await.map_err(|_| anyhow::anyhow!("SUBSCRIBE {filter:?} timed out"))?
    }
}
