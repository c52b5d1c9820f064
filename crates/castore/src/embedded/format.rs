//! The byte layout of the values kept in redb, with strict decoders: the database
//! may be corrupt, so every decode checks lengths and ranges and reports what is
//! wrong instead of panicking.

use super::EmbeddedError;

/// Largest raw chunk the chunker ever emits; a stored length above it is corruption
/// (and bounds the allocation made when decompressing).
pub(crate) const MAX_CHUNK: usize = 256 * 1024;
/// Smallest chunk the chunker cuts (except a blob's last chunk).
pub(crate) const MIN_CHUNK: usize = 16 * 1024;
/// Average chunk size the chunker aims for.
pub(crate) const AVG_CHUNK: usize = 64 * 1024;
/// Largest encoded Directory stored (gRPC messages stay under 4 MiB anyway).
pub(crate) const MAX_DIRECTORY: usize = 16 * 1024 * 1024;

/// Where a chunk's stored bytes live: `pack` file, byte range, and how to decode them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkLoc {
    pub pack: u32,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub compressed: bool,
}

const LOC_LEN: usize = 4 + 8 + 4 + 4 + 1;
const FLAG_RAW: u8 = 0;
const FLAG_ZSTD: u8 = 1;

impl ChunkLoc {
    /// Fixed 21-byte little-endian layout: pack u32, offset u64, stored_len u32,
    /// raw_len u32, flag u8 (0 raw, 1 zstd).
    pub fn encode(&self) -> [u8; LOC_LEN] {
        let mut out = [0u8; LOC_LEN];
        out[0..4].copy_from_slice(&self.pack.to_le_bytes());
        out[4..12].copy_from_slice(&self.offset.to_le_bytes());
        out[12..16].copy_from_slice(&self.stored_len.to_le_bytes());
        out[16..20].copy_from_slice(&self.raw_len.to_le_bytes());
        out[20] = if self.compressed { FLAG_ZSTD } else { FLAG_RAW };
        out
    }

    /// Decodes a location whose raw length may be at most `max_raw` (the bound of
    /// the buffer a read allocates).
    pub fn decode(b: &[u8], max_raw: usize) -> Result<Self, EmbeddedError> {
        let b: &[u8; LOC_LEN] = b.try_into().map_err(|_| {
            EmbeddedError::Corrupt(format!(
                "chunk location of {} bytes, want {LOC_LEN}",
                b.len()
            ))
        })?;
        let loc = ChunkLoc {
            pack: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            offset: u64::from_le_bytes([b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11]]),
            stored_len: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
            raw_len: u32::from_le_bytes([b[16], b[17], b[18], b[19]]),
            compressed: match b[20] {
                FLAG_RAW => false,
                FLAG_ZSTD => true,
                f => return Err(EmbeddedError::Corrupt(format!("chunk flag {f}"))),
            },
        };
        // zstd's worst case adds well under 1% + 1 KiB to incompressible input.
        if loc.raw_len as usize > max_raw || loc.stored_len as usize > max_raw + max_raw / 64 + 1024
        {
            return Err(EmbeddedError::Corrupt(format!(
                "object lengths stored {} raw {} exceed the maximum of {max_raw}",
                loc.stored_len, loc.raw_len
            )));
        }
        if !loc.compressed && loc.stored_len != loc.raw_len {
            return Err(EmbeddedError::Corrupt(format!(
                "raw chunk with stored length {} != raw length {}",
                loc.stored_len, loc.raw_len
            )));
        }
        Ok(loc)
    }
}

/// Chunks per segment of a blob's chunk list (about 64 MiB of blob): a writer
/// holds one segment, a reader one or two, whatever the blob's size.
#[cfg(not(test))]
pub(crate) const SEG_CHUNKS: usize = 1024;
/// Unit tests use short segments, so that blobs of a few MiB have many.
#[cfg(test)]
pub(crate) const SEG_CHUNKS: usize = 4;
/// Bytes per chunk in a segment's encoding: digest, then location.
pub(crate) const SEG_ENTRY_LEN: usize = 32 + LOC_LEN;
/// Largest segment encoding.
pub(crate) const MAX_SEGMENT: usize = SEG_CHUNKS * SEG_ENTRY_LEN;

/// One segment of a blob's chunk list: a run of up to [`SEG_CHUNKS`] chunks whose
/// (digest, location) list is stored as an object in the packs, under the BLAKE3
/// digest of its encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegRef {
    /// BLAKE3 of the segment's encoding.
    pub digest: [u8; 32],
    /// Where the encoding is stored.
    pub loc: ChunkLoc,
    /// Chunks in the segment.
    pub chunks: u32,
    /// Blob bytes the segment's chunks hold.
    pub bytes: u64,
}

const SEG_REF_LEN: usize = 32 + LOC_LEN + 4 + 8;

/// A blob's entry in the `blobs` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BlobEntry {
    /// The blob is exactly one chunk, stored under the blob's own digest.
    Single,
    /// The blob is these chunks, in order (the format before segments: still
    /// read, no longer written).
    Chunked(Vec<([u8; 32], u64)>),
    /// The blob's chunks are those of these segments, in order.
    Segmented(Vec<SegRef>),
}

const TAG_SINGLE: u8 = 0;
const TAG_CHUNKED: u8 = 1;
const TAG_SEGMENTED: u8 = 2;
const CHUNK_REF_LEN: usize = 32 + 8;

impl BlobEntry {
    /// `0` for a single-chunk blob; `1` followed by (digest, u64-LE size) per
    /// chunk; `2` followed by (segment digest, segment location, chunk count u32,
    /// byte count u64) per segment.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            BlobEntry::Single => vec![TAG_SINGLE],
            BlobEntry::Chunked(list) => {
                let mut out = Vec::with_capacity(1 + list.len() * CHUNK_REF_LEN);
                out.push(TAG_CHUNKED);
                for (d, s) in list {
                    out.extend_from_slice(d);
                    out.extend_from_slice(&s.to_le_bytes());
                }
                out
            }
            BlobEntry::Segmented(segs) => {
                let mut out = Vec::with_capacity(1 + segs.len() * SEG_REF_LEN);
                out.push(TAG_SEGMENTED);
                for s in segs {
                    out.extend_from_slice(&s.digest);
                    out.extend_from_slice(&s.loc.encode());
                    out.extend_from_slice(&s.chunks.to_le_bytes());
                    out.extend_from_slice(&s.bytes.to_le_bytes());
                }
                out
            }
        }
    }

    pub fn decode(b: &[u8]) -> Result<Self, EmbeddedError> {
        match b.split_first() {
            Some((&TAG_SINGLE, [])) => Ok(BlobEntry::Single),
            Some((&TAG_CHUNKED, rest)) => {
                if rest.len() % CHUNK_REF_LEN != 0 || rest.len() < 2 * CHUNK_REF_LEN {
                    return Err(EmbeddedError::Corrupt(format!(
                        "chunk list of {} bytes is not at least two {CHUNK_REF_LEN}-byte entries",
                        rest.len()
                    )));
                }
                let mut list = Vec::with_capacity(rest.len() / CHUNK_REF_LEN);
                for e in rest.chunks_exact(CHUNK_REF_LEN) {
                    let mut d = [0u8; 32];
                    d.copy_from_slice(&e[..32]);
                    let mut s = [0u8; 8];
                    s.copy_from_slice(&e[32..]);
                    let size = u64::from_le_bytes(s);
                    if size as usize > MAX_CHUNK {
                        return Err(EmbeddedError::Corrupt(format!(
                            "chunk list entry of size {size} exceeds the maximum chunk size"
                        )));
                    }
                    list.push((d, size));
                }
                Ok(BlobEntry::Chunked(list))
            }
            Some((&TAG_SEGMENTED, rest)) => {
                if rest.len() % SEG_REF_LEN != 0 || rest.is_empty() {
                    return Err(EmbeddedError::Corrupt(format!(
                        "segment list of {} bytes is not whole {SEG_REF_LEN}-byte entries",
                        rest.len()
                    )));
                }
                let mut segs = Vec::with_capacity(rest.len() / SEG_REF_LEN);
                let mut chunks = 0u64;
                for (i, e) in rest.chunks_exact(SEG_REF_LEN).enumerate() {
                    let mut digest = [0u8; 32];
                    digest.copy_from_slice(&e[..32]);
                    let loc = ChunkLoc::decode(&e[32..32 + LOC_LEN], MAX_SEGMENT)?;
                    let n = &e[32 + LOC_LEN..];
                    let count = u32::from_le_bytes([n[0], n[1], n[2], n[3]]);
                    let mut s = [0u8; 8];
                    s.copy_from_slice(&n[4..]);
                    let bytes = u64::from_le_bytes(s);
                    if count == 0
                        || count as usize > SEG_CHUNKS
                        || loc.raw_len as usize != count as usize * SEG_ENTRY_LEN
                        || bytes < u64::from(count)
                        || bytes > u64::from(count) * MAX_CHUNK as u64
                    {
                        return Err(EmbeddedError::Corrupt(format!(
                            "segment {i} of {count} chunks, {bytes} bytes, stored as {} bytes",
                            loc.raw_len
                        )));
                    }
                    chunks += u64::from(count);
                    segs.push(SegRef {
                        digest,
                        loc,
                        chunks: count,
                        bytes,
                    });
                }
                if chunks < 2 {
                    return Err(EmbeddedError::Corrupt(
                        "segmented blob of fewer than two chunks".into(),
                    ));
                }
                Ok(BlobEntry::Segmented(segs))
            }
            Some((t, _)) => Err(EmbeddedError::Corrupt(format!("blob entry tag {t}"))),
            None => Err(EmbeddedError::Corrupt("empty blob entry".into())),
        }
    }
}

/// A segment's encoding: (chunk digest, location) per chunk, [`SEG_ENTRY_LEN`]
/// bytes each.
pub(crate) fn encode_segment(chunks: &[([u8; 32], ChunkLoc)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.len() * SEG_ENTRY_LEN);
    for (d, loc) in chunks {
        out.extend_from_slice(d);
        out.extend_from_slice(&loc.encode());
    }
    out
}

/// Decodes a segment that its reference says holds `seg.chunks` chunks of
/// `seg.bytes` bytes in all.
pub(crate) fn decode_segment(
    b: &[u8],
    seg: &SegRef,
) -> Result<Vec<([u8; 32], ChunkLoc)>, EmbeddedError> {
    if b.len() != seg.chunks as usize * SEG_ENTRY_LEN {
        return Err(EmbeddedError::Corrupt(format!(
            "segment of {} bytes, want {} chunks",
            b.len(),
            seg.chunks
        )));
    }
    let mut out = Vec::with_capacity(seg.chunks as usize);
    let mut total = 0u64;
    for e in b.chunks_exact(SEG_ENTRY_LEN) {
        let mut d = [0u8; 32];
        d.copy_from_slice(&e[..32]);
        let loc = ChunkLoc::decode(&e[32..], MAX_CHUNK)?;
        if loc.raw_len == 0 {
            return Err(EmbeddedError::Corrupt("empty chunk in a segment".into()));
        }
        total += u64::from(loc.raw_len);
        out.push((d, loc));
    }
    if total != seg.bytes {
        return Err(EmbeddedError::Corrupt(format!(
            "segment chunks hold {total} bytes, its reference says {}",
            seg.bytes
        )));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn loc_roundtrip_and_rejects() {
        let l = ChunkLoc {
            pack: 7,
            offset: 1 << 40,
            stored_len: 100,
            raw_len: 300,
            compressed: true,
        };
        assert_eq!(ChunkLoc::decode(&l.encode(), MAX_CHUNK).unwrap(), l);
        assert!(ChunkLoc::decode(&l.encode()[..20], MAX_CHUNK).is_err());
        let mut bad = l.encode();
        bad[20] = 9;
        assert!(ChunkLoc::decode(&bad, MAX_CHUNK).is_err());
        let raw = ChunkLoc {
            compressed: false,
            ..l
        };
        assert!(
            ChunkLoc::decode(&raw.encode(), MAX_CHUNK).is_err(),
            "raw with stored != raw len"
        );
        let huge = ChunkLoc {
            raw_len: u32::MAX,
            ..l
        };
        assert!(ChunkLoc::decode(&huge.encode(), MAX_CHUNK).is_err());
    }

    #[test]
    fn blob_entry_roundtrip_and_rejects() {
        let e = BlobEntry::Chunked(vec![([1; 32], 5), ([2; 32], 6)]);
        assert_eq!(BlobEntry::decode(&e.encode()).unwrap(), e);
        assert_eq!(BlobEntry::decode(&[0]).unwrap(), BlobEntry::Single);
        assert!(BlobEntry::decode(&[]).is_err());
        assert!(BlobEntry::decode(&[0, 1]).is_err());
        assert!(BlobEntry::decode(&e.encode()[..50]).is_err());
        let one = BlobEntry::Chunked(vec![([1; 32], 5)]);
        assert!(
            BlobEntry::decode(&one.encode()).is_err(),
            "a chunk list needs two entries"
        );
    }

    fn loc(raw_len: u32) -> ChunkLoc {
        ChunkLoc {
            pack: 1,
            offset: 99,
            stored_len: raw_len,
            raw_len,
            compressed: false,
        }
    }

    #[test]
    fn segments_roundtrip_and_reject() {
        let chunks = vec![([3; 32], loc(100)), ([4; 32], loc(7))];
        let enc = encode_segment(&chunks);
        let seg = SegRef {
            digest: *blake3::hash(&enc).as_bytes(),
            loc: loc(enc.len() as u32),
            chunks: 2,
            bytes: 107,
        };
        assert_eq!(decode_segment(&enc, &seg).unwrap(), chunks);
        assert!(decode_segment(&enc[..60], &seg).is_err(), "truncated");
        let wrong_bytes = SegRef { bytes: 108, ..seg };
        assert!(decode_segment(&enc, &wrong_bytes).is_err());
        let e = BlobEntry::Segmented(vec![seg, seg]);
        assert_eq!(BlobEntry::decode(&e.encode()).unwrap(), e);
        assert!(BlobEntry::decode(&e.encode()[..70]).is_err());
        assert!(BlobEntry::decode(&[2]).is_err(), "no segment");
        let one_chunk = SegRef {
            chunks: 1,
            bytes: 100,
            loc: loc(SEG_ENTRY_LEN as u32),
            ..seg
        };
        assert!(
            BlobEntry::decode(&BlobEntry::Segmented(vec![one_chunk]).encode()).is_err(),
            "a segmented blob has two chunks or more"
        );
        let too_many = SegRef {
            chunks: SEG_CHUNKS as u32 + 1,
            loc: loc((SEG_CHUNKS as u32 + 1) * SEG_ENTRY_LEN as u32),
            ..seg
        };
        assert!(BlobEntry::decode(&BlobEntry::Segmented(vec![too_many]).encode()).is_err());
        let count_mismatch = SegRef { chunks: 3, ..seg };
        assert!(
            BlobEntry::decode(&BlobEntry::Segmented(vec![count_mismatch, seg]).encode()).is_err()
        );
    }
}
