//! Helpers shared by the integration tests.

use std::net::TcpListener;

/// A free loopback port, never the same twice in this process: tests run in parallel, and
/// a port handed to one server could otherwise be handed to another before it binds it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}
