//! The few xDS messages the core reads, as hand-written prost structs, and the wire helpers
//! that assemble responses from pre-encoded fragments (protobuf allows concatenating fields,
//! so a response is bytes joined, never a message encoded per stream).

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::HashMap;

/// google.rpc.Status (what a NACK carries).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// envoy.service.discovery.v3.DiscoveryRequest. `node` is kept as its raw bytes: Python
/// decodes it once per stream (admission), the core never needs more than id and fleet.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DiscoveryRequest {
    #[prost(string, tag = "1")]
    pub version_info: String,
    #[prost(bytes = "bytes", optional, tag = "2")]
    pub node: Option<Bytes>,
    #[prost(string, repeated, tag = "3")]
    pub resource_names: Vec<String>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub response_nonce: String,
    #[prost(message, optional, tag = "6")]
    pub error_detail: Option<Status>,
}

/// envoy.service.discovery.v3.DeltaDiscoveryRequest.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeltaDiscoveryRequest {
    #[prost(bytes = "bytes", optional, tag = "1")]
    pub node: Option<Bytes>,
    #[prost(string, tag = "2")]
    pub type_url: String,
    #[prost(string, repeated, tag = "3")]
    pub resource_names_subscribe: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    pub resource_names_unsubscribe: Vec<String>,
    #[prost(map = "string, string", tag = "5")]
    pub initial_resource_versions: HashMap<String, String>,
    #[prost(string, tag = "6")]
    pub response_nonce: String,
    #[prost(message, optional, tag = "7")]
    pub error_detail: Option<Status>,
}

/// The two fields of envoy.config.core.v3.Node the core reads itself (id, cluster = fleet).
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeIdent {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub cluster: String,
}

impl Status {
    /// A NACK: an error_detail with a code or a message (an empty one is an ACK).
    pub fn is_error(detail: &Option<Status>) -> bool {
        matches!(detail, Some(s) if s.code != 0 || !s.message.is_empty())
    }
}

pub fn put_varint(buf: &mut BytesMut, mut n: u64) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            buf.put_u8(b);
            return;
        }
        buf.put_u8(b | 0x80);
    }
}

/// A length-delimited field (strings, bytes, embedded messages).
pub fn ld(field: u32, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(payload.len() + 6);
    put_varint(&mut buf, (u64::from(field) << 3) | 2);
    put_varint(&mut buf, payload.len() as u64);
    buf.put_slice(payload);
    buf.freeze()
}

/// A response: fragments written one after the other (shared fragments are not copied
/// until the codec writes them into the connection's buffer).
#[derive(Clone, Debug, Default)]
pub struct Parts(pub Vec<Bytes>);

impl Parts {
    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn concat(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        for p in &self.0 {
            out.extend_from_slice(p);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn ld_matches_prost() {
        let s = Status {
            code: 0,
            message: "x".repeat(300),
        };
        let mut manual = BytesMut::new();
        manual.extend_from_slice(&ld(2, s.message.as_bytes()));
        assert_eq!(&manual[..], &s.encode_to_vec()[..]);
    }

    #[test]
    fn node_bytes_are_kept_raw() {
        let node = NodeIdent {
            id: "n1".into(),
            cluster: "f".into(),
        }
        .encode_to_vec();
        let mut raw = BytesMut::new();
        raw.extend_from_slice(&ld(2, &node));
        raw.extend_from_slice(&ld(4, b"t"));
        let req = DiscoveryRequest::decode(raw.freeze()).unwrap();
        let ident = NodeIdent::decode(req.node.unwrap()).unwrap();
        assert_eq!(
            (
                ident.id.as_str(),
                ident.cluster.as_str(),
                req.type_url.as_str()
            ),
            ("n1", "f", "t")
        );
    }
}
