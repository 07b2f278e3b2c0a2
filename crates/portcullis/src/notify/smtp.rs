//! A small SMTP client (RFC 5321) for notification mail: plain, STARTTLS or implicit TLS,
//! AUTH PLAIN, one message per connection. Credentials are only sent over TLS (or to a relay
//! on loopback). Every step has a time limit; the server's words are reported in errors, never
//! the password.

use super::{MailSettings, Security};
use base64::Engine;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long one SMTP step may take.
const STEP: Duration = Duration::from_secs(30);

/// Why mail could not be sent, for the admin who configured it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct MailError(pub String);

/// One message.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
}

struct Conversation<S> {
    stream: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conversation<S> {
    fn new(stream: S) -> Conversation<S> {
        Conversation { stream: BufReader::new(stream) }
    }

    /// Read one (possibly multi-line) reply; its code and text.
    async fn reply(&mut self) -> Result<(u16, String), MailError> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(STEP, self.stream.read_line(&mut line))
                .await
                .map_err(|_| MailError("the mail server did not answer in time".into()))?
                .map_err(|error| MailError(format!("the mail server connection failed: {error}")))?;
            if read == 0 {
                return Err(MailError("the mail server closed the connection".into()));
            }
            if line.len() < 4 || line.len() > 2048 {
                return Err(MailError(format!(
                    "the mail server answered something that is not SMTP: {:?}",
                    line.trim()
                )));
            }
            let code: u16 = line[..3].parse().map_err(|_| {
                MailError(format!("the mail server answered something that is not SMTP: {:?}", line.trim()))
            })?;
            text.push_str(line[4..].trim_end());
            text.push(' ');
            if line.as_bytes()[3] != b'-' {
                return Ok((code, text.trim_end().to_owned()));
            }
        }
    }

    async fn send(&mut self, line: &str) -> Result<(), MailError> {
        let stream = self.stream.get_mut();
        tokio::time::timeout(STEP, async {
            stream.write_all(line.as_bytes()).await?;
            stream.write_all(b"\r\n").await?;
            stream.flush().await
        })
        .await
        .map_err(|_| MailError("the mail server did not take the command in time".into()))?
        .map_err(|error| MailError(format!("the mail server connection failed: {error}")))
    }

    /// Send `line` (shown as `shown` in errors) and expect a reply of class `expect` (2, 3).
    async fn command(&mut self, line: &str, shown: &str, expect: u16) -> Result<String, MailError> {
        self.send(line).await?;
        let (code, text) = self.reply().await?;
        if code / 100 != expect {
            return Err(MailError(format!("the mail server refused {shown}: {code} {text}")));
        }
        Ok(text)
    }
}

fn tls_config(extra_roots_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, MailError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if !extra_roots_pem.is_empty() {
        for certificate in CertificateDer::pem_slice_iter(extra_roots_pem) {
            let certificate = certificate.map_err(|error| MailError(format!("the ca_file cannot be read: {error}")))?;
            roots.add(certificate).map_err(|error| MailError(format!("a ca_file certificate is unusable: {error}")))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|error| MailError(format!("TLS cannot be set up: {error}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn tls(
    stream: TcpStream,
    host: &str,
    extra_roots_pem: &[u8],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, MailError> {
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| MailError(format!("{host:?} is not a host name TLS can verify")))?;
    let connector = tokio_rustls::TlsConnector::from(tls_config(extra_roots_pem)?);
    let stream = tokio::time::timeout(STEP, connector.connect(name, stream))
        .await
        .map_err(|_| MailError("the TLS handshake with the mail server timed out".into()))?
        .map_err(|error| MailError(format!("TLS with the mail server failed: {error}")))?;
    Ok(stream)
}

/// Encode a header value: as is when it is plain ASCII, otherwise RFC 2047 base64.
fn header_value(text: &str) -> String {
    let clean: String = text.chars().filter(|c| !c.is_control()).collect();
    if clean.is_ascii() {
        clean
    } else {
        format!("=?utf-8?B?{}?=", base64::engine::general_purpose::STANDARD.encode(clean.as_bytes()))
    }
}

/// An RFC 5322 date for `ms`.
fn date(ms: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let iso = crate::time::iso_time(ms);
    let day = DAYS[(ms.div_euclid(86_400_000)).rem_euclid(7) as usize];
    let month: usize = iso[5..7].parse().unwrap_or(1);
    format!("{day}, {} {} {} {} +0000", &iso[8..10], MONTHS[month - 1], &iso[0..4], &iso[11..19])
}

/// The message as sent: headers, and the body base64-encoded (safe for any text and line length).
pub fn message(from: &str, mail: &Mail, now_ms: i64) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(mail.body.as_bytes());
    let mut out = format!(
        "From: Portcullis <{from}>\r\nTo: <{}>\r\nSubject: {}\r\nDate: {}\r\nMessage-ID: <{}@portcullis>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\
         Auto-Submitted: auto-generated\r\n\r\n",
        mail.to,
        header_value(&mail.subject),
        date(now_ms),
        crate::crypto::new_id()
    );
    for chunk in body.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or(""));
        out.push_str("\r\n");
    }
    out
}

/// An address fit for MAIL FROM / RCPT TO: no spaces, brackets or line breaks.
fn address(text: &str) -> Result<&str, MailError> {
    let text = text.trim();
    let valid = text.contains('@')
        && !text.is_empty()
        && text.len() <= 254
        && !text.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | '"'));
    if valid { Ok(text) } else { Err(MailError(format!("{text:?} is not a mail address"))) }
}

fn loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Send one message with `settings` (`password` opened by the caller).
pub async fn send(
    settings: &MailSettings,
    password: Option<&str>,
    extra_roots_pem: &[u8],
    mail: &Mail,
) -> Result<(), MailError> {
    let to = address(&mail.to)?;
    let from = address(&settings.from)?;
    let host = settings.host.trim();
    let connected = tokio::time::timeout(STEP, TcpStream::connect((host, settings.port)))
        .await
        .map_err(|_| MailError(format!("connecting to {host}:{} timed out", settings.port)))?
        .map_err(|error| MailError(format!("cannot connect to {host}:{}: {error}", settings.port)))?;
    let _ = connected.set_nodelay(true);
    match settings.security {
        Security::Tls => {
            let mut talk = Conversation::new(tls(connected, host, extra_roots_pem).await?);
            let features = greet(&mut talk).await?;
            deliver(&mut talk, &features, true, settings, password, from, to, mail).await
        }
        Security::None => {
            let mut talk = Conversation::new(connected);
            let features = greet(&mut talk).await?;
            deliver(&mut talk, &features, false, settings, password, from, to, mail).await
        }
        Security::StartTls => {
            let mut plain = Conversation::new(connected);
            let features = greet(&mut plain).await?;
            if !features.to_ascii_uppercase().contains("STARTTLS") {
                return Err(MailError("the mail server does not offer STARTTLS; choose TLS or no encryption".into()));
            }
            plain.command("STARTTLS", "STARTTLS", 2).await?;
            let mut talk = Conversation::new(tls(plain.stream.into_inner(), host, extra_roots_pem).await?);
            let features = talk.command("EHLO portcullis", "EHLO", 2).await?;
            deliver(&mut talk, &features, true, settings, password, from, to, mail).await
        }
    }
}

/// The greeting, then EHLO; the server's features.
async fn greet<S: AsyncRead + AsyncWrite + Unpin>(talk: &mut Conversation<S>) -> Result<String, MailError> {
    let (code, text) = talk.reply().await?;
    if code != 220 {
        return Err(MailError(format!("the mail server does not accept mail now: {code} {text}")));
    }
    talk.command("EHLO portcullis", "EHLO", 2).await
}

/// Authenticate if configured, then hand over the message.
#[allow(clippy::too_many_arguments)]
async fn deliver<S: AsyncRead + AsyncWrite + Unpin>(
    talk: &mut Conversation<S>,
    features: &str,
    encrypted: bool,
    settings: &MailSettings,
    password: Option<&str>,
    from: &str,
    to: &str,
    mail: &Mail,
) -> Result<(), MailError> {
    let host = settings.host.trim();
    if let Some(username) = settings.username.as_deref().filter(|name| !name.is_empty()) {
        if !encrypted && !loopback(host) {
            return Err(MailError(
                "refusing to send the mail password unencrypted: choose STARTTLS or TLS for this server".into(),
            ));
        }
        if !features.to_ascii_uppercase().contains("AUTH") {
            return Err(MailError("the mail server does not offer AUTH, but a username is configured".into()));
        }
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("\0{username}\0{}", password.unwrap_or("")).as_bytes());
        talk.command(&format!("AUTH PLAIN {token}"), "the username and password", 2).await?;
    }
    talk.command(&format!("MAIL FROM:<{from}>"), "the sender address", 2).await?;
    talk.command(&format!("RCPT TO:<{to}>"), &format!("the recipient {to}"), 2).await?;
    talk.command("DATA", "DATA", 3).await?;
    let mut data = String::new();
    for line in message(from, mail, crate::store::now_ms()).split("\r\n") {
        if line.starts_with('.') {
            data.push('.');
        }
        data.push_str(line);
        data.push_str("\r\n");
    }
    data.push('.');
    talk.command(data.trim_end_matches("\r\n"), "the message", 2).await?;
    let _ = talk.send("QUIT").await;
    Ok(())
}
