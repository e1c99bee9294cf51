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

#[tokio::test]
async fn the_health_check_is_answered_from_the_database() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _service = Service(
        Command::new(env!("CARGO_BIN_EXE_tonic-service"))
            .env("GRPC_ADDR", format!("127.0.0.1:{port}"))
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "off")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Readiness polling with a bound.
    let deadline = Instant::now() + Duration::from_secs(30);
    let channel = loop {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
        match endpoint.connect().await {
            Ok(channel) => break channel,
            Err(e) => {
                assert!(Instant::now() < deadline, "the service never listened: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(response.into_inner().status, ServingStatus::Serving as i32);
}
