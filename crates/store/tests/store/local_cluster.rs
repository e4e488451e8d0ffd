//! The private local cluster of the default run, with the machine's real PostgreSQL programs.
//! Each test creates its own cluster in a temporary directory (a few seconds each).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_store::local_cluster::LocalCluster;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use tempfile::TempDir;

const WAIT: Duration = Duration::from_secs(120);

/// Under /tmp and world-traversable: when the tests run as root, the cluster runs as the
/// `postgres` user, which must reach it.
fn temp_data_root() -> TempDir {
    let t = tempfile::Builder::new()
        .prefix("gathering-cluster-test")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

/// Stops the cluster if a failing assertion unwinds past it (test code only: it blocks).
struct Guard(LocalCluster);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.stop_blocking();
    }
}

impl std::ops::Deref for Guard {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.0
    }
}

async fn start(dir: &Path) -> Guard {
    Guard(
        tokio::time::timeout(WAIT, LocalCluster::start(dir))
            .await
            .expect("cluster start timed out")
            .unwrap(),
    )
}

async fn stop(c: &LocalCluster) {
    tokio::time::timeout(WAIT, c.stop())
        .await
        .expect("cluster stop timed out")
        .unwrap();
}

async fn client(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test]
async fn data_persists_across_stop_and_start_on_the_same_data_dir() {
    let root = temp_data_root();
    // Parents that do not exist yet are created (and made traversable for `postgres`); spaces
    // in the path are fine.
    let data_dir = root.path().join("nested/data dir");

    let cluster = start(&data_dir).await;
    assert!(cluster.started_here());
    assert!(data_dir.join("postgres/PG_VERSION").is_file());
    let url = cluster.url();
    assert_eq!(
        url,
        format!("postgres://postgres@127.0.0.1:{}/gathering", cluster.port())
    );
    let c = client(&url).await.unwrap();
    c.batch_execute("CREATE TABLE kept (note TEXT NOT NULL)")
        .await
        .unwrap();
    c.execute(
        "INSERT INTO kept (note) VALUES ($1)",
        &[&"survives restarts"],
    )
    .await
    .unwrap();
    drop(c);
    let port = cluster.port();
    stop(&cluster).await;
    assert!(
        client(&url).await.is_err(),
        "server still answers after stop"
    );
    // A second stop is a no-op.
    stop(&cluster).await;

    let again = start(&data_dir).await;
    assert!(again.started_here());
    assert_eq!(again.port(), port, "the remembered port is reused");
    let c = client(&again.url()).await.unwrap();
    let notes: Vec<String> = c
        .query("SELECT note FROM kept", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(notes, vec!["survives restarts".to_owned()]);
    drop(c);
    stop(&again).await;
}

#[tokio::test]
async fn start_reuses_a_running_cluster_and_only_the_starter_stops_it() {
    let root = temp_data_root();
    let first = start(root.path()).await;
    assert!(first.started_here());

    let second = start(root.path()).await;
    assert!(!second.started_here());
    assert_eq!(second.port(), first.port());
    assert_eq!(second.url(), first.url());

    // Stopping the reusing handle leaves the server up.
    stop(&second).await;
    let c = client(&first.url()).await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    drop(c);

    stop(&first).await;
    assert!(client(&first.url()).await.is_err());
}

#[tokio::test]
async fn restart_survives_a_stale_pid_file_and_a_taken_port() {
    let root = temp_data_root();
    let cluster = start(root.path()).await;
    let old_port = cluster.port();
    let cluster_dir = cluster.cluster_dir().to_path_buf();
    stop(&cluster).await;

    // A crash leaves postmaster.pid behind; after a reboot its pid may belong to another
    // process — here, this test process.
    std::fs::write(
        cluster_dir.join("postmaster.pid"),
        format!(
            "{}\n{}\n0\n{old_port}\n{}\n127.0.0.1\n0 0\nready\n",
            std::process::id(),
            cluster_dir.display(),
            cluster_dir.display()
        ),
    )
    .unwrap();
    // And someone else now holds the remembered port.
    let _holder = std::net::TcpListener::bind(("127.0.0.1", old_port)).unwrap();

    let again = start(root.path()).await;
    assert!(again.started_here());
    assert_ne!(again.port(), old_port);
    assert_eq!(
        std::fs::read_to_string(root.path().join("postgres.port"))
            .unwrap()
            .trim(),
        again.port().to_string(),
        "the new port is remembered"
    );
    let c = client(&again.url()).await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    drop(c);
    stop(&again).await;
}

#[tokio::test]
async fn as_root_a_data_dir_postgres_cannot_reach_is_refused_with_a_clear_error() {
    if gathering_store::local_cluster::effective_uid().unwrap() != 0 {
        // Only root hands the cluster to the `postgres` user.
        return;
    }
    let root = temp_data_root();
    let private = root.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let err = tokio::time::timeout(WAIT, LocalCluster::start(&private.join("data")))
        .await
        .unwrap()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("cannot reach"), "{msg}");
    assert!(msg.contains("DATABASE_URL"), "{msg}");
    assert!(!private.join("data/postgres").exists());
}

#[tokio::test]
async fn instances_starting_at_once_share_one_cluster() {
    let root = temp_data_root();
    let (a, b) = tokio::join!(
        LocalCluster::start(root.path()),
        LocalCluster::start(root.path())
    );
    let (a, b) = (Guard(a.unwrap()), Guard(b.unwrap()));
    assert_eq!(a.port(), b.port());
    assert!(
        a.started_here() != b.started_here(),
        "exactly one of them started the server"
    );
    let (starter, other) = if a.started_here() { (a, b) } else { (b, a) };
    let c = client(&other.url()).await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    drop(c);
    stop(&other).await;
    stop(&starter).await;
    assert!(client(&starter.url()).await.is_err());
}
