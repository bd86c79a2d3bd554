//! An object's bytes on their way to a store, on disk rather than in memory.
//!
//! A buffer's records are already durable in the log, so holding them in
//! memory until the buffer is cut only costs memory, as much as the
//! buffering hints allow, for every open partition. Instead each buffer
//! keeps at most [`SPILL_BYTES`] of encoded records in memory and appends
//! the rest to a file in the data directory's scratch space (`tmp/`, which
//! a start empties: a spool is never state, the log is). When the buffer is
//! cut, the finished file is the object's [`Body`]: fsynced, then linked
//! into the lake or uploaded in parts.
//!
//! Compression works a spill at a time: GZIP writes one gzip member per
//! spill and Snappy one framed stream per spill, both of which their
//! formats define as one stream of the concatenated bytes (RFC 1952 §2.2;
//! the framing format's repeated stream identifier), and which gzip, zcat,
//! Python, Java, DuckDB and Spark read as one. ZSTD is compressed when the
//! buffer is cut, as one frame, because common readers (python-zstandard,
//! DataFusion's streaming decoder) stop after the first frame.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;

use super::encode;
use super::parquet::{conform_batch, Columns, ParquetOptions, ParquetWriter, TableSchema};
use super::store::WriteBehind;
use crate::spec::Compression;

/// Encoded bytes a buffer holds in memory before appending them to its file.
pub const SPILL_BYTES: usize = 1 << 20;

/// A finished object: a durable file in the scratch directory, removed
/// when dropped (the stores link or copy it where it belongs).
#[derive(Debug)]
pub struct Body {
    path: PathBuf,
    len: u64,
}

impl Body {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The object's bytes, in memory.
    pub fn read(&self) -> io::Result<Vec<u8>> {
        fs::read(&self.path)
    }

    /// A body holding `bytes`.
    pub fn write(dir: &Path, bytes: &[u8]) -> io::Result<Body> {
        let mut f = BodyFile::create(dir)?;
        f.write_all(bytes)?;
        f.finish()
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Appends `bytes` to the file at `path`, or, on an error (a full disk),
/// leaves it as it was.
fn append(path: &Path, behind: &mut WriteBehind, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    let before = behind.written();
    if let Err(e) = behind.write(&mut f, bytes) {
        let _ = f.set_len(before);
        behind.rewind(before);
        return Err(e);
    }
    Ok(())
}

fn scratch_path(dir: &Path) -> PathBuf {
    dir.join(format!("body-{}", uuid::Uuid::new_v4().simple()))
}

/// A body being written: its writeback started as it grows (see
/// [`WriteBehind`]), removed unless finished.
pub struct BodyFile {
    file: File,
    path: PathBuf,
    behind: WriteBehind,
    finished: bool,
}

impl BodyFile {
    pub fn create(dir: &Path) -> io::Result<BodyFile> {
        let path = scratch_path(dir);
        Ok(BodyFile {
            file: File::create(&path)?,
            path,
            behind: WriteBehind::default(),
            finished: false,
        })
    }

    /// Makes the bytes durable; they are the object's body.
    pub fn finish(mut self) -> io::Result<Body> {
        self.file.sync_all()?;
        self.finished = true;
        Ok(Body {
            path: std::mem::take(&mut self.path),
            len: self.behind.written(),
        })
    }
}

impl Write for BodyFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.behind.write(&mut self.file, buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for BodyFile {
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// One buffer's object as it grows: encoded bytes in memory, spilled to
/// its file a chunk at a time. The file is opened for each spill, so an
/// open buffer holds no descriptor.
pub struct Spool {
    path: PathBuf,
    compression: Compression,
    /// Bytes not yet in the file, before compression.
    raw: Vec<u8>,
    behind: WriteBehind,
    /// Bytes the object holds before compression (in memory and spilled).
    len: u64,
}

impl Spool {
    pub fn new(dir: &Path, compression: Compression) -> Spool {
        Spool {
            path: scratch_path(dir),
            compression,
            raw: Vec::new(),
            behind: WriteBehind::default(),
            len: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
        self.len += bytes.len() as u64;
    }

    /// Memory the spool holds.
    pub fn held(&self) -> usize {
        self.raw.len()
    }

    /// Appends what memory holds to the file. On an error (a full disk)
    /// the file is as it was and the bytes are still held: spill again.
    pub fn spill(&mut self) -> io::Result<()> {
        if self.raw.is_empty() {
            return Ok(());
        }
        self.spill_member()
    }

    fn spill_member(&mut self) -> io::Result<()> {
        let member;
        let bytes = match self.compression {
            // Compressed as one frame when the object is finished.
            Compression::Uncompressed | Compression::Zstd => &self.raw[..],
            c @ (Compression::Gzip | Compression::Snappy) => {
                member = encode::compress(&self.raw, c);
                &member[..]
            }
        };
        append(&self.path, &mut self.behind, bytes)?;
        self.raw.clear();
        if self.raw.capacity() > 2 * SPILL_BYTES {
            self.raw.shrink_to(SPILL_BYTES);
        }
        Ok(())
    }

    /// The object's body. On an error the spool is as it was: finish again.
    pub fn finish(&mut self) -> io::Result<Body> {
        // An empty object is still one valid (empty) member.
        if !self.raw.is_empty() || self.behind.written() == 0 {
            self.spill_member()?;
        }
        if self.compression == Compression::Zstd {
            let mut out = BodyFile::create(self.path.parent().unwrap_or(Path::new(".")))?;
            let mut enc = zstd::stream::write::Encoder::new(&mut out, 3)?;
            let mut raw = File::open(&self.path)?;
            let mut chunk = vec![0; SPILL_BYTES];
            loop {
                let n = raw.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                enc.write_all(&chunk[..n])?;
            }
            enc.finish()?;
            let body = out.finish()?;
            let _ = fs::remove_file(&self.path);
            self.behind = WriteBehind::default();
            return Ok(body);
        }
        File::open(&self.path)?.sync_all()?;
        let body = Body {
            path: std::mem::replace(&mut self.path, scratch_path(Path::new(""))),
            len: self.behind.written(),
        };
        self.behind = WriteBehind::default();
        Ok(body)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if self.behind.written() > 0 {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A Parquet buffer's rows beyond what it holds in memory: its columns,
/// spilled a batch at a time as Arrow IPC streams (each in the schema of
/// its time: an inferred schema may grow while the buffer is open) to a
/// file, and encoded as Parquet when the buffer is cut, each batch
/// conformed to the final schema. Only the row group being encoded is then
/// in memory, as Parquet pages.
pub struct ColumnSpool {
    path: PathBuf,
    /// Where each spilled stream ends in the file.
    ends: Vec<u64>,
    behind: WriteBehind,
    /// A spill whose write failed, kept to be written again.
    unwritten: Option<Vec<u8>>,
}

fn arrow_io(e: ArrowError) -> io::Error {
    match e {
        ArrowError::IoError(_, e) => e,
        e => io::Error::other(e),
    }
}

impl ColumnSpool {
    pub fn new(dir: &Path) -> ColumnSpool {
        ColumnSpool {
            path: scratch_path(dir),
            ends: Vec::new(),
            behind: WriteBehind::default(),
            unwritten: None,
        }
    }

    /// Whether any rows are in the file (or waiting to be written to it).
    pub fn spilled(&self) -> bool {
        !self.ends.is_empty() || self.unwritten.is_some()
    }

    /// Moves the rows of `columns` to the file, leaving them empty. On an
    /// error (a full disk) the rows are kept here: spill again.
    pub fn spill(&mut self, columns: &mut Columns) -> io::Result<()> {
        if self.unwritten.is_none() && columns.rows() > 0 {
            let batch = columns.take().finish().map_err(io::Error::other)?;
            let mut bytes = Vec::new();
            let mut w = StreamWriter::try_new(&mut bytes, &batch.schema()).map_err(arrow_io)?;
            w.write(&batch).map_err(arrow_io)?;
            w.finish().map_err(arrow_io)?;
            drop(w);
            self.unwritten = Some(bytes);
        }
        let Some(bytes) = &self.unwritten else {
            return Ok(());
        };
        append(&self.path, &mut self.behind, bytes)?;
        self.ends.push(self.behind.written());
        self.unwritten = None;
        Ok(())
    }

    /// The object: every spilled batch (spill the last rows first),
    /// conformed to `schema`, as one Parquet file. The outer error is the disk's (try again; the spool
    /// is as it was), the inner one a batch that does not convert.
    pub fn encode(
        &self,
        dir: &Path,
        schema: &TableSchema,
        options: &ParquetOptions,
    ) -> io::Result<Result<Body, String>> {
        let mut writer = match ParquetWriter::to(BodyFile::create(dir)?, schema, options) {
            Ok(w) => w,
            Err(e) => return Ok(Err(e)),
        };
        let mut file = File::open(&self.path)?;
        let mut start = 0;
        for &end in &self.ends {
            file.seek(io::SeekFrom::Start(start))?;
            let part = io::BufReader::new((&mut file).take(end - start));
            start = end;
            let reader = StreamReader::try_new(part, None).map_err(arrow_io)?;
            for batch in reader {
                let batch = batch.map_err(arrow_io)?;
                let written = conform_batch(&batch, schema).and_then(|b| writer.write_batch(&b));
                if let Err(e) = written {
                    return Ok(Err(e));
                }
            }
        }
        match writer.finish() {
            Ok(body) => body.finish().map(Ok),
            Err(e) => Ok(Err(e)),
        }
    }
}

impl Drop for ColumnSpool {
    fn drop(&mut self) {
        if self.spilled() || self.behind.written() > 0 {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hydrant-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// Spilled or not, every compression reads back as the bytes pushed,
    /// with its standard decoder, and a spool leaves no file behind.
    #[test]
    fn spilled_objects_read_back_whole() {
        let d = dir("whole");
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| format!("{{\"i\":{i}}}\n").into_bytes())
            .collect();
        for c in [
            Compression::Uncompressed,
            Compression::Gzip,
            Compression::Zstd,
            Compression::Snappy,
        ] {
            for piece in [data.len(), 700_000, 4096] {
                let mut s = Spool::new(&d, c);
                for p in data.chunks(piece) {
                    s.push(p);
                    if s.held() >= SPILL_BYTES {
                        s.spill().unwrap();
                    }
                }
                assert!(s.held() < SPILL_BYTES);
                let body = s.finish().unwrap();
                drop(s);
                let packed = body.read().unwrap();
                assert_eq!(packed.len() as u64, body.len());
                let out = encode::decompress(&packed, c, 1 << 30).unwrap();
                assert!(out == data, "{c:?} in pieces of {piece}");
                if c != Compression::Uncompressed {
                    assert!(packed.len() < data.len() / 2, "{c:?} compresses");
                }
                if c == Compression::Zstd {
                    // One frame: a single-frame decoder reads it all.
                    let mut one = Vec::new();
                    zstd::stream::read::Decoder::new(&packed[..])
                        .unwrap()
                        .single_frame()
                        .read_to_end(&mut one)
                        .unwrap();
                    assert!(one == data, "zstd is one frame");
                }
                drop(body);
            }
        }
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0, "no file is left");
        let _ = fs::remove_dir_all(&d);
    }

    /// An object with no records is a valid, empty stream.
    #[test]
    fn an_empty_object_is_valid() {
        let d = dir("empty");
        for c in [
            Compression::Uncompressed,
            Compression::Gzip,
            Compression::Zstd,
            Compression::Snappy,
        ] {
            let body = Spool::new(&d, c).finish().unwrap();
            let packed = body.read().unwrap();
            assert!(encode::decompress(&packed, c, 10).unwrap().is_empty());
        }
        let _ = fs::remove_dir_all(&d);
    }

    /// Columns spilled in parts while an inferred schema widens (a new
    /// column, a new struct field, bigint to double, in a list too) encode
    /// to the same rows as columns never spilled, and the file goes away.
    #[test]
    fn spilled_columns_encode_like_unspilled() {
        use super::super::parquet::InferredSchema;
        use datafusion::arrow::compute::concat_batches;
        use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

        let d = dir("columns");
        let parts: Vec<Vec<String>> = vec![
            (0..700)
                .map(|i| format!(r#"{{"a":{i},"s":{{"x":{i}}},"l":[{i}]}}"#))
                .collect(),
            (0..500)
                .map(|i| format!(r#"{{"a":{i}.5,"s":{{"x":1,"y":"q{i}"}},"b":"n{i}"}}"#))
                .collect(),
            (0..300)
                .map(|i| format!(r#"{{"l":[{i}.25,null],"c":true,"a":null}}"#))
                .collect(),
        ];
        let opts = ParquetOptions {
            block_size_bytes: 64 << 10,
            ..ParquetOptions::default()
        };
        let read = |bytes: Vec<u8>| {
            let r = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
                .unwrap()
                .build()
                .unwrap();
            let batches: Vec<_> = r.map(|b| b.unwrap()).collect();
            concat_batches(&batches[0].schema(), &batches).unwrap()
        };

        let mut whole_schema = InferredSchema::new();
        let mut whole = Columns::new(&whole_schema.table());
        let mut schema = InferredSchema::new();
        let mut columns = Columns::new(&schema.table());
        let mut spool = ColumnSpool::new(&d);
        for part in &parts {
            for r in part {
                whole_schema.append(r.as_bytes(), &mut whole).unwrap();
                schema.append(r.as_bytes(), &mut columns).unwrap();
            }
            spool.spill(&mut columns).unwrap();
            assert_eq!(columns.rows(), 0);
        }
        whole_schema.conform(&mut whole);
        schema.conform(&mut columns);
        assert!(spool.spilled());
        let table = columns.schema().clone();
        let mut w = ParquetWriter::new(&table, &opts).unwrap();
        w.write(whole).unwrap();
        let expected = read(w.finish().unwrap());
        let body = spool.encode(&d, &table, &opts).unwrap().unwrap();
        let got = read(body.read().unwrap());
        assert_eq!(got.num_rows(), 1500);
        assert_eq!(got, expected);
        drop(body);
        drop(spool);
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0, "no file is left");
        let _ = fs::remove_dir_all(&d);
    }
}
