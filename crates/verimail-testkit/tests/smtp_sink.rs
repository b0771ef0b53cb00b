//! The sink's protocol, spoken by hand, so a sink bug cannot hide behind lettre.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use verimail_testkit::smtp_sink::{Behaviour, SmtpSink};

struct Client {
    io: BufReader<TcpStream>,
}

impl Client {
    async fn connect(sink: &SmtpSink) -> Self {
        let mut client = Self {
            io: BufReader::new(TcpStream::connect(sink.addr()).await.unwrap()),
        };
        assert!(client.reply().await.starts_with("220 "));
        client
    }

    /// A whole (possibly multi-line) reply, lines joined by `\n`.
    async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            assert!(self.io.read_line(&mut line).await.unwrap() > 0, "EOF");
            let line = line.trim_end().to_owned();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    async fn send(&mut self, line: &str) -> String {
        self.io
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }

    async fn at_eof(&mut self) -> bool {
        let mut buf = String::new();
        matches!(self.io.read_line(&mut buf).await, Ok(0) | Err(_))
    }
}

#[tokio::test]
async fn full_session_with_dot_unstuffing() {
    let sink = SmtpSink::start().await;
    let mut c = Client::connect(&sink).await;

    let ehlo = c.send("EHLO client.test").await;
    assert!(ehlo.starts_with("250-"), "{ehlo}");
    assert!(ehlo.lines().last().unwrap().starts_with("250 "), "{ehlo}");
    assert!(ehlo.contains("8BITMIME"));

    assert!(c.send("NOOP").await.starts_with("250"));
    assert!(
        c.send("MAIL FROM:<a@x.test> BODY=8BITMIME")
            .await
            .starts_with("250")
    );
    assert!(c.send("RCPT TO:<b@y.test>").await.starts_with("250"));
    assert!(c.send("RCPT TO:<c@y.test>").await.starts_with("250"));
    assert!(c.send("DATA").await.starts_with("354"));
    let body = "Subject: hi\r\n\r\n..leading dot\r\n.\r\n";
    c.io.get_mut().write_all(body.as_bytes()).await.unwrap();
    assert!(c.reply().await.starts_with("250"));
    assert!(c.send("QUIT").await.starts_with("221"));
    assert!(c.at_eof().await);

    let mails = sink.wait_for(1, Duration::from_secs(2)).await;
    assert_eq!(mails[0].mail_from, "a@x.test");
    assert_eq!(mails[0].rcpt_to, ["b@y.test", "c@y.test"]);
    assert_eq!(mails[0].data, b"Subject: hi\r\n\r\n.leading dot\r\n");
    assert_eq!(mails[0].subject().unwrap(), "hi");
}

#[tokio::test]
async fn rset_forgets_the_transaction_and_sequence_is_enforced() {
    let sink = SmtpSink::start().await;
    let mut c = Client::connect(&sink).await;
    c.send("HELO client.test").await;
    assert!(c.send("RCPT TO:<b@y.test>").await.starts_with("503"));
    c.send("MAIL FROM:<a@x.test>").await;
    assert!(c.send("DATA").await.starts_with("503"));
    c.send("RCPT TO:<b@y.test>").await;
    assert!(c.send("RSET").await.starts_with("250"));
    assert!(c.send("DATA").await.starts_with("503"));
    assert!(c.send("VRFY b").await.starts_with("502"));
}

#[tokio::test]
async fn scripted_behaviours_apply_in_order_then_default() {
    let sink = SmtpSink::start().await;
    sink.push_behaviour(Behaviour::RejectRcpt("550 5.1.1 no such user".into()));
    sink.push_behaviour(Behaviour::RejectData("451 4.3.0 try later".into()));
    let mut c = Client::connect(&sink).await;
    c.send("EHLO client.test").await;

    c.send("MAIL FROM:<a@x.test>").await;
    assert_eq!(c.send("RCPT TO:<b@y.test>").await, "550 5.1.1 no such user");
    c.send("RSET").await;

    c.send("MAIL FROM:<a@x.test>").await;
    c.send("RCPT TO:<b@y.test>").await;
    c.send("DATA").await;
    c.io.get_mut().write_all(b"x\r\n.\r\n").await.unwrap();
    assert_eq!(c.reply().await, "451 4.3.0 try later");

    c.send("MAIL FROM:<a@x.test>").await;
    c.send("RCPT TO:<b@y.test>").await;
    c.send("DATA").await;
    c.io.get_mut().write_all(b"y\r\n.\r\n").await.unwrap();
    assert!(c.reply().await.starts_with("250"));
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn drop_at_mail_closes_the_connection() {
    let sink = SmtpSink::start().await;
    sink.set_default(Behaviour::DropAtMail);
    let mut c = Client::connect(&sink).await;
    c.send("EHLO client.test").await;
    c.io.get_mut()
        .write_all(b"MAIL FROM:<a@x.test>\r\n")
        .await
        .unwrap();
    assert!(c.at_eof().await);
}

#[tokio::test]
async fn stop_refuses_and_closes_then_restart_listens_on_the_same_port() {
    let sink = SmtpSink::start().await;
    let mut open = Client::connect(&sink).await;

    sink.stop().await;
    assert!(open.at_eof().await);
    assert!(TcpStream::connect(sink.addr()).await.is_err());
    sink.stop().await;

    sink.restart().await;
    let mut again = Client::connect(&sink).await;
    assert!(again.send("NOOP").await.starts_with("250"));
    assert_eq!(sink.connections(), 2);
}

#[tokio::test]
#[should_panic(expected = "expected 1 mail(s)")]
async fn wait_for_panics_when_nothing_arrives() {
    let sink = SmtpSink::start().await;
    sink.wait_for(1, Duration::from_millis(50)).await;
}
