#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

//! The sidecar under failures a real MCP server does not produce on demand: a client that goes
//! away mid-request, a server that resets mid-stream, a client that never finishes its headers.
//! The "server" here is a raw TCP socket so that each failure happens exactly when the test says.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use mcp_guard_sidecar::ProxyConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

#[derive(Parser)]
struct W {
    #[command(flatten)]
    c: ProxyConfig,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the sidecar in front of `upstream_port`; returns its proxy address and a shutdown switch.
async fn sidecar(upstream_port: u16, extra: &[&str]) -> (SocketAddr, oneshot::Sender<()>) {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "mcp-guard-sidecar".to_owned(),
        "--listen".into(),
        listen.to_string(),
        "--admin-listen".into(),
        admin,
        "--upstream-port".into(),
        upstream_port.to_string(),
        // The raw socket takes exactly the connections the test expects: no listing of tools.
        "--skip-tool-listing".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let cfg = W::try_parse_from(args).unwrap().c;
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(mcp_guard_sidecar::run_proxy(cfg, async {
        let _ = rx.await;
    }));
    for _ in 0..100 {
        if TcpStream::connect(listen).await.is_ok() {
            return (listen, tx);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("sidecar did not start listening on {listen}");
}

/// Reads until the end of the request headers.
async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0, "connection closed before the headers ended");
        buf.extend_from_slice(&b[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn post(body: &str) -> String {
    format!(
        "POST /mcp HTTP/1.1\r\nhost: sidecar\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"slow"}}"#;

#[tokio::test]
async fn a_client_that_disconnects_cancels_its_upstream_request() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = upstream.local_addr().unwrap().port();
    let (got_request, request_seen) = oneshot::channel();
    let (closed_tx, closed) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = upstream.accept().await.unwrap();
        let head = read_head(&mut s).await;
        let _ = got_request.send(head);
        // Never answer; report when the sidecar closes the connection.
        let mut b = [0u8; 1024];
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = closed_tx.send(());
    });
    let (addr, _stop) = sidecar(port, &[]).await;

    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(post(CALL).as_bytes()).await.unwrap();
    let head = tokio::time::timeout(Duration::from_secs(5), request_seen)
        .await
        .expect("the request reached the server")
        .unwrap();
    assert!(
        head.contains(&format!("host: 127.0.0.1:{port}")),
        "upstream Host is the server's own: {head}"
    );
    drop(client);
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the upstream request was cancelled when the client went away")
        .unwrap();
}

#[tokio::test]
async fn an_upstream_reset_mid_stream_ends_the_clients_stream_and_the_sidecar_stays_up() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = upstream.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = upstream.accept().await.unwrap();
        read_head(&mut s).await;
        let event = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n";
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n",
            event.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Reset instead of an orderly close. (A zero linger does not block on drop.)
        #[allow(deprecated)]
        s.set_linger(Some(Duration::ZERO)).unwrap();
        drop(s);
        drop(upstream);
    });
    let (addr, _stop) = sidecar(port, &[]).await;

    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(post(CALL).as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read_all = async {
        let mut b = [0u8; 4096];
        loop {
            match client.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read_all)
        .await
        .expect("the client's stream ended instead of hanging");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("notifications/progress"),
        "the event before the reset arrived: {text}"
    );
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a cut stream must not look complete: {text}"
    );

    // The sidecar still serves: the server is gone now, so the next request gets a clear 502.
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(post(CALL).as_bytes()).await.unwrap();
    let mut b = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut b))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&b[..n]);
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert!(
        text.contains("-32004") && text.contains(&format!("127.0.0.1:{port}")),
        "{text}"
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let (addr, _stop) = sidecar(free_port(), &["--header-timeout", "300ms"]).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"POST /mcp HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut b = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), async {
        let mut total = 0;
        loop {
            match client.read(&mut b[total..]).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    })
    .await
    .expect("the sidecar closed the connection after the header timeout");
    // hyper closes such a connection without an answer (it writes automatic answers only for
    // requests it could not parse): nothing arrives, the connection ends.
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&b[..n]));
}

#[tokio::test]
async fn shutdown_lets_an_open_stream_finish_and_refuses_new_connections() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = upstream.local_addr().unwrap().port();
    let (answer_tx, answer_rx) = oneshot::channel::<()>();
    let (seen_tx, seen) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = upstream.accept().await.unwrap();
        read_head(&mut s).await;
        let _ = seen_tx.send(());
        let _ = answer_rx.await;
        let body = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(resp.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let (addr, stop) = sidecar(port, &[]).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(post(CALL).as_bytes()).await.unwrap();
    // The request is in flight once the server has it; only then does the drain begin.
    tokio::time::timeout(Duration::from_secs(30), seen)
        .await
        .expect("the request reached the server")
        .unwrap();
    stop.send(()).unwrap();
    // The listener closes as the drain begins (the order is certain, the moment is not).
    let refused = tokio::time::timeout(Duration::from_secs(30), async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "a draining sidecar accepts no new connections"
    );
    answer_tx.send(()).unwrap();
    let mut b = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut b))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&b[..n]);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("\"content\""),
        "{text}"
    );
}
