//! An SMTP sink: accepts every mail, keeps none, counts them. It speaks the
//! part of RFC 5321 a submitting client such as lettre uses (greeting,
//! EHLO/HELO, MAIL, RCPT, DATA with the end-of-data line, RSET, NOOP, VRFY,
//! QUIT) with the usual sequencing errors, and honours PIPELINING, which it
//! advertises: replies are written in order and flushed only when no more
//! commands are already waiting, so a pipelined group costs one write.

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::parse_duration;
use crate::report::round2;

/// Longest command line read at once; RFC 5321 allows 512 octets for
/// commands and 1000 for text lines, so anything longer is a broken client.
const MAX_LINE: u64 = 64 * 1024;

#[derive(Args, Clone, Debug)]
pub struct SinkArgs {
    /// Address to listen on; port 0 picks a free one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:2525")]
    pub listen: SocketAddr,
    /// How often to print mails/s to stderr while mail arrives.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
}

#[derive(Default)]
struct Stats {
    mails: AtomicU64,
    bytes: AtomicU64,
    connections: AtomicU64,
    /// Nanoseconds after start of the first and last accepted mail (+1, so
    /// that 0 can mean "none yet").
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    /// Best interval rate seen, in hundredths of a mail per second.
    peak_centi: AtomicU64,
}

impl Stats {
    fn mail_accepted(&self, started: Instant, bytes: u64) {
        let at = u64::try_from(started.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let _ = self
            .first_ns
            .compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed);
        self.last_ns.fetch_max(at, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.mails.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Serialize)]
struct SinkReport {
    mode: &'static str,
    mails: u64,
    bytes: u64,
    connections: u64,
    /// From the first to the last accepted mail.
    window_s: f64,
    mails_per_s: f64,
    /// The best single interval.
    peak_mails_per_s: f64,
}

pub async fn main(args: SinkArgs) -> anyhow::Result<ExitCode> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    // Scripts read the port from this first line.
    println!("{}", serde_json::json!({ "listening": addr.to_string() }));
    eprintln!("sink: listening on {addr}");

    let started = Instant::now();
    let stats = Arc::new(Stats::default());
    let accept = tokio::spawn(accept_loop(listener, stats.clone(), started));
    tokio::select! {
        () = progress(stats.clone(), args.interval) => {}
        result = shutdown_signal() => result?,
    }
    accept.abort();

    let peak = stats.peak_centi.load(Ordering::Relaxed) as f64 / 100.0;
    let first = stats.first_ns.load(Ordering::Relaxed);
    let last = stats.last_ns.load(Ordering::Relaxed);
    let mails = stats.mails.load(Ordering::Relaxed);
    let window = Duration::from_nanos(last.saturating_sub(first));
    let report = SinkReport {
        mode: "sink",
        mails,
        bytes: stats.bytes.load(Ordering::Relaxed),
        connections: stats.connections.load(Ordering::Relaxed),
        window_s: round2(window.as_secs_f64()),
        mails_per_s: if window.is_zero() {
            0.0
        } else {
            round2(mails.saturating_sub(1) as f64 / window.as_secs_f64())
        },
        peak_mails_per_s: round2(peak),
    };
    eprintln!(
        "sink: {} mails on {} connections, {:.1} mails/s between first and last, peak {:.1}/s",
        report.mails, report.connections, report.mails_per_s, report.peak_mails_per_s
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(ExitCode::SUCCESS)
}

/// Prints the rate of every interval in which mail arrived; runs until the
/// sink is stopped.
async fn progress(stats: Arc<Stats>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut seen = 0;
    let mut at = Instant::now();
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let mails = stats.mails.load(Ordering::Relaxed);
        if mails != seen {
            let per_s = (mails - seen) as f64 / now.duration_since(at).as_secs_f64();
            stats
                .peak_centi
                .fetch_max((per_s * 100.0) as u64, Ordering::Relaxed);
            eprintln!(
                "sink: {per_s:.1} mails/s, {mails} in all, {} connections",
                stats.connections.load(Ordering::Relaxed)
            );
        }
        seen = mails;
        at = now;
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("listening for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

async fn accept_loop(listener: TcpListener, stats: Arc<Stats>, started: Instant) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                stats.connections.fetch_add(1, Ordering::Relaxed);
                let stats = stats.clone();
                tokio::spawn(async move {
                    // A client that vanishes mid-session is its own problem;
                    // only its mails already answered with 250 count.
                    let _ = serve(stream, &stats, started).await;
                });
            }
            Err(error) => {
                // Out of file descriptors and the like: wait instead of
                // spinning on the same error.
                eprintln!("sink: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve(stream: TcpStream, stats: &Stats, started: Instant) -> io::Result<()> {
    // Replies are tiny and the client waits for each: Nagle would add up to
    // 40 ms per round trip with delayed ACKs.
    stream.set_nodelay(true)?;
    let (reader, writer) = stream.into_split();
    session(reader, writer, |bytes| stats.mail_accepted(started, bytes)).await
}

/// Where one SMTP conversation stands.
#[derive(Default)]
struct Transaction {
    greeted: bool,
    mail_from: bool,
    recipients: u32,
}

/// One SMTP conversation; `accepted` is called with the size of every mail
/// answered with 250.
async fn session<R, W>(reader: R, writer: W, mut accepted: impl FnMut(u64)) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = BufReader::with_capacity(16 * 1024, reader);
    let mut writer = BufWriter::with_capacity(4 * 1024, writer);
    writer
        .write_all(b"220 verimail-bench ESMTP sink ready\r\n")
        .await?;
    let mut state = Transaction::default();
    let mut line = Vec::with_capacity(512);
    loop {
        if reader.buffer().is_empty() {
            writer.flush().await?;
        }
        line.clear();
        (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await?;
        if line.is_empty() {
            return writer.flush().await;
        }
        if !line.ends_with(b"\n") {
            if line.len() as u64 >= MAX_LINE {
                writer
                    .write_all(b"500 5.5.2 Error: line too long\r\n")
                    .await?;
            }
            return writer.flush().await;
        }
        let command = trim_eol(&line);
        let verb = verb_of(command);
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => {
                state = Transaction {
                    greeted: true,
                    ..Transaction::default()
                };
                b"250-verimail-bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 52428800\r\n"
            }
            "HELO" => {
                state = Transaction {
                    greeted: true,
                    ..Transaction::default()
                };
                b"250 verimail-bench\r\n"
            }
            "MAIL" if !has_prefix(command, b"MAIL FROM:") => {
                b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
            }
            "MAIL" if !state.greeted => b"503 5.5.1 Error: send HELO/EHLO first\r\n",
            "MAIL" if state.mail_from => b"503 5.5.1 Error: nested MAIL command\r\n",
            "MAIL" => {
                state.mail_from = true;
                b"250 2.1.0 Ok\r\n"
            }
            "RCPT" if !has_prefix(command, b"RCPT TO:") => {
                b"501 5.5.4 Syntax: RCPT TO:<address>\r\n"
            }
            "RCPT" if !state.mail_from => b"503 5.5.1 Error: need MAIL command\r\n",
            "RCPT" => {
                state.recipients += 1;
                b"250 2.1.5 Ok\r\n"
            }
            "DATA" if state.recipients == 0 => b"503 5.5.1 Error: need RCPT command\r\n",
            "DATA" => {
                writer
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                writer.flush().await?;
                let Some(size) = read_data(&mut reader).await? else {
                    // The connection ended inside DATA: no mail.
                    return Ok(());
                };
                accepted(size);
                state = Transaction {
                    greeted: true,
                    ..Transaction::default()
                };
                b"250 2.0.0 Ok: queued\r\n"
            }
            "RSET" => {
                state = Transaction {
                    greeted: state.greeted,
                    ..Transaction::default()
                };
                b"250 2.0.0 Ok\r\n"
            }
            "NOOP" => b"250 2.0.0 Ok\r\n",
            "VRFY" => b"252 2.0.0 Cannot VRFY user\r\n",
            "QUIT" => {
                writer.write_all(b"221 2.0.0 Bye\r\n").await?;
                return writer.flush().await;
            }
            _ => b"502 5.5.2 Error: command not recognized\r\n",
        };
        writer.write_all(reply).await?;
    }
}

/// Reads the message up to the `.` line; `None` when the peer hung up first.
async fn read_data<R: AsyncRead + Unpin>(reader: &mut BufReader<R>) -> io::Result<Option<u64>> {
    let mut size = 0u64;
    let mut line = Vec::with_capacity(1024);
    // Only a "." alone on a line ends DATA, so track whether a chunk starts
    // a line (a line longer than MAX_LINE arrives in several chunks).
    let mut at_line_start = true;
    loop {
        line.clear();
        reader.take(MAX_LINE).read_until(b'\n', &mut line).await?;
        if line.is_empty() {
            return Ok(None);
        }
        if at_line_start && (line == b".\r\n" || line == b".\n") {
            return Ok(Some(size));
        }
        size += line.len() as u64;
        at_line_start = line.ends_with(b"\n");
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The command word, upper-cased (commands are case-insensitive).
fn verb_of(command: &[u8]) -> String {
    let end = command
        .iter()
        .position(|b| *b == b' ')
        .unwrap_or(command.len());
    String::from_utf8_lossy(&command[..end]).to_ascii_uppercase()
}

fn has_prefix(command: &[u8], prefix: &[u8]) -> bool {
    command.len() >= prefix.len() && command[..prefix.len()].eq_ignore_ascii_case(prefix)
}

#[cfg(test)]
mod tests {
    use tokio::io::duplex;

    use super::*;

    async fn converse(input: &[u8]) -> (String, Vec<u64>) {
        let (client, server) = duplex(64 * 1024);
        let (server_read, server_write) = tokio::io::split(server);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        client_write.write_all(input).await.unwrap();
        client_write.shutdown().await.unwrap();
        let mut mails = Vec::new();
        session(server_read, server_write, |n| mails.push(n))
            .await
            .unwrap();
        let mut out = String::new();
        client_read.read_to_string(&mut out).await.unwrap();
        (out, mails)
    }

    #[tokio::test]
    async fn a_pipelined_transaction_is_answered_in_order() {
        let (out, mails) = converse(
            b"EHLO me\r\nMAIL FROM:<a@x.y> BODY=8BITMIME\r\nRCPT TO:<b@x.y>\r\nDATA\r\nSubject: t\r\n\r\n..dot\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n",
        )
        .await;
        let codes: Vec<&str> = out
            .lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| &l[..3])
            .collect();
        assert_eq!(
            codes,
            [
                "220", "250", "250", "250", "354", "250", "250", "250", "221"
            ],
            "{out}"
        );
        assert!(out.contains("250-PIPELINING"), "{out}");
        assert_eq!(mails, vec![21]);
    }

    #[tokio::test]
    async fn sequencing_errors() {
        let (out, mails) = converse(
            b"MAIL FROM:<a@x.y>\r\nhelo me\r\nRCPT TO:<b@x.y>\r\nDATA\r\nmail from:<a@x.y>\r\nMAIL FROM:<a@x.y>\r\nBOGUS\r\nQUIT\r\n",
        )
        .await;
        let codes: Vec<&str> = out.lines().map(|l| &l[..3]).collect();
        assert_eq!(
            codes,
            [
                "220", "503", "250", "503", "503", "250", "503", "502", "221"
            ],
            "{out}"
        );
        assert!(mails.is_empty());
    }

    #[tokio::test]
    async fn a_hang_up_inside_data_is_no_mail() {
        let (_, mails) =
            converse(b"EHLO me\r\nMAIL FROM:<a@x.y>\r\nRCPT TO:<b@x.y>\r\nDATA\r\nhalf a mail\r\n")
                .await;
        assert!(mails.is_empty());
    }
}
