//! The gRPC example as a user runs it: the health check answers SERVING from the database.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn connect(port: u16) -> tonic::transport::Channel {
    // Readiness polling with a bound.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(e) => {
                assert!(Instant::now() < deadline, "the service never listened: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn the_health_check_is_answered_from_the_database() {
    let port = free_port();
    let _service = Service(
        Command::new(env!("CARGO_BIN_EXE_tonic-service"))
            .env("GRPC_ADDR", format!("127.0.0.1:{port}"))
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "off")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let channel = connect(port).await;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(response.into_inner().status, ServingStatus::Serving as i32);
}

/// A database nothing answers for: the client gets UNAVAILABLE with a generic message (no
/// host, port, database or driver text), and nothing the service prints holds the password.
#[tokio::test]
async fn an_unreachable_database_gives_unavailable_with_nothing_internal() {
    const PASSWORD: &str = "Zq/S3cr?t#Wv%x";
    let port = free_port();
    let db_port = free_port(); // closed again: nothing listens there
    let log = std::env::temp_dir().join(format!("tonic-service-{port}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let service = Service(
        Command::new(env!("CARGO_BIN_EXE_tonic-service"))
            .env("GRPC_ADDR", format!("127.0.0.1:{port}"))
            .env(
                "DATABASE_URL",
                format!("postgres://app:{PASSWORD}@127.0.0.1:{db_port}/orders"),
            )
            .env("DB_POOL_TIMEOUT", "1")
            .env("DB_POOL_CONNECT_TIMEOUT", "1")
            .env("RUST_LOG", "debug")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    );
    let channel = connect(port).await;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let message = status.message();
    assert_eq!(message, "the database is unavailable");
    let metadata = format!("{:?}", status.metadata());
    drop(service);
    let printed = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(
        printed.contains("orders"),
        "the log names the pool: {printed}"
    );
    for piece in PASSWORD.as_bytes().windows(4) {
        let piece = std::str::from_utf8(piece).unwrap();
        for text in [message, &metadata, &printed] {
            assert!(
                !text.contains(piece),
                "`{piece}` of the password in: {text}"
            );
        }
    }
}
