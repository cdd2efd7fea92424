//! TLS: with `http.tls_cert` and `http.tls_key`, the page is served over HTTPS and
//! signaling over WSS, by the server itself.

mod common;

use common::*;
use confab_proto::ServerMessage;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn the_server_speaks_https_and_wss() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!("confab-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

    let mut config = test_config();
    config.http.tls_cert = Some(cert_path);
    config.http.tls_key = Some(key_path);
    let server = start_with(config).await;
    assert!(server.url().starts_with("https://"), "{}", server.url());
    assert!(server.ws_url().starts_with("wss://"), "{}", server.ws_url());

    // A client that trusts exactly this certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let tls = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(server.http_addr)
            .await
            .unwrap();
        tokio_rustls::TlsConnector::from(tls.clone())
            .connect("localhost".try_into().unwrap(), tcp)
            .await
    };

    // Plain text on the TLS port goes nowhere; a TLS client joins over WSS.
    let plain = format!("ws://{}/ws", server.http_addr);
    assert!(tokio_tungstenite::connect_async(plain).await.is_err());
    let stream = connect().await.expect("TLS handshake");
    let url = format!("wss://localhost:{}/ws", server.http_addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("WebSocket over TLS");
    ws.send(Message::Text(
        r#"{"type":"join","protocol":1,"room":"secure","name":"Ada"}"#.into(),
    ))
    .await
    .unwrap();
    let joined = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => break serde_json::from_str::<ServerMessage>(&t).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert!(matches!(joined, ServerMessage::Joined { .. }), "{joined:?}");

    // The page itself, over HTTPS.
    let mut https = connect().await.expect("TLS handshake");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    https
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    https.read_to_string(&mut response).await.ok();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok"), "{response}");
    drop(ws);
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
