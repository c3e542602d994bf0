//! Micro-benchmarks: the pgoutput decoder over real captured server bytes, and the outbox
//! mapper over a typical insert. Throughput in bytes of input, so criterion reports MB/s.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use pgoutbox::lsn::Lsn;
use pgoutbox::outbox::{OutboxConfig, OutboxMapper};
use pgoutbox::pgoutput::{self, Message};

/// The captured messages (one hex-encoded pgoutput message per line).
fn captured() -> Vec<Bytes> {
    include_str!("../src/pgoutput/testdata/capture.hex")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let l = l.trim();
            let bytes: Vec<u8> = (0..l.len())
                .step_by(2)
                .filter_map(|i| u8::from_str_radix(&l[i..i + 2], 16).ok())
                .collect();
            Bytes::from(bytes)
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let msgs = captured();
    let total: usize = msgs.iter().map(Bytes::len).sum();
    let mut g = c.benchmark_group("pgoutput");
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("decode captured stream", |b| {
        b.iter(|| {
            for m in &msgs {
                let _ = std::hint::black_box(pgoutput::decode(m.clone()));
            }
        })
    });
    g.finish();
}

fn map(c: &mut Criterion) {
    let msgs = captured();
    let mut mapper = OutboxMapper::new(vec![OutboxConfig::default()]);
    let mut inserts = Vec::new();
    for m in &msgs {
        match pgoutput::decode(m.clone()) {
            Ok(Message::Relation(r)) => {
                let _ = mapper.on_relation(&r);
            }
            Ok(Message::Insert(i)) if mapper.is_outbox_id(i.relation_id) => {
                inserts.push((i, m.len()))
            }
            _ => {}
        }
    }
    assert!(!inserts.is_empty(), "the capture holds outbox inserts");
    let total: usize = inserts.iter().map(|(_, n)| n).sum();
    let mut g = c.benchmark_group("outbox");
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("map captured inserts", |b| {
        b.iter(|| {
            for (i, _) in &inserts {
                let _ = std::hint::black_box(mapper.map_insert(i, Lsn(1)));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, decode, map);
criterion_main!(benches);
