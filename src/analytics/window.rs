//! Per-window, per-group measure state.

use serde_json::Value;

use super::hll::{Hash64, HyperLogLog};
use super::{lookup, number, Fields, InvalidReason, Measure, MeasureOp};

/// What one record contributes to one measure.
pub(super) enum Input {
    /// Value missing or null: the measure ignores this record.
    Skip,
    /// For `count`: the record (or its counted field) is there.
    Present,
    Num(f64),
    Hash(u64),
}

impl Measure {
    pub(super) fn input(&self, obj: &Fields) -> Result<Input, InvalidReason> {
        let Some(path) = &self.path else {
            return Ok(Input::Present);
        };
        let v = match lookup(obj, path) {
            None | Some(Value::Null) => return Ok(Input::Skip),
            Some(v) => v,
        };
        Ok(match self.op {
            MeasureOp::Count => Input::Present,
            // Objects are hashed as their text with keys in record order (serde_json keeps
            // the order here), so {"a":1,"b":2} and {"b":2,"a":1} count as two values.
            // Hashed as it is written: no copy of the text.
            MeasureOp::ApproxDistinct => {
                let mut h = Hash64::default();
                serde_json::to_writer(&mut h, v).expect("hashing cannot fail");
                Input::Hash(h.finish())
            }
            _ => Input::Num(number(v).ok_or(InvalidReason::NonNumericMeasure)?),
        })
    }
}

/// Saved with floats as their bits, so that a restored sum goes on exactly as
/// the uninterrupted one would (decimal text may not round-trip, and an
/// overflowed sum is infinite, which JSON cannot write).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(into = "AccRepr", from = "AccRepr")]
enum Acc {
    Count(u64),
    Sum(Option<f64>),
    Avg { sum: f64, n: u64 },
    Min(Option<f64>),
    Max(Option<f64>),
    Distinct(HyperLogLog),
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum AccRepr {
    Count(u64),
    Sum(Option<u64>),
    Avg { sum: u64, n: u64 },
    Min(Option<u64>),
    Max(Option<u64>),
    Distinct(HyperLogLog),
}

impl From<Acc> for AccRepr {
    fn from(a: Acc) -> Self {
        let bits = |x: Option<f64>| x.map(f64::to_bits);
        match a {
            Acc::Count(n) => AccRepr::Count(n),
            Acc::Sum(x) => AccRepr::Sum(bits(x)),
            Acc::Avg { sum, n } => AccRepr::Avg {
                sum: sum.to_bits(),
                n,
            },
            Acc::Min(x) => AccRepr::Min(bits(x)),
            Acc::Max(x) => AccRepr::Max(bits(x)),
            Acc::Distinct(h) => AccRepr::Distinct(h),
        }
    }
}

impl From<AccRepr> for Acc {
    fn from(a: AccRepr) -> Self {
        let float = |x: Option<u64>| x.map(f64::from_bits);
        match a {
            AccRepr::Count(n) => Acc::Count(n),
            AccRepr::Sum(x) => Acc::Sum(float(x)),
            AccRepr::Avg { sum, n } => Acc::Avg {
                sum: f64::from_bits(sum),
                n,
            },
            AccRepr::Min(x) => Acc::Min(float(x)),
            AccRepr::Max(x) => Acc::Max(float(x)),
            AccRepr::Distinct(h) => Acc::Distinct(h),
        }
    }
}

fn combine(a: Option<f64>, b: Option<f64>, f: fn(f64, f64) -> f64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(f(a, b)),
        (a, b) => a.or(b),
    }
}

impl Acc {
    fn new(op: MeasureOp) -> Self {
        match op {
            MeasureOp::Count => Acc::Count(0),
            MeasureOp::Sum => Acc::Sum(None),
            MeasureOp::Avg => Acc::Avg { sum: 0.0, n: 0 },
            MeasureOp::Min => Acc::Min(None),
            MeasureOp::Max => Acc::Max(None),
            MeasureOp::ApproxDistinct => Acc::Distinct(HyperLogLog::default()),
        }
    }

    fn add(&mut self, input: &Input) {
        let x = match input {
            Input::Skip => return,
            Input::Num(x) => Some(*x),
            _ => None,
        };
        match (self, input) {
            (Acc::Count(n), _) => *n += 1,
            (Acc::Sum(s), _) => *s = combine(*s, x, |a, b| a + b),
            (Acc::Avg { sum, n }, Input::Num(x)) => {
                *sum += x;
                *n += 1;
            }
            (Acc::Min(m), _) => *m = combine(*m, x, f64::min),
            (Acc::Max(m), _) => *m = combine(*m, x, f64::max),
            (Acc::Distinct(h), Input::Hash(x)) => h.insert_hash(*x),
            // Inputs are built per measure op, so no other pairing occurs.
            _ => {}
        }
    }

    fn merge(&mut self, other: &Acc) {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::Sum(a), Acc::Sum(b)) => *a = combine(*a, *b, |a, b| a + b),
            (Acc::Avg { sum, n }, Acc::Avg { sum: s2, n: n2 }) => {
                *sum += s2;
                *n += n2;
            }
            (Acc::Min(a), Acc::Min(b)) => *a = combine(*a, *b, f64::min),
            (Acc::Max(a), Acc::Max(b)) => *a = combine(*a, *b, f64::max),
            (Acc::Distinct(a), Acc::Distinct(b)) => a.merge(b),
            _ => {}
        }
    }

    fn value(&self) -> Value {
        match self {
            Acc::Count(n) => Value::from(*n),
            Acc::Sum(x) | Acc::Min(x) | Acc::Max(x) => x.map_or(Value::Null, num),
            Acc::Avg { n: 0, .. } => Value::Null,
            Acc::Avg { sum, n } => num(sum / *n as f64),
            Acc::Distinct(h) => Value::from(h.estimate().round() as u64),
        }
    }
}

/// Whole numbers print as `12`, not `12.0`; beyond 2^53 an f64 is no longer exact anyway.
fn num(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9_007_199_254_740_992.0 {
        Value::from(x as i64)
    } else {
        Value::from(x)
    }
}

/// One group's state inside one window.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Cell {
    pub group: Vec<Value>,
    accs: Vec<Acc>,
    /// Records it should have seen were lost before the aggregate read them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
    /// A fixed window's cell: listed in the aggregator's dirty set, so
    /// the next record need not look it up there. Not state.
    #[serde(skip)]
    pub dirty: bool,
}

impl Cell {
    pub fn new(group: Vec<Value>, measures: &[Measure]) -> Self {
        let accs = measures.iter().map(|m| Acc::new(m.op)).collect();
        Self {
            group,
            accs,
            incomplete: false,
            dirty: false,
        }
    }

    /// Whether a restored cell fits these measures.
    pub fn fits(&self, groups: usize, measures: &[Measure]) -> bool {
        self.group.len() == groups
            && self.accs.len() == measures.len()
            && self
                .accs
                .iter()
                .zip(measures)
                .all(|(a, m)| std::mem::discriminant(a) == std::mem::discriminant(&Acc::new(m.op)))
    }

    pub fn add(&mut self, inputs: &[Input]) {
        self.accs.iter_mut().zip(inputs).for_each(|(a, i)| a.add(i));
    }

    pub fn merge(&mut self, other: &Cell) {
        self.incomplete |= other.incomplete;
        self.accs
            .iter_mut()
            .zip(&other.accs)
            .for_each(|(a, b)| a.merge(b));
    }

    pub fn values(&self) -> impl Iterator<Item = Value> + '_ {
        self.accs.iter().map(Acc::value)
    }
}
