//! FastF1 car telemetry exported to CSV (`session.car_data[driver].to_csv()`):
//!
//! ```text
//! ,Date,SessionTime,Time,RPM,Speed,nGear,Throttle,Brake,DRS,Source
//! 0,2023-03-05 15:03:52.466,0 days 01:02:35.201000,0 days 00:00:00.061000,10115.0,0.0,1,16.0,False,1,car
//! ```
//!
//! Each row becomes a `car` point in pitwall's model, so replayed and simulated cars
//! share one table: `Date` (UTC) is the event time, `RPM`→`rpm` (integer), `Speed`→
//! `speed_kph`, `nGear`→`gear`, `Throttle`→`throttle_pct`, `Brake`→`brake`, `DRS`→`drs`
//! (open for FastF1's codes 10, 12 and 14) with the raw code kept as `drs_code`,
//! `SessionTime`/`Time`→`session_time_s`/`time_s`, `Source`→ tag `source`.

use chrono::NaiveDateTime;

use crate::{Error, FieldValue, Point, Result};

const REQUIRED: [&str; 7] = ["Date", "RPM", "Speed", "nGear", "Throttle", "Brake", "DRS"];

/// Column positions found in the header.
#[derive(Debug, Clone)]
pub struct Columns {
    date: usize,
    rpm: usize,
    speed: usize,
    gear: usize,
    throttle: usize,
    brake: usize,
    drs: usize,
    session_time: Option<usize>,
    time: Option<usize>,
    source: Option<usize>,
}

impl Columns {
    /// Finds the columns in a header row; the error names what is missing.
    pub fn from_header(header: &csv::StringRecord) -> Result<Self> {
        let find = |name: &str| header.iter().position(|h| h.trim() == name);
        if let Some(missing) = REQUIRED.iter().find(|c| find(c).is_none()) {
            return Err(Error::Csv {
                line: 1,
                column: (*missing).to_owned(),
                message: format!(
                    "the header has no {missing:?} column; a FastF1 car data CSV has {}",
                    REQUIRED.join(", ")
                ),
            });
        }
        let get = |n| find(n).unwrap_or_default();
        Ok(Columns {
            date: get("Date"),
            rpm: get("RPM"),
            speed: get("Speed"),
            gear: get("nGear"),
            throttle: get("Throttle"),
            brake: get("Brake"),
            drs: get("DRS"),
            session_time: find("SessionTime"),
            time: find("Time"),
            source: find("Source"),
        })
    }
}

/// Parses one data row (`line` is its line number, for errors).
pub fn parse_row(
    cols: &Columns,
    row: &csv::StringRecord,
    line: u64,
    driver: &str,
) -> Result<Point> {
    let cell = |i: usize, name: &str| -> Result<&str> {
        row.get(i).map(str::trim).ok_or_else(|| Error::Csv {
            line,
            column: name.to_owned(),
            message: format!("the row has {} cells; expected one for {name}", row.len()),
        })
    };
    let bad = |name: &str, expected: &str, found: &str| Error::Csv {
        line,
        column: name.to_owned(),
        message: format!("expected {expected}, found {found:?}"),
    };
    let number = |i: usize, name: &str| -> Result<f64> {
        let s = cell(i, name)?;
        s.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| bad(name, "a number", s))
    };
    let date = cell(cols.date, "Date")?;
    let time = parse_date(date)
        .ok_or_else(|| bad("Date", "a UTC date such as 2023-03-05 15:03:52.466", date))?;
    let drs_code = number(cols.drs, "DRS")? as i64;
    let brake = match cell(cols.brake, "Brake")? {
        "True" | "true" | "1" | "1.0" => true,
        "False" | "false" | "0" | "0.0" => false,
        other => return Err(bad("Brake", "True or False", other)),
    };
    let mut p = Point::new("car", time)
        .tag("driver", driver)
        .field(
            "rpm",
            FieldValue::I64(number(cols.rpm, "RPM")?.round() as i64),
        )
        .field("speed_kph", FieldValue::F64(number(cols.speed, "Speed")?))
        .field("gear", FieldValue::I64(number(cols.gear, "nGear")? as i64))
        .field(
            "throttle_pct",
            FieldValue::F64(number(cols.throttle, "Throttle")?),
        )
        .field("brake", FieldValue::Bool(brake))
        .field("drs", FieldValue::Bool(matches!(drs_code, 10 | 12 | 14)))
        .field("drs_code", FieldValue::I64(drs_code));
    for (col, name, field) in [
        (cols.session_time, "SessionTime", "session_time_s"),
        (cols.time, "Time", "time_s"),
    ] {
        if let Some(i) = col {
            let s = cell(i, name)?;
            if !s.is_empty() {
                let secs = parse_timedelta(s)
                    .ok_or_else(|| bad(name, "a duration such as 0 days 01:02:35.201000", s))?;
                p.fields.insert(field.into(), FieldValue::F64(secs));
            }
        }
    }
    if let Some(i) = cols.source {
        let s = cell(i, "Source")?;
        if !s.is_empty() {
            p.tags.insert("source".into(), s.into());
        }
    }
    Ok(p)
}

/// Parses every row of a FastF1 car data CSV; bad rows are errors and the rest go on.
pub fn parse(input: &str, driver: &str) -> Vec<Result<Point>> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(input.as_bytes());
    let cols = match reader
        .headers()
        .map_err(|e| csv_error(&e))
        .and_then(Columns::from_header)
    {
        Ok(c) => c,
        Err(e) => return vec![Err(e)],
    };
    reader
        .records()
        .map(|r| {
            let row = r.map_err(|e| csv_error(&e))?;
            let line = row.position().map_or(0, csv::Position::line);
            parse_row(&cols, &row, line, driver)
        })
        .collect()
}

fn csv_error(e: &csv::Error) -> Error {
    Error::Csv {
        line: e.position().map_or(0, csv::Position::line),
        column: String::new(),
        message: e.to_string(),
    }
}

/// `2023-03-05 15:03:52.466` (or with `T`), taken as UTC; nanoseconds since the epoch.
fn parse_date(s: &str) -> Option<i64> {
    let dt = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
        .ok()?;
    dt.and_utc().timestamp_nanos_opt()
}

/// pandas' `0 days 01:02:35.201000` (also `-1 days +23:59:59.9`, or bare `01:02:35`);
/// seconds.
fn parse_timedelta(s: &str) -> Option<f64> {
    let (days, clock) = match s.split_once(" days ") {
        Some((d, rest)) => (
            d.trim().parse::<f64>().ok()?,
            rest.trim().trim_start_matches('+'),
        ),
        None => match s.split_once(" day ") {
            Some((d, rest)) => (
                d.trim().parse::<f64>().ok()?,
                rest.trim().trim_start_matches('+'),
            ),
            None => (0.0, s.trim()),
        },
    };
    let mut parts = clock.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let sec: f64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(days * 86_400.0 + h * 3600.0 + m * 60.0 + sec)
}

/// The driver a file belongs to, from a name such as `VER.csv`, `VER_car_data.csv` or
/// `2023_bahrain_R_VER.csv`: the first three-capital-letter token of the file stem.
pub fn driver_from_file_name(stem: &str) -> Option<String> {
    stem.split(|c: char| !c.is_ascii_alphanumeric())
        .find(|t| t.len() == 3 && t.bytes().all(|b| b.is_ascii_uppercase()))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
,Date,SessionTime,Time,RPM,Speed,nGear,Throttle,Brake,DRS,Source
0,2023-03-05 15:03:52.466,0 days 01:02:35.201000,0 days 00:00:00.061000,10115.0,0.0,1,16.0,False,1,car
1,2023-03-05 15:03:52.706,0 days 01:02:35.441000,0 days 00:00:00.301000,10833.0,12.0,1,22.0,True,12,car
2,2023-03-05 15:03:52.8,0 days 01:02:35.535000,0 days 00:00:00.395000,11002.0,14.0,x,28.0,False,1,interpolation
";

    #[test]
    fn rows_become_car_points() {
        let rows = parse(SAMPLE, "VER");
        assert_eq!(rows.len(), 3);
        let p = rows[0].as_ref().unwrap();
        assert_eq!(p.measurement, "car");
        assert_eq!(p.tags["driver"], "VER");
        assert_eq!(p.tags["source"], "car");
        assert_eq!(p.time, 1_678_028_632_466_000_000);
        assert_eq!(p.fields["rpm"], FieldValue::I64(10115));
        assert_eq!(p.fields["speed_kph"], FieldValue::F64(0.0));
        assert_eq!(p.fields["gear"], FieldValue::I64(1));
        assert_eq!(p.fields["brake"], FieldValue::Bool(false));
        assert_eq!(p.fields["drs"], FieldValue::Bool(false));
        assert_eq!(p.fields["session_time_s"], FieldValue::F64(3755.201));
        let p = rows[1].as_ref().unwrap();
        assert_eq!(p.fields["drs"], FieldValue::Bool(true), "code 12 is open");
        assert_eq!(p.fields["drs_code"], FieldValue::I64(12));
        assert_eq!(p.fields["brake"], FieldValue::Bool(true));
        assert_eq!(
            rows[2].as_ref().unwrap_err().to_string(),
            "line 4, column nGear: expected a number, found \"x\""
        );
    }

    #[test]
    fn a_header_without_the_columns_says_which() {
        let rows = parse("Date,RPM,Speed\n2023-03-05 15:03:52.466,1,2\n", "VER");
        assert_eq!(
            rows[0].as_ref().unwrap_err().to_string(),
            "line 1, column nGear: the header has no \"nGear\" column; a FastF1 car data CSV has Date, RPM, Speed, nGear, Throttle, Brake, DRS"
        );
    }

    #[test]
    fn drivers_come_from_file_names() {
        assert_eq!(driver_from_file_name("VER").as_deref(), Some("VER"));
        assert_eq!(
            driver_from_file_name("VER_car_data").as_deref(),
            Some("VER")
        );
        assert_eq!(
            driver_from_file_name("2023_bahrain_R_HAM").as_deref(),
            Some("HAM")
        );
        assert_eq!(driver_from_file_name("car_data"), None);
        assert_eq!(parse_timedelta("-1 days +23:59:59.500000"), Some(-0.5));
    }
}
