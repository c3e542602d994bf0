//! The results as a markdown table and a small SVG.

use super::*;

pub fn machine() -> String {
    let nats = TempNats::version()
        .map(|v| v.replace("nats-server: ", "nats-server "))
        .unwrap_or_else(|| "nats-server".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{cpus} CPUs ({model}), {mem:.0} GiB RAM, PostgreSQL 15 (fsync=off), librdkafka mock broker (1 node), {nats} with JetStream (file storage), RabbitMQ 3.10 (a durable {} queue, persistent messages)", destinations::rabbit_queue_type())
}

/// A histogram bound for the table: `≤ 5`, or `n/a`.
fn bound(v: Option<f64>) -> String {
    match v {
        Some(b) if b.is_finite() => format!("≤ {b}"),
        Some(_) => "> 60000".into(),
        None => "n/a".into(),
    }
}

pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Machine: {}\n", r.machine);
    let _ = writeln!(s, "**Backlog drain** (median of the runs; pgoutbox = until the slot is confirmed past every event, i.e. all acked by the destination). Two ceilings from the same run: `pg_recvlogical` draining a copy of the slot, and the destination's own client publishing the same number of pre-built messages with the same acknowledgement setting, measured right before each pgoutbox run; the ratio is against the lower of the two.\n");
    let _ = writeln!(s, "| backlog | destination | events | pg_recvlogical | destination's client | pgoutbox | ratio to the lower ceiling | pgoutbox CPU s / M events | pgoutbox peak RSS |");
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for d in &r.drain {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} s ({:.0} ev/s) | {:.2} s ({:.0} ev/s) | {:.2} s ({:.0} ev/s) | {:.2}× | {:.2} | {:.0} MiB |",
            d.variant, d.destination, d.events, d.ceiling_secs, d.ceiling_events_per_sec,
            d.destination_ceiling_secs, d.destination_ceiling_events_per_sec, d.pgoutbox_secs,
            d.pgoutbox_events_per_sec, d.ratio, d.pgoutbox_cpu_secs_per_million, d.pgoutbox_peak_rss_mib
        );
    }
    let _ = writeln!(s, "\n**Live latency** (ms): commit → consumer, exact per event; commit → ack, from pgoutbox's histogram (≤ bucket bound; polling: from the poll that read the row)\n");
    let _ = writeln!(s, "| rate (ev/s) | source | achieved ev/s | p50 | p95 | p99 | max | ack p50 | ack p95 | ack p99 | received | pgoutbox CPU s / M | pgoutbox peak RSS | PostgreSQL CPU s / M |");
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for l in &r.live {
        // The node alone: no pgoutbox and no PostgreSQL to cost.
        let cost = if l.mode == ALONE {
            "n/a | n/a | n/a".to_owned()
        } else {
            format!(
                "{:.1} | {:.0} MiB | {:.1}",
                l.pgoutbox_cpu_secs_per_million,
                l.pgoutbox_peak_rss_mib,
                l.postgres_cpu_secs_per_million
            )
        };
        let (ack50, ack95, ack99) = (
            bound(l.ack_p50_ms),
            bound(l.ack_p95_ms),
            bound(l.ack_p99_ms),
        );
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {ack50} | {ack95} | {ack99} | {}/{} | {cost} |",
            l.target_rate, l.mode, l.achieved_rate, l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms, l.received, l.events,
        );
    }
    let _ = writeln!(s, "\n**p99 ratios** (same run)\n");
    let _ = writeln!(s, "| rate | replication p99 (Kafka) | replication p99 (NATS) | replication p99 (RabbitMQ) | RabbitMQ client alone p99 | poll 100ms p99 | poll 5s p99 | poll 5s / replication | poll 100ms / replication |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rates: Vec<&str> = r.live.iter().map(|l| l.target_rate.as_str()).collect();
    rates.dedup();
    for rate in rates {
        let p = |m: &str| {
            r.live
                .iter()
                .find(|l| l.target_rate == rate && l.mode == m)
                .map_or(f64::NAN, |l| l.p99_ms)
        };
        let (rep, nats, rabbit, alone, p100, p5) = (
            p("replication"),
            p("replication → NATS"),
            p("replication → RabbitMQ"),
            p(ALONE),
            p("poll 100ms"),
            p("poll 5s"),
        );
        let ms = |v: f64| {
            if v.is_nan() {
                "n/a".to_owned()
            } else {
                format!("{v:.1} ms")
            }
        };
        let times = |v: f64, digits: usize| {
            if v.is_nan() {
                "n/a".to_owned()
            } else {
                format!("{v:.digits$}×")
            }
        };
        let _ = writeln!(
            s,
            "| {rate} | {} | {} | {} | {} | {} | {} | {} | {} |",
            ms(rep),
            ms(nats),
            ms(rabbit),
            ms(alone),
            ms(p100),
            ms(p5),
            times(p5 / rep, 0),
            times(p100 / rep, 1)
        );
    }
    s
}

/// p50 and p99 per rate and source, log scale, as a small standalone SVG.
pub fn svg(live: &[Live]) -> String {
    let (w, h, left, bottom) = (760.0, 360.0, 70.0, 40.0);
    let y = |ms: f64| {
        let (lo, hi) = (0.0_f64, 4.0_f64); // 1 ms .. 10 s
        let v = ms.max(1.0).log10().clamp(lo, hi);
        (h - bottom) - (v - lo) / (hi - lo) * (h - bottom - 20.0)
    };
    let colors = [
        ("replication", "#2b8a3e"),
        ("poll 100ms", "#e67700"),
        ("poll 5s", "#c92a2a"),
    ];
    let mut rates: Vec<&str> = live.iter().map(|l| l.target_rate.as_str()).collect();
    rates.dedup();
    let group = (w - left - 20.0) / rates.len().max(1) as f64;
    let bar = group / 8.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"14\">commit → consumer latency, p50 (light) and p99 (dark), log scale</text>\n"
    );
    for (i, label) in ["1 ms", "10 ms", "100 ms", "1 s", "10 s"]
        .iter()
        .enumerate()
    {
        let yy = y(10f64.powi(i as i32));
        let _ = writeln!(s, "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy}\" y2=\"{yy}\" stroke=\"#ddd\"/><text x=\"8\" y=\"{}\">{label}</text>", w - 10.0, yy + 4.0);
    }
    for (gi, rate) in rates.iter().enumerate() {
        let x0 = left + gi as f64 * group + bar;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\">{rate} ev/s</text>",
            x0,
            h - 12.0
        );
        for (ci, (mode, color)) in colors.iter().enumerate() {
            let Some(l) = live
                .iter()
                .find(|l| l.target_rate == *rate && l.mode == *mode)
            else {
                continue;
            };
            let x = x0 + ci as f64 * 2.2 * bar;
            for (k, (v, op)) in [(l.p50_ms, 0.45), (l.p99_ms, 1.0)].iter().enumerate() {
                let top = y(*v);
                let _ = writeln!(
                    s,
                    "<rect x=\"{}\" y=\"{top}\" width=\"{bar}\" height=\"{}\" fill=\"{color}\" fill-opacity=\"{op}\"/>",
                    x + k as f64 * bar,
                    (h - bottom - top).max(0.0)
                );
            }
        }
    }
    for (ci, (mode, color)) in colors.iter().enumerate() {
        let _ = writeln!(s, "<rect x=\"{}\" y=\"24\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"33\">{mode}</text>", left + 200.0 + ci as f64 * 130.0, left + 214.0 + ci as f64 * 130.0);
    }
    s.push_str("</svg>\n");
    s
}
