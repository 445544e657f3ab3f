//! The report: from the records of `run --out`, two charts (requests/s
//! and p99 latency, SVG) and a table of medians and ratios (Markdown),
//! which the book's benchmark page includes.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context;
use plotters::prelude::*;

use crate::{Record, Server};

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Files of results, one JSON record per line.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,

    /// Where the charts (SVG) and the table (Markdown) go.
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
}

/// The servers in the order of the charts' legends and the table.
const SERIES: [(Server, bool, &str, RGBColor); 5] = [
    (Server::Kvs, true, "kvs, TLS", RGBColor(0xd9, 0x5f, 0x02)),
    (
        Server::Redis,
        true,
        "Redis, TLS",
        RGBColor(0x1b, 0x9e, 0x77),
    ),
    (
        Server::Echo,
        true,
        "echo floor, TLS",
        RGBColor(0x75, 0x70, 0xb3),
    ),
    (
        Server::Redis,
        false,
        "Redis, plain",
        RGBColor(0x66, 0xc2, 0xa5),
    ),
    (
        Server::Echo,
        false,
        "echo floor, plain",
        RGBColor(0xb3, 0xb0, 0xd9),
    ),
];

/// A cell of the matrix: connections, requests in flight, value size.
type Cell = (usize, usize, usize);

/// The rounds of one server in one cell.
#[derive(Default)]
struct Runs {
    per_second: Vec<f64>,
    p99_ms: Vec<f64>,
    /// The server's CPU time per request, in µs.
    cpu_us: Vec<f64>,
}

/// The middle value (the mean of the two middle ones for an even count);
/// `None` for no values.
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n.is_multiple_of(2) => Some((sorted[mid - 1] + sorted[mid]) / 2.0),
        _ => Some(sorted[mid]),
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

pub fn write(args: &ReportArgs) -> anyhow::Result<()> {
    let mut cells: BTreeMap<Cell, BTreeMap<usize, Runs>> = BTreeMap::new();
    for path in &args.inputs {
        let text =
            fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
        {
            let record: Record = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a record", path.display(), n + 1))?;
            let Some(series) = SERIES
                .iter()
                .position(|&(server, tls, ..)| server == record.server && tls == record.tls)
            else {
                continue;
            };
            let cell = (record.connections, record.depth, record.value_size);
            let runs = cells.entry(cell).or_default().entry(series).or_default();
            // A run without requests has no rate or latency to chart (and
            // zero has no place on a log scale).
            if record.requests > 0 {
                runs.per_second.push(record.per_second);
                runs.p99_ms.push(record.p99_us.max(1) as f64 / 1000.0);
                runs.cpu_us.extend(record.server_cpu_us);
            }
        }
    }
    anyhow::ensure!(!cells.is_empty(), "no records to report");
    fs::create_dir_all(&args.out_dir)?;
    chart(
        &args.out_dir.join("throughput.svg"),
        &cells,
        "requests per second",
        |runs| &runs.per_second,
    )?;
    chart(
        &args.out_dir.join("latency.svg"),
        &cells,
        "p99 latency (ms)",
        |runs| &runs.p99_ms,
    )?;
    fs::write(args.out_dir.join("results.md"), table(&cells))?;
    Ok(())
}

fn cell_label(&(connections, depth, value_size): &Cell) -> String {
    let size = match value_size {
        n if n >= 1024 && n % 1024 == 0 => format!("{} KiB", n / 1024),
        n => format!("{n} B"),
    };
    format!("{connections}×{depth}, {size}")
}

/// A bar chart on a log scale: a group of bars per cell, a bar per server
/// at the median of its rounds, and a line from the least to the most.
fn chart(
    path: &Path,
    cells: &BTreeMap<Cell, BTreeMap<usize, Runs>>,
    what: &str,
    values: impl Fn(&Runs) -> &Vec<f64>,
) -> anyhow::Result<()> {
    let all: Vec<f64> = cells
        .values()
        .flat_map(|c| c.values())
        .flat_map(|r| values(r).clone())
        .collect();
    anyhow::ensure!(!all.is_empty(), "no runs with requests to chart");
    let (lo, hi) = min_max(&all);
    // Room above the bars for the legend: a log scale's top decade.
    let (lo, hi) = (lo / 2.0, hi * 16.0);
    let labels: Vec<String> = cells.keys().map(cell_label).collect();

    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|err| anyhow::anyhow!("{err}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{what}; connections × requests in flight, value size"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(72)
        .build_cartesian_2d(0f64..cells.len() as f64, (lo..hi).log_scale())
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * cells.len() + 1)
        // Labels every half: a cell's name at its centre, none between.
        .x_label_formatter(&|x| match (x.fract() - 0.5).abs() < 1e-9 {
            true => labels.get(*x as usize).cloned().unwrap_or_default(),
            false => String::new(),
        })
        .y_label_formatter(&|y| short(*y))
        .y_desc(what)
        .draw()
        .map_err(|err| anyhow::anyhow!("{err}"))?;

    let width = 0.8 / SERIES.len() as f64;
    for (series, &(_, _, name, color)) in SERIES.iter().enumerate() {
        let mut bars = Vec::new();
        for (i, runs) in cells.values().enumerate() {
            let Some(runs) = runs.get(&series) else {
                continue;
            };
            let Some(middle) = median(values(runs)) else {
                continue;
            };
            let x = i as f64 + 0.1 + series as f64 * width;
            let (least, most) = min_max(values(runs));
            bars.push((x, middle, least, most));
        }
        chart
            .draw_series(bars.iter().map(|&(x, median, ..)| {
                Rectangle::new([(x, lo), (x + width * 0.9, median)], color.filled())
            }))
            .map_err(|err| anyhow::anyhow!("{err}"))?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        chart
            .draw_series(bars.iter().map(|&(x, _, least, most)| {
                let mid = x + width * 0.45;
                PathElement::new(vec![(mid, least), (mid, most)], BLACK.stroke_width(2))
            }))
            .map_err(|err| anyhow::anyhow!("{err}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    root.present().map_err(|err| anyhow::anyhow!("{err}"))?;
    Ok(())
}

/// 1500 as "1.5k", 2000000 as "2M", 0.25 as "0.25": at most three
/// decimals, without trailing zeros.
fn short(value: f64) -> String {
    let (value, unit) = match value {
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e3 => (v / 1e3, "k"),
        v => (v, ""),
    };
    let digits = format!("{value:.3}");
    format!(
        "{}{unit}",
        digits.trim_end_matches('0').trim_end_matches('.')
    )
}

/// The medians, and how kvs compares with Redis and with the floor: over
/// TLS, then (without kvs, which speaks only TLS) over plain TCP.
fn table(cells: &BTreeMap<Cell, BTreeMap<usize, Runs>>) -> String {
    let mut tls = String::from(
        "| connections × in flight, value | kvs | Redis | kvs ÷ Redis | echo floor | \
         kvs ÷ floor | p99 kvs | p99 Redis | CPU/request kvs | CPU/request Redis |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    let mut plain = String::from(
        "| connections × in flight, value | Redis | echo floor | Redis ÷ floor | p99 Redis |\n\
         |---|--:|--:|--:|--:|\n",
    );
    for (cell, runs) in cells {
        let of = |series: usize, values: fn(&Runs) -> &Vec<f64>| median(values(runs.get(&series)?));
        let rate = |series| of(series, |r| &r.per_second);
        let p99 = |series| of(series, |r| &r.p99_ms);
        let cpu = |series| of(series, |r| &r.cpu_us);
        let number = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.0}"));
        let ms = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.2} ms"));
        let us = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1} µs"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}×", a / b),
            _ => "–".into(),
        };
        let label = cell_label(cell);
        let _ = writeln!(
            tls,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            number(rate(0)),
            number(rate(1)),
            ratio(rate(0), rate(1)),
            number(rate(2)),
            ratio(rate(0), rate(2)),
            ms(p99(0)),
            ms(p99(1)),
            us(cpu(0)),
            us(cpu(1)),
        );
        let _ = writeln!(
            plain,
            "| {label} | {} | {} | {} | {} |",
            number(rate(3)),
            number(rate(4)),
            ratio(rate(3), rate(4)),
            ms(p99(3)),
        );
    }
    format!(
        "Over TLS:\n\n{tls}\nOver plain TCP:\n\n{plain}\n\
         The echo floor sends answers of the sizes kvs sends: an `hset` \
         answer holds the value it replaced, which Redis does not send.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn labels_and_numbers_read_short() {
        assert_eq!(cell_label(&(50, 16, 4096)), "50×16, 4 KiB");
        assert_eq!(cell_label(&(50, 1, 16)), "50×1, 16 B");
        assert_eq!(short(1500.0), "1.5k");
        assert_eq!(short(2e6), "2M");
        assert_eq!(short(0.1 + 0.2), "0.3");
    }

    #[test]
    fn the_table_gives_ratios_and_dashes_for_what_was_not_run() {
        let mut cells = BTreeMap::new();
        let runs = |rates: &[f64]| Runs {
            per_second: rates.to_vec(),
            p99_ms: vec![1.0; rates.len()],
            cpu_us: vec![],
        };
        let servers = BTreeMap::from([(0, runs(&[90.0, 100.0, 110.0])), (1, runs(&[200.0]))]);
        cells.insert((50, 1, 16), servers);
        let table = table(&cells);
        let row = table.lines().nth(4).unwrap();
        assert_eq!(
            row,
            "| 50×1, 16 B | 100 | 200 | 0.50× | – | – | 1.00 ms | 1.00 ms | – | – |"
        );
    }
}
