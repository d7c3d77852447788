//! AWS IoT services on top of MQTT: [`request_response`] (the correlated request/response
//! engine behind Device Shadow, fleet provisioning and jobs) and [`cbor`] (the bounded CBOR
//! codec fleet provisioning may use).

pub mod cbor;
pub mod request_response;
