//! The Kafka ApiVersions exchange (request and response version 0), as bytes: which APIs a
//! broker offers, so that a delivery mode needing one it lacks is refused before it starts.
//! Pure: no sockets (the probe in `transactions.rs` does the I/O). librdkafka keeps what it
//! learns this way to itself, so pgoutbox asks on its own.

/// ApiVersions' key in the protocol.
const API_VERSIONS: i16 = 18;

/// What exactly-once needs beyond producing: transactional producer ids, partitions added to a
/// transaction, and its commit or abort.
pub const TRANSACTIONS: [(i16, &str); 3] = [
    (22, "InitProducerId"),
    (24, "AddPartitionsToTxn"),
    (26, "EndTxn"),
];

/// How topic settings are read (`cleanup.policy` of the offsets topic). librdkafka's mock
/// cluster lacks it, and does not answer it either.
pub const DESCRIBE_CONFIGS: (i16, &str) = (32, "DescribeConfigs");

/// One API a broker offers, with the versions it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiRange {
    pub key: i16,
    pub min: i16,
    pub max: i16,
}

/// An answer that is not an ApiVersions v0 response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiVersionsError {
    #[error("the ApiVersions answer ends early")]
    Short,
    #[error("the ApiVersions answer is for request {got}, not {sent}")]
    Correlation { sent: i32, got: i32 },
    #[error("the broker answered ApiVersions with error code {0}")]
    Broker(i16),
}

/// The request, length-prefixed, ready to write.
pub fn request(correlation_id: i32, client_id: &str) -> Vec<u8> {
    let id = client_id.as_bytes();
    let id_len = i16::try_from(id.len()).unwrap_or(i16::MAX);
    let id = &id[..id_len as usize];
    let mut body = Vec::with_capacity(10 + id.len());
    body.extend_from_slice(&API_VERSIONS.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&correlation_id.to_be_bytes());
    body.extend_from_slice(&id_len.to_be_bytes());
    body.extend_from_slice(id);
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as i32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The APIs in a response body (what follows the length prefix).
pub fn parse(correlation_id: i32, body: &[u8]) -> Result<Vec<ApiRange>, ApiVersionsError> {
    let mut r = Reader(body);
    let got = r.i32()?;
    if got != correlation_id {
        return Err(ApiVersionsError::Correlation {
            sent: correlation_id,
            got,
        });
    }
    let error = r.i16()?;
    if error != 0 {
        return Err(ApiVersionsError::Broker(error));
    }
    let n = r.i32()?.max(0) as usize;
    let mut apis = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        apis.push(ApiRange {
            key: r.i16()?,
            min: r.i16()?,
            max: r.i16()?,
        });
    }
    Ok(apis)
}

/// The names of `needed` that `offered` lacks.
pub fn missing(offered: &[ApiRange], needed: &[(i16, &'static str)]) -> Vec<&'static str> {
    needed
        .iter()
        .filter(|(key, _)| !offered.iter().any(|a| a.key == *key && a.max >= a.min))
        .map(|(_, name)| *name)
        .collect()
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], ApiVersionsError> {
        let (head, rest) = self.0.split_at_checked(N).ok_or(ApiVersionsError::Short)?;
        self.0 = rest;
        head.try_into().map_err(|_| ApiVersionsError::Short)
    }

    fn i16(&mut self) -> Result<i16, ApiVersionsError> {
        self.take().map(i16::from_be_bytes)
    }

    fn i32(&mut self) -> Result<i32, ApiVersionsError> {
        self.take().map(i32::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(correlation: i32, error: i16, apis: &[(i16, i16, i16)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&correlation.to_be_bytes());
        b.extend_from_slice(&error.to_be_bytes());
        b.extend_from_slice(&(apis.len() as i32).to_be_bytes());
        for (k, lo, hi) in apis {
            for v in [k, lo, hi] {
                b.extend_from_slice(&v.to_be_bytes());
            }
        }
        b
    }

    #[test]
    fn the_request_is_api_versions_v0_with_its_length() {
        let r = request(7, "pgoutbox");
        assert_eq!(&r[..4], &18i32.to_be_bytes(), "length of what follows");
        assert_eq!(&r[4..6], &18i16.to_be_bytes(), "ApiVersions");
        assert_eq!(&r[6..8], &0i16.to_be_bytes(), "version 0");
        assert_eq!(&r[8..12], &7i32.to_be_bytes(), "correlation id");
        assert_eq!(&r[12..14], &8i16.to_be_bytes());
        assert_eq!(&r[14..], b"pgoutbox");
    }

    #[test]
    fn a_broker_without_end_txn_lacks_transactions() {
        let body = response(7, 0, &[(0, 0, 9), (22, 0, 4), (24, 0, 3)]);
        let apis = parse(7, &body).unwrap();
        assert_eq!(missing(&apis, &TRANSACTIONS), ["EndTxn"]);
        let all = response(7, 0, &[(22, 0, 4), (24, 0, 3), (26, 0, 3)]);
        assert!(missing(&parse(7, &all).unwrap(), &TRANSACTIONS).is_empty());
    }

    #[test]
    fn short_foreign_or_refused_answers_are_errors() {
        let body = response(7, 0, &[(22, 0, 4)]);
        assert_eq!(
            parse(7, &body[..body.len() - 1]),
            Err(ApiVersionsError::Short)
        );
        assert_eq!(
            parse(8, &body),
            Err(ApiVersionsError::Correlation { sent: 8, got: 7 })
        );
        assert_eq!(
            parse(7, &response(7, 35, &[])),
            Err(ApiVersionsError::Broker(35))
        );
    }
}
