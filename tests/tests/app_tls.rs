//! The bundled app reaching pgtier over TLS with `sslmode=verify-full`, and refused without.

mod app_support;

use app_support::*;

/// The app with `sslmode=verify-full&sslrootcert=CA` in DATABASE_URL, through a pgtier that
/// requires client TLS (so every request that works went over TLS), by host name and by IP;
/// plain text and a foreign CA get no connection (503 from /health, nothing served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_reaches_pgtier_over_verified_tls() {
    let ca = pgtier_kit::TestCa::new("app TLS test CA").unwrap();
    let server = ca.server("pgtier", &["localhost", "127.0.0.1"]).unwrap();
    let foreign = pgtier_kit::TestCa::new("foreign CA").unwrap();
    let c = tokio::task::block_in_place(cluster);
    let px = tokio::task::block_in_place(|| {
        ConfigBuilder::new(c)
            .with_replicas(c)
            .global("pool_mode = \"transaction\"")
            .global("client_tls_sslmode = \"require\"")
            .global(&format!(
                "client_tls_cert_file = \"{}\"",
                server.cert.display()
            ))
            .global(&format!(
                "client_tls_key_file = \"{}\"",
                server.key.display()
            ))
            .user(USER, &format!("password = \"{USER}\""))
            .start()
            .unwrap()
    });
    let config = |host: &str, tls: String| {
        let mut cfg = app_config(&px, USER);
        cfg.database_url = format!(
            "postgres://{USER}:{USER}@{host}:{}/app?connect_timeout=5&{tls}",
            px.port()
        );
        cfg
    };

    for host in ["localhost", "127.0.0.1"] {
        let tls = format!("sslmode=verify-full&sslrootcert={}", ca.ca_file().display());
        let app = pgtier_app::serve(config(host, tls)).await.unwrap();
        let h = Http::new(&app.url());
        let r = h.get("/health").await.unwrap();
        assert_eq!(expect(&r, 200, "health over TLS")["status"], "ok");
        let name = unique("TLS subject");
        let r = h.post("/subjects", &json!({ "name": name })).await.unwrap();
        let id = expect(&r, 201, "create over TLS")["id"].as_i64().unwrap();
        let got = expect(
            &h.get(&format!("/subjects/{id}")).await.unwrap(),
            200,
            "read over TLS",
        );
        assert_eq!(got["name"], name.as_str());
        let s = new_student(&h).await;
        let t = new_tutor(&h, &[id]).await;
        assert!(s > 0 && t > 0);
        app.shutdown().await.unwrap();
    }

    // Plain text is refused by pgtier (require); a CA that did not sign pgtier's certificate is
    // refused by the app. Neither serves a request that needs the database.
    for (what, tls) in [
        ("plain text", "sslmode=disable".to_owned()),
        (
            "foreign CA",
            format!(
                "sslmode=verify-full&sslrootcert={}",
                foreign.ca_file().display()
            ),
        ),
    ] {
        let mut cfg = config("localhost", tls);
        cfg.migrate = false;
        let app = pgtier_app::serve(cfg).await.unwrap();
        let h = Http::new(&app.url());
        let r = h.get("/health").await.unwrap();
        expect_error(&r, 503, what);
        app.shutdown().await.unwrap();
    }
}
