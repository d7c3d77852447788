//! Byte streams to the broker. [`transport`] opens one (TCP, then TLS, then a WebSocket
//! upgrade when configured); [`tls`] builds the rustls configuration (ring provider, Amazon
//! roots, client identity, ALPN); [`websocket`] performs the upgrade with a SigV4-presigned URL
//! or custom-authorizer fields; [`proxy`] tunnels through an HTTP CONNECT proxy; [`stream`]
//! holds the stream types and error classification.
//! Nothing here knows MQTT.

pub mod proxy;
pub mod stream;
pub mod tls;
pub mod transport;
pub mod websocket;
