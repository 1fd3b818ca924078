//! Credentials (issue 15): users from an `auth_file` (PgBouncer's userlist.txt), re-read on
//! RELOAD; a secret never reaches the log.

use pgtier_kit::fixture::{admin_console, connect, scram_role, ConfigBuilder};
use pgtier_kit::Cluster;

fn code(e: &anyhow::Error) -> Option<String> {
    e.downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.as_db_error())
        .map(|e| e.code().code().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_file_users_log_in_and_a_reload_picks_up_new_ones() {
    let cluster = Cluster::shared();
    scram_role(cluster, "filed", "filed-pw").unwrap();
    scram_role(cluster, "late", "late-pw").unwrap();
    let dir = pgtier_kit::make_temp_dir("pgtier-authfile").unwrap();
    let list = dir.join("userlist.txt");
    std::fs::write(
        &list,
        "; pgbouncer style\n\"filed\" \"filed-pw\"\n\"admin\" \"admin-pw\"\n",
    )
    .unwrap();
    let px = ConfigBuilder::new(cluster)
        .global(&format!("auth_file = \"{}\"", list.display()))
        .global("admin_users = [\"admin\"]")
        .global("log_level = \"debug\"")
        .user("app", "password = \"app\"")
        .start()
        .unwrap();
    let c = connect(&px, "filed", "filed-pw").await.unwrap();
    let rows = c.simple_query("SELECT current_user").await.unwrap();
    assert!(
        matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("filed"))
    );
    assert_eq!(
        code(&connect(&px, "filed", "wrong").await.unwrap_err()).as_deref(),
        Some("28P01")
    );
    assert_eq!(
        code(&connect(&px, "late", "late-pw").await.unwrap_err()).as_deref(),
        Some("28P01")
    );
    // A new line in the file, then RELOAD (as the admin from the same file).
    std::fs::write(
        &list,
        "\"filed\" \"filed-pw\"\n\"admin\" \"admin-pw\"\n\"late\" \"late-pw\"\n",
    )
    .unwrap();
    let admin = admin_console(&px, "admin", "admin-pw").await;
    admin.simple_query("RELOAD").await.unwrap();
    let late = connect(&px, "late", "late-pw").await.unwrap();
    late.simple_query("SELECT 1").await.unwrap();
    // A broken file: RELOAD refused with the line, the users stay.
    std::fs::write(&list, "\"late\n").unwrap();
    let err = admin.simple_query("RELOAD").await.unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "F0000");
    assert!(
        db.message().contains("userlist.txt line 1"),
        "{}",
        db.message()
    );
    connect(&px, "late", "late-pw").await.unwrap();
    // No secret in the log, at debug level.
    let log = px.log();
    for secret in ["filed-pw", "late-pw", "admin-pw"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
