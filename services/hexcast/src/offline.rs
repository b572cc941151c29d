//! Offline spatial tools with the service's own code paths: `hexcast cover` prints the
//! cells covering an area; `hexcast match` runs subscriptions and alerts (canonical proto
//! JSON lines) through the same stored form, index, routing and ownership rules as the
//! push service and prints one line per notification.

#![allow(clippy::print_stdout)]

use std::io::{BufRead as _, BufWriter, Write as _};
use std::path::PathBuf;

use anyhow::Context as _;
use h3o::Resolution;
use hexcast_core::cells::{GeoConfig, ShardMap, cover};
use hexcast_core::{Alert, Area, LatLng, Timestamp};
use hexcast_match::SubscriberIndex;
use hexcast_proto::v1 as pb;
use hexcast_spatial::Spatial;

/// `hexcast cover`.
#[derive(Debug, clap::Args)]
pub struct CoverArgs {
    /// H3 resolution of the printed cells.
    #[arg(long)]
    pub res: u8,
    /// A circle: `LAT,LON,RADIUS_M` (south and west are negative: `-33.86,151.2,400`).
    #[arg(long, conflicts_with = "geojson", required_unless_present = "geojson", allow_hyphen_values = true)]
    pub circle: Option<String>,
    /// A GeoJSON file of Polygon/MultiPolygon geometries (all of them are covered).
    #[arg(long)]
    pub geojson: Option<PathBuf>,
    /// Refuse covers larger than this many cells.
    #[arg(long, default_value_t = 10_000_000)]
    pub max_cells: usize,
}

fn parse_circle(s: &str) -> anyhow::Result<Area> {
    let parts: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--circle `{s}`: expected LAT,LON,RADIUS_M"))?;
    let [lat, lng, r] = parts[..] else { anyhow::bail!("--circle `{s}`: expected LAT,LON,RADIUS_M") };
    Area::circle(LatLng::new(lat, lng).context("--circle")?, r).context("--circle")
}

/// Prints every cell at `--res` that touches the area, one hex index per line.
pub fn cover_cmd(args: CoverArgs) -> anyhow::Result<()> {
    let res = Resolution::try_from(args.res).map_err(|_| anyhow::anyhow!("--res {} is not 0..=15", args.res))?;
    let area = match (&args.circle, &args.geojson) {
        (Some(c), _) => parse_circle(c)?,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let polygons: Vec<geo::Polygon<f64>> =
                crate::geojson::parse(&text)?.into_iter().flat_map(|s| s.polygons).collect();
            anyhow::ensure!(!polygons.is_empty(), "{}: no polygon", path.display());
            Area::MultiPolygon(geo::MultiPolygon(polygons))
        }
        (None, None) => anyhow::bail!("give --circle or --geojson"),
    };
    let cells = cover(&area, res, args.max_cells)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    for c in cells {
        writeln!(out, "{c}")?;
    }
    Ok(())
}

/// `hexcast match`.
#[derive(Debug, clap::Args)]
pub struct MatchArgs {
    /// Subscription JSON lines (canonical proto JSON; areas as points, circles, polygons or
    /// cells; `tenant` defaults to `default`).
    #[arg(long)]
    pub subscriptions: PathBuf,
    /// Alert JSON lines (canonical proto JSON).
    #[arg(long)]
    pub alerts: PathBuf,
    /// Matcher shards to simulate.
    #[arg(long, default_value_t = 6)]
    pub shards: u32,
}

fn json_lines<T: serde::de::DeserializeOwned>(path: &PathBuf) -> anyhow::Result<Vec<T>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).with_context(|| format!("{} line {}", path.display(), i + 1))?);
    }
    Ok(out)
}

/// Prints `{"alert_id":..,"subscriber_id":..}` per match.
pub fn match_cmd(args: MatchArgs) -> anyhow::Result<()> {
    let geo = GeoConfig::default();
    let shard_map = ShardMap { territory_res: geo.territory_resolution, shards: args.shards.max(1) };
    let index = SubscriberIndex::new(shard_map);
    for (i, mut s) in json_lines::<pb::Subscription>(&args.subscriptions)?.into_iter().enumerate() {
        let tenant = if s.tenant.is_empty() { "default".to_owned() } else { std::mem::take(&mut s.tenant) };
        let stored =
            hexcast_api::subscriptions::stored_subscription(&geo, &shard_map, 1_000_000, &tenant, s, Timestamp(0))
                .map_err(|e| anyhow::anyhow!("subscription line {}: {e}", i + 1))?;
        index.upsert(stored);
    }
    let spatial = Spatial::new(geo, shard_map.shards);
    let mut out = BufWriter::new(std::io::stdout().lock());
    for (i, a) in json_lines::<pb::Alert>(&args.alerts)?.into_iter().enumerate() {
        let alert = Alert::try_from(a).map_err(|e| anyhow::anyhow!("alert line {}: {e}", i + 1))?;
        for rec in spatial.index(alert).map_err(|e| anyhow::anyhow!("alert line {}: {e}", i + 1))? {
            for m in index.matches(&rec.alert, rec.shard, &rec.shards)? {
                let line = serde_json::json!({"alert_id": rec.alert.alert_id, "subscriber_id": &*m.subscriber_id});
                writeln!(out, "{line}")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        cover: CoverArgs,
    }

    #[test]
    fn cover_accepts_negative_coordinates() {
        for (arg, lat, lng) in
            [("-33.86,151.2,400", -33.86, 151.2), ("40.7,-74.0,400", 40.7, -74.0), ("-0.5,-0.5,10", -0.5, -0.5)]
        {
            let cli = Cli::try_parse_from(["cover", "--res", "9", "--circle", arg]).expect(arg);
            assert_eq!(cli.cover.circle.as_deref(), Some(arg));
            let Area::Circle { center, .. } = parse_circle(arg).expect(arg) else { panic!("circle") };
            assert_eq!((center.lat(), center.lng()), (lat, lng));
        }
        // The `=` form too, and a flag after a negative value is still a flag.
        let cli = Cli::try_parse_from(["cover", "--circle=-33.86,151.2,400", "--res", "9"]).expect("= form");
        assert_eq!(cli.cover.res, 9);
    }
}
