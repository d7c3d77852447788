//! Framing on the server side: complete packets out of a byte buffer, packets into one, and the
//! protocol level of a CONNECT read before the rest of it, so that MQTT 5 can be added beside
//! 3.1.1 (the level decides which codec parses the session).

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Packet;
use rumqttc::mqttbytes::Error as CodecError;

/// MQTT 3.1.1's protocol level in CONNECT.
pub const MQTT_3_1_1: u8 = 4;
/// MQTT 5's protocol level in CONNECT (refused until the core speaks it).
pub const MQTT_5: u8 = 5;

/// Why a byte stream cannot be framed: the connection must close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The packet announces more than the connection may send.
    TooLarge {
        /// The announced remaining length.
        announced: usize,
        /// The bound.
        max: usize,
    },
    /// The bytes are not a valid MQTT 3.1.1 packet.
    Malformed(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge { announced, max } => write!(
                f,
                "packet of {announced} bytes is larger than the {max} bytes allowed"
            ),
            Self::Malformed(m) => write!(f, "malformed packet: {m}"),
        }
    }
}

/// The next complete packet in `buf` (consumed from it), `None` if more bytes are needed.
///
/// # Errors
/// [`FrameError`] when the stream cannot be valid: the caller closes the connection.
pub fn read_packet(buf: &mut BytesMut, max_remaining: usize) -> Result<Option<Packet>, FrameError> {
    if buf.is_empty() {
        return Ok(None);
    }
    match Packet::read(buf, max_remaining) {
        Ok(p) => Ok(Some(p)),
        Err(CodecError::InsufficientBytes(_)) => Ok(None),
        Err(CodecError::PayloadSizeLimitExceeded(announced)) => Err(FrameError::TooLarge {
            announced,
            max: max_remaining,
        }),
        Err(e) => Err(FrameError::Malformed(e.to_string())),
    }
}

/// Appends `packet` to `out`.
///
/// # Errors
/// [`FrameError::Malformed`] if the packet cannot be encoded (a string over 65 535 bytes).
pub fn write_packet(packet: &Packet, out: &mut BytesMut) -> Result<(), FrameError> {
    packet
        .write(out, usize::MAX)
        .map(|_| ())
        .map_err(|e| FrameError::Malformed(e.to_string()))
}

/// The protocol level of the CONNECT at the start of `buf`, once its variable header is there:
/// `Some(Ok(level))`; `Some(Err(..))` if the first packet is not a CONNECT; `None` if more
/// bytes are needed.
#[must_use]
pub fn connect_protocol_level(buf: &[u8]) -> Option<Result<u8, FrameError>> {
    let first = *buf.first()?;
    if first >> 4 != 1 {
        return Some(Err(FrameError::Malformed(
            "the first packet of a connection must be CONNECT".into(),
        )));
    }
    // Remaining length: 1 to 4 bytes.
    let mut i = 1;
    loop {
        let b = *buf.get(i)?;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Some(Err(FrameError::Malformed(
                "malformed remaining length".into(),
            )));
        }
    }
    // Protocol name: u16 length then bytes ("MQTT"), then the level.
    let len = usize::from(u16::from_be_bytes([*buf.get(i)?, *buf.get(i + 1)?]));
    buf.get(i + 2 + len).map(|level| Ok(*level))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::v4::{Connect, PingReq};
    use rumqttc::mqttbytes::QoS;

    #[test]
    fn packets_are_framed_across_partial_reads() {
        let mut out = BytesMut::new();
        write_packet(&Packet::Connect(Connect::new("c1")), &mut out).unwrap();
        write_packet(&Packet::PingReq, &mut out).unwrap();
        let _ = PingReq;
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&out[..5]);
        assert_eq!(read_packet(&mut buf, 1024).unwrap(), None);
        buf.extend_from_slice(&out[5..]);
        assert!(
            matches!(read_packet(&mut buf, 1024), Ok(Some(Packet::Connect(c))) if c.client_id == "c1")
        );
        assert_eq!(read_packet(&mut buf, 1024), Ok(Some(Packet::PingReq)));
        assert_eq!(read_packet(&mut buf, 1024), Ok(None));
    }

    #[test]
    fn an_oversize_announcement_is_refused_before_the_bytes_arrive() {
        let mut buf = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0x7f][..]);
        assert!(matches!(
            read_packet(&mut buf, 1024),
            Err(FrameError::TooLarge { max: 1024, .. })
        ));
        let mut bad = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert!(read_packet(&mut bad, 1024).is_err());
    }

    #[test]
    fn the_protocol_level_is_read_before_the_rest() {
        let mut out = BytesMut::new();
        write_packet(&Packet::Connect(Connect::new("c1")), &mut out).unwrap();
        assert_eq!(connect_protocol_level(&out), Some(Ok(MQTT_3_1_1)));
        assert_eq!(connect_protocol_level(&out[..3]), None);
        let mut v5 = out.to_vec();
        v5[8] = MQTT_5;
        assert_eq!(connect_protocol_level(&v5), Some(Ok(MQTT_5)));
        let mut publish = BytesMut::new();
        write_packet(
            &Packet::Publish(rumqttc::mqttbytes::v4::Publish::new(
                "a",
                QoS::AtMostOnce,
                "x",
            )),
            &mut publish,
        )
        .unwrap();
        assert!(matches!(connect_protocol_level(&publish), Some(Err(_))));
    }
}
