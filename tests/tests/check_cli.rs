//! `pgtier check FILE`: exit status and line/column reporting.

use std::process::Command;

fn check(text: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("pgtier-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}.toml", text.len()));
    std::fs::write(&file, text).unwrap();
    let out = Command::new(pgtier_kit::pgtier_bin().unwrap())
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success(),
        text.replace(&file.display().to_string(), "FILE"),
    )
}

#[test]
fn documented_example_config_is_valid() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/pgtier.toml"
    ))
    .unwrap();
    let (ok, out) = check(&text);
    assert!(ok, "{out}");
}

#[test]
fn problems_are_reported_with_line_and_column_and_exit_1() {
    let (ok, out) = check(
        "listen = \"127.0.0.1:6432\"\npool_mode = \"transactional\"\n[databases.app]\nprimary = \"x\"\n",
    );
    assert!(!ok);
    assert!(out.contains("FILE:2:13"), "{out}");

    let (ok, out) =
        check("listen = \"nowhere\"\n[databases.app]\nprimary = \"db:5432\"\npool_size = 0\n");
    assert!(!ok);
    assert!(out.contains("FILE:1:10: listen:"), "{out}");
    assert!(
        out.contains("FILE:4:13: databases.app.pool_size: must be at least 1"),
        "{out}"
    );

    let status = Command::new(pgtier_kit::pgtier_bin().unwrap())
        .args(["check", "/nonexistent/pgtier.toml"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
}
