//! A circuit as straights and constant-radius corners, with the speed profile a car can
//! drive on it (corner speed limits, braking and acceleration zones) and x/y positions.

/// One piece of track.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    /// Length along the racing line, metres.
    pub length_m: f64,
    /// Corner radius in metres; `None` for a straight.
    pub radius_m: Option<f64>,
    /// Turn direction for corners: +1 left, -1 right.
    pub direction: f64,
    /// DRS may open on this straight.
    pub drs_zone: bool,
}

impl Segment {
    fn straight(length_m: f64, drs_zone: bool) -> Self {
        Segment {
            length_m,
            radius_m: None,
            direction: 0.0,
            drs_zone,
        }
    }

    fn corner(radius_m: f64, degrees: f64) -> Self {
        Segment {
            length_m: radius_m * degrees.abs().to_radians(),
            radius_m: Some(radius_m),
            direction: degrees.signum(),
            drs_zone: false,
        }
    }
}

/// Sample spacing of the precomputed profile, metres.
const STEP_M: f64 = 2.0;
/// Lateral grip in corners, m/s² (about 3.5 g).
const LATERAL_GRIP: f64 = 35.0;
/// Peak braking deceleration, m/s².
const BRAKING: f64 = 40.0;
/// Top speed on the longest straight, m/s (about 340 km/h).
pub const TOP_SPEED: f64 = 94.5;
/// Acceleration from rest, m/s²; falls linearly to zero at top speed.
const LAUNCH_ACCEL: f64 = 14.0;

/// What the track says about one place on it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Speed the fastest car drives here, m/s.
    pub speed: f64,
    /// The car is braking here.
    pub braking: bool,
    /// The car is accelerating here (full throttle).
    pub accelerating: bool,
    /// Index of the segment.
    pub segment: usize,
    /// Position, metres.
    pub x: f64,
    /// Position, metres.
    pub y: f64,
}

/// A closed circuit with its speed profile.
#[derive(Debug, Clone)]
pub struct Track {
    /// Name shown in tags.
    pub name: String,
    /// The pieces, in driving order.
    pub segments: Vec<Segment>,
    samples: Vec<Sample>,
    length_m: f64,
}

impl Default for Track {
    /// "Pitwall Park": 4.4 km, eight corners from a 110 km/h hairpin to a flat-out
    /// sweeper, two DRS straights.
    fn default() -> Self {
        Track::new(
            "pitwall-park",
            vec![
                Segment::straight(1000.0, true),
                Segment::corner(28.0, 90.0),
                Segment::straight(320.0, false),
                Segment::corner(60.0, -30.0),
                Segment::corner(60.0, 60.0),
                Segment::straight(650.0, true),
                Segment::corner(45.0, 90.0),
                Segment::straight(260.0, false),
                Segment::corner(220.0, -45.0),
                Segment::straight(420.0, false),
                Segment::corner(300.0, 45.0),
                Segment::straight(380.0, false),
                Segment::corner(90.0, 60.0),
                Segment::straight(500.0, false),
                Segment::corner(35.0, 90.0),
                Segment::straight(150.0, false),
            ],
        )
    }
}

impl Track {
    /// Builds a track and precomputes its speed profile.
    pub fn new(name: impl Into<String>, segments: Vec<Segment>) -> Self {
        let length_m: f64 = segments.iter().map(|s| s.length_m).sum();
        let n = (length_m / STEP_M).ceil() as usize;
        let mut samples = Vec::with_capacity(n);
        let (mut x, mut y, mut heading) = (0.0f64, 0.0f64, 0.0f64);
        let mut seg = 0;
        let mut seg_start = 0.0;
        for i in 0..n {
            let s = i as f64 * STEP_M;
            while seg + 1 < segments.len() && s >= seg_start + segments[seg].length_m {
                seg_start += segments[seg].length_m;
                seg += 1;
            }
            let limit = match segments[seg].radius_m {
                Some(r) => (LATERAL_GRIP * r).sqrt().min(TOP_SPEED),
                None => TOP_SPEED,
            };
            samples.push(Sample {
                speed: limit,
                braking: false,
                accelerating: false,
                segment: seg,
                x,
                y,
            });
            if let Some(r) = segments[seg].radius_m {
                heading += segments[seg].direction * STEP_M / r;
            }
            x += STEP_M * heading.cos();
            y += STEP_M * heading.sin();
        }
        // Two laps of passes so the profile wraps around the start line.
        for _ in 0..2 {
            // Backward: brake in time for every corner.
            for i in (0..n).rev() {
                let next = samples[(i + 1) % n].speed;
                let reachable = (next * next + 2.0 * BRAKING * STEP_M).sqrt();
                if reachable < samples[i].speed {
                    samples[i].speed = reachable;
                    samples[i].braking = true;
                }
            }
            // Forward: accelerate as hard as the car can.
            for i in 0..n {
                let prev = samples[(i + n - 1) % n].speed;
                let accel = LAUNCH_ACCEL * (1.0 - prev / (TOP_SPEED * 1.02)).max(0.02);
                let reachable = (prev * prev + 2.0 * accel * STEP_M).sqrt();
                if reachable < samples[i].speed {
                    samples[i].speed = reachable;
                    samples[i].accelerating = true;
                    samples[i].braking = false;
                }
            }
        }
        Track {
            name: name.into(),
            segments,
            samples,
            length_m,
        }
    }

    /// Lap length, metres.
    pub fn length_m(&self) -> f64 {
        self.length_m
    }

    /// What the track says at `distance_m` metres into the lap.
    pub fn at(&self, distance_m: f64) -> Sample {
        let d = distance_m.rem_euclid(self.length_m);
        let i = ((d / STEP_M) as usize).min(self.samples.len() - 1);
        self.samples[i]
    }

    /// Is `distance_m` on a straight (not in a corner)?
    pub fn is_straight(&self, distance_m: f64) -> bool {
        self.segments[self.at(distance_m).segment]
            .radius_m
            .is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_is_plausible() {
        let t = Track::default();
        assert!((t.length_m() - 4450.0).abs() < 100.0, "{}", t.length_m());
        let speeds: Vec<f64> = (0..2225)
            .map(|i| t.at(i as f64 * 2.0).speed * 3.6)
            .collect();
        let min = speeds.iter().cloned().fold(f64::MAX, f64::min);
        let max = speeds.iter().cloned().fold(0.0, f64::max);
        assert!((90.0..130.0).contains(&min), "slowest corner {min} km/h");
        assert!((300.0..345.0).contains(&max), "top speed {max} km/h");
        // No jumps: at 2 m spacing no car changes speed by more than braking allows.
        for w in speeds.windows(2) {
            assert!((w[1] - w[0]).abs() < 12.0, "{w:?}");
        }
    }
}
