//! The catalog across restarts: a stored statement that fails to run again at restore (its
//! input gone for now, an option a newer version refuses) stays in the catalog and comes
//! back once its cause is gone; only a DROP or a new CREATE of its name replaces it.

// Test helpers fail the test loudly: unwrap, expect and panic are how they do it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sluice_engine::{CatalogStore, Session};

/// A session restored from the catalog under `root`, and how many statements came back.
async fn restart(root: &str) -> (Session, usize) {
    let mut session = Session::new();
    let restored = session
        .restore_from(CatalogStore::open(root).unwrap())
        .await
        .unwrap();
    (session, restored)
}

/// Regression: a statement that failed at restore was dropped from the catalog for good.
#[tokio::test]
async fn a_statement_that_fails_at_restore_is_kept_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let root = root.to_str().unwrap();
    let input = dir.path().join("events.csv");
    std::fs::write(&input, "id\n1\n2\n").unwrap();
    let create = format!(
        "CREATE SOURCE events (id BIGINT) WITH (connector = 'file', path = '{}', format = 'csv');
         CREATE VIEW ids AS SELECT id FROM events;",
        input.display()
    );
    let (mut session, restored) = restart(root).await;
    assert_eq!(restored, 0);
    session.execute_script(&create).await.unwrap();
    drop(session);

    // The input is gone at the next start: both statements fail, and both are kept.
    std::fs::remove_file(&input).unwrap();
    let (session, restored) = restart(root).await;
    assert_eq!(restored, 0);
    drop(session);
    let catalog = std::fs::read_to_string(dir.path().join("data/catalog.sql")).unwrap();
    assert!(catalog.contains("CREATE SOURCE events"), "{catalog}");
    assert!(catalog.contains("CREATE VIEW ids"), "{catalog}");

    // Once it is back, so are they.
    std::fs::write(&input, "id\n1\n2\n").unwrap();
    let (mut session, restored) = restart(root).await;
    assert_eq!(restored, 2);
    let out = session.execute_script("SHOW VIEWS").await.unwrap();
    assert!(format!("{out:?}").contains("ids"), "{out:?}");
    drop(session);

    // A DROP ... IF EXISTS removes a statement held back at restore.
    std::fs::remove_file(&input).unwrap();
    let (mut session, _) = restart(root).await;
    session
        .execute_script("DROP VIEW IF EXISTS ids; DROP SOURCE IF EXISTS events;")
        .await
        .unwrap();
    drop(session);
    let catalog = std::fs::read_to_string(dir.path().join("data/catalog.sql")).unwrap();
    assert!(!catalog.contains("CREATE"), "{catalog}");
}
