//! At-most-once holds a transaction's events until its Commit has been confirmed. [`Held`]
//! keeps them in memory up to a byte limit and spills the rest, in order, to an anonymous
//! temporary file (gone with the process), so memory stays bounded for any transaction size.
//! [`Release`] reads them back in the same order once the Commit is confirmed.
//!
//! The file format is private to this process: a record after another, each field
//! length-prefixed (big-endian).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};

use bytes::Bytes;

use crate::lsn::Lsn;
use crate::outbox::OutboxRecord;

/// A held event: the record and its transaction's commit time (PostgreSQL microseconds).
pub type HeldEvent = (OutboxRecord, i64);

/// Events held for one transaction.
#[derive(Debug)]
pub struct Held {
    limit: usize,
    mem: VecDeque<HeldEvent>,
    mem_bytes: usize,
    /// Once anything is spilled, everything after it is too (order).
    file: Option<BufWriter<File>>,
    spilled: u64,
}

impl Held {
    /// Keeps up to `limit` bytes of records in memory.
    pub fn new(limit: usize) -> Self {
        Held {
            limit,
            mem: VecDeque::new(),
            mem_bytes: 0,
            file: None,
            spilled: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.mem.is_empty() && self.spilled == 0
    }

    /// Events held.
    pub fn len(&self) -> u64 {
        self.mem.len() as u64 + self.spilled
    }

    /// Events held on disk so far.
    pub fn spilled(&self) -> u64 {
        self.spilled
    }

    /// Holds one more event.
    pub fn push(&mut self, rec: OutboxRecord, commit_time: i64) -> io::Result<()> {
        let size = rec.size();
        if self.file.is_none() && self.mem_bytes + size <= self.limit {
            self.mem_bytes += size;
            self.mem.push_back((rec, commit_time));
            return Ok(());
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(BufWriter::new(tempfile::tempfile()?)),
        };
        encode(file, &rec, commit_time)?;
        self.spilled += 1;
        Ok(())
    }

    /// Everything held, to be read back in order; `self` is empty afterwards.
    pub fn take(&mut self) -> io::Result<Release> {
        let mem = std::mem::take(&mut self.mem);
        self.mem_bytes = 0;
        let remaining = std::mem::take(&mut self.spilled);
        let file = match self.file.take() {
            None => None,
            Some(w) => {
                let mut f = w.into_inner().map_err(io::IntoInnerError::into_error)?;
                f.rewind()?;
                Some(BufReader::new(f))
            }
        };
        Ok(Release {
            mem,
            file,
            remaining,
        })
    }
}

/// Held events being handed on, in the order they were held.
#[derive(Debug)]
pub struct Release {
    mem: VecDeque<HeldEvent>,
    file: Option<BufReader<File>>,
    remaining: u64,
}

impl Release {
    /// Events not handed on yet.
    pub fn len(&self) -> u64 {
        self.mem.len() as u64 + self.remaining
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next event, `None` when all were handed on.
    pub fn next_event(&mut self) -> io::Result<Option<HeldEvent>> {
        if let Some(e) = self.mem.pop_front() {
            return Ok(Some(e));
        }
        match (&mut self.file, self.remaining) {
            (Some(f), n) if n > 0 => {
                self.remaining -= 1;
                decode(f).map(Some)
            }
            _ => Ok(None),
        }
    }
}

fn put(w: &mut impl Write, b: &[u8]) -> io::Result<()> {
    let len = u32::try_from(b.len()).map_err(|_| io::Error::other("field over 4 GiB"))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(b)
}

fn put_opt(w: &mut impl Write, b: Option<&[u8]>) -> io::Result<()> {
    match b {
        None => w.write_all(&[0]),
        Some(b) => {
            w.write_all(&[1])?;
            put(w, b)
        }
    }
}

fn encode(w: &mut impl Write, r: &OutboxRecord, commit_time: i64) -> io::Result<()> {
    put(w, r.topic.as_bytes())?;
    put_opt(w, r.key.as_deref())?;
    match r.partition {
        None => w.write_all(&[0])?,
        Some(p) => {
            w.write_all(&[1])?;
            w.write_all(&p.to_be_bytes())?;
        }
    }
    w.write_all(&(r.headers.len() as u32).to_be_bytes())?;
    for (k, v) in &r.headers {
        put(w, k.as_bytes())?;
        put(w, v)?;
    }
    put_opt(w, r.payload.as_deref())?;
    put(w, &r.event_id)?;
    w.write_all(&r.lsn.0.to_be_bytes())?;
    w.write_all(&commit_time.to_be_bytes())
}

fn array<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut b = [0; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn get(r: &mut impl Read) -> io::Result<Bytes> {
    let len = u32::from_be_bytes(array(r)?) as usize;
    let mut b = vec![0; len];
    r.read_exact(&mut b)?;
    Ok(Bytes::from(b))
}

fn get_opt(r: &mut impl Read) -> io::Result<Option<Bytes>> {
    match array::<1>(r)?[0] {
        0 => Ok(None),
        _ => get(r).map(Some),
    }
}

fn text(b: Bytes) -> io::Result<String> {
    String::from_utf8(b.to_vec()).map_err(io::Error::other)
}

fn decode(r: &mut impl Read) -> io::Result<HeldEvent> {
    let topic = text(get(r)?)?;
    let key = get_opt(r)?;
    let partition = match array::<1>(r)?[0] {
        0 => None,
        _ => Some(i32::from_be_bytes(array(r)?)),
    };
    let n = u32::from_be_bytes(array(r)?);
    let mut headers = Vec::with_capacity(n.min(64) as usize);
    for _ in 0..n {
        headers.push((text(get(r)?)?, get(r)?));
    }
    let payload = get_opt(r)?;
    let event_id = get(r)?;
    let lsn = Lsn(u64::from_be_bytes(array(r)?));
    let commit_time = i64::from_be_bytes(array(r)?);
    Ok((
        OutboxRecord {
            topic,
            key,
            partition,
            headers,
            payload,
            event_id,
            lsn,
        },
        commit_time,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64, partition: Option<i32>, payload: Option<&'static [u8]>) -> OutboxRecord {
        OutboxRecord {
            topic: format!("outbox.event.t{i}"),
            key: (i % 2 == 0).then(|| Bytes::from(format!("k{i}"))),
            partition,
            headers: vec![
                ("id".into(), Bytes::from(format!("e{i}"))),
                ("type".into(), Bytes::new()),
            ],
            payload: payload.map(Bytes::from_static),
            event_id: Bytes::from(format!("e{i}")),
            lsn: Lsn(i),
        }
    }

    #[test]
    fn holds_in_memory_up_to_the_limit_then_spills_in_order() {
        let mut h = Held::new(3 * rec(0, None, Some(b"payload")).size());
        let all: Vec<HeldEvent> = (0..10u64)
            .map(|i| {
                let payload: Option<&'static [u8]> = match i % 3 {
                    0 => Some(b"payload"),
                    1 => Some(b""),
                    _ => None,
                };
                (rec(i, (i == 4).then_some(2), payload), -(i as i64))
            })
            .collect();
        for (r, t) in all.clone() {
            h.push(r, t).unwrap();
        }
        assert!(h.spilled() >= 7, "{} spilled", h.spilled());
        let mut out = h.take().unwrap();
        assert!(h.is_empty());
        assert_eq!(out.len(), 10);
        let mut back = Vec::new();
        while let Some(e) = out.next_event().unwrap() {
            back.push(e);
        }
        assert_eq!(back, all, "every field, in order");
        assert!(out.is_empty());
    }

    #[test]
    fn a_small_transaction_never_touches_the_disk() {
        let mut h = Held::new(1 << 20);
        h.push(rec(1, None, Some(b"x")), 0).unwrap();
        assert_eq!(h.spilled(), 0);
        assert!(h.take().unwrap().file.is_none());
    }
}
