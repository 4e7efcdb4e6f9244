//! Physiologically plausible vital signs for simulated devices: each value
//! is a patient's baseline plus a daily rhythm, a slow drift, noise and,
//! now and then, an abnormal episode (tachycardia, desaturation, fever,
//! hypertension, hyperglycaemia...). Values stay within what a body can
//! show, so the rule contracts accept them; false data comes from the
//! attacker, not from here. Deterministic for a seed.

use medledger_protocol::Observation;
use medledger_protocol::catalogue::data_type;

/// A kind of device: its group (in its certificate and the Registry) and
/// the LOINC codes it measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// The device group, e.g. `pulse-oximeter`.
    pub group: &'static str,
    /// What it measures.
    pub codes: &'static [&'static str],
}

/// Every kind, together covering the whole catalogue.
pub const KINDS: &[Kind] = &[
    Kind {
        group: "pulse-oximeter",
        codes: &["8867-4", "59408-5"],
    },
    Kind {
        group: "bp-cuff",
        codes: &["8480-6", "8462-4", "8867-4"],
    },
    Kind {
        group: "thermometer",
        codes: &["8310-5"],
    },
    Kind {
        group: "ecg-patch",
        codes: &["11524-6", "8867-4"],
    },
    Kind {
        group: "glucometer",
        codes: &["2339-0", "15074-8"],
    },
    Kind {
        group: "resp-monitor",
        codes: &["9279-1"],
    },
    Kind {
        group: "scale",
        codes: &["29463-7"],
    },
];

/// How one vital behaves: normal baseline, spread between patients, daily
/// swing, noise, the shift of an abnormal episode, and hard limits.
struct Model {
    code: &'static str,
    base: f64,
    spread: f64,
    daily: f64,
    noise: f64,
    episode: f64,
    min: f64,
    max: f64,
    decimals: i32,
}

const MODELS: &[Model] = &[
    Model {
        code: "8867-4",
        base: 72.0,
        spread: 8.0,
        daily: 6.0,
        noise: 2.0,
        episode: 45.0,
        min: 35.0,
        max: 190.0,
        decimals: 0,
    },
    Model {
        code: "59408-5",
        base: 97.5,
        spread: 1.0,
        daily: 0.5,
        noise: 0.6,
        episode: -9.0,
        min: 75.0,
        max: 100.0,
        decimals: 0,
    },
    Model {
        code: "8310-5",
        base: 36.8,
        spread: 0.2,
        daily: 0.4,
        noise: 0.1,
        episode: 2.0,
        min: 34.5,
        max: 41.5,
        decimals: 1,
    },
    Model {
        code: "8480-6",
        base: 120.0,
        spread: 10.0,
        daily: 8.0,
        noise: 4.0,
        episode: 45.0,
        min: 80.0,
        max: 220.0,
        decimals: 0,
    },
    Model {
        code: "8462-4",
        base: 78.0,
        spread: 6.0,
        daily: 5.0,
        noise: 3.0,
        episode: 25.0,
        min: 45.0,
        max: 130.0,
        decimals: 0,
    },
    Model {
        code: "9279-1",
        base: 15.0,
        spread: 2.0,
        daily: 1.0,
        noise: 1.0,
        episode: 12.0,
        min: 8.0,
        max: 40.0,
        decimals: 0,
    },
    Model {
        code: "2339-0",
        base: 100.0,
        spread: 10.0,
        daily: 20.0,
        noise: 6.0,
        episode: 150.0,
        min: 55.0,
        max: 450.0,
        decimals: 0,
    },
    Model {
        code: "29463-7",
        base: 72.0,
        spread: 12.0,
        daily: 0.3,
        noise: 0.1,
        episode: 0.0,
        min: 35.0,
        max: 180.0,
        decimals: 1,
    },
];

/// mg/dL of glucose per mmol/L.
const GLUCOSE_MG_PER_MMOL: f64 = 18.016;

/// A small deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly normal, mean 0, deviation 1 (sum of uniforms).
    fn normal(&mut self) -> f64 {
        (0..6).map(|_| self.unit()).sum::<f64>() - 3.0
    }
}

/// One patient's vitals over time.
#[derive(Debug, Clone)]
pub struct Vitals {
    rng: Rng,
    /// Per model: the patient's baseline and the drift so far.
    baselines: Vec<f64>,
    drift: Vec<f64>,
    /// Readings left in the current abnormal episode, and which model.
    episode: Option<(usize, u32)>,
}

/// The chance that a reading starts an abnormal episode.
const EPISODE_CHANCE: f64 = 0.02;

impl Vitals {
    /// A patient's vitals, deterministic for `seed`.
    pub fn new(seed: u64) -> Vitals {
        let mut rng = Rng(seed);
        let baselines = MODELS
            .iter()
            .map(|m| m.base + m.spread * rng.normal() / 2.0)
            .collect();
        Vitals {
            rng,
            baselines,
            drift: vec![0.0; MODELS.len()],
            episode: None,
        }
    }

    /// Whether an abnormal episode is under way.
    pub fn abnormal(&self) -> bool {
        self.episode.is_some()
    }

    /// The value of `code` at `ts_ms` (ECG aside).
    fn value(&mut self, i: usize, ts_ms: u64) -> f64 {
        let m = &MODELS[i];
        let day = (ts_ms % 86_400_000) as f64 / 86_400_000.0;
        // Lowest in the early morning, highest in the afternoon.
        let rhythm = m.daily * (std::f64::consts::TAU * (day - 0.375)).sin();
        self.drift[i] = (self.drift[i] + m.noise * 0.1 * self.rng.normal()) * 0.99;
        let episode = match self.episode {
            Some((model, _)) if model == i => m.episode,
            _ => 0.0,
        };
        let v = self.baselines[i] + rhythm + self.drift[i] + episode + m.noise * self.rng.normal();
        let scale = 10f64.powi(m.decimals);
        (v.clamp(m.min, m.max) * scale).round() / scale
    }

    /// The next observations of a device of `kind` at `ts_ms`.
    pub fn observe(&mut self, kind: &Kind, ts_ms: u64) -> Vec<Observation> {
        self.episode = match self.episode {
            Some((m, left)) if left > 1 => Some((m, left - 1)),
            Some(_) => None,
            None if self.rng.unit() < EPISODE_CHANCE => {
                let m = (self.rng.next() % MODELS.len() as u64) as usize;
                Some((m, 3 + (self.rng.next() % 8) as u32))
            }
            None => None,
        };
        let mut out = Vec::with_capacity(kind.codes.len());
        for code in kind.codes {
            let Some(t) = data_type(code) else { continue };
            let value = match *code {
                "11524-6" => {
                    let bpm = self.value(0, ts_ms);
                    out.push(Observation::waveform(t, ecg_strip(bpm, &mut self.rng)));
                    continue;
                }
                "15074-8" => {
                    let i = model_index("2339-0");
                    let mg = self.value(i, ts_ms);
                    (mg / GLUCOSE_MG_PER_MMOL * 10.0).round() / 10.0
                }
                code => self.value(model_index(code), ts_ms),
            };
            out.push(Observation::scalar(t, value));
        }
        out
    }
}

fn model_index(code: &str) -> usize {
    MODELS
        .iter()
        .position(|m| m.code == code)
        .expect("every scalar code has a model")
}

/// One second of a single-lead ECG at `bpm` (250 Hz, mV): P wave, QRS
/// complex and T wave as Gaussian bumps, with a little baseline noise.
fn ecg_strip(bpm: f64, rng: &mut Rng) -> Vec<f64> {
    let beat_s = 60.0 / bpm.max(30.0);
    let bump =
        |t: f64, at: f64, width: f64, height: f64| height * (-((t - at) / width).powi(2)).exp();
    (0..250)
        .map(|i| {
            let t = (i as f64 * 0.004) % beat_s;
            let v = bump(t, 0.10, 0.025, 0.15) - bump(t, 0.19, 0.008, 0.1)
                + bump(t, 0.21, 0.012, 1.2)
                - bump(t, 0.23, 0.008, 0.25)
                + bump(t, 0.42, 0.04, 0.3)
                + 0.02 * rng.normal();
            (v * 1000.0).round() / 1000.0
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use medledger_contracts::DEFAULT_RANGES;
    use medledger_protocol::ObservedValue;

    #[test]
    fn every_catalogue_type_is_measured_by_some_kind() {
        for t in medledger_protocol::CATALOGUE {
            assert!(
                KINDS.iter().any(|k| k.codes.contains(&t.code)),
                "{} is measured by no kind",
                t.name
            );
        }
    }

    #[test]
    fn values_vary_with_episodes_and_stay_within_the_rules() {
        let mut vitals = Vitals::new(7);
        let mut seen_abnormal = false;
        let mut heart = Vec::new();
        for n in 0..2_000u64 {
            let ts = n * 60_000;
            for kind in KINDS {
                for o in vitals.observe(kind, ts) {
                    let (_, lo, hi) = DEFAULT_RANGES
                        .iter()
                        .find(|(c, _, _)| *c == o.data_type.code)
                        .unwrap();
                    let values = match &o.value {
                        ObservedValue::Scalar(v) => vec![*v],
                        ObservedValue::Waveform(s) => s.clone(),
                    };
                    for v in values {
                        assert!((*lo..=*hi).contains(&v), "{} = {v}", o.data_type.name);
                    }
                    if let ObservedValue::Scalar(v) = o.value
                        && o.data_type.code == "8867-4"
                        && kind.group == "pulse-oximeter"
                    {
                        heart.push(v);
                    }
                }
            }
            seen_abnormal |= vitals.abnormal();
        }
        assert!(seen_abnormal);
        let min = heart.iter().copied().fold(f64::MAX, f64::min);
        let max = heart.iter().copied().fold(f64::MIN, f64::max);
        assert!(max - min > 20.0, "heart rate barely moves: {min}..{max}");
        // Deterministic for a seed.
        let a = Vitals::new(3).observe(&KINDS[0], 0);
        let b = Vitals::new(3).observe(&KINDS[0], 0);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }
}
