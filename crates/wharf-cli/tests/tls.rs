//! `wharf serve` with TLS: the client (library and CLI) round-trips over
//! https with the CA it is given (`wharf projection` too, over the HTTP
//! API); a plain-text connection is refused.

mod common;

use std::time::Duration;

use wharf_core::{Message, Publisher, StartPosition, SubscribeOptions, Subscriber};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_round_trip_with_the_given_ca_and_plain_text_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("self-signed certificate");
    let cert_pem = cert.cert.pem();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, &cert_pem).expect("write cert");
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).expect("write key");
    let cfg = dir.path().join("wharf.toml");
    std::fs::write(
        &cfg,
        format!("tls_cert = {:?}\ntls_key = {:?}\n", cert_path, key_path),
    )
    .expect("config");
    let server = common::Server::start(&dir.path().join("data"), Some(&cfg));
    let url = format!("https://{}", server.addr);

    let client = wharf_client::Client::connect_with(&url, None, Some(cert_pem.as_bytes()))
        .await
        .expect("connect over TLS");
    let mut sub = client
        .subscribe(
            SubscribeOptions::new("tls.t")
                .group("g")
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    client
        .publish("tls.t", Message::new("secret"))
        .await
        .expect("publish");
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("delivery");
    assert_eq!(&d.message().payload()[..], b"secret");
    d.ack().await.expect("ack");

    // Without TLS the server does not answer.
    let plain = tokio::time::timeout(
        Duration::from_secs(10),
        wharf_client::Client::connect(&format!("http://{}", server.addr), None),
    )
    .await;
    assert!(!matches!(plain, Ok(Ok(_))), "plain-text connect succeeded");

    // The CLI trusts the CA given with --ca-cert.
    let ca = cert_path.to_str().expect("utf-8 path");
    let out = common::cli_with(
        &url,
        None,
        &["pub", "tls.t", "via cli", "--ca-cert", ca],
        None,
    );
    let text = common::ok(&out);
    assert!(text.contains("published"), "{text}");
    let out = common::cli_with(&url, None, &["pub", "tls.t", "no ca"], None);
    assert!(!out.status.success(), "publish without the CA succeeded");

    // `wharf projection` (the HTTP API) trusts the same CA.
    let out = common::cli_with(
        &url,
        None,
        &[
            "projection",
            "create",
            "tls-p",
            "--topic",
            "tls.t",
            "--ca-cert",
            ca,
        ],
        None,
    );
    let text = common::ok(&out);
    assert!(text.contains("tls-p"), "{text}");
    let out = common::cli_with(&url, None, &["projection", "list"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--ca-cert"),
        "projection list without the CA: {err}"
    );
}
