//! The results of a `concord-bench` run: one [`Row`] per (workload, server), printed as one
//! table with the ratio of the first two servers per workload, and written as JSON
//! (`--json FILE`). It never measures anything itself.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

use super::load::Sample;

/// The figures of a load run, latencies in milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    /// Requests (or, for watch, events) completed.
    pub ops: usize,
    /// Wall time of the run, seconds.
    pub elapsed_secs: f64,
    /// `ops / elapsed_secs`.
    pub qps: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Stats {
    /// `{ops, elapsed_secs, qps, latency_ms: {p50, p90, p99, p99.9, max}}`.
    pub fn json(&self) -> Value {
        json!({
            "ops": self.ops,
            "elapsed_secs": self.elapsed_secs,
            "qps": self.qps,
            "latency_ms": {
                "p50": self.p50, "p90": self.p90, "p99": self.p99, "p99.9": self.p999,
                "max": self.max,
            },
        })
    }
}

impl From<&Sample> for Stats {
    fn from(s: &Sample) -> Stats {
        Stats {
            ops: s.ops,
            elapsed_secs: s.elapsed.as_secs_f64(),
            qps: s.qps(),
            p50: s.pct(0.50),
            p90: s.pct(0.90),
            p99: s.pct(0.99),
            p999: s.pct(0.999),
            max: s.max(),
        }
    }
}

/// What a row shows.
#[derive(Clone, Debug)]
pub enum Figure {
    /// Throughput and latency percentiles.
    Load(Stats),
    /// One amount where less is better (memory, disk, time), in `unit` for the table; the JSON
    /// holds the exact fields.
    Amount {
        value: f64,
        unit: &'static str,
        json: Value,
    },
    /// Free text (no ratio), with its JSON fields.
    Text { text: String, json: Value },
}

/// One (workload, server) result.
#[derive(Clone, Debug)]
pub struct Row {
    /// Stable id, the key in the JSON (`put`, `range-s`, `mem-rss`, ...).
    pub id: String,
    /// The table's heading for the workload.
    pub title: String,
    /// Server name (`concord`, `etcd35`, `etcd34`, `endpoint`).
    pub server: String,
    pub figure: Figure,
    /// More JSON fields (e.g. the mixed load's reads and writes apart).
    pub extra: Map<String, Value>,
}

impl Row {
    /// A load row.
    pub fn load(id: &str, title: String, server: &str, sample: &Sample) -> Row {
        Row {
            id: id.to_owned(),
            title,
            server: server.to_owned(),
            figure: Figure::Load(Stats::from(sample)),
            extra: Map::new(),
        }
    }

    /// A text row.
    pub fn text(id: &str, title: String, server: &str, text: String, json: Value) -> Row {
        Row {
            id: id.to_owned(),
            title,
            server: server.to_owned(),
            figure: Figure::Text { text, json },
            extra: Map::new(),
        }
    }

    /// An amount row.
    pub fn amount(
        id: &str,
        title: String,
        server: &str,
        value: f64,
        unit: &'static str,
        json: Value,
    ) -> Row {
        Row {
            id: id.to_owned(),
            title,
            server: server.to_owned(),
            figure: Figure::Amount { value, unit, json },
            extra: Map::new(),
        }
    }

    fn json(&self) -> Value {
        let mut fields = match &self.figure {
            Figure::Load(s) => s.json(),
            Figure::Amount { json, .. } | Figure::Text { json, .. } => json.clone(),
        };
        if let Value::Object(m) = &mut fields {
            m.insert("title".to_owned(), Value::String(self.title.clone()));
            m.extend(self.extra.clone());
        }
        fields
    }
}

/// The whole report: settings and rows.
pub struct Report {
    /// The settings line printed above the table.
    pub summary: String,
    /// The settings, as JSON.
    pub settings: Value,
    /// Rows in the order they were measured.
    pub rows: Vec<Row>,
}

impl Report {
    /// The table: per workload one heading, one line per server, and the ratio of the first
    /// two servers (throughput and p99 for loads; the amount for amounts).
    pub fn table(&self) -> String {
        let mut out = format!("{}\n\n", self.summary);
        out.push_str(&format!(
            "{:<16} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7}\n",
            "", "ops/s", "p50", "p90", "p99", "p99.9", "max", "ops", "secs"
        ));
        out.push_str(&format!(
            "{:<16} {:>10} {:>44}\n",
            "", "", "(latencies in ms)"
        ));
        for (title, rows) in self.by_workload() {
            out.push_str(&format!("\n{title}\n"));
            for r in &rows {
                let line = match &r.figure {
                    Figure::Load(s) => format!(
                        "{:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9} {:>7.1}",
                        s.qps, s.p50, s.p90, s.p99, s.p999, s.max, s.ops, s.elapsed_secs
                    ),
                    Figure::Amount { value, unit, .. } => format!("{value:>10.1} {unit}"),
                    Figure::Text { text, .. } => text.clone(),
                };
                out.push_str(&format!("  {:<14} {line}\n", r.server));
            }
            if let [a, b, ..] = rows.as_slice() {
                let name = format!("{}/{}", a.server, b.server);
                let ratio = |x: f64, y: f64| {
                    if y > 0.0 {
                        format!("{:.2}x", x / y)
                    } else {
                        "-".to_owned()
                    }
                };
                match (&a.figure, &b.figure) {
                    (Figure::Load(x), Figure::Load(y)) => out.push_str(&format!(
                        "  {name:<14} {:>10} {:>8} {:>8} {:>8}\n",
                        ratio(x.qps, y.qps),
                        "",
                        "",
                        ratio(x.p99, y.p99)
                    )),
                    (Figure::Amount { value: x, .. }, Figure::Amount { value: y, .. }) => {
                        out.push_str(&format!("  {name:<14} {:>10}\n", ratio(*x, *y)))
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// Rows grouped by workload title, in first-measured order.
    fn by_workload(&self) -> Vec<(String, Vec<&Row>)> {
        let mut groups: Vec<(String, Vec<&Row>)> = Vec::new();
        for r in &self.rows {
            match groups.iter_mut().find(|(t, _)| *t == r.title) {
                Some((_, g)) => g.push(r),
                None => groups.push((r.title.clone(), vec![r])),
            }
        }
        groups
    }

    /// `{"settings": {...}, "results": {server: {row id: {title, figures...}}}}`.
    pub fn json(&self) -> Value {
        let mut results = Map::new();
        for r in &self.rows {
            let server = results
                .entry(r.server.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = server {
                m.insert(r.id.clone(), r.json());
            }
        }
        json!({ "settings": self.settings, "results": results })
    }

    /// Writes [`Report::json`] to `path`.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.json())?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn report() -> Report {
        let fast = Sample::new(4, Duration::from_secs(1), vec![1000, 2000, 3000, 4000]);
        let slow = Sample::new(2, Duration::from_secs(1), vec![4000, 8000]);
        Report {
            summary: "settings".to_owned(),
            settings: json!({"clients": 1}),
            rows: vec![
                Row::load("put", "put (1 client)".to_owned(), "concord", &fast),
                Row::load("put", "put (1 client)".to_owned(), "etcd35", &slow),
                Row::amount(
                    "mem-rss",
                    "memory".to_owned(),
                    "concord",
                    10.0,
                    "MB",
                    json!({"rss_bytes": 10}),
                ),
                Row::amount(
                    "mem-rss",
                    "memory".to_owned(),
                    "etcd35",
                    40.0,
                    "MB",
                    json!({"rss_bytes": 40}),
                ),
            ],
        }
    }

    #[test]
    fn table_has_every_server_and_the_ratios() {
        let t = report().table();
        let words = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let lines: Vec<Vec<String>> = t.lines().map(words).collect();
        let want: Vec<Vec<String>> = [
            "put (1 client)",
            "concord 4 2.00 4.00 4.00 4.00 4.00 4 1.0",
            "etcd35 2 4.00 8.00 8.00 8.00 8.00 2 1.0",
            "concord/etcd35 2.00x 0.50x",
            "",
            "memory",
            "concord 10.0 MB",
            "etcd35 40.0 MB",
            "concord/etcd35 0.25x",
        ]
        .into_iter()
        .map(words)
        .collect();
        assert!(lines.windows(want.len()).any(|w| w == want), "{t}");
        // The ratios stand under the ops/s and p99 columns.
        let col = |l: &str, w: &str| l.find(w).map(|i| i + w.len());
        let head = t.lines().find(|l| l.contains("ops/s")).unwrap_or_default();
        let ratio = t.lines().find(|l| l.contains("2.00x")).unwrap_or_default();
        assert_eq!(col(head, "ops/s"), col(ratio, "2.00x"), "{t}");
        assert_eq!(
            col(head, " p99 "),
            col(ratio, "0.50x").map(|c| c + 1),
            "{t}"
        );
    }

    #[test]
    fn json_is_per_server_per_row() {
        let j = report().json();
        assert_eq!(j["results"]["concord"]["put"]["qps"], 4.0);
        assert_eq!(j["results"]["etcd35"]["put"]["latency_ms"]["p99.9"], 8.0);
        assert_eq!(j["results"]["etcd35"]["put"]["latency_ms"]["max"], 8.0);
        assert_eq!(j["results"]["etcd35"]["mem-rss"]["rss_bytes"], 40);
        assert_eq!(j["results"]["etcd35"]["mem-rss"]["title"], "memory");
        assert_eq!(j["settings"]["clients"], 1);
    }
}
