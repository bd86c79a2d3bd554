//! Turning a buffer of records into the bytes of one object: JSON lines (or
//! records back to back), then the stream's compression.

use std::io::Write;

use crate::spec::Compression;

/// Records as the buffer holds them: one byte run, and where each ends.
pub struct Records<'a> {
    pub bytes: &'a [u8],
    pub ends: &'a [usize],
}

impl Records<'_> {
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let r = &self.bytes[start..end];
            start = end;
            r
        })
    }
}

/// Records as Firehose writes them: back to back, or one per line.
pub fn json_lines(records: &Records, delimiter: bool) -> Vec<u8> {
    if !delimiter {
        return records.bytes.to_vec();
    }
    let mut out = Vec::with_capacity(records.bytes.len() + records.ends.len());
    for r in records.iter() {
        out.extend_from_slice(r);
        out.push(b'\n');
    }
    out
}

pub fn compress(bytes: Vec<u8>, compression: Compression) -> Vec<u8> {
    let writing = "compressing into memory cannot fail";
    match compression {
        Compression::Uncompressed => bytes,
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(bytes.len() / 4),
                flate2::Compression::default(),
            );
            enc.write_all(&bytes).expect(writing);
            enc.finish().expect(writing)
        }
        Compression::Zstd => zstd::bulk::compress(&bytes, 3).expect(writing),
        Compression::Snappy => {
            let mut enc = snap::write::FrameEncoder::new(Vec::with_capacity(bytes.len() / 2));
            enc.write_all(&bytes).expect(writing);
            enc.into_inner().map_err(|e| e.to_string()).expect(writing)
        }
    }
}

/// An object's bytes as they were before compression, refusing more than
/// `max` of them (an object in a bucket may come from anywhere).
pub fn decompress(bytes: &[u8], compression: Compression, max: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let reader: Box<dyn Read + '_> = match compression {
        Compression::Uncompressed => Box::new(bytes),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(bytes)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(bytes)?),
        Compression::Snappy => Box::new(snap::read::FrameDecoder::new(bytes)),
    };
    let mut out = Vec::new();
    reader.take(max as u64 + 1).read_to_end(&mut out)?;
    if out.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the object is larger than {max} bytes uncompressed"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn every_compression_reads_back_with_its_standard_decoder() {
        let data: Vec<u8> = (0..50_000u32)
            .flat_map(|i| format!("{{\"i\":{i}}}\n").into_bytes())
            .collect();
        for c in [
            Compression::Uncompressed,
            Compression::Gzip,
            Compression::Zstd,
            Compression::Snappy,
        ] {
            let packed = compress(data.clone(), c);
            let mut out = Vec::new();
            match c {
                Compression::Uncompressed => out = packed.clone(),
                Compression::Gzip => {
                    flate2::read::GzDecoder::new(&packed[..])
                        .read_to_end(&mut out)
                        .unwrap();
                }
                Compression::Zstd => out = zstd::stream::decode_all(&packed[..]).unwrap(),
                Compression::Snappy => {
                    snap::read::FrameDecoder::new(&packed[..])
                        .read_to_end(&mut out)
                        .unwrap();
                }
            }
            assert_eq!(out, data, "{c:?}");
            if c != Compression::Uncompressed {
                assert!(packed.len() < data.len() / 2, "{c:?} compresses");
            }
        }
    }

    #[test]
    fn delimiter_adds_a_newline_after_each_record() {
        let bytes = b"{\"a\":1}{\"b\":2}";
        let r = Records {
            bytes,
            ends: &[7, 14],
        };
        assert_eq!(json_lines(&r, true), b"{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(json_lines(&r, false), bytes);
    }
}
