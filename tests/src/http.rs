//! A minimal HTTP/1.1 client over one TCP connection: it sends exactly the
//! bytes a test asks for (odd, repeated or non-UTF-8 headers included) and can
//! reuse the connection (keep-alive).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

/// One HTTP response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }

    /// Which simulated cloud answered, from its `x-served-by` header.
    pub fn cloud(&self) -> Option<&str> {
        self.header("x-served-by")
    }
}

/// One keep-alive connection.
pub struct Connection {
    reader: BufReader<TcpStream>,
    host: String,
}

impl Connection {
    pub fn open(address: SocketAddr) -> Result<Connection> {
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            reader: BufReader::new(stream),
            host: address.to_string(),
        })
    }

    /// Sends a request with the given headers (bytes as given) and reads the reply.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) -> Result<Reply> {
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nhost: {}\r\n", self.host).into_bytes();
        for (name, value) in headers {
            request.extend_from_slice(name.as_bytes());
            request.extend_from_slice(b": ");
            request.extend_from_slice(value);
            request.extend_from_slice(b"\r\n");
        }
        // Like most clients: a length only when there is a body.
        if !body.is_empty() {
            request.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        }
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(body);
        self.reader.get_mut().write_all(&request)?;
        self.read_reply(method == "HEAD")
    }

    /// This end of the connection: the proxy's `source.address`.
    pub fn local_address(&self) -> Result<SocketAddr> {
        Ok(self.reader.get_ref().local_addr()?)
    }

    /// Sends a request with an explicit Host header instead of the address.
    pub fn send_to_host(
        &mut self,
        host: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) -> Result<Reply> {
        let saved = std::mem::replace(&mut self.host, host.to_string());
        let reply = self.send(method, path, headers, body);
        self.host = saved;
        reply
    }

    /// Reads a reply; to a HEAD request, its headers only (its length
    /// describes a body that is not sent).
    fn read_reply(&mut self, head: bool) -> Result<Reply> {
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line)? == 0 {
            bail!("connection closed before a response");
        }
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _): &&(String, String)| k == name)
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if head {
        } else if let Some(length) = find("content-length") {
            let length: usize = length.parse().context("bad content-length")?;
            body.resize(length, 0);
            self.reader.read_exact(&mut body)?;
        } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size)?;
                let size = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        }
        Ok(Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// One request on a fresh connection.
pub fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply> {
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    Connection::open(address)?.send(method, path, &headers, b"")
}

/// An OpenAI-style chat completion request on a fresh connection.
pub fn chat(address: SocketAddr, headers: &[(&str, &str)]) -> Result<Reply> {
    let mut all: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    all.push(("content-type", b"application/json"));
    let body = br#"{"model":"any","messages":[{"role":"user","content":"hi"}]}"#;
    Connection::open(address)?.send("POST", "/v1/chat/completions", &all, body)
}
