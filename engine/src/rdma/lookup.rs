//! The lookup messages: a reader asks an exporter where one needle lies, instead of pulling
//! the volume's whole `.idx`.
//!
//! - Reader → exporter, [`AM_LOOKUP_REQUEST`]: a [`LookupRequest`] (24 bytes).
//! - Exporter → reader, [`AM_LOOKUP`]: a [`LookupAnswer`] (48 bytes) echoing the request's
//!   token, volume and needle.
//!
//! Both are fixed-size little-endian records, not JSON like the catalogue: a reader sends one
//! per read of a volume whose index it does not hold, so they are on the read path. The
//! exporter answers from its own compact index (`read::local`'s, refreshed as for local
//! reads), so a reader's first read of a volume costs one round trip, and its memory nothing.
//! An answer is a hint, never trusted: the reader addresses gets only inside the `.dat` its
//! catalogue announced, and checks the needle it lands (cookie, id, size, CRC) as always.

/// Reader → exporter: where does a needle lie (payload: [`LookupRequest`]).
pub const AM_LOOKUP_REQUEST: u16 = 0x5203;
/// Exporter → reader: the answer (payload: [`LookupAnswer`]).
pub const AM_LOOKUP: u16 = 0x5204;

/// Bytes of an encoded [`LookupRequest`].
pub const LOOKUP_REQUEST_BYTES: usize = 24;
/// Bytes of an encoded [`LookupAnswer`].
pub const LOOKUP_ANSWER_BYTES: usize = 48;

/// What a reader asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LookupRequest {
    /// The reader's own tag (its read's token), echoed in the answer.
    pub token: u64,
    pub needle_id: u64,
    pub volume_id: u32,
}

/// What the exporter's index says about a needle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupStatus {
    /// Live, at `offset_bytes` with `size`.
    Found = 0,
    NoSuchNeedle = 1,
    Deleted = 2,
    /// The exporter serves no such volume (any more).
    NoSuchVolume = 3,
    /// The volume's files changed since the catalogue the reader holds (compaction, copy):
    /// ask for the catalogue again.
    Replaced = 4,
    /// The reader has not presented a valid read token on this connection.
    Refused = 5,
}

/// What an exporter answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LookupAnswer {
    pub token: u64,
    pub needle_id: u64,
    pub volume_id: u32,
    pub status: LookupStatus,
    /// The volume's generation (as in the catalogue) the answer was found in; 0 unless found.
    pub generation: u64,
    /// Where the needle's record starts in the `.dat`; 0 unless found.
    pub offset_bytes: u64,
    /// The needle's size field; 0 unless found.
    pub size: u32,
}

/// Why a lookup message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("lookup message of {found} bytes, expected {expected}")]
    Length { found: usize, expected: usize },
    #[error("lookup answer with unknown status {0}")]
    Status(u32),
    #[error("lookup message with non-zero reserved bytes")]
    Reserved,
}

impl LookupRequest {
    pub fn encode(&self) -> [u8; LOOKUP_REQUEST_BYTES] {
        let mut bytes = [0; LOOKUP_REQUEST_BYTES];
        bytes[0..8].copy_from_slice(&self.token.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.needle_id.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.volume_id.to_le_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<LookupRequest, LookupError> {
        let bytes: &[u8; LOOKUP_REQUEST_BYTES] = exact(bytes)?;
        if u32_at(bytes, 20) != 0 {
            return Err(LookupError::Reserved);
        }
        Ok(LookupRequest { token: u64_at(bytes, 0), needle_id: u64_at(bytes, 8), volume_id: u32_at(bytes, 16) })
    }

    /// The answer to this request with `status` and nothing found.
    pub fn answer(&self, status: LookupStatus) -> LookupAnswer {
        LookupAnswer {
            token: self.token,
            needle_id: self.needle_id,
            volume_id: self.volume_id,
            status,
            generation: 0,
            offset_bytes: 0,
            size: 0,
        }
    }
}

impl LookupAnswer {
    pub fn encode(&self) -> [u8; LOOKUP_ANSWER_BYTES] {
        let mut bytes = [0; LOOKUP_ANSWER_BYTES];
        bytes[0..8].copy_from_slice(&self.token.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.needle_id.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.volume_id.to_le_bytes());
        bytes[20..24].copy_from_slice(&(self.status as u32).to_le_bytes());
        bytes[24..32].copy_from_slice(&self.generation.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.offset_bytes.to_le_bytes());
        bytes[40..44].copy_from_slice(&self.size.to_le_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<LookupAnswer, LookupError> {
        let bytes: &[u8; LOOKUP_ANSWER_BYTES] = exact(bytes)?;
        let status = match u32_at(bytes, 20) {
            0 => LookupStatus::Found,
            1 => LookupStatus::NoSuchNeedle,
            2 => LookupStatus::Deleted,
            3 => LookupStatus::NoSuchVolume,
            4 => LookupStatus::Replaced,
            5 => LookupStatus::Refused,
            other => return Err(LookupError::Status(other)),
        };
        if u32_at(bytes, 44) != 0 {
            return Err(LookupError::Reserved);
        }
        Ok(LookupAnswer {
            token: u64_at(bytes, 0),
            needle_id: u64_at(bytes, 8),
            volume_id: u32_at(bytes, 16),
            status,
            generation: u64_at(bytes, 24),
            offset_bytes: u64_at(bytes, 32),
            size: u32_at(bytes, 40),
        })
    }
}

fn exact<const N: usize>(bytes: &[u8]) -> Result<&[u8; N], LookupError> {
    bytes.try_into().map_err(|_| LookupError::Length { found: bytes.len(), expected: N })
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut field = [0; 8];
    field.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(field)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut field = [0; 4];
    field.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_refuse_what_is_not_theirs() {
        let request = LookupRequest { token: 1 << 40 | 7, needle_id: u64::MAX - 3, volume_id: 42 };
        assert_eq!(LookupRequest::decode(&request.encode()), Ok(request));
        let found = LookupAnswer {
            status: LookupStatus::Found,
            generation: 99,
            offset_bytes: 8 << 33,
            size: 12345,
            ..request.answer(LookupStatus::Found)
        };
        assert_eq!(LookupAnswer::decode(&found.encode()), Ok(found));
        let deleted = request.answer(LookupStatus::Deleted);
        assert_eq!(LookupAnswer::decode(&deleted.encode()), Ok(deleted));

        assert_eq!(LookupRequest::decode(&[0; 23]), Err(LookupError::Length { found: 23, expected: 24 }));
        assert!(LookupAnswer::decode(&request.encode()).is_err(), "a request is not an answer");
        let mut bad_status = found.encode();
        bad_status[20] = 6;
        assert_eq!(LookupAnswer::decode(&bad_status), Err(LookupError::Status(6)));
        let mut reserved = request.encode();
        reserved[23] = 1;
        assert_eq!(LookupRequest::decode(&reserved), Err(LookupError::Reserved));
    }
}
