//! Recovery: telling a torn tail from corruption, and keeping every intact
//! record either way.
//!
//! Every segment is checked frame by frame when the log opens. A frame that
//! is short or fails its checksum is *damage*, and what follows it decides
//! what the damage is:
//!
//! * Nothing valid after it, in the last segment: a **torn tail**, a write
//!   the process or the machine did not finish. It is cut off. Such a write
//!   was never covered by an fsync, so it was not acknowledged, unless the
//!   disk damaged a written frame, which no checksum can tell apart.
//! * An intact frame after it (found by trying every later byte position),
//!   or any damage in a sealed segment (one that was fsynced whole before the
//!   next was created): **corruption**. The damaged bytes are moved aside to
//!   `<segment>.corrupt-<position>`, and a *hole* frame takes their place:
//!   a frame whose length field has the top bit set and holds how many
//!   records the damage covered, so that every later record keeps its offset
//!   (delivery's state is written in offsets). The count is exact in a sealed
//!   segment (the next segment's name says where this one ends) and when the
//!   damaged frames' length fields still chain to the next intact frame;
//!   otherwise it is taken as 1, and the loss says it is a lower bound.
//!
//! The segment is rewritten (to `.repair`, fsynced, renamed over, directory
//! fsynced), so recovery runs once per damage. Readers skip a hole's offsets;
//! every hole found is reported as a [`Loss`], in the log's messages, the
//! stream's status and the metrics, as long as its segment exists.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{segment_name, sync_dir, LogError, FRAME_HEADER, MAX_FRAME_BYTES};

/// The largest frame a resynchronisation accepts: a record's limit (1,000
/// KiB) with room to spare.
const RESYNC_MAX_LEN: usize = 1 << 20;

/// The top bit of a frame's length field marks a hole.
pub(super) const HOLE: u32 = 1 << 31;

/// The next bit marks a producer's mark: a frame that takes no offset and
/// heads a batch of records appended with [`super::Log::append_marked`].
/// Its data is the batch's record count (u32), the producer's name length
/// (u16), the name and the position, so the batch and the position it
/// records are one write: recovery cuts a batch whose records did not all
/// reach the disk together with its mark.
pub(super) const MARK: u32 = 1 << 30;

/// A mark frame for a batch of `records` records.
pub(super) fn mark(records: u64, producer: &str, position: &str) -> Vec<u8> {
    let mut data = Vec::with_capacity(6 + producer.len() + position.len());
    data.extend_from_slice(&(records as u32).to_le_bytes());
    data.extend_from_slice(&(producer.len() as u16).to_le_bytes());
    data.extend_from_slice(producer.as_bytes());
    data.extend_from_slice(position.as_bytes());
    let mut f = Vec::with_capacity(FRAME_HEADER + data.len());
    f.extend_from_slice(&(MARK | data.len() as u32).to_le_bytes());
    f.extend_from_slice(&[0; 12]);
    f.extend_from_slice(&data);
    let crc = crc32c::crc32c(&f[8..]);
    f[4..8].copy_from_slice(&crc.to_le_bytes());
    f
}

/// A mark's record count, producer and position.
pub(super) fn parse_mark(data: &[u8]) -> Option<(u64, &str, &str)> {
    let records = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?) as u64;
    let n = u16::from_le_bytes(data.get(4..6)?.try_into().ok()?) as usize;
    let producer = std::str::from_utf8(data.get(6..6 + n)?).ok()?;
    let position = std::str::from_utf8(&data[6 + n..]).ok()?;
    // A mark may head no records: a producer's position moved on alone.
    Some((records, producer, position))
}

/// Records that damage on disk destroyed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Loss {
    pub segment: PathBuf,
    /// Where the damaged bytes were moved, when this start found them.
    pub quarantine: Option<PathBuf>,
    pub first_offset: u64,
    pub records: u64,
    /// False when the count is only a lower bound.
    pub exact: bool,
    pub bytes: u64,
}

/// One frame at a position: a record, or a hole of `n` records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Frame {
    Record,
    Hole(u64),
    /// A producer's mark heading this many records.
    Mark(u64),
}

/// Parses the frame at `buf[pos..]`: its kind and its length in bytes, or
/// None if it is short or fails its checksum.
pub(super) fn frame_at(buf: &[u8], pos: usize, max_len: usize) -> Option<(Frame, usize)> {
    let header = buf.get(pos..pos + FRAME_HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().unwrap());
    let crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
    if len & HOLE != 0 {
        let n = (len & !HOLE) as u64;
        return (n > 0 && crc == crc32c::crc32c(&header[8..16]))
            .then_some((Frame::Hole(n), FRAME_HEADER));
    }
    let marked = len & MARK != 0;
    let len = (len & !MARK) as usize;
    if len > max_len {
        return None;
    }
    let data = buf.get(pos + FRAME_HEADER..pos + FRAME_HEADER + len)?;
    let actual = crc32c::crc32c_append(crc32c::crc32c(&header[8..16]), data);
    if actual != crc {
        return None;
    }
    if marked {
        let (records, _, _) = parse_mark(data)?;
        return Some((Frame::Mark(records), FRAME_HEADER + len));
    }
    Some((Frame::Record, FRAME_HEADER + len))
}

/// A hole frame standing for `n` lost records.
pub(super) fn hole(n: u64) -> [u8; FRAME_HEADER] {
    let mut f = [0u8; FRAME_HEADER];
    f[0..4].copy_from_slice(&(HOLE | n.min((HOLE - 1) as u64) as u32).to_le_bytes());
    let crc = crc32c::crc32c(&f[8..16]);
    f[4..8].copy_from_slice(&crc.to_le_bytes());
    f
}

/// What a segment holds once recovered.
pub(super) struct Recovered {
    /// Offsets the segment covers (records and holes).
    pub count: u64,
    /// Its length after recovery.
    pub len: u64,
    pub losses: Vec<Loss>,
    /// The (producer, position) of every mark kept, in order.
    pub marks: Vec<(String, String)>,
}

/// A damaged run `[from, to)` of a segment and the records it held.
struct Damage {
    from: usize,
    to: usize,
    records: u64,
    exact: bool,
    /// Offsets (within the segment) before the damage.
    before: u64,
}

/// Checks one segment and repairs it if damaged. `base` is its first
/// offset; `next_base` the next segment's (None for the last segment).
pub(super) fn segment(
    dir: &Path,
    base: u64,
    next_base: Option<u64>,
) -> Result<Recovered, LogError> {
    let path = dir.join(segment_name(base));
    let buf = fs::read(&path).map_err(|e| LogError::io(&path, e))?;
    let mut damages: Vec<Damage> = Vec::new();
    let mut holes: Vec<(u64, u64)> = Vec::new();
    let (mut pos, mut count, mut end) = (0usize, 0u64, buf.len());
    // Marks found (position in the file, producer, position), and the
    // batch being read: its mark's place, the offsets before it, and how
    // many of its records are still to come.
    let mut marks: Vec<(usize, String, String)> = Vec::new();
    let mut batch: Option<(usize, u64, u64)> = None;
    while pos < buf.len() {
        if let Some((frame, n)) = frame_at(&buf, pos, MAX_FRAME_BYTES) {
            let taken = match frame {
                Frame::Record => 1,
                Frame::Hole(k) => {
                    holes.push((count, k));
                    k
                }
                Frame::Mark(records) => {
                    let data = &buf[pos + FRAME_HEADER..pos + n];
                    let (_, producer, position) = parse_mark(data).expect("frame_at parsed it");
                    marks.push((pos, producer.to_owned(), position.to_owned()));
                    // A mark inside a batch still short of records does not
                    // start a batch of its own: the first unfinished batch
                    // is where a cut must go, so that cutting there leaves
                    // no unfinished batch and a second recovery cuts nothing.
                    if batch.is_none() {
                        batch = Some((pos, count, records));
                    }
                    0
                }
            };
            count += taken;
            if let Some((_, _, left)) = &mut batch {
                *left = left.saturating_sub(taken);
            }
            if batch.is_some_and(|b| b.2 == 0) {
                batch = None;
            }
            pos += n;
            continue;
        }
        // Candidates are limited to record-sized frames, which bounds the
        // work of trying every position of a large damaged run.
        let resync = (pos + 1..buf.len()).find(|&q| frame_at(&buf, q, RESYNC_MAX_LEN).is_some());
        match (resync, next_base) {
            // Nothing intact follows in the last segment: a torn tail.
            (None, None) => {
                end = pos;
                break;
            }
            (to, _) => {
                let to = to.unwrap_or(buf.len());
                let (records, exact) = chained(&buf, pos, to).map_or((1, false), |k| (k, true));
                damages.push(Damage {
                    from: pos,
                    to,
                    records,
                    exact,
                    before: count,
                });
                count += records;
                // The damage stands for records (a hole, once repaired), and
                // counts toward a batch as that hole will at the next start.
                if let Some((_, _, left)) = &mut batch {
                    *left = left.saturating_sub(records);
                }
                if batch.is_some_and(|b| b.2 == 0) {
                    batch = None;
                }
                pos = to;
            }
        }
    }
    // A marked batch is one write: if the last segment ends before all its
    // records, the write did not complete and the batch goes with its mark.
    // Not if damage or a hole lies inside it: that is corruption, whose
    // intact records stay.
    if let (None, Some((at, before, _))) = (next_base, batch) {
        if damages.iter().all(|d| d.to <= at) && holes.iter().all(|&(o, _)| o < before) {
            end = at;
            count = before;
        }
    }
    let marks: Vec<(String, String)> = marks
        .into_iter()
        .filter(|m| m.0 < end)
        .map(|(_, p, v)| (p, v))
        .collect();
    // A sealed segment knows how many offsets it covers: whatever the
    // damage hid is the difference, exactly.
    if let (Some(next), Some(last)) = (next_base, damages.last_mut()) {
        let expected = next.saturating_sub(base);
        if expected >= count {
            last.records += expected - count;
            count = expected;
            if damages.len() == 1 {
                damages[0].exact = true;
            }
        }
    }
    let mut losses: Vec<Loss> = holes
        .iter()
        .map(|&(at, k)| Loss {
            segment: path.clone(),
            quarantine: None,
            first_offset: base + at,
            records: k,
            exact: true,
            bytes: 0,
        })
        .collect();
    if end < buf.len() {
        tracing::warn!(
            segment = %path.display(),
            kept = end,
            cut = buf.len() - end,
            "cutting a torn log tail: a write that did not complete, so it was not acknowledged \
             (unless the disk damaged it after the fact, which a checksum cannot tell apart)"
        );
    }
    if damages.is_empty() {
        if end < buf.len() {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| LogError::io(&path, e))?;
            f.set_len(end as u64).map_err(|e| LogError::io(&path, e))?;
            f.sync_all().map_err(|e| LogError::io(&path, e))?;
        }
        return Ok(Recovered {
            count,
            len: end as u64,
            losses,
            marks,
        });
    }
    // Quarantine each damaged run, then rewrite the segment with holes.
    let mut repaired = Vec::with_capacity(end);
    let mut copied = 0;
    for d in &damages {
        let quarantine = PathBuf::from(format!("{}.corrupt-{}", path.display(), d.from));
        write_synced(&quarantine, &buf[d.from..d.to])?;
        repaired.extend_from_slice(&buf[copied..d.from]);
        repaired.extend_from_slice(&hole(d.records));
        copied = d.to;
        let loss = Loss {
            segment: path.clone(),
            quarantine: Some(quarantine),
            first_offset: base + d.before,
            records: d.records,
            exact: d.exact,
            bytes: (d.to - d.from) as u64,
        };
        tracing::error!(
            segment = %path.display(),
            first_offset = loss.first_offset,
            records = loss.records,
            exact = loss.exact,
            bytes = loss.bytes,
            quarantine = %loss.quarantine.as_ref().unwrap().display(),
            "log corruption: the disk damaged acknowledged records; the damaged bytes are moved \
             aside, every intact record before and after them is kept, and delivery goes on"
        );
        losses.push(loss);
    }
    repaired.extend_from_slice(&buf[copied..end.max(copied)]);
    let tmp = PathBuf::from(format!("{}.repair", path.display()));
    write_synced(&tmp, &repaired)?;
    fs::rename(&tmp, &path).map_err(|e| LogError::io(&path, e))?;
    sync_dir(dir).map_err(|e| LogError::io(dir, e))?;
    losses.sort_by_key(|l| l.first_offset);
    Ok(Recovered {
        count,
        len: repaired.len() as u64,
        losses,
        marks,
    })
}

/// How many frames the length fields from `from` chain through to land
/// exactly on `to`; None if they do not (the damage hit a length field).
fn chained(buf: &[u8], from: usize, to: usize) -> Option<u64> {
    let (mut at, mut n) = (from, 0u64);
    while at < to {
        let len = u32::from_le_bytes(buf.get(at..at + 4)?.try_into().unwrap());
        if len & (HOLE | MARK) != 0 || len as usize > MAX_FRAME_BYTES {
            return None;
        }
        at += FRAME_HEADER + len as usize;
        n += 1;
    }
    (at == to && n > 0).then_some(n)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), LogError> {
    let mut f = File::create(path).map_err(|e| LogError::io(path, e))?;
    f.write_all(bytes).map_err(|e| LogError::io(path, e))?;
    f.sync_all().map_err(|e| LogError::io(path, e))
}
