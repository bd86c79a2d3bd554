//! The stream's compression, of a piece of an object (see `spool`) or of
//! a whole one, and back.

use std::io::Write;

use crate::spec::Compression;

/// `bytes` compressed as one complete stream (gzip member, zstd frame,
/// Snappy framed stream).
pub fn compress(bytes: &[u8], compression: Compression) -> Vec<u8> {
    let writing = "compressing into memory cannot fail";
    match compression {
        Compression::Uncompressed => bytes.to_vec(),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(bytes.len() / 4),
                flate2::Compression::default(),
            );
            enc.write_all(bytes).expect(writing);
            enc.finish().expect(writing)
        }
        Compression::Zstd => zstd::bulk::compress(bytes, 3).expect(writing),
        Compression::Snappy => {
            let mut enc = snap::write::FrameEncoder::new(Vec::with_capacity(bytes.len() / 2));
            enc.write_all(bytes).expect(writing);
            enc.into_inner().map_err(|e| e.to_string()).expect(writing)
        }
    }
}

/// An object's bytes as they were before compression, refusing more than
/// `max` of them (an object in a bucket may come from anywhere).
pub fn decompress(bytes: &[u8], compression: Compression, max: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let reader = decoder(bytes, compression)?;
    let mut out = Vec::new();
    reader
        .take((max as u64).saturating_add(1))
        .read_to_end(&mut out)?;
    if out.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the object is larger than {max} bytes uncompressed"),
        ));
    }
    Ok(out)
}

/// The bytes `compressed` holds: every gzip member, zstd frame and Snappy
/// stream in it, one after another.
pub fn decoder<'a, R: std::io::Read + 'a>(
    compressed: R,
    compression: Compression,
) -> std::io::Result<Box<dyn std::io::Read + 'a>> {
    Ok(match compression {
        Compression::Uncompressed => Box::new(compressed),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(compressed)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(compressed)?),
        Compression::Snappy => Box::new(snap::read::FrameDecoder::new(compressed)),
    })
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
            let packed = compress(&data, c);
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
}
