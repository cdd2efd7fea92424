//! TLS: with `http.tls_cert` and `http.tls_key`, the page is served over HTTPS and
//! signaling over WSS, by the server itself; the embedded TURN server answers over TLS
//! (`turn.tls_port`) with the same certificate.

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
    config.turn.port = free_port();
    config.turn.tls_port = loop {
        let p = free_port();
        if p != config.turn.port {
            break p;
        }
    };
    config.turn.host = Some("localhost".into());
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
    let ServerMessage::Joined { ice_servers, .. } = &joined else {
        panic!("{joined:?}");
    };
    let tls_port = server.turn.as_ref().unwrap().tls_addr.unwrap().port();
    let turns = format!("turns:localhost:{tls_port}?transport=tcp");
    assert!(
        ice_servers[0].urls.contains(&turns) && ice_servers[0].credential.is_some(),
        "{ice_servers:?}"
    );

    // TURN over TLS: an Allocate without credentials is answered 401 (an Allocate error
    // response), through a TLS session with the same certificate.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
            .await
            .unwrap();
        let mut turn = tokio_rustls::TlsConnector::from(tls.clone())
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .expect("TLS handshake with the TURN server");
        let mut allocate = vec![0x00, 0x03, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
        allocate.extend_from_slice(&[7u8; 12]); // transaction id
        allocate.extend_from_slice(&[0x00, 0x19, 0x00, 0x04, 17, 0, 0, 0]); // REQUESTED-TRANSPORT UDP
        turn.write_all(&allocate).await.unwrap();
        let mut head = [0u8; 20];
        tokio::time::timeout(WAIT, turn.read_exact(&mut head))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(head[..2], [0x01, 0x13], "an Allocate error response");
        assert_eq!(head[8..20], [7u8; 12], "to our transaction");
    }

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
